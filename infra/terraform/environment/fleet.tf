# One screen for every system of every cell, worst first: each chart draws one line per
# system (or cell) and keeps the ten worst (pickTimeSeriesFilter), so among a thousand
# systems the ones in trouble are the ones on screen; each cell's own dashboard has its
# distributions and its services (the cell root's dashboard.tf). Every cell's project is
# in this project's metrics scope (cells.tf).
# (docs/operations.md#cells-from-one-system-to-a-thousand)

locals {
  # The application's metrics as they arrive: every system's counters and every cell's
  # distributions, each with its name as generic_task's `namespace` label.
  fleet_metric = {
    for name, type in module.metrics.types :
    name => "metric.type=\"${type}\" resource.type=\"generic_task\""
  }
  fleet_push_subs = "resource.label.\"subscription_id\"=ends_with(\"-push\")"

  # [title, filter, aligner, reducer, group by (the system's or cell's label)]
  fleet_charts = [
    ["Pushes not acknowledged, by system (per s)", "metric.type=\"pubsub.googleapis.com/subscription/push_request_count\" resource.type=\"pubsub_subscription\" (${local.fleet_push_subs}) metric.label.\"response_class\"!=\"ack\"", "ALIGN_RATE", "REDUCE_SUM", "resource.label.\"subscription_id\""],
    ["Reads answered 5xx, by cell (per s)", "${local.fleet_metric["slo.events"]} metric.label.\"slo\"=\"availability\" metric.label.\"good\"=\"false\"", "ALIGN_RATE", "REDUCE_SUM", "resource.label.\"namespace\""],
    ["Reads slower than the SLO's bound, by cell (per s)", "${local.fleet_metric["slo.events"]} metric.label.\"slo\"=\"read_latency\" metric.label.\"good\"=\"false\"", "ALIGN_RATE", "REDUCE_SUM", "resource.label.\"namespace\""],
    ["Ingest lag p99 by cell (s)", local.fleet_metric["ingest.lag"], "ALIGN_DELTA", "REDUCE_PERCENTILE_99", "resource.label.\"namespace\""],
    ["Oldest unacknowledged message by system (s)", "metric.type=\"pubsub.googleapis.com/subscription/oldest_unacked_message_age\" resource.type=\"pubsub_subscription\" (${local.fleet_push_subs})", "ALIGN_MAX", "REDUCE_MAX", "resource.label.\"subscription_id\""],
    ["Dead letters by system", "metric.type=\"pubsub.googleapis.com/subscription/dead_letter_message_count\" resource.type=\"pubsub_subscription\" (${local.fleet_push_subs})", "ALIGN_DELTA", "REDUCE_SUM", "resource.label.\"subscription_id\""],
    ["Canary age by system (s)", local.fleet_metric["canary.age"], "ALIGN_MIN", "REDUCE_MIN", "resource.label.\"namespace\""],
    # Systems with `serving` only: their furthest-behind table, as the lease holder reports it.
    ["Export lag to BigQuery by system, its furthest-behind table (s)", local.fleet_metric["export.lag"], "ALIGN_MAX", "REDUCE_MAX", "resource.label.\"namespace\""],
    ["Spanner high-priority CPU by serving instance (1 = 100%)", "metric.type=\"spanner.googleapis.com/instance/cpu/utilization_by_priority\" resource.type=\"spanner_instance\" metric.label.\"priority\"=\"high\"", "ALIGN_MEAN", "REDUCE_SUM", "resource.label.\"instance_id\""],
  ]

  fleet_cells = join("\n", [
    for cell in sort(keys(local.cells)) :
    "- `${cell}`: ${length(local.cell_systems[cell])} systems, project `${local.cell_project[cell]}`, ${local.cell_region[cell]}; its dashboard is `${cell} (${var.environment})`"
  ])
}

resource "google_monitoring_dashboard" "fleet" {
  project = var.project_id

  dashboard_json = jsonencode({
    displayName = "Recordline fleet (${var.environment}): ${length(local.system_names)} systems in ${length(local.cells)} cells, worst first"
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
            title = "The cells"
            text  = { format = "MARKDOWN", content = local.fleet_cells }
          }
        }]
      )
    }
  })
}

# --- pages ---------------------------------------------------------------------

