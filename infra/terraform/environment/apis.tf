# The environment's project: its identities, images, alerts and dashboards. Each cell's
# project enables what it runs itself (the cell root's apis.tf), the environment's too
# when it is the cell's.
resource "google_project_service" "enabled" {
  for_each = toset([
    "artifactregistry.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "iam.googleapis.com",
    "iamcredentials.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "serviceusage.googleapis.com",
    "sts.googleapis.com",
  ])

  project = var.project_id
  service = each.value

  # Turning an API off would break whatever else in the project uses it.
  disable_on_destroy = false
}
