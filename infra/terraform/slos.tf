# The cell's service in Cloud Monitoring's service monitoring: every system's SLOs are
# its (modules/system/slos.tf), two a system, and its reads' two, within the 500 a
# service holds (https://cloud.google.com/stackdriver/docs/solutions/slo-monitoring/ui/create-slo;
# cell_max_systems is bounded by it). One service a cell, where one a system made a
# thousand. Made after the metric descriptors its SLOs name (metrics.tf).
resource "google_monitoring_custom_service" "cell" {
  project      = var.project_id
  service_id   = local.cell
  display_name = "${local.cell} (${var.environment}): ${length(local.systems)} systems"

  depends_on = [module.metrics]
}

# Its reads' SLOs: good/total ratios of recordline.slo.events under the cell's own
# namespace, where each instance counts every system's reads (app/telemetry/reads.py):
# `availability`, each read answered (good="false" for a 5xx); `read_latency`, each
# read that does not wait for rows, good within RECORDLINE_SLO_READ_LATENCY_SECONDS.
# Counted per system, every instance wrote a series of each system's: the cell's
# telemetry grew with its instances times its systems (infra/fleet_cost.py).
locals {
  cell_slos_by_key = {
    reads-availability = {
      slo   = "availability"
      goal  = var.availability_goal
      title = "${format("%g", var.availability_goal * 100)}% of reads answered without a 5xx"
    }
    read-latency = {
      slo   = "read_latency"
      goal  = var.read_latency_goal
      title = "${format("%g", var.read_latency_goal * 100)}% of reads answered within ${var.read_latency_threshold_seconds} s"
    }
  }

  # What the service holds: two a system, and the cell's (limits.tf).
  cell_slos = 2 * length(local.systems) + length(local.cell_slos_by_key)
}

locals {
  cell_slo_events = "metric.type=\"${module.metrics.types["slo.events"]}\" resource.type=\"generic_task\" resource.label.\"namespace\"=\"${local.cell}\""
}

resource "google_monitoring_slo" "cell" {
  for_each = local.cell_slos_by_key

  project             = var.project_id
  service             = google_monitoring_custom_service.cell.service_id
  slo_id              = "${local.cell}-${each.key}"
  display_name        = "${local.cell}: ${each.value.title}"
  goal                = each.value.goal
  rolling_period_days = var.slo_rolling_period_days

  request_based_sli {
    good_total_ratio {
      total_service_filter = "${local.cell_slo_events} metric.label.\"slo\"=\"${each.value.slo}\""
      good_service_filter  = "${local.cell_slo_events} metric.label.\"slo\"=\"${each.value.slo}\" metric.label.\"good\"=\"true\""
    }
  }
}