# One paging policy per symptom, for the whole fleet: each condition computes the
# symptom per system (or cell, or serving instance: modules/symptoms) and counts those
# that have it, so a shared outage (a region, BigQuery, a bad release) is one incident
# whatever the number of systems, and its value says how many. Which ones: each has its
# own ticket for the same symptom (tickets.tf), with its commands.

locals {
  # Multi-window burn rates (the SRE workbook's): the budget of a 28-day SLO gone in
  # about 2 days (14.4x over the last hour, still so over the last 5 minutes: a page),
  # or in about 5 days (6x over 6 hours and over the last 30 minutes: a ticket).
  burn_rates = {
    fast = { long = "1h", short = "5m", rate = 14.4 }
    slow = { long = "6h", short = "30m", rate = 6 }
  }

  # Where a system is, from its name alone: each cell writes its systems' project,
  # region, cell, services, jobs, instance, database, dataset and accounts to the state
  # bucket at each apply (the cell root's directory.tf), which on-call and the operator
  # account read (iam.tf). It sets PROJECT, REGION, CELL, SERVICE, URL, POOL, INSTANCE,
  # DATABASE, OPERATOR and the rest (docs/operations.md, "Where to look").
  directory = "FOUND=$(gcloud storage cat 'gs://${var.terraform_state_bucket}/directory/*.json' | jq -rs --arg s \"$SYSTEM\" 'add | .[$s] // error(\"no system \\($s) in the directory\") | to_entries[] | \"\\(.key | ascii_upcase)=\\(.value | @sh)\"') && eval \"$FOUND\""

  # The page counts the systems (one incident for a shared outage); this names them: the
  # page's own query through Cloud Monitoring's Prometheus HTTP API
  # (https://cloud.google.com/stackdriver/docs/managed-prometheus/query-api-ui), as
  # yourself (members of `oncall` read Cloud Monitoring: iam.tf). %s is the query.
  which_systems = "curl -sS -H \"Authorization: Bearer $(gcloud auth print-access-token)\" --data-urlencode 'query=%s' 'https://monitoring.googleapis.com/v1/projects/${var.project_id}/location/global/prometheus/api/v1/query' | jq -r '.data.result[].metric | .system // .cell // .instance_id'"
  page_commands = <<-EOT
    For each one the command above names (its tickets say the same), as a member of `oncall`: where it is, then what its cell serves (a cell serves every system in it):
    ```sh
    SYSTEM=recordline   # the system's name (for a cell: any system of it)
    ${local.directory}
    gcloud run services describe "$SERVICE" --project="$PROJECT" --region="$REGION" --impersonate-service-account="$OPERATOR" --format='yaml(status.traffic)'
    gcloud beta run worker-pools describe "$POOL" --project="$PROJECT" --region="$REGION" --impersonate-service-account="$OPERATOR" --format='yaml(instanceSplits)'
    ```
    A bad release, in every cell it reached: route each to its last good state, by image digest and settings version (docs/operations.md#rolling-back).
  EOT

  # [title, PromQL over every system, how long it holds, runbook section]
  pages = {
    backlog = [
      "pushes not acknowledged for over ${var.oldest_unacked_threshold_seconds} s",
      module.fleet_symptoms.backlog, "120s", "backlog",
    ]
    canary_stale = [
      "no canary stored for over ${var.canary_age_threshold_seconds} s",
      module.fleet_symptoms.canary_stale, "120s", "canary-stale",
    ]
    cell_unready = [
      "cells not ready (uptime check of /readyz)",
      module.fleet_symptoms.cell_unready, "0s", "cell-not-ready",
    ]
    availability = [
      "error budget of ${format("%g", var.availability_goal * 100)}% of pushes (a system's) or reads (a cell's) answered without 5xx burning fast",
      module.fleet_symptoms.burning["availability"]["fast"], "0s", "availability-burning",
    ]
    freshness = [
      "error budget of ${format("%g", var.freshness_goal * 100)}% of messages stored within ${var.freshness_threshold_seconds} s burning fast",
      module.fleet_symptoms.burning["freshness"]["fast"], "0s", "freshness-burning",
    ]
    read_latency = [
      "error budget of ${format("%g", var.read_latency_goal * 100)}% of a cell's reads within ${var.read_latency_threshold_seconds} s burning fast",
      module.fleet_symptoms.burning["read_latency"]["fast"], "0s", "read-latency-burning",
    ]
    # Systems with `serving`: well before Spanner's row deletion policy could remove a row
    # the export has not reached (export_lag_page_seconds, variables.tf). Held 5 minutes:
    # a new system reports a lag from the epoch until its first export, seconds later.
    export_lag = [
      "export to BigQuery over ${format("%g", var.export_lag_page_seconds / 3600)} h behind",
      module.fleet_symptoms.export_lag, "300s", "export-behind",
    ]
    # Serving instances past 90% of their storage: at 100% Spanner refuses every write.
    spanner_storage = [
      "Spanner storage over 90% of what its processing units allow",
      module.fleet_symptoms.spanner_storage, "600s", "spanner-storage",
    ]
  }

  # The pages made: the export's and the Spanner instances' only where a system serves
  # (cells.tf, serving_symptoms).
  paged = { for key, page in local.pages : key => page if local.any_serving || !contains(local.serving_symptoms, key) }

  # One system spending its cell's Spanner instance shows in the others' pages first: where
  # systems serve from Spanner, every page says where it is seen, by system.
  hot_system = "One system far above the others on its cell's dashboard, \"Spanner CPU by system (its database) and priority\", is a hot system: docs/operations.md#a-hot-system sees it and throttles it.\n"

  # Each page's text: what it means, the command naming the systems, and what to run.
  page_documentation = {
    for key, page in local.pages :
    key => "${page[0]}, in as many systems (cells, instances) as this incident's value says. Which ones, now:\n```sh\n${format(local.which_systems, page[1])}\n```\n${local.any_serving ? local.hot_system : ""}${local.page_commands}\nRunbook: docs/operations.md#${page[3]}"
  }
}

module "fleet_symptoms" {
  source = "../modules/symptoms"

  # Every system of the environment, named by no list: the pages' queries, and the
  # documentation that quotes them, stay the same size at 2 systems or 2,000.
  systems                          = local.system_names
  every_system                     = true
  metric_types                     = module.metrics.types
  oldest_unacked_threshold_seconds = var.oldest_unacked_threshold_seconds
  canary_age_threshold_seconds     = var.canary_age_threshold_seconds
  unready_regions                  = 2
  burn_rates                       = local.burn_rates
  min_events                       = var.alert_min_events
  query_bytes_billed_daily_budget  = var.query_bytes_billed_daily_budget
  export_lag_threshold_seconds     = var.export_lag_page_seconds
  spanner_storage_threshold        = 0.9
  slos = {
    availability = { goal = var.availability_goal }
    freshness    = { goal = var.freshness_goal }
    read_latency = { goal = var.read_latency_goal }
  }
}

resource "google_monitoring_alert_policy" "page" {
  # Where the alerts are combined, every page is one policy's (combined.tf).
  for_each = local.combined ? {} : local.paged

  project               = var.project_id
  display_name          = "Recordline fleet (${var.environment}): ${each.value[0]}"
  combiner              = "OR"
  severity              = "CRITICAL"
  notification_channels = var.notification_channels

  conditions {
    display_name = "systems where ${each.value[0]}"
    condition_prometheus_query_language {
      query               = "count(${each.value[1]})"
      duration            = each.value[2]
      evaluation_interval = "60s"
    }
  }

  # Held to Cloud Monitoring's limits at plan time (modules/alert_documentation).
  documentation {
    mime_type = "text/markdown"
    content   = module.alert_documentation.texts["page ${each.key}"]
  }

  depends_on = [module.metrics]
}

# Every page's and ticket's text, checked against what Cloud Monitoring accepts before
# anything is applied: a plan past it stops, naming the text and its size.
module "alert_documentation" {
  source = "../modules/alert_documentation"

  texts = merge(
    { for key, text in local.page_documentation : "page ${key}" => text },
    { for symptom, text in local.ticket_documentation : "ticket ${symptom}" => text },
    { for symptom, text in local.instance_ticket_documentation : "ticket ${symptom}" => text },
    { for policy, text in local.combined_documentation : policy == "page" ? "page combined" : "ticket combined${policy == "ticket" ? "" : " ${policy}"}" => text },
  )
}
