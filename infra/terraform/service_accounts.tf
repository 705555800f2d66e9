# One account per job, so each grant below names exactly who may do what.

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

resource "google_service_account" "deployer" {
  project      = var.project_id
  account_id   = "${var.service_name}-deploy"
  display_name = "${var.service_name} deploys from GitHub Actions"
}

resource "google_service_account" "terraform_plan" {
  project      = var.project_id
  account_id   = "${var.service_name}-tf-plan"
  display_name = "${var.service_name} Terraform plans on pull requests (read-only)"
}

resource "google_service_account" "terraform_apply" {
  project      = var.project_id
  account_id   = "${var.service_name}-tf-apply"
  display_name = "${var.service_name} Terraform applies from ${var.github_deploy_branch}"
}
