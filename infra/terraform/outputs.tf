output "systems" {
  description = "Each system's service URL, topic, dead-letter replay subscription, dataset and dashboard."
  value = {
    for name, system in module.system : name => {
      service_url                     = system.service_url
      push_endpoint                   = system.push_endpoint
      topic                           = system.topic
      dead_letter_replay_subscription = system.dead_letter_replay_subscription
      ack_deadline_seconds            = system.ack_deadline_seconds
      dataset                         = system.dataset
      dashboard                       = system.dashboard
      runtime_service_account         = system.runtime_service_account
    }
  }
}

output "workload_identity_provider" {
  description = "Full name of the GitHub Actions workload identity provider."
  value       = google_iam_workload_identity_pool_provider.github.name
}

output "github_environment_variables" {
  description = "Variables to set on the GitHub environment named like this environment (deploy.yml). The systems themselves are read from the state at each rollout (output deploy)."
  value = {
    GCP_PROJECT_ID                 = var.project_id
    GCP_REGION                     = var.region
    GCP_WORKLOAD_IDENTITY_PROVIDER = google_iam_workload_identity_pool_provider.github.name
    GCP_DEPLOY_SERVICE_ACCOUNT     = google_service_account.deployer.email
    ARTIFACT_REPOSITORY            = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images[var.region].repository_id}"
    # Where every deploy also pushes the image (empty without standby_region).
    ARTIFACT_STANDBY_REPOSITORY = var.standby_region == "" ? "" : "${var.standby_region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images[var.standby_region].repository_id}"
    IMAGE_NAME                  = var.service_name
  }
}

# Read by deploy-environment.yml from the state when a rollout starts: the systems to
# deploy, and the one that goes first, alone.
output "deploy" {
  description = "Per system: its service, and the smoke test's identities and audiences."
  value       = { for name, system in module.system : name => system.deploy }
}

# Read by deploy-environment.yml too: the exporter service, deployed before any system.
output "deploy_exporter" {
  description = "The exporter service's worker pool (exporter.tf), which every rollout deploys first; empty without a system with `serving`."
  value       = join("", values(google_cloud_run_v2_worker_pool.exporter)[*].name)
}

output "deploy_first" {
  description = "The system a rollout deploys first, alone: the default one (service_name) if there is one."
  value       = contains(keys(local.systems), var.service_name) ? var.service_name : sort(keys(local.systems))[0]
}

output "operator_service_account" {
  description = "The account on-call acts as to replay and roll back (members of `oncall` may)."
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
