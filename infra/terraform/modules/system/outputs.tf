output "service" {
  description = "Name of the Cloud Run service."
  value       = google_cloud_run_v2_service.recordline.name
}

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

output "dead_letter_replay_subscription" {
  description = "Pull subscription keeping dead letters for `recordline replay dead-letters`."
  value       = google_pubsub_subscription.dead_letter_replay.id
}

output "ack_deadline_seconds" {
  description = "Acknowledgement deadline of the push subscription, derived from the write deadline."
  value       = local.ack_deadline_seconds
}

output "dataset" {
  description = "BigQuery dataset, as PROJECT.DATASET."
  value       = "${var.project_id}.${google_bigquery_dataset.recordline.dataset_id}"
}

output "dashboard" {
  description = "Cloud Monitoring dashboard of this system (its resource id)."
  value       = google_monitoring_dashboard.recordline.id
}

output "deploy" {
  description = "What the deploy workflow needs for this system: its service and the smoke test's identities and audiences."
  value = {
    service               = google_cloud_run_v2_service.recordline.name
    push_service_account  = var.push_service_account
    push_audience         = local.push_audience
    smoke_service_account = var.smoke_service_account
    read_audience         = local.read_audience
    # The smoke test's message: the canary's data (base64) and, on a topic with a
    # schema, the attributes Pub/Sub adds to each message (the schema and its
    # encoding; no revision id, so the service decodes it with the newest revision).
    canary_data = local.canary_data
    schema      = join("", [for s in google_pubsub_schema.records : s.id])
    encoding    = var.topic_schema != null ? var.topic_schema.encoding : ""
  }
}

output "runtime_service_account" {
  description = "Identity the service runs as."
  value       = google_service_account.runtime.email
}

output "probe_path" {
  description = "What the uptime check reads (uptime.tf): the tickets' read command reads the same."
  value       = local.probe_path
}
