# This system's service level objectives: good/total ratios of the cell's SLO counter
# recordline.slo.events (CUMULATIVE INT64, labels `slo` and `good`), which the cell
# writes per system (namespace = the system): `availability`, each push and read
# answered (good="false" for a 5xx); `read_latency`, each user read (good when answered
# within RECORDLINE_SLO_READ_LATENCY_SECONDS); `freshness`, each stored message (good
# when stored within RECORDLINE_SLO_FRESHNESS_SECONDS of its publish time). A counter of
# a few series a system, where a distribution a system cost 80 bytes a point
# (infra/fleet_cost.py). The SLOs are the cell's service's (root slos.tf): a service
# holds 500 (https://cloud.google.com/stackdriver/docs/solutions/slo-monitoring/ui/create-slo),
# and a cell at most a hundred systems of three. Their burn-rate alerts are PromQL on the
# same counter (modules/symptoms: the fleet's pages and the systems' tickets).

locals {
  slo_events = "metric.type=\"${var.metric_types["slo.events"]}\" resource.type=\"generic_task\" resource.label.\"namespace\"=\"${var.service_name}\""

  slos = {
    availability = {
      slo   = "availability"
      goal  = var.availability_goal
      title = "${format("%g", var.availability_goal * 100)}% of pushes and reads answered without a 5xx"
    }
    read-latency = {
      slo   = "read_latency"
      goal  = var.read_latency_goal
      title = "${format("%g", var.read_latency_goal * 100)}% of reads answered within ${var.read_latency_threshold_seconds} s"
    }
    freshness = {
      slo   = "freshness"
      goal  = var.freshness_goal
      title = "${format("%g", var.freshness_goal * 100)}% of messages stored within ${var.freshness_threshold_seconds} s of publish"
    }
  }
}

resource "google_monitoring_slo" "system" {
  for_each = local.slos

  project             = var.project_id
  service             = var.cell.slo_service
  slo_id              = "${var.service_name}-${each.key}"
  display_name        = "${var.service_name}: ${each.value.title}"
  goal                = each.value.goal
  rolling_period_days = var.slo_rolling_period_days

  request_based_sli {
    good_total_ratio {
      total_service_filter = "${local.slo_events} metric.label.\"slo\"=\"${each.value.slo}\""
      good_service_filter  = "${local.slo_events} metric.label.\"slo\"=\"${each.value.slo}\" metric.label.\"good\"=\"true\""
    }
  }
}
