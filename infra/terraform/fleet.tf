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
  read_routes        = ["/v1/records", "/v1/records/{record_id}", "/v1/messages/{message_id}"]
  fleet_read_routes  = "metric.label.\"route\"=one_of(${join(",", [for r in local.read_routes : "\"${r}\""])})"
  fleet_system_names = sort(keys(local.systems))
  # Every system's service and push subscription, by no list of names: the project
  # holds Recordline's systems alone, and a filter that named each would grow with them.
  fleet_run_services = "resource.label.\"service_name\"=monitoring.regex.full_match(\"[a-z][a-z0-9-]*\")"
  fleet_push_subs    = "resource.label.\"subscription_id\"=ends_with(\"-push\")"

  # [title, filter, aligner, reducer, group by (the system's label), worst is TOP or BOTTOM]
  fleet_charts = [
    ["Ingest lag p99 by system (s)", local.fleet_metric["ingest.lag"], "ALIGN_DELTA", "REDUCE_PERCENTILE_99", "resource.label.\"namespace\""],
    ["Read time p95 by system, what readers wait for (s)", "${local.fleet_metric["read.duration"]} ${local.fleet_read_routes}", "ALIGN_DELTA", "REDUCE_PERCENTILE_95", "resource.label.\"namespace\""],
    ["5xx answers by system (per s)", "metric.type=\"run.googleapis.com/request_count\" resource.type=\"cloud_run_revision\" metric.label.\"response_code_class\"=\"5xx\" (${local.fleet_run_services})", "ALIGN_RATE", "REDUCE_SUM", "resource.label.\"service_name\""],
    ["Oldest unacknowledged message by system (s)", "metric.type=\"pubsub.googleapis.com/subscription/oldest_unacked_message_age\" resource.type=\"pubsub_subscription\" (${local.fleet_push_subs})", "ALIGN_MAX", "REDUCE_MAX", "resource.label.\"subscription_id\""],
    ["Dead letters by system", "metric.type=\"pubsub.googleapis.com/subscription/dead_letter_message_count\" resource.type=\"pubsub_subscription\" (${local.fleet_push_subs})", "ALIGN_DELTA", "REDUCE_SUM", "resource.label.\"subscription_id\""],
    ["Canary age by system (s)", local.fleet_metric["canary.age"], "ALIGN_MIN", "REDUCE_MIN", "resource.label.\"namespace\""],
    # Systems with `serving` only: their furthest-behind table, as any instance reports it.
    ["Export lag to BigQuery by system, its furthest-behind table (s)", local.fleet_metric["export.lag"], "ALIGN_MAX", "REDUCE_MAX", "resource.label.\"namespace\""],
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

# --- pages ---------------------------------------------------------------------

# One paging policy per symptom, for the whole fleet: each condition computes the
# symptom per system (modules/symptoms) and counts the systems that have it, so a
# shared outage (a region, BigQuery, a bad release) is one incident whatever the
# number of systems, and its value says how many. Which systems: each has its own
# ticket for the same symptom (modules/system/alerts.tf), with its commands.

locals {
  # Multi-window burn rates (the SRE workbook's): the budget of a 28-day SLO gone in
  # about 2 days (14.4x over the last hour, still so over the last 5 minutes: a page),
  # or in about 5 days (6x over 6 hours and over the last 30 minutes: a ticket).
  burn_rates = {
    fast = { long = "1h", short = "5m", rate = 14.4 }
    slow = { long = "6h", short = "30m", rate = 6 }
  }

  # For the commands in the pages: a system's URL and read audience from its name.
  any_service_url = "https://$SYSTEM-${data.google_project.this.number}.${var.region}.run.app"
  any_audience    = var.read_audience != "" ? var.read_audience : "${local.any_service_url}/v1"
  operator_token  = "$(gcloud auth print-identity-token --impersonate-service-account=${google_service_account.operator.email} --audiences=\"${local.any_audience}\" --include-email)"
  # The page counts the systems (one incident for a shared outage); this names them: the
  # page's own query through Cloud Monitoring's Prometheus HTTP API
  # (https://cloud.google.com/stackdriver/docs/managed-prometheus/query-api-ui), as
  # yourself (members of `oncall` read Cloud Monitoring: iam.tf). %s is the query.
  which_systems = "curl -sS -H \"Authorization: Bearer $(gcloud auth print-access-token)\" --data-urlencode 'query=%s' 'https://monitoring.googleapis.com/v1/projects/${var.project_id}/location/global/prometheus/api/v1/query' | jq -r '.data.result[].metric.system'"
  page_commands = <<-EOT
    For each system the command above names (its tickets, `<system> (${var.environment}): ...`, say the same), as a member of `oncall`:
    ```sh
    SYSTEM=recordline   # the system's name
    gcloud run services describe "$SYSTEM" --project=${var.project_id} --region=${var.region} --impersonate-service-account=${google_service_account.operator.email} --format='yaml(status.traffic)'
    gcloud run revisions list --service="$SYSTEM" --project=${var.project_id} --region=${var.region} --impersonate-service-account=${google_service_account.operator.email} --sort-by=~metadata.creationTimestamp --limit=5
    curl -sS -w '\n%%{http_code}\n' -H "Authorization: Bearer ${local.operator_token}" "${local.any_service_url}/v1/records?limit=1"
    ```
    A bad deploy, in every system it reached: route each back to its revision before it (docs/operations.md#rolling-back).
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
    read_path = [
      "records not readable through /v1/records (uptime check)",
      module.fleet_symptoms.read_path_failing, "0s", "records-not-readable",
    ]
    availability = [
      "error budget of ${format("%g", var.availability_goal * 100)}% of requests without 5xx burning fast",
      module.fleet_symptoms.burning["availability"]["fast"], "0s", "availability-burning",
    ]
    freshness = [
      "error budget of ${format("%g", var.freshness_goal * 100)}% of messages stored within ${var.freshness_threshold_seconds} s burning fast",
      module.fleet_symptoms.burning["freshness"]["fast"], "0s", "freshness-burning",
    ]
    read_latency = [
      "error budget of ${format("%g", var.read_latency_goal * 100)}% of reads within ${var.read_latency_threshold_seconds} s burning fast",
      module.fleet_symptoms.burning["read_latency"]["fast"], "0s", "read-latency-burning",
    ]
    # Systems with `serving`: well before Spanner's row deletion policy could remove a row
    # the export has not reached (export_lag_page_seconds, variables.tf). Held 5 minutes:
    # a new system reports a lag from the epoch until its first export, seconds later.
    export_lag = [
      "export to BigQuery over ${format("%g", var.export_lag_page_seconds / 3600)} h behind",
      module.fleet_symptoms.export_lag, "300s", "export-behind",
    ]
  }

  # Each page's text: what it means, the command naming the systems, and what to run.
  page_documentation = {
    for key, page in local.pages :
    key => "${page[0]}, in as many systems as this incident's value says. Which ones, now:\n```sh\n${format(local.which_systems, page[1])}\n```\n${local.page_commands}\nRunbook: docs/operations.md#${page[3]}"
  }
}

module "fleet_symptoms" {
  source = "./modules/symptoms"

  # Every system of the project, named by no list: the pages' queries, and the
  # documentation that quotes them, stay the same size at 2 systems or 200.
  systems                          = local.fleet_system_names
  every_system                     = true
  project_number                   = data.google_project.this.number
  region                           = var.region
  metric_types                     = { for name, d in google_monitoring_metric_descriptor.workload : name => d.type }
  oldest_unacked_threshold_seconds = var.oldest_unacked_threshold_seconds
  canary_age_threshold_seconds     = var.canary_age_threshold_seconds
  read_path_failing_regions        = 2
  read_routes                      = local.read_routes
  burn_rates                       = local.burn_rates
  min_events                       = var.alert_min_events
  query_bytes_billed_daily_budget  = var.query_bytes_billed_daily_budget
  export_lag_threshold_seconds     = var.export_lag_page_seconds
  slos = {
    availability = { goal = var.availability_goal }
    freshness    = { goal = var.freshness_goal, threshold = var.freshness_threshold_seconds }
    read_latency = { goal = var.read_latency_goal, threshold = var.read_latency_threshold_seconds }
  }
}

resource "google_monitoring_alert_policy" "page" {
  for_each = local.pages

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
}

# Every page's and ticket's text, checked against what Cloud Monitoring accepts before
# anything is applied: a plan past it stops, naming the text and its size.
module "alert_documentation" {
  source = "./modules/alert_documentation"

  texts = merge(
    { for key, text in local.page_documentation : "page ${key}" => text },
    { for symptom, text in local.ticket_documentation : "ticket ${symptom}" => text },
  )
}
