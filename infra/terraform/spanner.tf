# The serving tier (infra/README.md, "The serving tier"): the systems with `serving`
# keep their recent rows in Spanner, their system of record, from which an exporter in
# each service feeds BigQuery; each system's rows are in a database of its own
# (modules/system/spanner.tf), all on one instance: 100 processing units hold the
# databases of many systems, and capacity is added where it is paid for, in one place.
# The instance exists once a system opts in; without any, nothing here is created.

locals {
  # Systems with a serving database: their own `serving`, else the environment's.
  serving_systems = sort([
    for name, system in local.systems : name
    if system.serving != null ? system.serving : var.serving
  ])

  # The instances, by name: the first `<service_name>-serving`, the n-th
  # `<service_name>-serving-<n>`. Each system's database is on the one its entry's
  # `spanner_instance` names (1 by default): an instance holds at most 100 databases
  # (https://cloud.google.com/spanner/quotas, "Databases per instance"), and this
  # configuration puts no more than spanner_databases_per_instance (90) on one, so a
  # restore or a new system never meets a full one. The number is the system's own,
  # never derived from its place in a list: a database that moved would be replaced.
  spanner_instance_name = "${var.service_name}-serving"
  serving_instance = {
    for name in local.serving_systems : name => (
      coalesce(local.systems[name].spanner_instance, 1) == 1
      ? local.spanner_instance_name
      : "${local.spanner_instance_name}-${coalesce(local.systems[name].spanner_instance, 1)}"
    )
  }
  spanner_instances = toset(values(local.serving_instance))
  spanner_databases = {
    for instance in local.spanner_instances : instance => [
      for name in local.serving_systems : name if local.serving_instance[name] == instance
    ]
  }
  spanner_databases_per_instance = 90
  spanner_config                 = var.spanner_config != "" ? var.spanner_config : "regional-${var.region}"
  spanner_regional               = startswith(local.spanner_config, "regional-")

  # Dual- and multi-region configurations (eur3, nam-eur-asia1, ...) exist in the
  # Enterprise Plus edition only; a regional one takes any
  # (https://cloud.google.com/spanner/docs/editions-overview). Empty: the least the
  # configuration allows, which is what infra/fleet_cost.py prices.
  spanner_edition = var.spanner_edition != "" ? var.spanner_edition : (local.spanner_regional ? "STANDARD" : "ENTERPRISE_PLUS")

  # An instance under 1,000 processing units holds 10 databases per 100 units, one of
  # 1,000 or more holds 100 (https://cloud.google.com/spanner/quotas, "Databases per
  # instance"): each instance is never smaller than its serving databases need, whatever
  # spanner_processing_units says, so the eleventh system that opts in raises it (an
  # online change) in the apply that creates its database, before creating it.
  spanner_units_needed = {
    for instance, names in local.spanner_databases : instance => min(ceil(length(names) / 10) * 100, 1000)
  }

  # Storage grows with compute too (https://cloud.google.com/spanner/docs/compute-capacity,
  # "Data storage limits", read 2026): 1024 GiB per 100 processing units below one node,
  # 10 TiB per node (1,000 units) from one node on. At the limit Spanner refuses writes:
  # every push would answer 503 and the backlog go to the dead-letter topic.
  spanner_bytes_per_100_units = 1024 * pow(1024, 3)
  spanner_bytes_per_node      = 10 * pow(1024, 4)
  # Sized to be at most this full: the storage ticket's threshold, leaving room for a
  # backlog and for the old versions Spanner's compaction removes only every few days.
  spanner_storage_fill = 0.7
  # What one message takes in Spanner besides its data: keys, times, attributes,
  # subscription and trace id (about 250 bytes) and its two index entries
  # (records_by_ingest_time, records_by_id: about 150). An estimate from the schema
  # (app/store/spanner/schema.py); the storage alerts say what it really is.
  spanner_row_overhead_bytes = 400
  # What a message's data takes in Spanner: the JSON the service stores in `data`
  # (app/ingest/payload.py). A JSON message is stored as published; a BINARY one (Avro or
  # protobuf on the wire) as the JSON it decodes to, which names every field: its
  # `json_bytes` if the system declares it, else its message_bytes times
  # binary_json_ratio.
  serving_data_bytes = {
    for name in local.serving_systems : name => (
      local.systems[name].json_bytes != null ? local.systems[name].json_bytes : (
        (local.systems[name].message_bytes != null ? local.systems[name].message_bytes : var.serving_message_bytes)
        * (try(local.systems[name].schema.encoding, "JSON") == "BINARY" ? var.binary_json_ratio : 1)
      )
    )
  }
  # Each serving system keeps its rows for its retention (the dedupe window rounded up
  # to days, plus 2: modules/system/spanner.tf, 9 days by default), and the rows deleted
  # since as old versions for spanner_recovery_hours more.
  serving_windows = {
    for name in local.serving_systems : name => tonumber(lookup(
      merge(var.extra_env, local.systems[name].extra_env != null ? local.systems[name].extra_env : {}),
      "RECORDLINE_DEDUPE_WINDOW_SECONDS", "604800"
    ))
  }
  serving_stored_bytes = {
    for name in local.serving_systems : name => (
      (local.systems[name].rate != null ? local.systems[name].rate : var.serving_rate)
      * (local.serving_data_bytes[name] + local.spanner_row_overhead_bytes)
      * 86400 * (ceil(local.serving_windows[name] / 86400) + 2 + var.spanner_recovery_hours / 24)
    )
  }
  spanner_stored_bytes = {
    for instance, names in local.spanner_databases : instance => sum(concat([0], [for name in names : local.serving_stored_bytes[name]]))
  }
  # The fewest units whose storage, filled to spanner_storage_fill, holds it all:
  # 100 to 900 in steps of 100, then whole nodes.
  spanner_units_for_storage = {
    for instance, stored in local.spanner_stored_bytes : instance => (
      stored <= 9 * local.spanner_bytes_per_100_units * local.spanner_storage_fill
      ? max(100, ceil(stored / (local.spanner_bytes_per_100_units * local.spanner_storage_fill)) * 100)
      : ceil(stored / (local.spanner_bytes_per_node * local.spanner_storage_fill)) * 1000
    )
  }
  spanner_processing_units = {
    for instance in local.spanner_instances : instance => max(
      var.spanner_processing_units, local.spanner_units_needed[instance], local.spanner_units_for_storage[instance]
    )
  }
  spanner_storage_bytes = {
    for instance, units in local.spanner_processing_units : instance => (
      units < 1000 ? units / 100 * local.spanner_bytes_per_100_units : units / 1000 * local.spanner_bytes_per_node
    )
  }
  # The whole serving tier, for the cost table (infra/fleet_cost.py).
  spanner_total_units        = sum(concat([0], values(local.spanner_processing_units)))
  spanner_total_stored_bytes = sum(concat([0], values(local.spanner_stored_bytes)))

  # Storage used over the limit: a ticket at 70% (what the instance is sized to),
  # a page at 90% (writes are refused at 100%); one policy per instance and level.
  spanner_storage_alerts = {
    ticket = { threshold = 0.7, severity = "WARNING", channels = var.ticket_channels }
    page   = { threshold = 0.9, severity = "CRITICAL", channels = var.notification_channels }
  }
  spanner_storage_policies = {
    for pair in setproduct(sort(tolist(local.spanner_instances)), keys(local.spanner_storage_alerts)) :
    "${pair[0]} ${pair[1]}" => merge(local.spanner_storage_alerts[pair[1]], { instance = pair[0] })
  }

  # Google's recommended maximum of high-priority CPU: 65% for a regional instance, 45%
  # per region for a dual- or multi-region one, so the instance can still serve with a
  # zone (or a region) lost (https://cloud.google.com/spanner/docs/cpu-utilization).
  spanner_cpu_threshold = local.spanner_regional ? 0.65 : 0.45
}

