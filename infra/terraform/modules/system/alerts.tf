locals {
  push_subscription = join(" ", [
    "resource.type=\"pubsub_subscription\"",
    "resource.label.\"subscription_id\"=\"${google_pubsub_subscription.push.name}\"",
  ])
}

# Messages are waiting: the service is down, nacking, or too slow for the publish rate.
resource "google_monitoring_alert_policy" "oldest_unacked_message" {
  project               = var.project_id
  display_name          = "${var.service_name} (${var.environment}): oldest unacknowledged message over ${var.oldest_unacked_threshold_seconds} s"
  combiner              = "OR"
  notification_channels = var.notification_channels

  conditions {
    display_name = "oldest_unacked_message_age > ${var.oldest_unacked_threshold_seconds} s"
    condition_threshold {
      filter          = "metric.type=\"pubsub.googleapis.com/subscription/oldest_unacked_message_age\" ${local.push_subscription}"
      comparison      = "COMPARISON_GT"
      threshold_value = var.oldest_unacked_threshold_seconds
      duration        = "60s"
      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_MAX"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "Pushes to ${var.service_name} are not being acknowledged. Check 5xx responses and `recordline.messages{outcome=retried}` on the dashboard. Runbook: docs/operations.md#oldest-unacknowledged-message"
  }
}

# Every dead letter is a message the store refused max_delivery_attempts times.
resource "google_monitoring_alert_policy" "dead_letters" {
  project               = var.project_id
  display_name          = "${var.service_name} (${var.environment}): messages sent to the dead-letter topic"
  combiner              = "OR"
  notification_channels = var.notification_channels

  conditions {
    display_name = "dead_letter_message_count > 0"
    condition_threshold {
      filter          = "metric.type=\"pubsub.googleapis.com/subscription/dead_letter_message_count\" ${local.push_subscription}"
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period     = "60s"
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "Dead letters are kept in BigQuery: `${var.project_id}.${google_bigquery_dataset.recordline.dataset_id}.${google_bigquery_table.dead_letters.table_id}`. Republish them to `${google_pubsub_topic.records.name}` once the cause is fixed. Runbook: docs/operations.md#dead-letters"
  }
}

resource "google_monitoring_alert_policy" "server_errors" {
  project               = var.project_id
  display_name          = "${var.service_name} (${var.environment}): 5xx over ${format("%g", var.error_ratio_threshold * 100)}% of requests"
  combiner              = "OR"
  notification_channels = var.notification_channels

  conditions {
    display_name = "5xx / all requests > ${var.error_ratio_threshold}"
    condition_threshold {
      filter             = "${local.request_count} metric.label.\"response_code_class\"=\"5xx\""
      denominator_filter = local.request_count
      comparison         = "COMPARISON_GT"
      threshold_value    = var.error_ratio_threshold
      duration           = "0s"
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_SUM"
      }
      denominator_aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "Pushes answered 503 are redelivered, so a short burst loses nothing; a sustained one fills the subscription backlog. Check `/readyz` and the service logs. Runbook: docs/operations.md#server-errors-5xx"
  }
}

# What reads cost. Each query is capped by query_max_bytes_billed; this catches many
# queries that each stay under the cap. Alert conditions accept alignment periods up
# to 25 h, so one aligned point is the bytes billed over the last 24 h (a sliding
# day, evaluated continuously), summed over routes and instances.
resource "google_monitoring_alert_policy" "query_bytes_billed" {
  project               = var.project_id
  display_name          = "${var.service_name} (${var.environment}): queries billed over ${format("%g", var.query_bytes_billed_daily_budget / 1073741824)} GiB in 24 h"
  combiner              = "OR"
  notification_channels = var.notification_channels

  conditions {
    display_name = "recordline.query.bytes_billed over 24 h > ${var.query_bytes_billed_daily_budget} bytes"
    condition_threshold {
      filter          = local.workload_metric["query.bytes_billed"]
      comparison      = "COMPARISON_GT"
      threshold_value = var.query_bytes_billed_daily_budget
      duration        = "0s"
      aggregations {
        alignment_period     = "86400s"
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "BigQuery bytes billed by ${var.service_name}'s reads passed the daily budget. The dashboard's \"BigQuery bytes billed by route\" tile shows which route; the query spans carry the bytes of each query. Runbook: docs/operations.md#query-bytes-billed"
  }
}
