# Service level objectives and their burn-rate alerts.
#
# Cloud Run's own metrics (run.googleapis.com/*) describe every request the service
# answered; the application's OpenTelemetry metrics arrive as workload.googleapis.com/*,
# on the generic_task resource, and are declared in metrics.tf: an SLO on a metric
# Cloud Monitoring does not know yet is refused.

locals {
  cloud_run_requests = join(" ", [
    "resource.type=\"cloud_run_revision\"",
    "resource.label.\"service_name\"=\"${google_cloud_run_v2_service.recordline.name}\"",
  ])

  request_count     = "metric.type=\"run.googleapis.com/request_count\" ${local.cloud_run_requests}"
  request_latencies = "metric.type=\"run.googleapis.com/request_latencies\" ${local.cloud_run_requests}"

  # The routes users read through (READ_ROUTES in app/telemetry/store.py, which labels
  # each query with the route it serves; a test keeps both equal). Replay's look-ups
  # (/v1/replay) are an operator's batches, not a read a user waits for.
  read_query_duration = "${local.workload_metric["query.duration"]} metric.label.\"route\"=one_of(\"/v1/records\",\"/v1/records/{record_id}\",\"/v1/messages/{message_id}\")"

  # Alert when the error budget burns fast enough to be gone in ~2 days (14.4x over the
  # last hour: page-worthy) or in ~5 days (6x over six hours: a slower leak).
  burn_rate_windows = {
    fast = { lookback = "3600s", threshold = 14.4 }
    slow = { lookback = "21600s", threshold = 6 }
  }
}

resource "google_monitoring_custom_service" "recordline" {
  project      = var.project_id
  service_id   = var.service_name
  display_name = var.service_name
}

resource "google_monitoring_slo" "availability" {
  project             = var.project_id
  service             = google_monitoring_custom_service.recordline.service_id
  slo_id              = "availability"
  display_name        = "${format("%g", var.availability_goal * 100)}% of push and read requests succeed"
  goal                = var.availability_goal
  rolling_period_days = var.slo_rolling_period_days

  # 4xx are the caller's (bad token, unknown id) and do not spend the budget; a 503
  # does: it is a push we could not store yet, or a read we could not serve.
  request_based_sli {
    good_total_ratio {
      total_service_filter = local.request_count
      bad_service_filter   = "${local.request_count} metric.label.\"response_code_class\"=\"5xx\""
    }
  }
}

resource "google_monitoring_slo" "read_latency" {
  project             = var.project_id
  service             = google_monitoring_custom_service.recordline.service_id
  slo_id              = "read-latency"
  display_name        = "${format("%g", var.read_latency_goal * 100)}% of read queries answered within ${var.read_latency_threshold_seconds} s"
  goal                = var.read_latency_goal
  rolling_period_days = var.slo_rolling_period_days

  # The service's own query duration, by route. Cloud Run's request_latencies has no
  # route: it counts every push too, and pushes outnumber reads by orders of magnitude,
  # so slow reads would never spend the budget. The threshold is a bucket boundary of
  # recordline.query.duration (variables.tf), so the cut is exact.
  request_based_sli {
    distribution_cut {
      distribution_filter = local.read_query_duration
      range {
        max = var.read_latency_threshold_seconds
      }
    }
  }
}

resource "google_monitoring_slo" "freshness" {
  project             = var.project_id
  service             = google_monitoring_custom_service.recordline.service_id
  slo_id              = "freshness"
  display_name        = "${format("%g", var.freshness_goal * 100)}% of messages stored within ${var.freshness_threshold_seconds} s of publish"
  goal                = var.freshness_goal
  rolling_period_days = var.slo_rolling_period_days

  # recordline.ingest.lag: seconds from publish_time to the append that stored the row.
  # The threshold must be a bucket boundary of that histogram to be counted exactly.
  request_based_sli {
    distribution_cut {
      distribution_filter = local.workload_metric["ingest.lag"]
      range {
        max = var.freshness_threshold_seconds
      }
    }
  }
}

locals {
  slos = {
    availability = google_monitoring_slo.availability
    read_latency = google_monitoring_slo.read_latency
    freshness    = google_monitoring_slo.freshness
  }
}

resource "google_monitoring_alert_policy" "slo_burn_rate" {
  for_each = local.slos

  project               = var.project_id
  display_name          = "${var.service_name} (${var.environment}): ${each.value.display_name} — error budget burning"
  combiner              = "OR"
  notification_channels = var.notification_channels

  dynamic "conditions" {
    for_each = local.burn_rate_windows
    content {
      display_name = "Burn rate over ${conditions.value.threshold}x for ${conditions.value.lookback} (${conditions.key})"
      condition_threshold {
        filter          = "select_slo_burn_rate(\"${each.value.name}\", \"${conditions.value.lookback}\")"
        comparison      = "COMPARISON_GT"
        threshold_value = conditions.value.threshold
        duration        = "0s"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "SLO `${each.value.slo_id}` of ${var.service_name} in ${var.environment} is spending its error budget faster than it can afford. See the `${var.service_name}` dashboard. Runbook: docs/operations.md#slo-burn-${each.key}"
  }
}
