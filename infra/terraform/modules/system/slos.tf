# Service level objectives: the error budget each system reports in Cloud Monitoring.
# Their burn-rate alerts are PromQL on the same events (modules/symptoms: the fleet's
# pages and this system's tickets), so each can demand a minimum number of events.
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

  # What readers wait for: recordline.read.duration, from request to response, on the
  # routes users read through (READ_ROUTES in app/telemetry/store.py, a test keeps
  # both equal; not /v1/rejections, an operator's listing), uptime probes, the deploy
  # smoke test and reads of the canary left out by the service (app/telemetry/reads.py).
  read_routes   = ["/v1/records", "/v1/records/{record_id}", "/v1/messages/{message_id}"]
  read_duration = "${local.workload_metric["read.duration"]} metric.label.\"route\"=one_of(${join(",", [for r in local.read_routes : "\"${r}\""])})"
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
  display_name        = "${format("%g", var.read_latency_goal * 100)}% of reads answered within ${var.read_latency_threshold_seconds} s"
  goal                = var.read_latency_goal
  rolling_period_days = var.slo_rolling_period_days

  # Cloud Run's request_latencies has no route: it counts every push too, and pushes
  # outnumber reads by orders of magnitude, so slow reads would never spend the budget.
  # The threshold is a bucket boundary of recordline.read.duration (variables.tf), so
  # the cut is exact.
  request_based_sli {
    distribution_cut {
      distribution_filter = local.read_duration
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

