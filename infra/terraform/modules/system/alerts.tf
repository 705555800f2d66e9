# This system's tickets (severity WARNING, to its ticket channels). The page for each
# symptom is the fleet's, one for every system at once (root fleet.tf); the ticket
# says which system, with the commands for it, its real URL and audience in them.
# Tickets alone: dead letters, the bytes billed, a canary no longer reported.
# Each links its section of docs/operations.md, which says the same in more words.

locals {
  push_subscription = join(" ", [
    "resource.type=\"pubsub_subscription\"",
    "resource.label.\"subscription_id\"=\"${google_pubsub_subscription.push.name}\"",
  ])

  # Names the commands below use, known before anything exists.
  # As the operator account: on-call holds no role of its own (docs/operations.md#rolling-back).
  scope               = "--project=${var.project_id} --region=${var.region} --impersonate-service-account=${var.operator_service_account}"
  replay_subscription = "projects/${var.project_id}/subscriptions/${var.service_name}-dead-letter-replay"
  operator_token      = "$(gcloud auth print-identity-token --impersonate-service-account=${var.operator_service_account} --audiences=${local.read_audience} --include-email)"

  # Copy-pasteable, in a shell with gcloud, as a member of `oncall`
  # (docs/operations.md#acting-as-the-operator-account).
  commands = {
    revisions = <<-EOT
      ```sh
      gcloud run services describe ${var.service_name} ${local.scope} --format='yaml(status.traffic)'
      gcloud run revisions list --service=${var.service_name} ${local.scope} --sort-by=~metadata.creationTimestamp --limit=5
      ```
      A bad deploy: route every request back to the revision before it (docs/operations.md#rolling-back):
      ```sh
      PREV=${var.service_name}-00000-xxx   # the revision before the bad one, from the list above
      gcloud run services update-traffic ${var.service_name} ${local.scope} --to-revisions="$PREV=100"
      ```
    EOT
    read      = <<-EOT
      Read as the uptime check does:
      ```sh
      curl -sS -w '\n%%{http_code}\n' -H "Authorization: Bearer ${local.operator_token}" '${local.service_url}${local.probe_path}'
      ```
    EOT
    replay    = <<-EOT
      Once the cause is fixed, replay them through today's validation (from a checkout, after `python3 dev.py lint` made .venv); --dry-run first:
      ```sh
      gcloud auth application-default login --impersonate-service-account=${var.operator_service_account}
      .venv/bin/recordline replay dead-letters --subscription=${local.replay_subscription} --url=${local.service_url} --token="${local.operator_token}" --dry-run
      ```
      Never publish them again by hand: a new message gets a new id, and the service could not tell it from the original.
    EOT
  }
}

module "symptoms" {
  source = "../symptoms"

  systems                          = [var.service_name]
  project_number                   = var.project_number
  region                           = var.region
  metric_types                     = var.metric_types
  oldest_unacked_threshold_seconds = var.oldest_unacked_threshold_seconds
  canary_age_threshold_seconds     = var.canary_age_threshold_seconds
  read_path_failing_regions        = 2
  read_routes                      = local.read_routes
  burn_rates                       = var.burn_rates
  min_events                       = var.alert_min_events
  slos = {
    availability = { goal = var.availability_goal }
    freshness    = { goal = var.freshness_goal, threshold = var.freshness_threshold_seconds }
    read_latency = { goal = var.read_latency_goal, threshold = var.read_latency_threshold_seconds }
  }
}

locals {
  # The fleet's symptoms, this system's series: [title, PromQL, how long it holds, runbook, what to run].
  tickets = {
    backlog = [
      "pushes not acknowledged for over ${var.oldest_unacked_threshold_seconds} s",
      module.symptoms.backlog, "120s", "backlog", local.commands.revisions,
    ]
    canary_stale = [
      "no canary stored for over ${var.canary_age_threshold_seconds} s",
      module.symptoms.canary_stale, "120s", "canary-stale", local.commands.revisions,
    ]
    read_path = [
      "records not readable through /v1/records (uptime check)",
      module.symptoms.read_path_failing, "0s", "records-not-readable", "${local.commands.read}\n${local.commands.revisions}",
    ]
    availability = [
      "error budget of ${format("%g", var.availability_goal * 100)}% of requests without 5xx burning",
      "(${module.symptoms.burning["availability"]["fast"]}) or (${module.symptoms.burning["availability"]["slow"]})",
      "0s", "availability-burning", local.commands.revisions,
    ]
    freshness = [
      "error budget of ${format("%g", var.freshness_goal * 100)}% of messages stored within ${var.freshness_threshold_seconds} s burning",
      "(${module.symptoms.burning["freshness"]["fast"]}) or (${module.symptoms.burning["freshness"]["slow"]})",
      "0s", "freshness-burning", local.commands.revisions,
    ]
    read_latency = [
      "error budget of ${format("%g", var.read_latency_goal * 100)}% of reads within ${var.read_latency_threshold_seconds} s burning",
      "(${module.symptoms.burning["read_latency"]["fast"]}) or (${module.symptoms.burning["read_latency"]["slow"]})",
      "0s", "read-latency-burning", "${local.commands.read}\n${local.commands.revisions}",
    ]
  }
}

resource "google_monitoring_alert_policy" "ticket" {
  for_each = local.tickets

  project               = var.project_id
  display_name          = "${var.service_name} (${var.environment}): ${each.value[0]}"
  combiner              = "OR"
  severity              = "WARNING"
  notification_channels = var.ticket_channels

  conditions {
    display_name = each.value[0]
    condition_prometheus_query_language {
      query               = each.value[1]
      duration            = each.value[2]
      evaluation_interval = "60s"
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "${var.service_name} in ${var.environment}: ${each.value[0]}. The fleet's page for it names how many systems share it.\n\n${each.value[4]}\nRunbook: docs/operations.md#${each.value[3]}"
  }
}

# An event, not a state: each dead letter is a message the store refused
# max_delivery_attempts times. The incident closes itself half an hour after the last.
resource "google_monitoring_alert_policy" "dead_letters" {
  project               = var.project_id
  display_name          = "${var.service_name} (${var.environment}): messages sent to the dead-letter topic"
  combiner              = "OR"
  severity              = "WARNING"
  notification_channels = var.ticket_channels

  conditions {
    display_name = "dead_letter_message_count > 0"
    condition_threshold {
      filter          = "metric.type=\"pubsub.googleapis.com/subscription/dead_letter_message_count\" ${local.push_subscription}"
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period     = "60s"
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }

  alert_strategy {
    auto_close = "1800s"
  }

  documentation {
    mime_type = "text/markdown"
    content   = "Pub/Sub gave up on messages to ${var.service_name} after ${var.max_delivery_attempts} deliveries. They are kept twice: in BigQuery, `${var.project_id}.${google_bigquery_dataset.recordline.dataset_id}.${google_bigquery_table.dead_letters.table_id}`, and for 7 days on `${local.replay_subscription}`.\n\n${local.commands.replay}\nRunbook: docs/operations.md#dead-letters"
  }
}

# What reads cost. Each query is capped by query_max_bytes_billed; this catches many
# queries that each stay under the cap. Alert conditions accept alignment periods up
# to 25 h, so one aligned point is the bytes billed over the last 24 h (a sliding
# day, evaluated continuously), summed over routes and instances.
resource "google_monitoring_alert_policy" "query_bytes_billed" {
  project               = var.project_id
  display_name          = "${var.service_name} (${var.environment}): queries billed over ${format("%g", var.query_bytes_billed_daily_budget / 1073741824)} GiB in 24 h"
  combiner              = "OR"
  severity              = "WARNING"
  notification_channels = var.ticket_channels

  conditions {
    display_name = "recordline.query.bytes_billed over 24 h > ${var.query_bytes_billed_daily_budget} bytes"
    condition_threshold {
      filter          = local.workload_metric["query.bytes_billed"]
      comparison      = "COMPARISON_GT"
      threshold_value = var.query_bytes_billed_daily_budget
      duration        = "0s"
      aggregations {
        alignment_period     = "86400s"
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "BigQuery bytes billed by ${var.service_name}'s reads passed the daily budget. The dashboard's \"BigQuery bytes billed by route\" tile shows which route; the query spans carry the bytes of each query. Runbook: docs/operations.md#query-bytes-billed"
  }
}

# No point at all: no instance has stored a canary, or none exports metrics. The
# backlog and the read path say whether users feel it.
resource "google_monitoring_alert_policy" "canary_absent" {
  project               = var.project_id
  display_name          = "${var.service_name} (${var.environment}): canary age not reported"
  combiner              = "OR"
  severity              = "WARNING"
  notification_channels = var.ticket_channels

  conditions {
    display_name = "recordline.canary.age absent for 10 min"
    condition_absent {
      filter   = local.workload_metric["canary.age"]
      duration = "600s"
      aggregations {
        alignment_period     = "60s"
        per_series_aligner   = "ALIGN_MIN"
        cross_series_reducer = "REDUCE_MIN"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "`recordline.canary.age` of ${var.service_name} has not been reported for 10 minutes: no instance stored a canary, or none exports metrics.\n\n${local.commands.revisions}\nRunbook: docs/operations.md#canary-absent"
  }
}