resource "google_spanner_instance" "serving" {
  for_each = local.spanner_instances

  project          = var.project_id
  name             = each.key
  config           = local.spanner_config
  edition          = local.spanner_edition
  display_name     = "${var.service_name} serving"
  processing_units = local.spanner_processing_units[each.key]

  # Spanner replicates every commit across zones before it is acknowledged, and the
  # exporter puts each row in BigQuery within seconds (its lag alerts say otherwise):
  # the daily backups a new instance takes by default would keep, a day late, a week of
  # copies of rows BigQuery holds already, and miss the seconds it does not yet.
  default_backup_schedule_type = "NONE"

  depends_on = [google_project_service.enabled]

  # Deleting the instance deletes every database on it. Its databases carry drop
  # protection, which Spanner enforces on the instance too; and a plan that would
  # destroy it (the last system leaving `serving`) fails here first.
  lifecycle {
    prevent_destroy = true

    # 100 databases is the most any instance holds, however large: this configuration
    # keeps ten free on each, for a restore beside the live database and for the next
    # system, and the systems past 90 name another instance.
    precondition {
      condition     = length(local.spanner_databases[each.key]) <= local.spanner_databases_per_instance
      error_message = "${length(local.spanner_databases[each.key])} serving databases on the Spanner instance ${each.key}: this configuration puts at most ${local.spanner_databases_per_instance} on one (Spanner's limit is 100, https://cloud.google.com/spanner/quotas). Give the systems added last `spanner_instance = ${length(local.spanner_instances) + 1}` in env/${var.environment}.tfvars: a new instance (${local.spanner_instance_name}-${length(local.spanner_instances) + 1}) holds their databases (docs/operations.md#a-second-spanner-instance)."
    }
  }
}

