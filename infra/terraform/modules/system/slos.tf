# This system's service level objectives, each a good/total ratio counted once, by one
# writer, whatever the instances of its cell:
# - `availability`, each push of its push subscription answered (ack, or a 4xx: a push
#   the service refused is an answer), from Pub/Sub's own count of them,
#   subscription/push_request_count by `response_class`
#   (https://cloud.google.com/pubsub/docs/push-troubleshooting): it sees what the
#   service cannot (a push unanswered within the deadline, Cloud Run's own 5xx) and,
#   a Google Cloud metric, is not billed (https://cloud.google.com/stackdriver/pricing).
# - `freshness`, each stored message (good when stored within
#   RECORDLINE_SLO_FRESHNESS_SECONDS of its publish time): the cell's SLO counter
#   recordline.slo.events (CUMULATIVE INT64, labels `slo` and `good`) under the
#   system's namespace, counted by the exporter instance holding its lease as each
#   row is exported (infra/fleet_cost.py).
# Its reads' SLOs are its cell's (root slos.tf): every instance serves every system's
# reads. The SLOs are the cell's service's: a service holds 500
# (https://cloud.google.com/stackdriver/docs/solutions/slo-monitoring/ui/create-slo).
# Their burn-rate alerts are PromQL on the same counts (modules/symptoms: the fleet's
# pages and the systems' tickets).

locals {
  slo_events = "metric.type=\"${var.metric_types["slo.events"]}\" resource.type=\"generic_task\" resource.label.\"namespace\"=\"${var.service_name}\""
  pushes     = "metric.type=\"pubsub.googleapis.com/subscription/push_request_count\" resource.type=\"pubsub_subscription\" resource.label.\"subscription_id\"=\"${google_pubsub_subscription.push.name}\""

  slos = {
    availability = {
      title = "${format("%g", var.availability_goal * 100)}% of pushes answered without a 5xx or a timeout"
      goal  = var.availability_goal
      total = local.pushes
      good  = "${local.pushes} metric.label.\"response_class\"=one_of(\"ack\", \"remote_server_4xx\")"
    }
    freshness = {
      title = "${format("%g", var.freshness_goal * 100)}% of messages stored within ${var.freshness_threshold_seconds} s of publish"
      goal  = var.freshness_goal
      total = "${local.slo_events} metric.label.\"slo\"=\"freshness\""
      good  = "${local.slo_events} metric.label.\"slo\"=\"freshness\" metric.label.\"good\"=\"true\""
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
      total_service_filter = each.value.total
      good_service_filter  = each.value.good
    }
  }
}
