# Tickets: each system's detail of every symptom the fleet pages for, and what needs a
# look in working hours (dead letters, the bytes billed, a canary no longer reported, an
# export to BigQuery an hour behind or stopped at a row).
# Each is one policy for the systems whose tickets go to the same channels, not one per
# system: its condition computes the symptom per system (modules/symptoms), and each
# system in trouble is an incident of its own, named by its label `system`. A project
# holds 500 alerting policies and each condition is billed
# (https://cloud.google.com/monitoring/quotas, https://cloud.google.com/stackdriver/pricing):
# eleven per system would stop a project at 46 systems; eleven per channel set never grow
# with the fleet. The commands name the incident's system through the documentation
# variable of that label (https://cloud.google.com/monitoring/alerts/doc-variables).

locals {
  # Where each system's tickets go: its own ticket_channels, else the environment's.
  ticket_channels_of = {
    for name, system in local.systems :
    name => sort(distinct(system.ticket_channels != null ? system.ticket_channels : var.ticket_channels))
  }
  # The systems that share their channels, by a key known at plan time.
  ticket_groups = {
    for channels in distinct([for name, c in local.ticket_channels_of : join(",", c)]) :
    (channels == "" ? "unrouted" : substr(sha256(channels), 0, 8)) => {
      channels = channels == "" ? [] : split(",", channels)
      systems  = sort([for name, c in local.ticket_channels_of : name if join(",", c) == channels])
    }
  }
}

