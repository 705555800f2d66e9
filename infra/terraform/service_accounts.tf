# One account per job, so each grant below names exactly who may do what. Each waits
# for the enabled APIs: on a new project, iam.googleapis.com is being enabled in the
# same apply.

resource "google_service_account" "runtime" {
  project      = var.project_id
  account_id   = "${var.service_name}-run"
  display_name = "${var.service_name} service (Cloud Run runtime)"

  depends_on = [google_project_service.enabled]
}

resource "google_service_account" "push" {
  project      = var.project_id
  account_id   = "${var.service_name}-push"
  display_name = "${var.service_name} push subscription (OIDC token identity)"

  depends_on = [google_project_service.enabled]
}

resource "google_service_account" "smoke" {
  project      = var.project_id
  account_id   = "${var.service_name}-smoke"
  display_name = "${var.service_name} post-deploy smoke test (reader)"

  depends_on = [google_project_service.enabled]
}

resource "google_service_account" "deployer" {
  project      = var.project_id
  account_id   = "${var.service_name}-deploy"
  display_name = "${var.service_name} deploys from GitHub Actions"

  depends_on = [google_project_service.enabled]
}

resource "google_service_account" "terraform_plan" {
  project      = var.project_id
  account_id   = "${var.service_name}-tf-plan"
  display_name = "${var.service_name} Terraform plans on pull requests (read-only)"

  depends_on = [google_project_service.enabled]
}

resource "google_service_account" "terraform_apply" {
  project      = var.project_id
  account_id   = "${var.service_name}-tf-apply"
  display_name = "${var.service_name} Terraform applies from ${var.github_deploy_branch}"

  depends_on = [google_project_service.enabled]
}
