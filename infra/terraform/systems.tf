# One Recordline system per entry of var.systems (modules/system): topic, subscriptions,
# dead letters, dataset and tables, serving database, push account, SLOs and canary,
# served by the cell's service and exported by its pool (cell.tf, exporter.tf). One
# system is the default, so a single deployment stays one cell of one system; a hundred
# are a hundred entries (infra/README.md, "Cells").

locals {
  # Each system is named by its key: its resources carry the name, its metrics the label
  # `namespace`, its log lines the label `system`. The default keeps the names a single
  # deployment always had.
  systems = length(var.systems) > 0 ? var.systems : { (var.service_name) = local.system_defaults }

  # The default system's entry: every setting an entry of `systems` may override, unset,
  # so `each.value.<setting>` reads null (the environment's value) for it, as for an
  # entry that leaves the setting out. An empty entry would have no such attribute and
  # fail the plan. A test keeps these names equal to the entries' attributes.
  system_defaults = {
    readers          = null
    operators        = null
    exporters        = null
    ticket_channels  = null
    min_instances    = null
    max_instances    = null
    extra_env        = null
    serving          = null
    rate             = null
    message_bytes    = null
    json_bytes       = null
    reads            = null
    spanner_instance = null
    schema           = null
    id_field         = null
    time_field       = null
    canary_file      = null
    json_schema      = null
    layout           = null
    tables           = null
    delete_marker    = null
  }
}

locals {
  # The typed columns each system's schema names (its topic's, or a JSON topic's declared
  # one): the `fields` column its file's fields make, as the service's own mapping made
  # it into <file>.bigquery.json (`recordline schema typed`; HCL cannot read a .proto,
  # and that is the column the service would patch in), JSON; null without a schema, or
  # where the file makes no column. The plan refuses a missing or stale one
  # (variables.tf), so a null here is never a file not generated.
  typed_column = {
    for k, v in local.systems : k => try(
      jsondecode(file("${path.root}/../../${coalesce(try(v.schema.file, null), v.json_schema)}.bigquery.json")).column,
      null,
    )
  }
  typed_columns = { for k, column in local.typed_column : k => column == null ? null : jsonencode(column) }
}

module "system" {
  source   = "./modules/system"
  for_each = local.systems

  service_name = each.key
  dataset_id   = local.dataset_ids[each.key]
  operators    = toset(local.operators_of[each.key])

  # Its topic's schema and the payload's shape (README, "Your topic, your schema"); files
  # are paths from the repository's root, this directory's grandparent.
  topic_schema = each.value.schema == null ? null : {
    name       = each.value.schema.name != null ? each.value.schema.name : each.key
    definition = file("${path.root}/../../${each.value.schema.file}")
    type       = each.value.schema.type
    encoding   = each.value.schema.encoding
  }
  canary_data = each.value.canary_file != null ? filebase64("${path.root}/../../${each.value.canary_file}") : null
  # What `records` is created with besides the service's columns (modules/system/bigquery.tf),
  # and how it is partitioned and clustered (layouts.tf).
  typed_columns = local.typed_columns[each.key]
  layout        = local.layouts[each.key]
  # Its tables of its own beside `records`, laid out as declared (layouts.tf) and filled
  # hourly by the cell's fill job (fill.tf).
  tables = local.tables[each.key]
  # What marks a record deleted for records_latest (null: nothing does).
  delete_marker = each.value.delete_marker

  # Its Spanner database's instance, one of the cell's (spanner.tf).
  serving = contains(local.serving_systems, each.key) ? {
    instance       = google_spanner_instance.serving[local.serving_instance[each.key]].name
    recovery_hours = var.spanner_recovery_hours
    restore_role   = google_project_iam_custom_role.operator_restore_rows.id
  } : null

  # The cell it is in (cell.tf, exporter.tf, slos.tf).
  cell = {
    name        = local.cell
    uri         = google_cloud_run_v2_service.ingest.uri
    ingest      = google_cloud_run_v2_service.ingest.name
    location    = google_cloud_run_v2_service.ingest.location
    url         = local.cell_url
    slo_service = google_monitoring_custom_service.cell.service_id
    runtime     = google_service_account.runtime.email
    exporter    = join("", values(google_service_account.exporter)[*].email)
    # The fill account's e-mail, read from Terraform's own right to act as it: its
    # Scheduler jobs are created once that grant is.
    fill = join("", [
      for key, grant in google_service_account_iam_member.acts_as_fill : element(split("/", grant.service_account_id), 3) if endswith(key, " terraform_apply")
    ])
    fill_job              = join("", values(local.fill))
    dedupe_window_seconds = local.dedupe_window_seconds
  }

