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

# On-call acts as this account (docs/operations.md#acting-as-the-operator-account): an
# operator of every system of every cell, impersonated by the members of `oncall`
# (groups too), so no person needs to be listed in each system's operator_principals.
# Each cell's ops job runs as it (the cell root's ops.tf): `recordline audit` and
# `replay` with on-call's rights and no checkout.
resource "google_service_account" "operator" {
  project      = var.project_id
  account_id   = "${var.service_name}-operator"
  display_name = "${var.service_name} on-call operator: replays in every system"

  depends_on = [google_project_service.enabled]
}

# The deploy's smoke test reads back, as this account, what it pushed to each canary
# system of each cell (a reader of every system: its cell's read_principals). The
# identities that push are each system's own (modules/system/service_accounts.tf).
resource "google_service_account" "smoke" {
  project      = var.project_id
  account_id   = "${var.service_name}-smoke"
  display_name = "${var.service_name} post-deploy smoke test (a reader of every system)"

  depends_on = [google_project_service.enabled]
}
