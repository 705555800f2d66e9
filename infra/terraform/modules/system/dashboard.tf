locals {
  # One chart per seed metric; each data set is [legend, filter, aligner, reducer, group_by].
  dashboard_charts = [
    {
      title = "Ingest lag, publish to stored (s)"
      sets = [
        for p in ["50", "95", "99"] :
        ["p${p}", local.workload_metric["ingest.lag"], "ALIGN_DELTA", "REDUCE_PERCENTILE_${p}", []]
      ]
    },
    {
      title = "API latency, as callers see it (ms)"
      sets = [
        for p in ["50", "95", "99"] :
        ["p${p}", local.request_latencies, "ALIGN_DELTA", "REDUCE_PERCENTILE_${p}", []]
      ]
    },
    {
      title = "Read time by route, p95: what readers wait for (s)"
      sets = [
        ["$${metric.labels.route}", local.workload_metric["read.duration"], "ALIGN_DELTA", "REDUCE_PERCENTILE_95", ["metric.label.\"route\""]],
      ]
    },
    {
      title = "Query time by route, p95 (s)"
      sets = [
        ["$${metric.labels.route}", local.workload_metric["query.duration"], "ALIGN_DELTA", "REDUCE_PERCENTILE_95", ["metric.label.\"route\""]],
      ]
    },
    {
      title = "BigQuery bytes billed by route (per s)"
      sets = [
        ["$${metric.labels.route}", local.workload_metric["query.bytes_billed"], "ALIGN_RATE", "REDUCE_SUM", ["metric.label.\"route\""]],
      ]
    },
    {
      title = "Messages by outcome (per s)"
      sets = [
        ["$${metric.labels.outcome}", local.workload_metric["messages"], "ALIGN_RATE", "REDUCE_SUM", ["metric.label.\"outcome\""]],
      ]
    },
    {
      title = "Rows per append"
      sets = [
        for p in ["50", "95"] :
        ["p${p}", local.workload_metric["append.rows"], "ALIGN_DELTA", "REDUCE_PERCENTILE_${p}", []]
      ]
    },
    {
      title = "Append duration (s)"
      sets = [
        for p in ["50", "95", "99"] :
        ["p${p}", local.workload_metric["append.duration"], "ALIGN_DELTA", "REDUCE_PERCENTILE_${p}", []]
      ]
    },
    {
      title = "Requests by response class (per s)"
      sets = [
        ["$${metric.labels.response_code_class}", local.request_count, "ALIGN_RATE", "REDUCE_SUM", ["metric.label.\"response_code_class\""]],
      ]
    },
    {
      title = "Rejected, retried, refused and conflicting messages (per s)"
      sets = [
        ["$${metric.labels.outcome} $${metric.labels.reason}", "${local.workload_metric["messages"]} metric.label.\"outcome\"!=\"stored\"", "ALIGN_RATE", "REDUCE_SUM", ["metric.label.\"outcome\"", "metric.label.\"reason\""]],
        ["conflict $${metric.labels.reason}", local.workload_metric["conflicts"], "ALIGN_RATE", "REDUCE_SUM", ["metric.label.\"reason\""]],
      ]
    },
    {
      title = "Rows waiting in the batcher queue"
      sets = [
        ["rows", local.workload_metric["queue.depth"], "ALIGN_MAX", "REDUCE_SUM", []],
      ]
    },
    {
      title = "Oldest unacknowledged message (s) and dead letters"
      sets = [
        ["oldest unacked", "metric.type=\"pubsub.googleapis.com/subscription/oldest_unacked_message_age\" ${local.push_subscription}", "ALIGN_MAX", "REDUCE_MAX", []],
        ["dead letters", "metric.type=\"pubsub.googleapis.com/subscription/dead_letter_message_count\" ${local.push_subscription}", "ALIGN_DELTA", "REDUCE_SUM", []],
      ]
    },
    {
      title = "Canary age (s)"
      sets = [
        ["newest canary stored", local.workload_metric["canary.age"], "ALIGN_MIN", "REDUCE_MIN", []],
      ]
    },
  ]
}

