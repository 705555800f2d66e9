# The read path probed from outside: every five minutes, from three regions, Cloud
# Monitoring reads the canary record back through GET /v1/records/recordline-canary with
# the read authentication any reader uses (an ID token of its service agent, which
# Cloud Run's invoker check and the service's principals admit: iam.tf, locals.tf). The
# canary alerts say whether records arrive; this one says whether they can be read.
resource "google_monitoring_uptime_check_config" "canary_read" {
  project      = var.project_id
  display_name = "${var.service_name} (${var.environment}): canary read back through /v1/records"
  timeout      = "10s"
  period       = "300s"

  selected_regions = ["EUROPE", "USA", "ASIA_PACIFIC"]

  http_check {
    path           = "/v1/records/${local.canary_attribute}"
    port           = 443
    use_ssl        = true
    validate_ssl   = true
    request_method = "GET"

    service_agent_authentication {
      type = "OIDC_TOKEN"
    }

    accepted_response_status_codes {
      status_value = 200
    }
  }

  content_matchers {
    content = "\"id\":\"${local.canary_attribute}\""
    matcher = "CONTAINS_STRING"
  }

  monitored_resource {
    type = "uptime_url"
    labels = {
      project_id = var.project_id
      host       = trimprefix(google_cloud_run_v2_service.recordline.uri, "https://")
    }
  }
}

# Cloud Run's invoker check comes first: the probe's account may invoke this service.
resource "google_cloud_run_v2_service_iam_member" "uptime_invoker" {
  project  = var.project_id
  location = google_cloud_run_v2_service.recordline.location
  name     = google_cloud_run_v2_service.recordline.name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${local.monitoring_service_agent}"
}

resource "google_monitoring_alert_policy" "canary_unreadable" {
  project               = var.project_id
  display_name          = "${var.service_name} (${var.environment}): canary not readable through /v1/records"
  combiner              = "OR"
  notification_channels = var.notification_channels

  conditions {
    display_name = "uptime check failing in 2 or more regions"
    condition_threshold {
      filter          = "metric.type=\"monitoring.googleapis.com/uptime_check/check_passed\" resource.type=\"uptime_url\" metric.label.\"check_id\"=\"${google_monitoring_uptime_check_config.canary_read.uptime_check_id}\""
      comparison      = "COMPARISON_GT"
      threshold_value = 1
      duration        = "600s"
      aggregations {
        alignment_period     = "1200s"
        per_series_aligner   = "ALIGN_NEXT_OLDER"
        cross_series_reducer = "REDUCE_COUNT_FALSE"
        group_by_fields      = ["resource.label.host"]
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "Cloud Monitoring cannot read the canary back through `GET /v1/records/${local.canary_attribute}`. Runbook: docs/operations.md#canary-not-readable"
  }
}
