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

  spanner_instance_name = "${var.service_name}-serving"
  spanner_instances     = length(local.serving_systems) > 0 ? toset([local.spanner_instance_name]) : toset([])
  spanner_config        = var.spanner_config != "" ? var.spanner_config : "regional-${var.region}"

  # An instance under 1,000 processing units holds 10 databases per 100 units, one of
  # 1,000 or more holds 100 (https://cloud.google.com/spanner/quotas, "Databases per
  # instance"): the instance is never smaller than its serving databases need, whatever
  # spanner_processing_units says, so the eleventh system that opts in raises it (an
  # online change) in the apply that creates its database, before creating it.
  spanner_units_needed = min(ceil(length(local.serving_systems) / 10) * 100, 1000)

  # Storage grows with compute too (https://cloud.google.com/spanner/docs/compute-capacity,
  # "Storage limits"): 409.6 GB per 100 processing units below one node, 4 TB per node
  # (1,000 units) from one node on (10 TB in configurations with increased storage: 4 TB
  # is the floor counted here). At the limit Spanner refuses writes: every push would
  # answer 503 and the backlog go to the dead-letter topic.
  spanner_bytes_per_100_units = 409.6e9
  spanner_bytes_per_node      = 4e12
  # Sized to be at most this full: the storage ticket's threshold, leaving room for a
  # backlog and for the old versions Spanner's compaction removes only every few days.
  spanner_storage_fill = 0.7
  # What one message takes in Spanner besides its data: keys, times, attributes,
  # subscription and trace id (about 250 bytes) and its two index entries
  # (records_by_ingest_time, records_by_id: about 150). An estimate from the schema
  # (app/store/spanner/schema.py); the storage alerts say what it really is.
  spanner_row_overhead_bytes = 400
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
      * ((local.systems[name].message_bytes != null ? local.systems[name].message_bytes : var.serving_message_bytes) + local.spanner_row_overhead_bytes)
      * 86400 * (ceil(local.serving_windows[name] / 86400) + 2 + var.spanner_recovery_hours / 24)
    )
  }
  spanner_stored_bytes = sum(concat([0], values(local.serving_stored_bytes)))
  # The fewest units whose storage, filled to spanner_storage_fill, holds it all:
  # 100 to 900 in steps of 100, then whole nodes.
  spanner_units_for_storage = (
    local.spanner_stored_bytes <= 9 * local.spanner_bytes_per_100_units * local.spanner_storage_fill
    ? max(100, ceil(local.spanner_stored_bytes / (local.spanner_bytes_per_100_units * local.spanner_storage_fill)) * 100)
    : ceil(local.spanner_stored_bytes / (local.spanner_bytes_per_node * local.spanner_storage_fill)) * 1000
  )
  spanner_processing_units = max(var.spanner_processing_units, local.spanner_units_needed, local.spanner_units_for_storage)
  spanner_storage_bytes = (
    local.spanner_processing_units < 1000
    ? local.spanner_processing_units / 100 * local.spanner_bytes_per_100_units
    : local.spanner_processing_units / 1000 * local.spanner_bytes_per_node
  )

  # Storage used over the limit: a ticket at 70% (what the instance is sized to),
  # a page at 90% (writes are refused at 100%).
  spanner_storage_alerts = {
    ticket = { threshold = 0.7, severity = "WARNING", channels = var.ticket_channels }
    page   = { threshold = 0.9, severity = "CRITICAL", channels = var.notification_channels }
  }

  # Google's recommended maximum of high-priority CPU: 65% for a regional instance, 45%
  # per region for a dual- or multi-region one, so the instance can still serve with a
  # zone (or a region) lost (https://cloud.google.com/spanner/docs/cpu-utilization).
  spanner_cpu_threshold = startswith(local.spanner_config, "regional-") ? 0.65 : 0.45
}

resource "google_spanner_instance" "serving" {
  for_each = local.spanner_instances

  project          = var.project_id
  name             = each.key
  config           = local.spanner_config
  display_name     = "${var.service_name} serving"
  processing_units = local.spanner_processing_units

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

    # 100 databases is the most any instance holds, however large.
    precondition {
      condition     = length(local.serving_systems) <= 100
      error_message = "More than 100 systems with serving: a Spanner instance holds at most 100 databases (https://cloud.google.com/spanner/quotas). Split the systems across projects."
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
    content   = "The Spanner instance `${each.value.name}` (${each.value.processing_units} processing units, ${each.value.config}), which holds the serving databases of ${length(local.serving_systems)} systems (those with `serving` in env/${var.environment}.tfvars), has spent over ${format("%g", local.spanner_cpu_threshold * 100)}% of its CPU on high-priority work for 10 minutes: past Google's recommended maximum, reads and commits slow down, and losing a zone would leave too little. Each system's dashboard has the tile \"Spanner CPU by priority\". Add processing units with `spanner_processing_units` in env/${var.environment}.tfvars (an online change).\n\nRunbook: docs/operations.md#spanner-cpu"
  }
}

# Storage: what the databases hold over what the instance's compute allows. Spanner
# refuses writes past it, so it pages before, and tickets when the instance is fuller
# than it was sized to be. The metric is the instance's own fraction of its limit.
resource "google_monitoring_alert_policy" "spanner_storage" {
  for_each = length(local.spanner_instances) > 0 ? local.spanner_storage_alerts : {}

  project               = var.project_id
  display_name          = "Recordline serving tier (${var.environment}): Spanner storage over ${format("%g", each.value.threshold * 100)}% of its limit"
  combiner              = "OR"
  severity              = each.value.severity
  notification_channels = each.value.channels

  conditions {
    display_name = "instance/storage/utilization > ${each.value.threshold} for 10 min"
    condition_threshold {
      filter          = "metric.type=\"spanner.googleapis.com/instance/storage/utilization\" resource.type=\"spanner_instance\" resource.label.\"instance_id\"=\"${local.spanner_instance_name}\""
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
    content   = "The Spanner instance `${local.spanner_instance_name}` (${local.spanner_processing_units} processing units: ${format("%.0f", local.spanner_storage_bytes / 1e9)} GB of storage) holds over ${format("%g", each.value.threshold * 100)}% of what its compute allows. It was sized for ${format("%.0f", local.spanner_stored_bytes / 1e9)} GB from each system's declared rate and message size; at 100% Spanner refuses writes and every push answers 503. Raise `spanner_processing_units` in env/${var.environment}.tfvars (an online change), and correct the systems' `rate` and `message_bytes`.\n\nRunbook: docs/operations.md#spanner-storage"
  }

  depends_on = [google_spanner_instance.serving]
}
