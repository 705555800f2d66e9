# The system's own account: what its service runs as, the one that holds its data
# (its dataset, page-token secret and serving database). The identities that hold
# nothing (the push subscription's and the smoke test's) are the environment's, shared
# by every system (root service_accounts.tf): a project holds 100 accounts by default,
# so the accounts per system decide how many systems fit. Each waits for the enabled
# APIs: on a new project, iam.googleapis.com is being enabled in the same apply.

resource "google_service_account" "runtime" {
  project      = var.project_id
  account_id   = "${var.service_name}-run"
  display_name = "${var.service_name} service (Cloud Run runtime)"
}
