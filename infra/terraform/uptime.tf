# The cell probed from outside: every five minutes, from three regions, Cloud Monitoring
# asks the cell's /readyz with an ID token of its service agent (an invoker: cell.tf).
# /readyz is 503 only when the cell cannot serve (every system down, or the cell's own
# dependencies); each system inside is probed by the cell itself, its canary's age read
# from its own store every minute and reported as that system's recordline.canary.age
# (docs/operations.md#canary-stale), which the canary alerts watch. One check a cell, where one a system made
# the uptime checks a tenth of a system's bill (three checkers, each execution billed
# past the first million a month, and a BigQuery query each: infra/fleet_cost.py).
#
# Its token's audience is https://HOST, HOST being the host it probes: the cell's
# deterministic URL, which the service accepts as a read audience (cell.tf).
#
# One checker per region: USA alone is a checker in each of Oregon, Iowa and Virginia,
# each probing and each billed (UptimeCheckRegion,
# https://cloud.google.com/monitoring/api/ref_v3/rest/v3/projects.uptimeCheckConfigs#uptimecheckregion),
# so the American one is Virginia's. Three is the fewest regions a check may have.
resource "google_monitoring_uptime_check_config" "cell" {
  project      = var.project_id
  display_name = "${local.cell} (${var.environment}): the cell answers /readyz"
  timeout      = "10s"
  period       = "300s"

  selected_regions = ["EUROPE", "USA_VIRGINIA", "ASIA_PACIFIC"]

  # Which cell's probe this is, in the console's list of uptime checks.
  user_labels = {
    recordline-cell = local.cell
  }

  http_check {
    path           = "/readyz"
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

  monitored_resource {
    type = "uptime_url"
    labels = {
      project_id = var.project_id
      host       = trimprefix(local.cell_url, "https://")
    }
  }

  depends_on = [google_project_service.enabled]
}
