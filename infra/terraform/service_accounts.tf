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

# Shared by every system, since they hold nothing (a project holds 100 accounts by
# default, https://cloud.google.com/iam/quotas; each system has one of its own, its
# runtime account). Pub/Sub signs each system's pushes as this account, with that
# system's audience, which only that system's service accepts.
resource "google_service_account" "push" {
  project      = var.project_id
  account_id   = "${var.service_name}-push"
  display_name = "${var.service_name} push subscriptions (OIDC token identity of every system's)"

  depends_on = [google_project_service.enabled]
}

# The deploy's smoke test reads back, as this account, what it pushed to each system.
resource "google_service_account" "smoke" {
  project      = var.project_id
  account_id   = "${var.service_name}-smoke"
  display_name = "${var.service_name} post-deploy smoke test (a reader of every system)"

  depends_on = [google_project_service.enabled]
}
