# The environment's cells, as their own variable files declare them
# (../env/<environment>/<cell>.tfvars.json, each the variables of one cell root's
# state: infra/README.md, "Cells"). A cell is one ingest service and one exporter pool
# for up to cell_max_systems (100) systems, in a project of the environment: this one,
# or one of its own once this one's limits are reached. Read here for what only the
# environment sees: the limits of each project, summed over the cells in it; the
# metrics scope that lets the pages and tickets read every cell's project; and which
# channels each system's tickets go to (tickets.tf).

locals {
  cell_directory = "${path.module}/../env/${var.environment}"
  cells = {
    for file in fileset(local.cell_directory, "*.tfvars.json") :
    trimsuffix(file, ".tfvars.json") => jsondecode(file("${local.cell_directory}/${file}"))
  }

  # Each cell's systems by name; a cell file without `systems` runs one system named
  # service_name (the cell root's systems.tf).
  cell_systems = {
    for cell, body in local.cells : cell => merge(
      { for name in(length(try(body.systems, {})) > 0 ? [] : [var.service_name]) : name => {} },
      try(body.systems, {}),
    )
  }
  # Every system of the environment, with its cell: a name is a topic, a dataset and an
  # account, and the `namespace` of its metrics, so it is the environment's only once.
  system_cell  = merge([for cell, systems in local.cell_systems : { for name in keys(systems) : name => cell }]...)
  system_names = flatten([for systems in values(local.cell_systems) : keys(systems)])

  cell_project = { for cell, body in local.cells : cell => try(body.project_id, var.project_id) }
  cell_region  = { for cell, body in local.cells : cell => try(body.region, var.region) }
  cell_serving = {
    for cell, systems in local.cell_systems : cell => length([
      for s in values(systems) : s if try(s.serving, null) != null ? s.serving : try(local.cells[cell].serving, false)
    ])
  }
  projects = toset(values(local.cell_project))

  # Whether any system of the environment has `serving`: the pages and tickets of the
  # export and of the Spanner instances exist only then (fleet.tf, tickets.tf). Each
  # condition costs $1.50 a month (https://cloud.google.com/stackdriver/pricing): an
  # environment on BigQuery alone pays for none of those six.
  any_serving = sum(concat([0], values(local.cell_serving))) > 0

  # Each system's declared rate (messages a second) where it is not the default: its own
  # `rate`, else its cell's serving_rate, else the cell root's default (variables.tf:
  # serving_rate, 10). Its ticket holds its pushes to it (tickets.tf).
  default_rate = 10
  declared_rates = merge([
    for cell, systems in local.cell_systems : {
      for name, s in systems : name => try(s.rate, null) != null ? s.rate : try(local.cells[cell].serving_rate, local.default_rate)
      if(try(s.rate, null) != null ? s.rate : try(local.cells[cell].serving_rate, local.default_rate)) != local.default_rate
    }
  ]...)
  serving_symptoms = toset(["export_lag", "export_blocked", "spanner_storage", "spanner_cpu"])

  # What the cells hold in each project, against what the project may hold. Accounts:
  # each system's push account, each cell's runtime and exporter accounts, the
  # environment's five in its own project. Cloud Run: a service, a pool and two jobs a
  # cell, per region. Pub/Sub: two topics and three subscriptions a system. Scheduler:
  # one canary job a system, per region.
  project_usage = {
    for project in local.projects : project => {
      cells            = length([for cell, p in local.cell_project : cell if p == project])
      systems          = sum(concat([0], [for cell, p in local.cell_project : length(local.cell_systems[cell]) if p == project]))
      service_accounts = sum(concat([project == var.project_id ? 5 : 0], [for cell, p in local.cell_project : length(local.cell_systems[cell]) + 2 if p == project]))
      topics           = sum(concat([0], [for cell, p in local.cell_project : 2 * length(local.cell_systems[cell]) if p == project]))
      subscriptions    = sum(concat([0], [for cell, p in local.cell_project : 3 * length(local.cell_systems[cell]) if p == project]))
      # The most in any one region of the project.
      run_services = max(0, [for region in distinct(values(local.cell_region)) : length([for cell, p in local.cell_project : cell if p == project && local.cell_region[cell] == region])]...)
      run_jobs     = 2 * max(0, [for region in distinct(values(local.cell_region)) : length([for cell, p in local.cell_project : cell if p == project && local.cell_region[cell] == region])]...)
      scheduler_jobs = max(0, [for region in distinct(values(local.cell_region)) : sum(concat([0], [
        for cell, p in local.cell_project : length(local.cell_systems[cell]) if p == project && local.cell_region[cell] == region
      ]))]...)
    }
  }
  # Each limit, its value and where it is written.
  project_limits = {
    for project in local.projects : project => {
      service_accounts = coalesce(try(var.project_quotas[project].service_accounts, null), var.service_account_quota)
      scheduler_jobs   = coalesce(try(var.project_quotas[project].scheduler_jobs, null), 1000)
      # https://cloud.google.com/run/quotas: services and jobs per region of a project.
      run_services = 1000
      run_jobs     = 1000
      # https://cloud.google.com/pubsub/quotas: topics and subscriptions per project.
      topics        = 10000
      subscriptions = 10000
    }
  }
  over_limit = flatten([
    for project, usage in local.project_usage : [
      for limit, most in local.project_limits[project] :
      "${project}: ${usage[limit]} ${replace(limit, "_", " ")} (at most ${most})" if usage[limit] > most
    ]
  ])

  # Every cell's project beside this one joins this project's metrics scope, so the
  # pages and tickets (PromQL, evaluated here) read every cell's series.
  cell_only_projects = setsubtract(local.projects, [var.project_id])
}

