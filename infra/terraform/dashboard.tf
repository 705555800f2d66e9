# The cell's dashboard: what its ingest service and exporter pool do, and its systems
# ten worst first. The distributions are the cell's (namespace = the cell); a
# system's series are counters and gauges under its own name, written by the cell's
# service (its resource's `job`, OTEL_SERVICE_NAME, is the cell) or its exporter pool
# (`<cell>-exporter`), which is how these charts keep to the cell's systems without
# naming them. The fleet's dashboard has every system (environment/fleet.tf).

locals {
  # The metrics' types (modules/metrics), in a block of their own: every local below is
  # then known offline.
  metric_types = module.metrics.types
}

locals {
  # The cell's own series, and its systems' (by the writer's job).
  cell_metric = {
    for name, type in local.metric_types :
    name => "metric.type=\"${type}\" resource.type=\"generic_task\" resource.label.\"namespace\"=\"${local.cell}\""
  }
  systems_metric = {
    for name, type in local.metric_types :
    name => "metric.type=\"${type}\" resource.type=\"generic_task\" resource.label.\"job\"=\"${local.cell}\""
  }
  exported_metric = {
    for name, type in local.metric_types :
    name => "metric.type=\"${type}\" resource.type=\"generic_task\" resource.label.\"job\"=\"${local.cell}-exporter\""
  }
  # A system's series from either writer: what its store holds is counted by the pool
  # (stored and rejected, the canary), what only a push sees by the service.
  written_metric = {
    for name, type in local.metric_types :
    name => "metric.type=\"${type}\" resource.type=\"generic_task\" resource.label.\"job\"=one_of(\"${local.cell}\", \"${local.cell}-exporter\")"
  }
  # Each system's pushes as Pub/Sub answered them (free: a Google Cloud metric), its
  # push subscription's; those of the project, which a cell's systems are.
  pushes        = "metric.type=\"pubsub.googleapis.com/subscription/push_request_count\" resource.type=\"pubsub_subscription\" resource.label.\"subscription_id\"=ends_with(\"-push\")"
  cell_requests = "resource.type=\"cloud_run_revision\" resource.label.\"service_name\"=\"${local.cell}\""
  spanner_of_cell = join(" OR ", [
    for instance in sort(tolist(local.spanner_instances)) : "resource.label.\"instance_id\"=\"${instance}\""
  ])

  # One chart per tile; each data set is [legend, filter, aligner, reducer, group_by,
  # the ten worst (a system's chart) or all].
  cell_charts = concat(
    [
      {
        title = "Ingest lag, publish to stored (s)"
        sets  = [for p in ["50", "95", "99"] : ["p${p}", local.cell_metric["ingest.lag"], "ALIGN_DELTA", "REDUCE_PERCENTILE_${p}", [], false]]
      },
      {
        title = "Requests by response class (per s)"
        sets  = [["$${metric.labels.response_code_class}", "metric.type=\"run.googleapis.com/request_count\" ${local.cell_requests}", "ALIGN_RATE", "REDUCE_SUM", ["metric.label.\"response_code_class\""], false]]
      },
      {
        title = "Read time by route, p95: what readers wait for (s)"
        sets  = [["$${metric.labels.route}", local.cell_metric["read.duration"], "ALIGN_DELTA", "REDUCE_PERCENTILE_95", ["metric.label.\"route\""], false]]
      },
      {
        title = "Query time by route, p95 (s)"
        sets  = [["$${metric.labels.route}", local.cell_metric["query.duration"], "ALIGN_DELTA", "REDUCE_PERCENTILE_95", ["metric.label.\"route\""], false]]
      },
      {
        title = "Append duration (s) and rows per append"
        sets = concat(
          [for p in ["50", "99"] : ["duration p${p}", local.cell_metric["append.duration"], "ALIGN_DELTA", "REDUCE_PERCENTILE_${p}", [], false]],
          [["rows p95", local.cell_metric["append.rows"], "ALIGN_DELTA", "REDUCE_PERCENTILE_95", [], false]],
        )
      },
      {
        title = "Rows waiting in the batcher queue, and followers"
        sets = [
          ["rows", local.cell_metric["queue.depth"], "ALIGN_MAX", "REDUCE_SUM", [], false],
          ["followers", local.cell_metric["followers"], "ALIGN_MAX", "REDUCE_SUM", [], false],
        ]
      },
      {
        title = "Messages not stored as sent (per s): rejected by system, retried, refused and duplicate the cell's, ten worst"
        sets  = [["$${resource.labels.namespace} $${metric.labels.outcome}", "${local.written_metric["messages"]} metric.label.\"outcome\"!=\"stored\"", "ALIGN_RATE", "REDUCE_SUM", ["resource.label.\"namespace\"", "metric.label.\"outcome\""], true]]
      },
      {
        title = "Pushes not acknowledged, by system and response class (per s), ten worst"
        sets  = [["$${resource.labels.subscription_id} $${metric.labels.response_class}", "${local.pushes} metric.label.\"response_class\"!=\"ack\"", "ALIGN_RATE", "REDUCE_SUM", ["resource.label.\"subscription_id\"", "metric.label.\"response_class\""], true]]
      },
      {
        title = "Reads answered 5xx, every system's (per s)"
        sets  = [["5xx", "${local.cell_metric["slo.events"]} metric.label.\"slo\"=\"availability\" metric.label.\"good\"=\"false\"", "ALIGN_RATE", "REDUCE_SUM", [], false]]
      },
      {
        title = "Canary age by system (s), ten worst"
        sets  = [["$${resource.labels.namespace}", local.written_metric["canary.age"], "ALIGN_MIN", "REDUCE_MIN", ["resource.label.\"namespace\""], true]]
      },
      {
        title = "BigQuery bytes billed by route (per s)"
        sets  = [["$${metric.labels.route}", local.cell_metric["query.bytes_billed"], "ALIGN_RATE", "REDUCE_SUM", ["metric.label.\"route\""], false]]
      },
    ],
    # The exporter pool and the serving instances, only where a system has `serving`.
    [for chart in [
      {
        title = "Export to BigQuery: lag behind now by system, its furthest-behind table (s), ten worst"
        sets  = [["$${resource.labels.namespace}", local.exported_metric["export.lag"], "ALIGN_MAX", "REDUCE_MAX", ["resource.label.\"namespace\""], true]]
      },
      {
        title = "Export to BigQuery: rows exported (per s) and tables blocked (1)"
        sets = [
          ["rows", local.exported_metric["export.rows"], "ALIGN_RATE", "REDUCE_SUM", [], false],
          ["blocked $${resource.labels.namespace}", local.exported_metric["export.blocked"], "ALIGN_MAX", "REDUCE_MAX", ["resource.label.\"namespace\""], true],
        ]
      },
      {
        title = "Spanner CPU by instance and priority (1 = 100%)"
        sets  = [["$${resource.labels.instance_id} $${metric.labels.priority}", "metric.type=\"spanner.googleapis.com/instance/cpu/utilization_by_priority\" resource.type=\"spanner_instance\" (${local.spanner_of_cell})", "ALIGN_MEAN", "REDUCE_SUM", ["resource.label.\"instance_id\"", "metric.label.\"priority\""], false]]
      },
      {
        title = "Spanner storage by instance, of what its processing units allow (1 = 100%)"
        sets  = [["$${resource.labels.instance_id}", "metric.type=\"spanner.googleapis.com/instance/storage/utilization\" resource.type=\"spanner_instance\" (${local.spanner_of_cell})", "ALIGN_MAX", "REDUCE_MAX", ["resource.label.\"instance_id\""], false]]
      },
    ] : chart if length(local.serving_systems) > 0],
  )

  # Two tiles a row, 6 columns wide and 4 high. The API drops a position of 0 from the
  # stored JSON (it is the default), so writing one would show as a change on every
  # plan: only the non-zero ones are set.
  cell_tile_positions = [
    for i in range(length(local.cell_charts)) : {
      for axis, at in { xPos = (i % 2) * 6, yPos = floor(i / 2) * 4 } : axis => at if at != 0
    }
  ]
}

resource "google_monitoring_dashboard" "cell" {
  project = var.project_id

  dashboard_json = jsonencode({
    displayName = "${local.cell} (${var.environment})"
    mosaicLayout = {
      columns = 12
      tiles = [
        for i, chart in local.cell_charts : merge(
          local.cell_tile_positions[i],
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
                      timeSeriesFilter = merge(
                        {
                          filter = s[1]
                          aggregation = {
                            alignmentPeriod    = "60s"
                            perSeriesAligner   = s[2]
                            crossSeriesReducer = s[3]
                            groupByFields      = s[4]
                          }
                        },
                        s[5] ? { pickTimeSeriesFilter = { rankingMethod = "METHOD_MAX", numTimeSeries = 10, direction = "TOP" } } : {},
                      )
                    }
                  }
                ]
              }
            }
        })
      ]
    }
  })

  depends_on = [module.metrics]
}