# A ticket, not a page: a busy instance is a cause; readers feel it through the read
# latency and freshness SLOs, which page. High-priority CPU summed over its databases
# and system tasks, per region, held above Google's recommended maximum for 10 minutes.
resource "google_monitoring_alert_policy" "spanner_cpu" {
  for_each = google_spanner_instance.serving

  project               = var.project_id
  display_name          = "Recordline serving tier (${var.environment}): Spanner high-priority CPU over ${format("%g", local.spanner_cpu_threshold * 100)}%"
  combiner              = "OR"
  severity              = "WARNING"
  notification_channels = var.ticket_channels

  conditions {
    display_name = "instance/cpu/utilization_by_priority, priority high, > ${local.spanner_cpu_threshold} for 10 min"
    condition_threshold {
      filter          = "metric.type=\"spanner.googleapis.com/instance/cpu/utilization_by_priority\" resource.type=\"spanner_instance\" resource.label.\"instance_id\"=\"${each.value.name}\" metric.label.\"priority\"=\"high\""
      comparison      = "COMPARISON_GT"
      threshold_value = local.spanner_cpu_threshold
      duration        = "600s"
      aggregations {
        alignment_period     = "60s"
        per_series_aligner   = "ALIGN_MEAN"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["resource.label.\"instance_id\"", "resource.label.\"location\""]
      }
    }
  }

  # The systems counted, not named: a hundred names would grow the text with the fleet.
  documentation {
    mime_type = "text/markdown"
    content   = "The Spanner instance `${each.value.name}` (${each.value.processing_units} processing units, ${each.value.config}), which holds the serving databases of ${length(local.spanner_databases[each.key])} systems (those with `serving` in env/${var.environment}.tfvars), has spent over ${format("%g", local.spanner_cpu_threshold * 100)}% of its CPU on high-priority work for 10 minutes: past Google's recommended maximum, reads and commits slow down, and losing a zone would leave too little. Each system's dashboard has the tile \"Spanner CPU by priority\". Add processing units at once with the runbook's command (as the operator account, no workflow to wait for), then the same figure in `spanner_processing_units` in env/${var.environment}.tfvars.\n\nRunbook: docs/operations.md#spanner-cpu"
  }
}

# Storage: what the databases hold over what the instance's compute allows. Spanner
# refuses writes past it, so it pages before, and tickets when the instance is fuller
# than it was sized to be. The metric is the instance's own fraction of its limit.
resource "google_monitoring_alert_policy" "spanner_storage" {
  for_each = local.spanner_storage_policies

  project               = var.project_id
  display_name          = "Recordline serving tier (${var.environment}): Spanner storage over ${format("%g", each.value.threshold * 100)}% of its limit"
  combiner              = "OR"
  severity              = each.value.severity
  notification_channels = each.value.channels

  conditions {
    display_name = "instance/storage/utilization > ${each.value.threshold} for 10 min"
    condition_threshold {
      filter          = "metric.type=\"spanner.googleapis.com/instance/storage/utilization\" resource.type=\"spanner_instance\" resource.label.\"instance_id\"=\"${each.value.instance}\""
      comparison      = "COMPARISON_GT"
      threshold_value = each.value.threshold
      duration        = "600s"
      aggregations {
        alignment_period   = "300s"
        per_series_aligner = "ALIGN_MAX"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "The Spanner instance `${each.value.instance}` (${local.spanner_processing_units[each.value.instance]} processing units: ${format("%.0f", local.spanner_storage_bytes[each.value.instance] / 1e9)} GB of storage) holds over ${format("%g", each.value.threshold * 100)}% of what its compute allows. It was sized for ${format("%.0f", local.spanner_stored_bytes[each.value.instance] / 1e9)} GB from each system's declared rate and message size; at 100% Spanner refuses writes and every push answers 503. Raise its processing units at once with the runbook's command (as the operator account: nothing waits in a workflow's queue), then the same figure in `spanner_processing_units` in env/${var.environment}.tfvars, and correct the systems' `rate`, `message_bytes` or `json_bytes`.\n\nRunbook: docs/operations.md#spanner-storage"
  }

  depends_on = [google_spanner_instance.serving]
}

# The storage policies were one per level when there was one instance: the first
# instance keeps them.
moved {
  from = google_monitoring_alert_policy.spanner_storage["ticket"]
  to   = google_monitoring_alert_policy.spanner_storage["recordline-serving ticket"]
}

moved {
  from = google_monitoring_alert_policy.spanner_storage["page"]
  to   = google_monitoring_alert_policy.spanner_storage["recordline-serving page"]
}
