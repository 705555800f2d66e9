# The system's push account: the identity Pub/Sub signs this system's push tokens as,
# which only this system's guard in the cell admits (its push_service_accounts, with its
# own audience). Its data is held by the cell's accounts (root cell.tf), each granted
# this system's dataset and database alone (iam.tf); a project holds 100 accounts by
# default, so each system's one account is what the cells' projects are sized by
# (root variables.tf, service_account_quota).
resource "google_service_account" "push" {
  project      = var.project_id
  account_id   = "${var.service_name}-push"
  display_name = "${var.service_name} push subscription (OIDC token identity)"
}

# Pub/Sub mints the push tokens as this account; the apply creates the subscription
# acting as it; the deploy's smoke test pushes as it, with ID tokens only.
resource "google_service_account_iam_member" "pubsub_mints_push_token" {
  service_account_id = google_service_account.push.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_service_agent
}

resource "google_service_account_iam_member" "terraform_apply_acts_as_push" {
  service_account_id = google_service_account.push.name
  role               = "roles/iam.serviceAccountUser"
  member             = var.terraform_apply_member
}

resource "google_service_account_iam_member" "deployer_mints_smoke_tokens" {
  service_account_id = google_service_account.push.name
  role               = "roles/iam.serviceAccountOpenIdTokenCreator"
  member             = var.deployer_member
}
