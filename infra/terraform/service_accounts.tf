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

# On-call acts as this account to replay (docs/operations.md#acting-as-the-operator-account):
# an operator of every system, impersonated by the members of `oncall` (groups too),
# so no person needs to be listed in each system's RECORDLINE_OPERATOR_PRINCIPALS.
resource "google_service_account" "operator" {
  project      = var.project_id
  account_id   = "${var.service_name}-operator"
  display_name = "${var.service_name} on-call operator: replays in every system"

  depends_on = [google_project_service.enabled]
}