locals {
  # With `serving` (spanner.tf): the instance it shares with the other serving systems,
  # and what Spanner does for this system's database. CPU utilization is a fraction of
  # the instance (1 = 100%); the ticket fires on its high priority (root spanner.tf).
  spanner_instance = var.serving != null ? var.serving.instance : ""
  spanner_metric   = "resource.type=\"spanner_instance\" resource.label.\"instance_id\"=\"${local.spanner_instance}\""
  serving_charts = [
    {
      title = "Spanner CPU by priority: the instance, and this database's high (1 = 100%)"
      sets = [
        ["instance, $${metric.labels.priority}", "metric.type=\"spanner.googleapis.com/instance/cpu/utilization_by_priority\" ${local.spanner_metric}", "ALIGN_MEAN", "REDUCE_SUM", ["metric.label.\"priority\""]],
        ["${var.service_name}, high", "metric.type=\"spanner.googleapis.com/instance/cpu/utilization_by_priority\" ${local.spanner_metric} metric.label.\"database\"=\"${var.service_name}\" metric.label.\"priority\"=\"high\"", "ALIGN_MEAN", "REDUCE_SUM", []],
      ]
    },
    {
      title = "Spanner request latency by method, p95 (s)"
      sets = [
        ["$${metric.labels.method}", "metric.type=\"spanner.googleapis.com/api/request_latencies\" ${local.spanner_metric} metric.label.\"database\"=\"${var.service_name}\"", "ALIGN_DELTA", "REDUCE_PERCENTILE_95", ["metric.label.\"method\""]],
      ]
    },
    # The exporter (app/store/spanner/export.py): how far behind now BigQuery is, per
    # table. Every instance reports the watermark it last read from Spanner (every 5 s),
    # so they agree within seconds; the line is the highest any of them reports.
    {
      title = "Export to BigQuery: lag behind now by table (s)"
      sets = [
        ["$${metric.labels.table}", local.workload_metric["export.lag"], "ALIGN_MAX", "REDUCE_MAX", ["metric.label.\"table\""]],
      ]
    },
    {
      title = "Export to BigQuery: rows exported (per s) and tables blocked (1)"
      sets = [
        ["$${metric.labels.table}", local.workload_metric["export.rows"], "ALIGN_RATE", "REDUCE_SUM", ["metric.label.\"table\""]],
        ["blocked $${metric.labels.table}", local.workload_metric["export.blocked"], "ALIGN_MAX", "REDUCE_MAX", ["metric.label.\"table\""]],
      ]
    },
  ]

  # The dashboard's charts: the serving tier's after the rest, only where it runs.
  charts = concat(local.dashboard_charts, var.serving != null ? local.serving_charts : [])
}

locals {
  # Two tiles a row, 6 columns wide and 4 high. The API drops a position of 0 from the
  # stored JSON (it is the default), so writing one would show as a change on every
  # plan: only the non-zero ones are set.
  dashboard_tile_positions = [
    for i in range(length(local.charts)) : {
      for axis, at in { xPos = (i % 2) * 6, yPos = floor(i / 2) * 4 } : axis => at if at != 0
    }
  ]
}

resource "google_monitoring_dashboard" "recordline" {
  project = var.project_id

  dashboard_json = jsonencode({
    displayName = "${var.service_name} (${var.environment})"
    mosaicLayout = {
      columns = 12
      tiles = [
        for i, chart in local.charts : merge(
          local.dashboard_tile_positions[i],
          {
            width  = 6
            height = 4
            widget = {
              title = chart.title
              xyChart = {
                dataSets = [
                  for s in chart.sets : {
                    plotType       = "LINE"
                    legendTemplate = s[0]
                    timeSeriesQuery = {
                      timeSeriesFilter = {
                        filter = s[1]
                        aggregation = {
                          alignmentPeriod    = "60s"
                          perSeriesAligner   = s[2]
                          crossSeriesReducer = s[3]
                          groupByFields      = s[4]
                        }
                      }
                    }
                  }
                ]
              }
            }
        })
      ]
    }
  })
}
