# Tickets: each system's detail of every symptom the fleet pages for, and what needs a
# look in working hours (dead letters, the bytes billed, a canary no longer reported, an
# export to BigQuery an hour behind or stopped at a row), and each serving instance's
# CPU and storage.
# Each is one policy for the systems whose tickets go to the same channels, not one per
# system: its condition computes the symptom per system (modules/symptoms), and each
# system in trouble is an incident of its own, named by its label `system`. A project
# holds 500 alerting policies and each condition is billed
# (https://cloud.google.com/monitoring/quotas, https://cloud.google.com/stackdriver/pricing):
# eleven per system would stop a project at 46 systems; eleven per channel set never grow
# with the fleet. The commands name the incident's system through the documentation
# variable of that label (https://cloud.google.com/monitoring/alerts/doc-variables), and
# find the rest (its cell, project, services, instance) in the directory (fleet.tf).

locals {
  # Where each system's tickets go: its own ticket_channels (in its cell's file), else
  # the environment's.
  ticket_channels_of = merge([
    for cell, systems in local.cell_systems : {
      for name, system in systems :
      name => sort(distinct(try(system.ticket_channels, null) != null ? system.ticket_channels : var.ticket_channels))
    }
  ]...)
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
  # The commands, for the system the incident names, from the directory. As the
  # operator account: on-call holds no role that changes anything
  # (docs/operations.md#acting-as-the-operator-account).
  ticket_system = <<-EOT
    SYSTEM=$${metric.label.system}   # the system this incident names
    ${local.directory}
  EOT
  ticket_scope  = "--project=\"$PROJECT\" --region=\"$REGION\" --impersonate-service-account=\"$OPERATOR\""
  ticket_token  = "$(gcloud auth print-identity-token --impersonate-service-account=\"$OPERATOR\" --audiences=\"$READ_AUDIENCE\" --include-email)"
  # A command of the cell's ops or export job (the cell root's ops.tf, exporter.tf): run,
  # waited for, and what it said printed (docs/operations.md#running-commands-as-a-cells-job).
  ticket_job = "job() { local IFS='|' RAN; gcloud run jobs execute \"$1\" ${local.ticket_scope} --wait --args=\"^|^$${*:2}\" || echo \"the command exited non-zero; what it said:\"; RAN=$(gcloud run jobs executions list --job=\"$1\" ${local.ticket_scope} --limit=1 --format='value(metadata.name)'); gcloud logging read \"resource.type=\\\"cloud_run_job\\\" labels.\\\"run.googleapis.com/execution_name\\\"=\\\"$RAN\\\"\" --project=\"$PROJECT\" --freshness=1h --order=asc --format='value(textPayload,jsonPayload.message)'; }"

  ticket_commands = {
    revisions = <<-EOT
      What its cell serves (the cell's service serves every system in it):
      ```sh
      ${local.ticket_system}
      gcloud run services describe "$SERVICE" ${local.ticket_scope} --format='yaml(status.traffic)'
      gcloud run revisions list --service="$SERVICE" ${local.ticket_scope} --sort-by=~metadata.creationTimestamp --limit=5
      ```
      A bad release or systems file: route every request of the cell to its last good state, by image digest and settings version (docs/operations.md#rolling-back).
    EOT
    read      = <<-EOT
      Read this system's records as a reader does:
      ```sh
      ${local.ticket_system}
      curl -sS -w '\n%%{http_code}\n' -H "Authorization: Bearer ${local.ticket_token}" "$URL/systems/$SYSTEM/v1/records?limit=1"
      ```
    EOT
    replay    = <<-EOT
      Once the cause is fixed, replay them through today's validation, as the cell's ops job (no checkout); --dry-run first:
      ```sh
      ${local.ticket_system}
      ${local.ticket_job}
      job "$OPS_JOB" replay dead-letters --system="$SYSTEM" --dry-run
      ```
      Never publish them again by hand: a new message gets a new id, and the service could not tell it from the original.
    EOT
    # The exporter's state and lease are in the system's Spanner database, which the
    # operator account reads (modules/system/iam.tf); why it stopped is logged at ERROR
    # by the cell's exporter pool, whose logs are a worker pool's, not a revision's.
    export = <<-EOT
      Each table's watermark (every row before it is in BigQuery), the batch the exporter may have appended, why it stopped, and who holds the export's lease:
      ```sh
      ${local.ticket_system}
      gcloud spanner databases execute-sql "$DATABASE" --instance="$INSTANCE" --project="$PROJECT" --impersonate-service-account="$OPERATOR" --sql='SELECT table_name, watermark, pending_rows, pending_message_id, blocked, updated FROM export_progress'
      gcloud spanner databases execute-sql "$DATABASE" --instance="$INSTANCE" --project="$PROJECT" --impersonate-service-account="$OPERATOR" --sql='SELECT name, holder, expires FROM export_lease'
      gcloud logging read "$POOL_LOGS labels.system=\"$SYSTEM\" severity>=ERROR jsonPayload.message:\"export of\"" --project="$PROJECT" --freshness=1d --limit=5
      ```
      Pushes are still acknowledged and readable meanwhile: Spanner holds every row until its deletion policy removes it.
    EOT
    # The completeness ledger: which producers miss which sequences since when, by hour.
    producers = <<-EOT
      Which producers, epochs and sequences are missing, since when, and the last day by hour, as the cell's ops job:
      ```sh
      ${local.ticket_system}
      ${local.ticket_job}
      job "$OPS_JOB" audit --system="$SYSTEM" --since=24h
      ```
      Dead letters first (their ticket's replay closes the gaps they hold), then the publisher's own logs for those sequences, then the subscription's retention.
    EOT
    # The same ledger: which producers have sequences claimed by two different messages.
    conflicts = <<-EOT
      Which producers, epochs and sequences two different messages claimed (both are stored), and the last day by hour, as the cell's ops job:
      ```sh
      ${local.ticket_system}
      ${local.ticket_job}
      job "$OPS_JOB" audit --system="$SYSTEM" --since=24h
      curl -sS -H "Authorization: Bearer ${local.ticket_token}" "$URL/systems/$SYSTEM/v1/producers?limit=100"
      ```
      Read both messages of a sequence (their attributes name the producer; `publishTime` and the payload tell who sent each): two instances sharing a producer id and epoch, or another publisher using it.
    EOT
    loops     = <<-EOT
      Which loop, and why it fails (its traceback, in the line that restarts it), in the cell's service and its exporter pool:
      ```sh
      ${local.ticket_system}
      gcloud logging read "$SERVICE_LOGS labels.system=\"$SYSTEM\" severity>=ERROR jsonPayload.message:\"loop failed\"" --project="$PROJECT" --freshness=1h --limit=5
      gcloud logging read "$POOL_LOGS labels.system=\"$SYSTEM\" severity>=ERROR jsonPayload.message:\"loop failed\"" --project="$PROJECT" --freshness=1h --limit=5
      ```
      An exporter down for longer than a lease hands the export to another instance; readiness names the loop on the instance where it is down.
    EOT
    # A system's declared rate against what Pub/Sub delivered: what its cell bills and
    # sizes by, and what to change.
    rate  = <<-EOT
      What Pub/Sub delivered to the system a second, each hour of the last day, against the `rate` its entry declares (its cell's file):
      ```sh
      ${local.ticket_system}
      curl -sS -H "Authorization: Bearer $(gcloud auth print-access-token)" --data-urlencode "query=sum(rate(pubsub_googleapis_com:subscription_push_request_count{monitored_resource=\"pubsub_subscription\",response_class=\"ack\",subscription_id=\"$SYSTEM-push\"}[1h]))" --data-urlencode "start=$(date -u -d '-1 day' +%s)" --data-urlencode "end=$(date -u +%s)" --data-urlencode "step=3600" "https://monitoring.googleapis.com/v1/projects/$PROJECT/location/global/prometheus/api/v1/query_range"
      ```
      If it lasts, set the system's `rate` in its cell's file to what it sends: its cell's billing, its share of admission and its Spanner instance's CPU and storage follow it (docs/operations.md#what-it-costs).
    EOT
    typed = <<-EOT
      Why BigQuery refused, naming the revision and the table (`bq show --schema` it):
      ```sh
      ${local.ticket_system}
      gcloud logging read "$SERVICE_LOGS labels.system=\"$SYSTEM\" severity>=ERROR jsonPayload.message:\"typed columns of\"" --project="$PROJECT" --freshness=1d --limit=5
      ```
      Nothing is lost meanwhile: records are stored without the new columns, every value in `data` and named in `projection_errors`.
    EOT
  }

  # [title, how long it holds, runbook section, what to run]
  ticket_specs = {
    backlog       = ["pushes not acknowledged for over ${var.oldest_unacked_threshold_seconds} s", "120s", "backlog", local.ticket_commands.revisions]
    canary_stale  = ["no canary stored for over ${var.canary_age_threshold_seconds} s", "120s", "canary-stale", local.ticket_commands.revisions]
    availability  = ["error budget of ${format("%g", var.availability_goal * 100)}% of pushes (a system's) or reads (a cell's) answered without 5xx burning", "0s", "availability-burning", "${local.ticket_commands.read}\n${local.ticket_commands.revisions}"]
    freshness     = ["error budget of ${format("%g", var.freshness_goal * 100)}% of messages stored within ${var.freshness_threshold_seconds} s burning", "0s", "freshness-burning", local.ticket_commands.revisions]
    read_latency  = ["error budget of ${format("%g", var.read_latency_goal * 100)}% of a cell's reads within ${var.read_latency_threshold_seconds} s burning", "0s", "read-latency-burning", "${local.ticket_commands.read}\n${local.ticket_commands.revisions}"]
    dead_letters  = ["messages sent to the dead-letter topic", "0s", "dead-letters", local.ticket_commands.replay]
    bytes_billed  = ["a cell's queries billed over ${format("%g", var.query_bytes_billed_daily_budget / 1073741824)} GiB in 24 h", "0s", "query-bytes-billed", "The cell's dashboard's \"BigQuery bytes billed by route\" tile shows which route; the query spans carry the bytes of each query, and the system it read."]
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
    # Over the last hour, more than the system declared: a sizing to correct, not an
    # outage (admission shares and backpressure hold it meanwhile), so a ticket alone.
    over_declared = ["messages delivered over the last hour above the system's declared rate", "0s", "pushes-over-the-declared-rate", local.ticket_commands.rate]
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
      over_declared       = symptoms.over_declared
    }
  }
}

module "ticket_symptoms" {
  source   = "../modules/symptoms"
  for_each = local.ticket_groups

  # One group (every system's tickets to the same channels, the usual case) names no
  # system: its queries stay the same size however many systems there are.
  systems                          = each.value.systems
  every_system                     = length(local.ticket_groups) == 1
  metric_types                     = module.metrics.types
  oldest_unacked_threshold_seconds = var.oldest_unacked_threshold_seconds
  canary_age_threshold_seconds     = var.canary_age_threshold_seconds
  unready_regions                  = 2
  burn_rates                       = local.burn_rates
  min_events                       = var.alert_min_events
  query_bytes_billed_daily_budget  = var.query_bytes_billed_daily_budget
  export_lag_threshold_seconds     = var.export_lag_ticket_seconds
  loop_restarts_threshold          = var.loop_restarts_ticket_count
  declared_rates                   = local.declared_rates
  default_rate                     = local.default_rate
  slos = {
    availability = { goal = var.availability_goal }
    freshness    = { goal = var.freshness_goal }
    read_latency = { goal = var.read_latency_goal }
  }
}

resource "google_monitoring_alert_policy" "ticket" {
  for_each = {
    for pair in setproduct(sort(keys(local.ticket_groups)), sort(keys(local.ticket_specs))) :
    "${pair[1]} ${pair[0]}" => { group = pair[0], symptom = pair[1] }
    if !local.combined && (local.any_serving || !contains(local.serving_symptoms, pair[1]))
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

  depends_on = [module.metrics]
}

# --- the serving instances -------------------------------------------------------------

# Each serving instance of every cell, an incident of its own (label `instance_id`), to
# the environment's ticket channels: its high-priority CPU, and its storage at 70% of
# what its processing units allow (the page is at 90%: fleet.tf). A ticket, not a page,
# for the CPU: a busy instance is a cause, which readers feel through the read latency
# and freshness SLOs, which page. The cure is more processing units on that instance
# alone, which on-call adds at once (docs/operations.md#adding-spanner-capacity-now).
locals {
  instance_commands = <<-EOT
    The instance this incident names, its processing units, and the next size Spanner takes (100 to 900 in steps of 100, then whole nodes), as the operator account:
    ```sh
    INSTANCE=$${metric.label.instance_id} PROJECT=$${metric.label.project_id}
    OPERATOR=${google_service_account.operator.email}
    gcloud spanner instances describe "$INSTANCE" --project="$PROJECT" --impersonate-service-account="$OPERATOR" --format='value(processingUnits)'
    ```
    Raise it at once (docs/operations.md#adding-spanner-capacity-now), then merge the same figure for that instance alone in its cell's spanner_instance_units.
  EOT

  instance_tickets = {
    spanner_cpu     = ["Spanner high-priority CPU over Google's recommended maximum (65% regional, 45% multi-region)", module.instance_symptoms.spanner_cpu, "600s", "spanner-cpu"]
    spanner_storage = ["Spanner storage over 70% of what its processing units allow", module.instance_symptoms.spanner_storage, "600s", "spanner-storage"]
  }
  # Made only where a system serves: without one there is no instance.
  instance_ticketed = local.any_serving ? local.instance_tickets : {}
  instance_ticket_documentation = {
    for key, spec in local.instance_tickets :
    key => "$${metric.label.instance_id} (${var.environment}): ${spec[0]}.\n\n${local.instance_commands}\nRunbook: docs/operations.md#${spec[3]}"
  }
}

module "instance_symptoms" {
  source = "../modules/symptoms"

  systems                          = local.system_names
  every_system                     = true
  metric_types                     = module.metrics.types
  oldest_unacked_threshold_seconds = var.oldest_unacked_threshold_seconds
  canary_age_threshold_seconds     = var.canary_age_threshold_seconds
  unready_regions                  = 2
  burn_rates                       = local.burn_rates
  min_events                       = var.alert_min_events
  query_bytes_billed_daily_budget  = var.query_bytes_billed_daily_budget
  export_lag_threshold_seconds     = var.export_lag_ticket_seconds
  spanner_storage_threshold        = 0.7
  slos = {
    availability = { goal = var.availability_goal }
    freshness    = { goal = var.freshness_goal }
    read_latency = { goal = var.read_latency_goal }
  }
}

resource "google_monitoring_alert_policy" "instance_ticket" {
  for_each = local.combined ? {} : local.instance_ticketed

  project               = var.project_id
  display_name          = "Recordline serving tier (${var.environment}), each instance: ${each.value[0]}"
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
    subject   = "$${metric.label.instance_id} (${var.environment}): ${each.value[0]}"
    content   = module.alert_documentation.texts["ticket ${each.key}"]
  }
}
