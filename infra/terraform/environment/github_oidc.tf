# Workload Identity Federation: GitHub Actions exchanges its OIDC token for short-lived
# credentials of one service account. There are no service-account keys anywhere.

resource "google_iam_workload_identity_pool" "github" {
  project                   = var.project_id
  workload_identity_pool_id = "github"
  display_name              = "GitHub Actions"
  description               = "Workflows of ${local.github_repository}"

  depends_on = [google_project_service.enabled]
}

resource "google_iam_workload_identity_pool_provider" "github" {
  project                            = var.project_id
  workload_identity_pool_id          = google_iam_workload_identity_pool.github.workload_identity_pool_id
  workload_identity_pool_provider_id = "github-actions"
  display_name                       = "GitHub Actions OIDC"

  oidc {
    issuer_uri = "https://token.actions.githubusercontent.com"
  }

  # Only what the bindings and the condition use: the bindings name google.subject,
  # the condition reads the token's claims directly. A mapping of a claim some tokens
  # lack (assertion.environment, absent from pull-request tokens) is an error for them.
  attribute_mapping = {
    "google.subject" = "assertion.sub"
  }

  # Any GitHub repository can present a token from this issuer. This provider accepts
  # only this repository's, by its ids (a repository deleted and created again under
  # the same name has another id), and only the subjects bound below, each from the
  # workflow files that may use it (job_workflow_ref: for a reusable workflow, the file
  # the job is defined in): plans (pull requests, and the deploy branch: a merge's plan
  # and drift.yml's), and, on the deploy branch only, a rollout's or a rollback's jobs
  # in the reviewer-free <environment>-rollout and an apply in the reviewer-free
  # terraform-<environment>-apply. Their approval is given before the environment's
  # queue, in a job that authenticates nowhere (approve.yml), which their callers need.
  # The values are spelled out rather than taken from a local so policy checks can read
  # the condition without evaluating the configuration. GitHub's claims:
  # https://docs.github.com/en/actions/reference/security/oidc
  attribute_condition = <<-EOT
    assertion.repository_id == '${var.github_repository_id}' && assertion.repository_owner_id == '${var.github_owner_id}' && assertion.repository == '${var.github_owner}/${var.github_repo}' && (
      (
        assertion.sub == 'repo:${var.github_owner}/${var.github_repo}:pull_request' &&
        assertion.job_workflow_ref.startsWith('${var.github_owner}/${var.github_repo}/.github/workflows/terraform-environment.yml@')
      ) || (
        assertion.ref == 'refs/heads/${var.github_deploy_branch}' && (
          (
            assertion.sub == 'repo:${var.github_owner}/${var.github_repo}:ref:refs/heads/${var.github_deploy_branch}' && (
              assertion.job_workflow_ref == '${var.github_owner}/${var.github_repo}/.github/workflows/terraform-environment.yml@refs/heads/${var.github_deploy_branch}' ||
              assertion.job_workflow_ref == '${var.github_owner}/${var.github_repo}/.github/workflows/drift.yml@refs/heads/${var.github_deploy_branch}'
            )
          ) || (
            assertion.sub == 'repo:${var.github_owner}/${var.github_repo}:environment:${var.environment}-rollout' && (
              assertion.job_workflow_ref == '${var.github_owner}/${var.github_repo}/.github/workflows/deploy-environment.yml@refs/heads/${var.github_deploy_branch}' ||
              assertion.job_workflow_ref == '${var.github_owner}/${var.github_repo}/.github/workflows/deploy-cell.yml@refs/heads/${var.github_deploy_branch}' ||
              assertion.job_workflow_ref == '${var.github_owner}/${var.github_repo}/.github/workflows/export-gate.yml@refs/heads/${var.github_deploy_branch}' ||
              assertion.job_workflow_ref == '${var.github_owner}/${var.github_repo}/.github/workflows/break-glass.yml@refs/heads/${var.github_deploy_branch}' ||
              assertion.job_workflow_ref == '${var.github_owner}/${var.github_repo}/.github/workflows/rollback.yml@refs/heads/${var.github_deploy_branch}'
            )
          ) || (
            assertion.sub == 'repo:${var.github_owner}/${var.github_repo}:environment:terraform-${var.environment}-apply' &&
            assertion.job_workflow_ref == '${var.github_owner}/${var.github_repo}/.github/workflows/terraform-apply.yml@refs/heads/${var.github_deploy_branch}'
          )
        )
      )
    )
  EOT
}

locals {
  github_repository = "${var.github_owner}/${var.github_repo}"

  # GitHub's default subject claims: `repo:OWNER/REPO:environment:NAME` for a job that
  # names an environment, `repo:OWNER/REPO:pull_request` for a pull request job.
  github_principal = "principal://iam.googleapis.com/${google_iam_workload_identity_pool.github.name}/subject/repo:${local.github_repository}"

  github_identities = {
    # A rollout's jobs (the image and the cells, then each cell's) run in the GitHub
    # environment <environment>-rollout, which has no reviewers: the rollout was
    # approved before its queue, in <environment> (approve.yml). The deploy account,
    # for deploy-environment.yml, deploy-cell.yml, its export-gate.yml,
    # break-glass.yml and rollback.yml (on-call's rollbacks) on the deploy branch only.
    deployer_rollout = {
      account = google_service_account.deployer.name
      subject = "${local.github_principal}:environment:${var.environment}-rollout"
    }
    # terraform-apply.yml's apply runs in terraform-<environment>-apply, approved before
    # its queue in terraform-<environment>.
    terraform_apply = {
      account = google_service_account.terraform_apply.name
      subject = "${local.github_principal}:environment:terraform-${var.environment}-apply"
    }
  }

  # terraform.yml plans on pull requests, and on the deploy branch before each gated
  # apply (the plan the reviewer approves), and drift.yml there: read-only, outside any
  # environment.
  github_plan_subjects = toset([
    "${local.github_principal}:pull_request",
    "${local.github_principal}:ref:refs/heads/${var.github_deploy_branch}",
  ])
}

resource "google_service_account_iam_member" "github_plans" {
  for_each = local.github_plan_subjects

  service_account_id = google_service_account.terraform_plan.name
  role               = "roles/iam.workloadIdentityUser"
  member             = each.value
}

resource "google_service_account_iam_member" "github_workload_identity" {
  for_each = local.github_identities

  service_account_id = each.value.account
  role               = "roles/iam.workloadIdentityUser"
  member             = each.value.subject
}
