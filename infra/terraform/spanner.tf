# The serving tier (infra/README.md, "The serving tier"): the systems with `serving`
# keep their recent rows in Spanner, their system of record, from which the cell's
# exporter pool feeds BigQuery; each system's rows are in a database of its own
# (modules/system/spanner.tf), on one of the cell's instances: 100 processing units
# hold the databases of many systems, and each instance is sized, alerted and raised on
# its own. An instance exists once a system of the cell opts in; without any, nothing
# here is created. Its alerts are the environment's (environment/tickets.tf, fleet.tf):
# one policy per symptom for every instance of every cell.

locals {
  # Systems with a serving database: their own `serving`, else the environment's.
  serving_systems = sort([
    for name, system in local.systems : name
    if system.serving != null ? system.serving : var.serving
  ])

  # The instances, by name: the first `<cell>-serving`, the n-th `<cell>-serving-<n>`. Each system's database is on the one its entry's
  # `spanner_instance` names (1 by default): an instance holds at most 100 databases
  # (https://cloud.google.com/spanner/quotas, "Databases per instance"), and this
  # configuration puts no more than spanner_databases_per_instance (90) on one, so a
  # restore or a new system never meets a full one. The number is the system's own,
  # never derived from its place in a list: a database that moved would be replaced.
  spanner_instance_name = "${local.cell}-serving"
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
  # Each serving system keeps its rows for its retention (the cell's dedupe window
  # rounded up to days, plus 2: modules/system/spanner.tf, 9 days by default), and the
  # rows deleted since as old versions for spanner_recovery_hours more.
  serving_windows = { for name in local.serving_systems : name => local.dedupe_window_seconds }
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
  # Compute follows what the databases do as well as what they hold. At 100% CPU a node
  # (1,000 processing units) of a regional configuration writes about 3,500 rows of 1 KB
  # a second, 22,500 with throughput-optimized writes (commits that may wait up to
  # 100 ms to be batched, as the serving tier's group commits do:
  # app/store/spanner/calls.py, COMMIT_DELAY), or reads 22,500 rows; a dual- or
  # multi-region one 2,700, 15,000 and 15,000
  # (https://cloud.google.com/spanner/docs/performance, "Performance for typical
  # workloads", read 2026). Google recommends keeping high-priority CPU under 65% for a
  # regional instance, 45% for a dual- or multi-region one
  # (https://cloud.google.com/spanner/docs/cpu-utilization): the CPU ticket's thresholds.
  spanner_node_writes = local.spanner_regional ? 22500 : 15000
  spanner_node_reads  = local.spanner_regional ? 22500 : 15000
  spanner_cpu_ceiling = local.spanner_regional ? 0.65 : 0.45
  # What one push costs Spanner: its row in `records` and an entry in each of its two
  # indexes (records_by_ingest_time, records_by_id: app/store/spanner/schema.py), three
  # row writes; and one read, the export's of the row (low priority, counted here as
  # high: the CPU it takes is the instance's all the same). A group commit of new
  # messages reads nothing (app/store/spanner/serving.py); a redelivery's, rare, reads
  # which keys the database holds.
  spanner_writes_per_push = 3
  spanner_reads_per_push  = 1
  # Rows each serving system's readers read from Spanner a second, besides: its own
  # `reads`, else serving_reads (variables.tf).
  serving_reads = {
    for name in local.serving_systems : name => (
      local.systems[name].reads != null ? local.systems[name].reads : var.serving_reads
    )
  }
  # Nodes' worth of CPU each instance's databases use at their declared rates.
  spanner_cpu_nodes = {
    for instance, names in local.spanner_databases : instance => sum(concat([0], [
      for name in names : (
        local.rates[name] * local.spanner_writes_per_push / local.spanner_node_writes
        + (local.rates[name] * local.spanner_reads_per_push + local.serving_reads[name]) / local.spanner_node_reads
      )
    ]))
  }
  # The fewest units that keep that under the ceiling: 100 to 900 in steps of 100, then
  # whole nodes.
  spanner_units_for_cpu = {
    for instance, nodes in local.spanner_cpu_nodes : instance => (
      nodes / local.spanner_cpu_ceiling <= 0.9
      ? max(100, ceil(nodes / local.spanner_cpu_ceiling * 10) * 100)
      : ceil(nodes / local.spanner_cpu_ceiling) * 1000
    )
  }

  # Each instance's own: what its databases, their storage and their CPU need, the least
  # every instance of the cell has (spanner_processing_units), what it alone was given
  # (spanner_instance_units: on-call's figure, merged) and what it has now
  # (spanner_live_units, read by the plan job: no plan lowers an instance on-call raised
  # by hand, and none is refused for it). Each is a size Spanner takes, so their maximum
  # is one too.
  spanner_processing_units = {
    for instance in local.spanner_instances : instance => max(
      var.spanner_processing_units,
      lookup(var.spanner_instance_units, instance, 0),
      lookup(var.spanner_live_units, instance, 0),
      local.spanner_units_needed[instance],
      local.spanner_units_for_storage[instance],
      local.spanner_units_for_cpu[instance],
    )
  }
  spanner_storage_bytes = {
    for instance, units in local.spanner_processing_units : instance => (
      units < 1000 ? units / 100 * local.spanner_bytes_per_100_units : units / 1000 * local.spanner_bytes_per_node
    )
  }
  # The whole serving tier, for the cost table (infra/fleet_cost.py).
  spanner_total_units        = sum(concat([0], values(local.spanner_processing_units)))
  spanner_total_cpu_units    = sum(concat([0], values(local.spanner_units_for_cpu)))
  spanner_total_stored_bytes = sum(concat([0], values(local.spanner_stored_bytes)))
}

resource "google_spanner_instance" "serving" {
  for_each = local.spanner_instances

  project          = var.project_id
  name             = each.key
  config           = local.spanner_config
  edition          = local.spanner_edition
  display_name     = "${local.cell} serving"
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
      error_message = "${length(local.spanner_databases[each.key])} serving databases on the Spanner instance ${each.key}: this configuration puts at most ${local.spanner_databases_per_instance} on one (Spanner's limit is 100, https://cloud.google.com/spanner/quotas). Give the systems added last `spanner_instance = ${length(local.spanner_instances) + 1}` in env/${var.environment}/${local.cell}.tfvars.json: a new instance (${local.spanner_instance_name}-${length(local.spanner_instances) + 1}) holds their databases (docs/operations.md#a-second-spanner-instance)."
    }
  }
}
