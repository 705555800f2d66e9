# Where each system of the cell is, from its name alone: written at every apply to the
# environment's state bucket as directory/<cell>.json, which on-call and the operator
# account may read (environment/iam.tf) and the runbook's commands start from
# (docs/operations.md, "Where to look"): its project and region, its cell's service,
# URL, exporter pool, jobs, accounts and logs, and its own instance, database, dataset,
# subscriptions and canary job. Derived from what this root names them, so the
# commands always name what Terraform made (tests/infra/test_runbook_commands.py renders
# every command for a system on a second instance and checks each name).
locals {
  # What each rollout of the cell records of what was live before it and what it made
  # live (deploy-cell.yml): on-call reads it beside the directory.
  release_object = "gs://${var.terraform_state_bucket}/directory/releases/${local.cell}.json"

  directory = {
    for name in keys(local.systems) : name => {
      project       = var.project_id
      region        = var.region
      cell          = local.cell
      service       = local.cell
      url           = local.cell_url
      read_audience = local.read_audience
      push_audience = local.push_audiences[name]
      runtime       = "${local.cell}-run@${var.project_id}.iam.gserviceaccount.com"
      operator      = local.environment_accounts.operator
      ops_job       = "${local.cell}-ops"
      # A service's logs are its revisions'; a worker pool's are its own resource's.
      service_logs = "resource.type=\"cloud_run_revision\" resource.labels.service_name=\"${local.cell}\""
      pool         = length(local.exporter) > 0 ? "${local.cell}-exporter" : ""
      pool_logs    = length(local.exporter) > 0 ? "resource.type=\"cloud_run_worker_pool\" resource.labels.worker_pool_name=\"${local.cell}-exporter\"" : ""
      exporter     = length(local.exporter) > 0 ? "${local.cell}-exporter@${var.project_id}.iam.gserviceaccount.com" : ""
      export_job   = length(local.exporter) > 0 ? "${local.cell}-export" : ""
      # The cell's fill job, and the system's hourly run of it, where it has tables of
      # its own (fill.tf).
      fill_job      = length(local.fill) > 0 ? "${local.cell}-fill" : ""
      fill_schedule = contains(local.fill_systems, name) ? "${name}-fill" : ""
      instance      = contains(local.serving_systems, name) ? local.serving_instance[name] : ""
      database      = contains(local.serving_systems, name) ? name : ""
      dataset       = local.dataset_ids[name]
      # Where it is: a query that names no table of it (UNDROP SCHEMA) runs there.
      dataset_location = var.dataset_location
      # The dataset's topic and subscriptions, and the canary's Scheduler job.
      topic               = name
      subscription        = "${name}-push"
      replay_subscription = "${name}-dead-letter-replay"
      canary_job          = "${name}-canary"
      # Each secret its cell's revisions mount their settings from, and its cell's
      # last release: what was live before it, by image digest and settings version.
      systems_secret = "${local.cell}-systems"
      release        = local.release_object
      # The throttles on-call sets on its cell's systems (docs/cells.md#throttles).
      throttles_secret = "${local.cell}-throttles"
    }
  }
}

resource "google_storage_bucket_object" "directory" {
  bucket       = var.terraform_state_bucket
  name         = "directory/${local.cell}.json"
  content      = jsonencode(local.directory)
  content_type = "application/json"
}
