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

output "push_service_account" {
  description = "The identity Pub/Sub signs this system's push tokens as."
  value       = google_service_account.push.email
}

output "smoke" {
  description = "What the deploy's smoke test pushes to this system, as its topic would: the canary's data (base64) and, on a topic with a schema, the attributes Pub/Sub adds to each message (the schema and its encoding; no revision id, so the service decodes it with the newest revision)."
  value = {
    push_service_account = google_service_account.push.email
    push_audience        = local.push_audience
    canary_data          = local.canary_data
    schema               = join("", [for s in google_pubsub_schema.records : s.id])
    encoding             = var.topic_schema != null ? var.topic_schema.encoding : ""
  }
}
