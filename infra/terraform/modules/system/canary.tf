# A synthetic canary: one record a minute through the whole pipeline (Scheduler ->
# topic -> push subscription -> service -> store), so a stalled pipeline is seen even
# when no producer publishes. The service recognises it by the attribute
# (app/telemetry/metrics.py, CANARY_ATTRIBUTE), stores it like any record under one
# id (each canary is that record's newest version) and reports recordline.canary.age,
# the minimum over instances (each knows only the canaries it stored), which the
# canary_stale page and ticket watch (modules/symptoms, alerts.tf).

locals {
  canary_attribute = "recordline-canary"
  # Cloud Scheduler publishes a Pub/Sub target's message as its service agent.
  scheduler_service_agent = "serviceAccount:${var.service_agents["scheduler"]}"

  # A record of the service's default shape. A topic with a schema, or a payload with
  # its id elsewhere, takes the system's own canary message instead (canary_data).
  default_canary_data = base64encode(jsonencode({ id = local.canary_attribute, data = { canary = true } }))

  # What the canary publishes, base64: also what the deploy's smoke test pushes to a new
  # revision (outputs.tf, deploy), so the test speaks the system's own shape.
  canary_data = var.canary_data != null ? var.canary_data : local.default_canary_data
}

resource "google_cloud_scheduler_job" "canary" {
  project     = var.project_id
  region      = var.region
  name        = "${var.service_name}-canary"
  description = "Publishes a canary record to ${google_pubsub_topic.records.name} every minute (docs/operations.md#canary-stale)."
  schedule    = "* * * * *"
  time_zone   = "Etc/UTC"

  pubsub_target {
    topic_name = google_pubsub_topic.records.id
    data       = local.canary_data
    attributes = { (local.canary_attribute) = "1" }
  }

  depends_on = [
    google_pubsub_topic_iam_member.canary_publisher,
  ]
}

# Publish on this topic only, not project-wide.
resource "google_pubsub_topic_iam_member" "canary_publisher" {
  project = var.project_id
  topic   = google_pubsub_topic.records.name
  role    = "roles/pubsub.publisher"
  member  = local.scheduler_service_agent
}
