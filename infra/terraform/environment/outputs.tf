output "workload_identity_provider" {
  description = "Full name of the GitHub Actions workload identity provider."
  value       = google_iam_workload_identity_pool_provider.github.name
}

output "github_environment_variables" {
  description = "Variables to set on the GitHub environment named like this environment (deploy.yml). The cells themselves are read from the repository (env/<environment>/<cell>.tfvars.json) and each cell's services from its state at each rollout."
  value = {
    GCP_PROJECT_ID                 = var.project_id
    GCP_REGION                     = var.region
    GCP_WORKLOAD_IDENTITY_PROVIDER = google_iam_workload_identity_pool_provider.github.name
    GCP_DEPLOY_SERVICE_ACCOUNT     = google_service_account.deployer.email
    ARTIFACT_REPOSITORY            = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images[var.region].repository_id}"
    # Where every deploy also pushes the image (empty without standby_region), and where
    # the break-glass rollout deploys from (break-glass.yml).
    ARTIFACT_STANDBY_REPOSITORY = var.standby_region == "" ? "" : "${var.standby_region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images[var.standby_region].repository_id}"
    IMAGE_NAME                  = var.service_name
  }
}

output "operator_service_account" {
  description = "The account on-call acts as, and each cell's ops job runs as (members of `oncall` may act as it)."
  value       = google_service_account.operator.email
}

output "github_terraform_variables" {
  description = "Variables for terraform.yml: the terraform-<environment> GitHub environment (apply) and the repository (plan, suffixed with the upper-cased environment)."
  value = {
    GCP_WORKLOAD_IDENTITY_PROVIDER = google_iam_workload_identity_pool_provider.github.name
    TF_APPLY_SERVICE_ACCOUNT       = google_service_account.terraform_apply.email
    TF_PLAN_SERVICE_ACCOUNT        = google_service_account.terraform_plan.email
  }
}

output "cells" {
  description = "Each cell: its project, region and how many systems it holds (env/<environment>/<cell>.tfvars.json)."
  value = {
    for cell in keys(local.cells) : cell => {
      project = local.cell_project[cell]
      region  = local.cell_region[cell]
      systems = length(local.cell_systems[cell])
      serving = local.cell_serving[cell]
    }
  }
}

output "limits" {
  description = "What the cells hold in each project against what the project may hold (cells.tf)."
  value       = { for project, usage in local.project_usage : project => { usage = usage, limits = local.project_limits[project] } }
}
