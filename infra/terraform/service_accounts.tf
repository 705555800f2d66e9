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
