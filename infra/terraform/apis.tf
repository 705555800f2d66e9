resource "google_project_service" "enabled" {
  for_each = toset([
    "artifactregistry.googleapis.com",
    "bigquery.googleapis.com",
    "bigquerystorage.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "cloudscheduler.googleapis.com",
    "cloudtrace.googleapis.com",
    "iam.googleapis.com",
    "iamcredentials.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "serviceusage.googleapis.com",
    "sts.googleapis.com",
  ])

  project = var.project_id
  service = each.value

  # Turning an API off would break whatever else in the project uses it.
  disable_on_destroy = false
}

# --- what the Pub/Sub service agent needs ----------------------------------------

# Google creates the Pub/Sub service agent (service-NUMBER@gcp-sa-pubsub) when
# pubsub.googleapis.com is enabled, but not at once: a grant to it made right after
# the enabling fails with "Service account ... does not exist". The pause is taken
# once, on the apply that enables the API.
resource "time_sleep" "pubsub_service_agent" {
  create_duration = "60s"

  triggers = {
    pubsub = google_project_service.enabled["pubsub.googleapis.com"].id
  }
}