# The environment's limits at plan time, each with its source: nothing past one is
# applied. Whatever the number of systems, what grows is the number of cells, and what
# one cell needs is bounded by its own root's checks (the cell root's limits.tf).
resource "terraform_data" "limits" {
  input = local.project_usage

  lifecycle {
    precondition {
      condition     = length(local.over_limit) == 0
      error_message = "More than a project holds: ${join("; ", local.over_limit)}. Ask for the quota (docs/operations.md, \"Quotas to ask for\") and set it in project_quotas, or put the next cells in a project of their own (their project_id in env/${var.environment}/<cell>.tfvars.json)."
    }
    precondition {
      condition     = length(local.system_names) == length(distinct(local.system_names))
      error_message = "A system is in two cells: ${join(", ", distinct([for n in local.system_names : n if length([for m in local.system_names : m if m == n]) > 1]))}. A system's name is its topic, dataset, accounts and metrics' namespace: it is the environment's once."
    }
    # Each cell's file is that cell's: named by its file, in this environment, its
    # identities this project's.
    precondition {
      condition = alltrue([
        for cell, body in local.cells :
        try(body.cell, cell) == cell && try(body.environment, "") == var.environment && try(body.environment_project_id, body.project_id, var.project_id) == var.project_id
      ])
      error_message = "Each env/${var.environment}/<cell>.tfvars.json names its cell as its file does, environment = \"${var.environment}\", and this project (${var.project_id}) as project_id or environment_project_id."
    }
    # A rollout deploys the cells as a matrix of jobs, at most 256 of them
    # (https://docs.github.com/en/actions/writing-workflows/choosing-what-your-workflow-does/running-variations-of-jobs-in-a-workflow);
    # the metrics scope holds 100 uptime checks, one a cell
    # (https://cloud.google.com/monitoring/quotas).
    precondition {
      condition     = length(local.cells) <= 100
      error_message = "${length(local.cells)} cells: a metrics scope holds 100 uptime checks (one a cell) and a rollout's matrix 256 jobs; split the environment."
    }
  }
}

resource "google_monitoring_monitored_project" "cells" {
  for_each = local.cell_only_projects

  metrics_scope = "locations/global/metricsScopes/${var.project_id}"
  name          = each.key

  depends_on = [google_project_service.enabled]
}