locals {
  # The commands, for the system the incident names. As the operator account: on-call
  # holds no role that changes anything (docs/operations.md#acting-as-the-operator-account).
  ticket_system      = "SYSTEM=$${metric.label.system}   # the system this incident names"
  ticket_scope       = "--project=${var.project_id} --region=${var.region} --impersonate-service-account=${google_service_account.operator.email}"
  ticket_service_url = "https://$SYSTEM-${data.google_project.this.number}.${var.region}.run.app"
  ticket_audience    = var.read_audience != "" ? var.read_audience : "${local.ticket_service_url}/v1"
  ticket_token       = "$(gcloud auth print-identity-token --impersonate-service-account=${google_service_account.operator.email} --audiences=\"${local.ticket_audience}\" --include-email)"
  ticket_probe_path  = values(module.system)[0].probe_path
  # The Spanner instance of the system the incident names: the first one unless the
  # system was given another (spanner.tf), as shell `case` arms.
  ticket_instances = join(" ", [for name, instance in local.serving_instance : "${name}) echo ${instance};;" if instance != local.spanner_instance_name])

  ticket_commands = {
    revisions = <<-EOT
      ```sh
      ${local.ticket_system}
      gcloud run services describe "$SYSTEM" ${local.ticket_scope} --format='yaml(status.traffic)'
      gcloud run revisions list --service="$SYSTEM" ${local.ticket_scope} --sort-by=~metadata.creationTimestamp --limit=5
      ```
      A bad deploy: route every request back to the revision before it (docs/operations.md#rolling-back):
      ```sh
      ${local.ticket_system}
      PREV=$SYSTEM-00000-xxx   # the revision before the bad one, from the list above
      gcloud run services update-traffic "$SYSTEM" ${local.ticket_scope} --to-revisions="$PREV=100"
      ```
    EOT
    read      = <<-EOT
      Read as the uptime check does:
      ```sh
      ${local.ticket_system}
      curl -sS -w '\n%%{http_code}\n' -H "Authorization: Bearer ${local.ticket_token}" "${local.ticket_service_url}${local.ticket_probe_path}"
      ```
    EOT
    replay    = <<-EOT
      Once the cause is fixed, replay them through today's validation (from a checkout, after `python3 dev.py lint` made .venv); --dry-run first:
      ```sh
      ${local.ticket_system}
      gcloud auth application-default login --impersonate-service-account=${google_service_account.operator.email}
      .venv/bin/recordline replay dead-letters --subscription="projects/${var.project_id}/subscriptions/$SYSTEM-dead-letter-replay" --url="${local.ticket_service_url}" --token="${local.ticket_token}" --dry-run
      ```
      Never publish them again by hand: a new message gets a new id, and the service could not tell it from the original.
    EOT
    # The exporter's state is in the system's Spanner database, which the operator
    # account reads (modules/system/iam.tf); why it stopped is logged at ERROR too.
    export = <<-EOT
      Each table's watermark (every row before it is in BigQuery), the batch the exporter may have appended, and why it stopped, if it did:
      ```sh
      ${local.ticket_system}
      INSTANCE=$(case "$SYSTEM" in ${local.ticket_instances} *) echo ${local.spanner_instance_name};; esac)
      gcloud spanner databases execute-sql "$SYSTEM" --instance="$INSTANCE" --project=${var.project_id} --impersonate-service-account=${google_service_account.operator.email} --sql='SELECT table_name, watermark, pending_rows, pending_message_id, blocked, updated FROM export_progress'
      gcloud logging read "resource.type=\"cloud_run_revision\" labels.system=\"$SYSTEM\" severity>=ERROR jsonPayload.message:\"export of\"" --project=${var.project_id} --freshness=1d --limit=5
      ```
      Pushes are still acknowledged and readable meanwhile: Spanner holds every row until its deletion policy removes it.
    EOT
    # The completeness ledger: which producers miss which sequences since when, by hour.
    producers = <<-EOT
      Which producers, epochs and sequences are missing, since when, and the last day by hour:
      ```sh
      ${local.ticket_system}
      curl -sS -H "Authorization: Bearer ${local.ticket_token}" "${local.ticket_service_url}/v1/producers?limit=100"
      .venv/bin/recordline audit --since=24h --url="${local.ticket_service_url}" --token="${local.ticket_token}"
      ```
      Dead letters first (their ticket's replay closes the gaps they hold), then the publisher's own logs for those sequences, then the subscription's retention.
    EOT
    # The same ledger: which producers have sequences claimed by two different messages.
    conflicts = <<-EOT
      Which producers, epochs and sequences two different messages claimed (both are stored), and the last day by hour:
      ```sh
      ${local.ticket_system}
      .venv/bin/recordline audit --since=24h --url="${local.ticket_service_url}" --token="${local.ticket_token}"
      curl -sS -H "Authorization: Bearer ${local.ticket_token}" "${local.ticket_service_url}/v1/producers?limit=100"
      ```
      Read both messages of a sequence (their attributes name the producer; `publishTime` and the payload tell who sent each): two instances sharing a producer id and epoch, or another publisher using it.
    EOT
    loops     = <<-EOT
      Which loop, and why it fails (its traceback, in the line that restarts it):
      ```sh
      ${local.ticket_system}
      gcloud logging read "resource.type=\"cloud_run_revision\" labels.system=\"$SYSTEM\" severity>=ERROR jsonPayload.message:\"loop failed\"" --project=${var.project_id} --freshness=1h --limit=5
      ```
      An exporter down for longer than a lease hands the export to another instance; readiness names the loop on the instance where it is down.
    EOT
    typed     = <<-EOT
      Why BigQuery refused, naming the revision and the table (`bq show --schema` it):
      ```sh
      ${local.ticket_system}
      gcloud logging read "resource.type=\"cloud_run_revision\" labels.system=\"$SYSTEM\" severity>=ERROR jsonPayload.message:\"typed columns of\"" --project=${var.project_id} --freshness=1d --limit=5
      ```
      Nothing is lost meanwhile: records are stored without the new columns, every value in `data` and named in `projection_errors`.
    EOT
  }

  # [title, the symptom's query (by group), how long it holds, runbook section, what to run]
  ticket_specs = {
    backlog       = ["pushes not acknowledged for over ${var.oldest_unacked_threshold_seconds} s", "120s", "backlog", local.ticket_commands.revisions]
    canary_stale  = ["no canary stored for over ${var.canary_age_threshold_seconds} s", "120s", "canary-stale", local.ticket_commands.revisions]
    read_path     = ["records not readable through /v1/records (uptime check)", "0s", "records-not-readable", "${local.ticket_commands.read}\n${local.ticket_commands.revisions}"]
    availability  = ["error budget of ${format("%g", var.availability_goal * 100)}% of requests without 5xx burning", "0s", "availability-burning", local.ticket_commands.revisions]
    freshness     = ["error budget of ${format("%g", var.freshness_goal * 100)}% of messages stored within ${var.freshness_threshold_seconds} s burning", "0s", "freshness-burning", local.ticket_commands.revisions]
    read_latency  = ["error budget of ${format("%g", var.read_latency_goal * 100)}% of reads within ${var.read_latency_threshold_seconds} s burning", "0s", "read-latency-burning", "${local.ticket_commands.read}\n${local.ticket_commands.revisions}"]
    dead_letters  = ["messages sent to the dead-letter topic", "0s", "dead-letters", local.ticket_commands.replay]
    bytes_billed  = ["queries billed over ${format("%g", var.query_bytes_billed_daily_budget / 1073741824)} GiB in 24 h", "0s", "query-bytes-billed", "The dashboard's \"BigQuery bytes billed by route\" tile shows which route; the query spans carry the bytes of each query."]
    canary_absent = ["canary age not reported", "0s", "canary-absent", local.ticket_commands.revisions]
    # Systems with `serving` only. Held 5 minutes: a new system reports a lag from the
    # epoch until its first export, and a refused row is retried every minute.
    export_lag     = ["export to BigQuery over ${format("%g", var.export_lag_ticket_seconds / 3600)} h behind", "300s", "export-behind", local.ticket_commands.export]
    export_blocked = ["export to BigQuery stopped at a row it cannot append", "300s", "export-blocked", local.ticket_commands.export]
    typed_refused  = ["BigQuery refuses to add typed columns a schema revision needs", "0s", "typed-columns-refused", local.ticket_commands.typed]
    loop_restarts  = ["a background loop restarted over ${var.loop_restarts_ticket_count} times in 10 minutes", "0s", "loop-restarting", local.ticket_commands.loops]
    # Held 5 minutes: the metric is read from the ledger every minute, and a gap is
    # missing only once older than the grace period already.
    producers_missing = ["sequences of a producer missing past the grace period", "300s", "producers-missing", "${local.ticket_commands.producers}\n${local.ticket_commands.replay}"]
    # Held 5 minutes too: the metric is read every minute. Nothing is lost (both messages
    # are stored), so a ticket, never a page.
    producers_conflicts = ["sequences of a producer claimed by two different messages", "300s", "producers-in-conflict", local.ticket_commands.conflicts]
  }

  # Each symptom's text, the same for every group: the incident's label names the system.
  ticket_documentation = {
    for symptom, spec in local.ticket_specs :
    symptom => "$${metric.label.system} in ${var.environment}: ${spec[0]}. The fleet's page for it, if it pages, names how many systems share it.\n\n${spec[3]}\nRunbook: docs/operations.md#${spec[2]}"
  }

  ticket_queries = {
    for group, symptoms in module.ticket_symptoms : group => {
      backlog             = symptoms.backlog
      canary_stale        = symptoms.canary_stale
      read_path           = symptoms.read_path_failing
      availability        = "(${symptoms.burning["availability"]["fast"]}) or (${symptoms.burning["availability"]["slow"]})"
      freshness           = "(${symptoms.burning["freshness"]["fast"]}) or (${symptoms.burning["freshness"]["slow"]})"
      read_latency        = "(${symptoms.burning["read_latency"]["fast"]}) or (${symptoms.burning["read_latency"]["slow"]})"
      dead_letters        = symptoms.dead_letters
      bytes_billed        = symptoms.bytes_billed
      canary_absent       = symptoms.canary_absent
      export_lag          = symptoms.export_lag
      export_blocked      = symptoms.export_blocked
      loop_restarts       = symptoms.loop_restarts
      typed_refused       = symptoms.typed_refused
      producers_missing   = symptoms.producers_missing
      producers_conflicts = symptoms.producers_conflicts
    }
  }
}

module "ticket_symptoms" {
  source   = "./modules/symptoms"
  for_each = local.ticket_groups

  # One group (every system's tickets to the same channels, the usual case) names no
  # system: its queries stay the same size however many systems there are.
  systems                          = each.value.systems
  every_system                     = length(local.ticket_groups) == 1
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
  export_lag_threshold_seconds     = var.export_lag_ticket_seconds
  loop_restarts_threshold          = var.loop_restarts_ticket_count
  slos = {
    availability = { goal = var.availability_goal }
    freshness    = { goal = var.freshness_goal, threshold = var.freshness_threshold_seconds }
    read_latency = { goal = var.read_latency_goal, threshold = var.read_latency_threshold_seconds }
  }
}

resource "google_monitoring_alert_policy" "ticket" {
  for_each = {
    for pair in setproduct(sort(keys(local.ticket_groups)), sort(keys(local.ticket_specs))) :
    "${pair[1]} ${pair[0]}" => { group = pair[0], symptom = pair[1] }
  }

  project               = var.project_id
  display_name          = "Recordline (${var.environment}), each system: ${local.ticket_specs[each.value.symptom][0]}${length(local.ticket_groups) > 1 ? " [tickets ${each.value.group}]" : ""}"
  combiner              = "OR"
  severity              = "WARNING"
  notification_channels = local.ticket_groups[each.value.group].channels

  conditions {
    display_name = local.ticket_specs[each.value.symptom][0]
    condition_prometheus_query_language {
      query               = local.ticket_queries[each.value.group][each.value.symptom]
      duration            = local.ticket_specs[each.value.symptom][1]
      evaluation_interval = "60s"
    }
  }

  # Dead letters are events: the incident closes itself half an hour after the last.
  dynamic "alert_strategy" {
    for_each = each.value.symptom == "dead_letters" ? [1] : []
    content {
      auto_close = "1800s"
    }
  }

  # Held to Cloud Monitoring's limits at plan time (fleet.tf, module.alert_documentation).
  documentation {
    mime_type = "text/markdown"
    subject   = "$${metric.label.system} (${var.environment}): ${local.ticket_specs[each.value.symptom][0]}"
    content   = module.alert_documentation.texts["ticket ${each.value.symptom}"]
  }
}
