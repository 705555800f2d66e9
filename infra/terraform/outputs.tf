output "service_url" {
  description = "URL of the Cloud Run service."
  value       = google_cloud_run_v2_service.recordline.uri
}

output "push_endpoint" {
  description = "Where the push subscription delivers."
  value       = google_pubsub_subscription.push.push_config[0].push_endpoint
}

output "topic" {
  description = "Topic producers publish records to."
  value       = google_pubsub_topic.records.id
}

output "ack_deadline_seconds" {
  description = "Acknowledgement deadline of the push subscription, derived from the write deadline."
  value       = local.ack_deadline_seconds
}

output "dataset" {
  description = "BigQuery dataset, as PROJECT.DATASET."
  value       = "${var.project_id}.${google_bigquery_dataset.recordline.dataset_id}"
}

output "runtime_service_account" {
  description = "Identity the service runs as."
  value       = google_service_account.runtime.email
}

output "workload_identity_provider" {
  description = "Full name of the GitHub Actions workload identity provider."
  value       = google_iam_workload_identity_pool_provider.github.name
}

output "github_environment_variables" {
  description = "Variables to set on the GitHub environment named like this environment (deploy.yml)."
  value = {
    GCP_PROJECT_ID                 = var.project_id
    GCP_REGION                     = var.region
    GCP_WORKLOAD_IDENTITY_PROVIDER = google_iam_workload_identity_pool_provider.github.name
    GCP_DEPLOY_SERVICE_ACCOUNT     = google_service_account.deployer.email
    ARTIFACT_REPOSITORY            = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images.repository_id}"
    CLOUD_RUN_SERVICE              = google_cloud_run_v2_service.recordline.name
    PUSH_SERVICE_ACCOUNT           = google_service_account.push.email
    PUSH_AUDIENCE                  = local.push_audience
    SMOKE_SERVICE_ACCOUNT          = google_service_account.smoke.email
    READ_AUDIENCE                  = local.read_audience
  }
}

output "github_terraform_variables" {
  description = "Variables for terraform.yml: the terraform-<environment> GitHub environment (apply) and the repository (plan, suffixed with the upper-cased environment)."
  value = {
    GCP_WORKLOAD_IDENTITY_PROVIDER = google_iam_workload_identity_pool_provider.github.name
    TF_APPLY_SERVICE_ACCOUNT       = google_service_account.terraform_apply.email
    TF_PLAN_SERVICE_ACCOUNT        = google_service_account.terraform_plan.email
  }
}
