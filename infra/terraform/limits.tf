# What one cell may hold, at plan time, each limit with its source; what the cells of a
# project hold together is the environment's plan's (environment/cells.tf). Past one,
# nothing is applied: each check stops the plan naming what to do. The others are where
# they are met: the systems file's size (cell.tf, the secret's version), the audiences
# and the service's principals (cell.tf, the service), the databases of an instance
# (spanner.tf), the cell's systems and accounts (variables.tf, systems).
resource "terraform_data" "limits" {
  input = {
    systems          = length(local.systems)
    slos             = local.cell_slos
    systems_file     = local.systems_file_bytes
    custom_audiences = length(jsonencode(local.custom_audiences))
  }

  lifecycle {
    # A service holds 500 SLOs
    # (https://cloud.google.com/stackdriver/docs/solutions/slo-monitoring/ui/create-slo).
    precondition {
      condition     = local.cell_slos <= 500
      error_message = "The cell's SLO service would hold ${local.cell_slos} SLOs, two a system and the cell's reads' two, over the 500 a service holds: move systems to another cell."
    }
    # Each system's layout of `records` is one BigQuery can have (layouts.tf).
    precondition {
      condition     = length(flatten(values(local.layout_problems))) == 0
      error_message = "A system's layout cannot be (docs/layouts.md): ${join("; ", flatten([for k, problems in local.layout_problems : [for p in problems : "${k}: ${p}"]]))}."
    }
    # The canary systems are the cell's, and the smoke test's and the export gate's.
    precondition {
      condition     = length(local.canary_systems) > 0 && alltrue([for name in local.canary_systems : contains(keys(local.systems), name)])
      error_message = "canary_systems must name systems of this cell (${join(", ", sort(keys(local.systems)))})."
    }
    # ...and they represent it: a release meets each shape the cell holds (a topic
    # schema, typed columns, the largest rate) on a canary before every system has it.
    precondition {
      condition     = alltrue([for shape, names in local.canary_shapes : length(names) == 0 || length(setintersection(names, local.canary_systems)) > 0])
      error_message = "canary_systems must name, for each shape this cell holds, a system of it: ${join("; ", [for shape, names in local.canary_shapes : "${shape}: one of ${join(", ", names)}" if length(names) > 0 && length(setintersection(names, local.canary_systems)) == 0])}."
    }
  }
}
