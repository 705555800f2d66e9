# The read path probed from outside: every five minutes, from three regions, Cloud
# Monitoring reads GET /v1/records with the read authentication any reader uses (an ID
# token of its service agent, which Cloud Run's invoker check and the service's
# principals admit: iam.tf, locals.tf). The canary alerts say whether records arrive;
# this says whether they can be read.
#
# Its token's audience is https://HOST, HOST being the host it probes: the service's
# deterministic URL, which the service accepts as a read audience (locals.tf). Probing
# Cloud Run's other URL (google_cloud_run_v2_service.uri) would mint a token for an
# audience the service refuses.
#
# What it reads costs the 10 MiB minimum, however much is stored: a bounded page of
# records in a second of 2000-01-01, which prunes to one empty partition (a look-up of
# the canary bills the write-optimized tail of the table: ~870 MiB at 1,000 msg/s).
# One checker per region: USA alone is a checker in each of Oregon, Iowa and Virginia,
# each probing and each billed (UptimeCheckRegion,
# https://cloud.google.com/monitoring/api/ref_v3/rest/v3/projects.uptimeCheckConfigs#uptimecheckregion),
# so the American one is Virginia's. Three is the fewest regions a check may have.
# 3 checkers x 288 probes a day x 10 MiB = 8.4 GiB a day, about $0.05 on demand.
locals {
  probe_host    = trimprefix(local.service_url, "https://")
  probe_path    = "/v1/records?since=2000-01-01T00:00:00Z&until=2000-01-01T00:00:01Z&limit=1"
  probe_matches = "{\"records\":[],\"next_page_token\":null,"
}

resource "google_monitoring_uptime_check_config" "read_path" {
  project      = var.project_id
  display_name = "${var.service_name} (${var.environment}): records readable through /v1/records"
  timeout      = "10s"
  period       = "300s"

  selected_regions = ["EUROPE", "USA_VIRGINIA", "ASIA_PACIFIC"]

  # Which system's probe this is, in the console's list of uptime checks.
  user_labels = {
    recordline-system = var.service_name
  }

  http_check {
    path           = local.probe_path
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
    content = local.probe_matches
    matcher = "CONTAINS_STRING"
  }

  monitored_resource {
    type = "uptime_url"
    labels = {
      project_id = var.project_id
      host       = local.probe_host
    }
  }
}

# Cloud Run's invoker check comes first: the probe's account may invoke this service.
# The read_path page and ticket watch its results (modules/symptoms, alerts.tf).
resource "google_cloud_run_v2_service_iam_member" "uptime_invoker" {
  project  = var.project_id
  location = google_cloud_run_v2_service.recordline.location
  name     = google_cloud_run_v2_service.recordline.name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${local.monitoring_service_agent}"
}
