# One screen for every system in the project, worst first: each chart draws one line per
# system and keeps the ten worst (pickTimeSeriesFilter), so among fifty systems the ones
# in trouble are the ones on screen. A text tile links each system's own dashboard.
# (docs/operations.md#from-one-system-to-fifty)

locals {
  # The project's application metrics as they arrive: every system's series, each with
  # its name as generic_task's `namespace` label (RECORDLINE_SYSTEM).
  fleet_metric = {
    for name, d in google_monitoring_metric_descriptor.workload :
    name => "metric.type=\"${d.type}\" resource.type=\"generic_task\""
  }
  # The read routes, as each system's read-latency SLO counts them (modules/system/slos.tf).
  fleet_read_routes  = "metric.label.\"route\"=one_of(\"/v1/records\",\"/v1/records/{record_id}\",\"/v1/messages/{message_id}\")"
  fleet_system_names = sort(keys(local.systems))
  fleet_run_services = join(" OR ", [for s in local.fleet_system_names : "resource.label.\"service_name\"=\"${s}\""])
  fleet_push_subs    = join(" OR ", [for s in local.fleet_system_names : "resource.label.\"subscription_id\"=\"${s}-push\""])

  # [title, filter, aligner, reducer, group by (the system's label), worst is TOP or BOTTOM]
  fleet_charts = [
    ["Ingest lag p99 by system (s)", local.fleet_metric["ingest.lag"], "ALIGN_DELTA", "REDUCE_PERCENTILE_99", "resource.label.\"namespace\""],
    ["Read query time p95 by system (s)", "${local.fleet_metric["query.duration"]} ${local.fleet_read_routes}", "ALIGN_DELTA", "REDUCE_PERCENTILE_95", "resource.label.\"namespace\""],
    ["5xx answers by system (per s)", "metric.type=\"run.googleapis.com/request_count\" resource.type=\"cloud_run_revision\" metric.label.\"response_code_class\"=\"5xx\" (${local.fleet_run_services})", "ALIGN_RATE", "REDUCE_SUM", "resource.label.\"service_name\""],
    ["Oldest unacknowledged message by system (s)", "metric.type=\"pubsub.googleapis.com/subscription/oldest_unacked_message_age\" resource.type=\"pubsub_subscription\" (${local.fleet_push_subs})", "ALIGN_MAX", "REDUCE_MAX", "resource.label.\"subscription_id\""],
    ["Dead letters by system", "metric.type=\"pubsub.googleapis.com/subscription/dead_letter_message_count\" resource.type=\"pubsub_subscription\" (${local.fleet_push_subs})", "ALIGN_DELTA", "REDUCE_SUM", "resource.label.\"subscription_id\""],
    ["Canary age by system (s)", local.fleet_metric["canary.age"], "ALIGN_MIN", "REDUCE_MIN", "resource.label.\"namespace\""],
  ]

  fleet_links = join("\n", [
    for name in local.fleet_system_names :
    "- [${name}](https://console.cloud.google.com/monitoring/dashboards/custom/${element(split("/", module.system[name].dashboard), 3)}?project=${var.project_id})"
  ])
}

resource "google_monitoring_dashboard" "fleet" {
  project = var.project_id

  dashboard_json = jsonencode({
    displayName = "Recordline fleet (${var.environment}): ${length(local.systems)} systems, worst first"
    mosaicLayout = {
      columns = 12
      tiles = concat(
        [
          for i, chart in local.fleet_charts : merge(
            { for axis, at in { xPos = (i % 2) * 6, yPos = floor(i / 2) * 4 } : axis => at if at != 0 },
            {
              width  = 6
              height = 4
              widget = {
                title = chart[0]
                xyChart = {
                  dataSets = [{
                    plotType       = "LINE"
                    legendTemplate = "$${resource.labels.${trimsuffix(trimprefix(chart[4], "resource.label.\""), "\"")}}"
                    timeSeriesQuery = {
                      timeSeriesFilter = {
                        filter = chart[1]
                        aggregation = {
                          alignmentPeriod    = "60s"
                          perSeriesAligner   = chart[2]
                          crossSeriesReducer = chart[3]
                          groupByFields      = [chart[4]]
                        }
                        pickTimeSeriesFilter = {
                          rankingMethod = "METHOD_MAX"
                          numTimeSeries = 10
                          direction     = "TOP"
                        }
                      }
                    }
                  }]
                }
              }
          })
        ],
        [{
          yPos   = ceil(length(local.fleet_charts) / 2) * 4
          width  = 12
          height = 4
          widget = {
            title = "Each system's own dashboard"
            text  = { format = "MARKDOWN", content = local.fleet_links }
          }
        }]
      )
    }
  })
}

# One page for one outage. Each system's own policies (modules/system) notify that
# system's channels (systems[*].notification_channels), its owners; when the same signal
# goes bad in several systems at once (a region, BigQuery, a bad release), this policy
# opens one incident for all of them on the fleet's channels instead of a page per system.
# With one system the count cannot reach fleet_outage_systems (at least 2): it never fires.
resource "google_monitoring_alert_policy" "fleet_canaries_stale" {
  project               = var.project_id
  display_name          = "Recordline fleet (${var.environment}): canaries stale in ${var.fleet_outage_systems} or more systems"
  combiner              = "OR"
  notification_channels = var.notification_channels

  conditions {
    display_name = "systems whose newest canary is older than ${var.canary_age_threshold_seconds} s >= ${var.fleet_outage_systems}"
    condition_prometheus_query_language {
      query               = "count(min by (namespace) (workload_googleapis_com:recordline_canary_age{monitored_resource=\"generic_task\"}) > ${var.canary_age_threshold_seconds}) >= ${var.fleet_outage_systems}"
      duration            = "120s"
      evaluation_interval = "60s"
    }
  }

  alert_strategy {
    auto_close = "1800s"
  }

  documentation {
    mime_type = "text/markdown"
    content   = "The canary is stale in several systems at once: one cause, shared. Runbook: docs/operations.md#fleet-canaries-stale-in-several-systems"
  }

  depends_on = [google_monitoring_metric_descriptor.workload]
}