  project_id                  = var.project_id
  region                      = var.region
  dataset_location            = var.dataset_location
  write_deadline_seconds      = var.write_deadline_seconds
  ack_deadline_margin_seconds = var.ack_deadline_margin_seconds
  max_delivery_attempts       = var.max_delivery_attempts
  message_retention_duration  = var.message_retention_duration
  retry_minimum_backoff       = var.retry_minimum_backoff
  retry_maximum_backoff       = var.retry_maximum_backoff
  retention_days              = var.retention_days
  availability_goal           = var.availability_goal
  freshness_goal              = var.freshness_goal
  freshness_threshold_seconds = var.freshness_threshold_seconds
  slo_rolling_period_days     = var.slo_rolling_period_days

  # Each agent's e-mail, read once it exists and IAM knows it (apis.tf).
  service_agents           = time_sleep.service_agents.triggers
  operator_service_account = local.environment_accounts.operator
  oncall                   = var.oncall
  deployer_member          = local.deployer_member
  terraform_apply_member   = local.apply_member
  metric_types             = module.metrics.types

  depends_on = [
    google_project_service.enabled,
    module.metrics,
  ]
}

# A deployment made before systems were modules keeps every resource: each moves to
# the default system, none is destroyed and created again. (Its alert policies are
# replaced by the fleet's pages and tickets, tickets.tf: nothing of theirs is kept.)
moved {
  from = google_bigquery_dataset.recordline
  to   = module.system["recordline"].google_bigquery_dataset.recordline
}

moved {
  from = google_bigquery_table.records
  to   = module.system["recordline"].google_bigquery_table.records
}

moved {
  from = google_bigquery_table.rejected
  to   = module.system["recordline"].google_bigquery_table.rejected
}

moved {
  from = google_bigquery_job.search_index
  to   = module.system["recordline"].google_bigquery_job.search_index
}

moved {
  from = google_bigquery_table.dead_letters
  to   = module.system["recordline"].google_bigquery_table.dead_letters
}

moved {
  from = google_cloud_scheduler_job.canary
  to   = module.system["recordline"].google_cloud_scheduler_job.canary
}

moved {
  from = google_pubsub_topic_iam_member.canary_publisher
  to   = module.system["recordline"].google_pubsub_topic_iam_member.canary_publisher
}

moved {
  from = google_bigquery_dataset_iam_member.runtime_writes_dataset
  to   = module.system["recordline"].google_bigquery_dataset_iam_member.runtime_writes_dataset
}

moved {
  from = google_pubsub_topic.records
  to   = module.system["recordline"].google_pubsub_topic.records
}

moved {
  from = google_pubsub_topic.dead_letter
  to   = module.system["recordline"].google_pubsub_topic.dead_letter
}

moved {
  from = google_pubsub_subscription.push
  to   = module.system["recordline"].google_pubsub_subscription.push
}

moved {
  from = google_pubsub_subscription.dead_letter_to_bigquery
  to   = module.system["recordline"].google_pubsub_subscription.dead_letter_to_bigquery
}

moved {
  from = google_pubsub_subscription.dead_letter_replay
  to   = module.system["recordline"].google_pubsub_subscription.dead_letter_replay
}

moved {
  from = google_pubsub_topic_iam_member.dead_letter_publisher
  to   = module.system["recordline"].google_pubsub_topic_iam_member.dead_letter_publisher
}

moved {
  from = google_pubsub_subscription_iam_member.dead_letter_subscriber
  to   = module.system["recordline"].google_pubsub_subscription_iam_member.dead_letter_subscriber
}

moved {
  from = google_bigquery_table_iam_member.pubsub_writes_dead_letters
  to   = module.system["recordline"].google_bigquery_table_iam_member.pubsub_writes_dead_letters
}


# --- a deployment made before cells --------------------------------------------------
#
# Its state becomes its first cell's, named service_name (infra/README.md, "An
# environment set up before cells"): what was the default system's and is now the
# cell's moves to the cell, the shared push account back to that system, and nothing
# holding data moves at all. Every other system's service is deleted once the cell
# serves it (its traffic is the cell's from that apply on).
moved {
  from = module.system["recordline"].google_cloud_run_v2_service.recordline
  to   = google_cloud_run_v2_service.ingest
}

moved {
  from = module.system["recordline"].google_service_account.runtime
  to   = google_service_account.runtime
}

moved {
  from = module.system["recordline"].google_secret_manager_secret.page_token
  to   = google_secret_manager_secret.page_token
}

moved {
  from = module.system["recordline"].google_secret_manager_secret_version.page_token
  to   = google_secret_manager_secret_version.page_token
}

moved {
  from = module.system["recordline"].google_secret_manager_secret_iam_member.runtime_reads_page_token
  to   = google_secret_manager_secret_iam_member.runtime_reads_page_token
}

moved {
  from = module.system["recordline"].google_monitoring_custom_service.recordline
  to   = google_monitoring_custom_service.cell
}

moved {
  from = google_service_account.push
  to   = module.system["recordline"].google_service_account.push
}

