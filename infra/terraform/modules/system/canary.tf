# A synthetic canary: one record a minute through the whole pipeline (Scheduler ->
# topic -> push subscription -> service -> store), so a stalled pipeline is seen even
# when no producer publishes. The service recognises it by the attribute
# (app/telemetry/metrics.py, CANARY_ATTRIBUTE), stores it like any record under one
# id (each canary is that record's newest version) and reports recordline.canary.age.

locals {
  canary_attribute = "recordline-canary"
  # Cloud Scheduler publishes a Pub/Sub target's message as its service agent.
  scheduler_service_agent = "serviceAccount:${var.service_agents["scheduler"]}"
}

resource "google_cloud_scheduler_job" "canary" {
  project     = var.project_id
  region      = var.region
  name        = "${var.service_name}-canary"
  description = "Publishes a canary record to ${google_pubsub_topic.records.name} every minute (docs/operations.md#canary-age)."
  schedule    = "* * * * *"
  time_zone   = "Etc/UTC"

  pubsub_target {
    topic_name = google_pubsub_topic.records.id
    data       = base64encode(jsonencode({ id = local.canary_attribute, data = { canary = true } }))
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

# The slowest instance's view would page for nothing: each instance knows only the
# canaries it stored, so the age is the minimum over instances. 300 s by default is
# five missed canaries, longer than Pub/Sub's first redeliveries take.
resource "google_monitoring_alert_policy" "canary_age" {
  project               = var.project_id
  display_name          = "${var.service_name} (${var.environment}): canary older than ${var.canary_age_threshold_seconds} s"
  combiner              = "OR"
  notification_channels = var.notification_channels

  conditions {
    display_name = "recordline.canary.age > ${var.canary_age_threshold_seconds} s"
    condition_threshold {
      filter          = local.workload_metric["canary.age"]
      comparison      = "COMPARISON_GT"
      threshold_value = var.canary_age_threshold_seconds
      duration        = "120s"
      aggregations {
        alignment_period     = "60s"
        per_series_aligner   = "ALIGN_MIN"
        cross_series_reducer = "REDUCE_MIN"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "No canary published by Cloud Scheduler job `${google_cloud_scheduler_job.canary.name}` has been stored for ${var.canary_age_threshold_seconds} s. Runbook: docs/operations.md#canary-age"
  }
}

# No point at all: no instance has stored a canary, or none exports metrics.
resource "google_monitoring_alert_policy" "canary_absent" {
  project               = var.project_id
  display_name          = "${var.service_name} (${var.environment}): canary age not reported"
  combiner              = "OR"
  notification_channels = var.notification_channels

  conditions {
    display_name = "recordline.canary.age absent for 10 min"
    condition_absent {
      filter   = local.workload_metric["canary.age"]
      duration = "600s"
      aggregations {
        alignment_period     = "60s"
        per_series_aligner   = "ALIGN_MIN"
        cross_series_reducer = "REDUCE_MIN"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "`recordline.canary.age` has not been reported for 10 minutes. Runbook: docs/operations.md#canary-absent"
  }
}
