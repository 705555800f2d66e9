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
  spanner_units_needed     = min(ceil(length(local.serving_systems) / 10) * 100, 1000)
  spanner_processing_units = max(var.spanner_processing_units, local.spanner_units_needed)

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

  documentation {
    mime_type = "text/markdown"
    content   = "The Spanner instance `${each.value.name}` (${each.value.processing_units} processing units, ${each.value.config}), which holds the serving databases of ${join(", ", local.serving_systems)}, has spent over ${format("%g", local.spanner_cpu_threshold * 100)}% of its CPU on high-priority work for 10 minutes: past Google's recommended maximum, reads and commits slow down, and losing a zone would leave too little. Each system's dashboard has the tile \"Spanner CPU by priority\". Add processing units with `spanner_processing_units` in env/${var.environment}.tfvars (an online change).\n\nRunbook: docs/operations.md#spanner-cpu"
  }
}