moved {
  from = google_service_account_iam_member.pubsub_mints_push_token
  to   = module.system["recordline"].google_service_account_iam_member.pubsub_mints_push_token
}

moved {
  from = google_service_account_iam_member.terraform_apply_acts_as_push
  to   = module.system["recordline"].google_service_account_iam_member.terraform_apply_acts_as_push
}

# The environment's own resources are the environment root's now (environment/): each is
# moved into its state before this one is applied (`terraform state mv`, the commands in
# infra/README.md). Should one be left here, it is forgotten, never destroyed.
removed {
  from = google_artifact_registry_repository.images
  lifecycle {
    destroy = false
  }
}

removed {
  from = google_artifact_registry_repository_iam_member.deployer_pushes_images
  lifecycle {
    destroy = false
  }
}

removed {
  from = google_iam_workload_identity_pool.github
  lifecycle {
    destroy = false
  }
}

removed {
  from = google_iam_workload_identity_pool_provider.github
  lifecycle {
    destroy = false
  }
}

removed {
  from = google_service_account_iam_member.github_plans
  lifecycle {
    destroy = false
  }
}

removed {
  from = google_service_account_iam_member.github_workload_identity
  lifecycle {
    destroy = false
  }
}

removed {
  from = google_service_account.deployer
  lifecycle {
    destroy = false
  }
}

removed {
  from = google_service_account.terraform_plan
  lifecycle {
    destroy = false
  }
}

removed {
  from = google_service_account.terraform_apply
  lifecycle {
    destroy = false
  }
}

removed {
  from = google_service_account.operator
  lifecycle {
    destroy = false
  }
}

removed {
  from = google_service_account.smoke
  lifecycle {
    destroy = false
  }
}

removed {
  from = google_service_account_iam_member.deployer_mints_smoke_tokens
  lifecycle {
    destroy = false
  }
}

removed {
  from = google_service_account_iam_member.oncall_acts_as_operator
  lifecycle {
    destroy = false
  }
}

removed {
  from = google_storage_bucket_iam_member.deployer_reads_state
  lifecycle {
    destroy = false
  }
}

removed {
  from = google_storage_bucket_iam_member.terraform_plan_reads_state
  lifecycle {
    destroy = false
  }
}

removed {
  from = google_storage_bucket_iam_member.terraform_apply_owns_state
  lifecycle {
    destroy = false
  }
}

removed {
  from = google_project_iam_member.terraform_plan_logging
  lifecycle {
    destroy = false
  }
}

removed {
  from = google_project_iam_custom_role.terraform_plan_logging
  lifecycle {
    destroy = false
  }
}

removed {
  from = google_project_iam_custom_role.runtime
  lifecycle {
    destroy = false
  }
}

removed {
  from = google_project_iam_binding.runtime
  lifecycle {
    destroy = false
  }
}

removed {
  from = google_monitoring_metric_descriptor.workload
  lifecycle {
    destroy = false
  }
}

removed {
  from = google_monitoring_dashboard.fleet
  lifecycle {
    destroy = false
  }
}

removed {
  from = google_monitoring_alert_policy.page
  lifecycle {
    destroy = false
  }
}

removed {
  from = google_monitoring_alert_policy.ticket
  lifecycle {
    destroy = false
  }
}

removed {
  from = google_logging_project_exclusion.successful_pushes
  lifecycle {
    destroy = false
  }
}

removed {
  from = google_project_iam_member.terraform_plan
  lifecycle {
    destroy = false
  }
}

removed {
  from = google_project_iam_member.terraform_apply
  lifecycle {
    destroy = false
  }
}

removed {
  from = google_project_iam_member.operator
  lifecycle {
    destroy = false
  }
}

removed {
  from = google_project_iam_member.oncall_looks
  lifecycle {
    destroy = false
  }
}

removed {
  from = google_project_iam_custom_role.operator_scheduler
  lifecycle {
    destroy = false
  }
}

# The exporter pool's grants of a deployment made before cells, under the names the
# cell gives them (the same members, the same role: nothing is granted twice or lost).
moved {
  from = google_cloud_run_v2_worker_pool_iam_member.deployer_deploys_exporter["recordline"]
  to   = google_cloud_run_v2_worker_pool_iam_member.developers["recordline deployer"]
}

moved {
  from = google_cloud_run_v2_worker_pool_iam_member.operator_runs_exporter["recordline"]
  to   = google_cloud_run_v2_worker_pool_iam_member.developers["recordline operator"]
}

# The serving tier's alerts of a deployment made before cells are the environment's to
# replace (its instance tickets and pages): its state destroys them, never the cell's.
removed {
  from = google_monitoring_alert_policy.spanner_cpu
  lifecycle {
    destroy = false
  }
}

removed {
  from = google_monitoring_alert_policy.spanner_storage
  lifecycle {
    destroy = false
  }
}

