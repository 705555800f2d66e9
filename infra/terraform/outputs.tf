output "systems" {
  description = "Each system of the cell: its push endpoint, topic, dead-letter replay subscription, acknowledgement deadline, dataset and push account."
  value = {
    for name, system in module.system : name => {
      push_endpoint                   = system.push_endpoint
      topic                           = system.topic
      dead_letter_replay_subscription = system.dead_letter_replay_subscription
      ack_deadline_seconds            = system.ack_deadline_seconds
      dataset                         = system.dataset
      push_service_account            = system.push_service_account
    }
  }
}

# Read by deploy-environment.yml and deploy-cell.yml from the state when a rollout
# starts: what to deploy in this cell, and what its smoke test and export gate need.
output "deploy" {
  description = "The cell's ingest service and exporter pool (empty without a serving system), its jobs, its canary systems with what the smoke test pushes to each, and the export gate's soak and lag bound."
  value = {
    cell       = local.cell
    project    = var.project_id
    region     = var.region
    service    = google_cloud_run_v2_service.ingest.name
    pool       = join("", values(google_cloud_run_v2_worker_pool.exporter)[*].name)
    export_job = join("", values(google_cloud_run_v2_job.export)[*].name)
    ops_job    = google_cloud_run_v2_job.ops.name
    # Empty where no system has tables of its own (fill.tf).
    fill_job = join("", values(google_cloud_run_v2_job.fill)[*].name)
    # What a canary exporter revision reads, and what every revision reads.
    canary_systems_setting = local.canary_setting
    systems_setting        = local.systems_setting
    read_audience          = local.read_audience
    smoke_service_account  = local.environment_accounts.smoke
    canary = {
      for name in local.canary_systems : name => merge(module.system[name].smoke, {
        serving = contains(local.serving_systems, name)
      })
    }
    # The second export gate watches every one of these, as the promoted revision
    # writes them.
    serving_systems  = local.serving_systems
    soak_seconds     = var.export_soak_seconds
    gate_lag_seconds = var.export_gate_lag_seconds
    # What a rollout keeps for a rollback: the newest kept_revisions of the service and
    # of the pool (and any that serves), and every version of these secrets that one of
    # them, or a job, mounts. Where it records what was live before it: the release.
    kept_revisions = var.kept_revisions
    secrets = concat(
      [google_secret_manager_secret.systems.secret_id],
      values(google_secret_manager_secret.systems_values)[*].secret_id,
      values(google_secret_manager_secret.canary_systems)[*].secret_id,
      values(google_secret_manager_secret.read_pass)[*].secret_id,
    )
    release = local.release_object
  }
}

output "directory" {
  description = "Where each system of the cell is (directory.tf): what the runbook's commands name."
  value       = local.directory
}

output "billing" {
  description = "What the cell's ingest service is billed by: its systems' declared rate against the break-even (cell.tf)."
  value = {
    rate           = local.cell_rate
    break_even     = var.billing_break_even_rate
    instance_based = local.instance_based
    min_instances  = local.ingest_min_instances
  }
}

# Each of cdn.domains needs an A record to this address before Google issues the
# managed certificate (docs/deploying.md#cloud-cdn-for-followers).
output "cdn" {
  description = "The cell's Cloud CDN for followers (cdn.tf), where enabled: the address its domains point to, the domains, and the read paths it serves."
  value = local.cdn_enabled ? {
    address    = google_compute_global_address.cdn["cdn"].address
    domains    = var.cdn.domains
    read_paths = local.cdn_read_paths
  } : null
}
