# One account per job, so each grant below names exactly who may do what. Each waits
# for the enabled APIs: on a new project, iam.googleapis.com is being enabled in the
# same apply.

resource "google_service_account" "runtime" {
  project      = var.project_id
  account_id   = "${var.service_name}-run"
  display_name = "${var.service_name} service (Cloud Run runtime)"
}

resource "google_service_account" "push" {
  project      = var.project_id
  account_id   = "${var.service_name}-push"
  display_name = "${var.service_name} push subscription (OIDC token identity)"
}

resource "google_service_account" "smoke" {
  project      = var.project_id
  account_id   = "${var.service_name}-smoke"
  display_name = "${var.service_name} post-deploy smoke test (reader)"
}
