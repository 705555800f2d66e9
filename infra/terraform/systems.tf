# One Recordline system per entry of var.systems (modules/system): topic, subscriptions,
# dead letters, dataset and tables, Cloud Run service, SLOs, alerts, canary and its
# dashboard. One system is the default, so a single deployment stays one apply; fifty
# are fifty entries (infra/README.md, "Fifty systems").

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
    ticket_channels  = null
    min_instances    = null
    max_instances    = null
    extra_env        = null
    serving          = null
    rate             = null
    message_bytes    = null
    json_bytes       = null
    spanner_instance = null
    schema           = null
    id_field         = null
    time_field       = null
    canary_file      = null
    json_schema      = null
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

data "google_project" "this" {
  project_id = var.project_id
}

module "system" {
  source   = "./modules/system"
  for_each = local.systems

  service_name = each.key
  dataset_id   = local.dataset_ids[each.key]

  readers       = each.value.readers != null ? each.value.readers : var.readers
  operators     = each.value.operators != null ? each.value.operators : var.operators
  min_instances = each.value.min_instances != null ? each.value.min_instances : var.min_instances
  max_instances = each.value.max_instances != null ? each.value.max_instances : var.max_instances
  extra_env     = merge(var.extra_env, each.value.extra_env != null ? each.value.extra_env : {})
  # The share of traces kept (OTEL_TRACES_SAMPLER_ARG), the same for every system.
  trace_sample_ratio = var.trace_sample_ratio

  # Its topic's schema and the payload's shape (README, "Your topic, your schema"); files
  # are paths from the repository's root, this directory's grandparent.
  topic_schema = each.value.schema == null ? null : {
    name       = each.value.schema.name != null ? each.value.schema.name : each.key
    definition = file("${path.root}/../../${each.value.schema.file}")
    type       = each.value.schema.type
    encoding   = each.value.schema.encoding
  }
  id_field    = each.value.id_field
  time_field  = each.value.time_field
  canary_data = each.value.canary_file != null ? filebase64("${path.root}/../../${each.value.canary_file}") : null
  # A JSON topic's declared schema: its typed columns.
  json_topic_schema = each.value.json_schema != null ? file("${path.root}/../../${each.value.json_schema}") : null
  # What `records` is created with besides the service's columns (modules/system/bigquery.tf).
  typed_columns = local.typed_columns[each.key]

  # Its Spanner database's instance, shared by the systems with `serving` (spanner.tf).
  serving = contains(local.serving_systems, each.key) ? {
    instance       = google_spanner_instance.serving[local.serving_instance[each.key]].name
    recovery_hours = var.spanner_recovery_hours
    restore_role   = google_project_iam_custom_role.operator_restore_rows.id
  } : null

  project_id                     = var.project_id
  project_number                 = data.google_project.this.number
  region                         = var.region
  environment                    = var.environment
  dataset_location               = var.dataset_location
  placeholder_image              = var.placeholder_image
  ingress                        = var.ingress
  cpu                            = var.cpu
  memory                         = var.memory
  concurrency                    = var.concurrency
  request_timeout_seconds        = var.request_timeout_seconds
  stream_seconds                 = var.stream_seconds
  write_deadline_seconds         = var.write_deadline_seconds
  ack_deadline_margin_seconds    = var.ack_deadline_margin_seconds
  max_delivery_attempts          = var.max_delivery_attempts
  message_retention_duration     = var.message_retention_duration
  retry_minimum_backoff          = var.retry_minimum_backoff
  retry_maximum_backoff          = var.retry_maximum_backoff
  retention_days                 = var.retention_days
  push_audience                  = var.push_audience
  read_audience                  = var.read_audience
  query_max_bytes_billed         = var.query_max_bytes_billed
  availability_goal              = var.availability_goal
  freshness_goal                 = var.freshness_goal
  freshness_threshold_seconds    = var.freshness_threshold_seconds
  read_latency_goal              = var.read_latency_goal
  read_latency_threshold_seconds = var.read_latency_threshold_seconds
  slo_rolling_period_days        = var.slo_rolling_period_days

  # Each agent's e-mail, read once it exists and IAM knows it (apis.tf).
  service_agents           = time_sleep.service_agents.triggers
  operator_service_account = google_service_account.operator.email
  # The exporter service's account, which this system's export runs as (exporter.tf).
  exporter_service_account = one(values(google_service_account.exporter)[*].email)
  oncall                   = var.oncall
  push_service_account     = google_service_account.push.email
  smoke_service_account    = google_service_account.smoke.email
  deployer_member          = google_service_account.deployer.member
  terraform_apply_member   = google_service_account.terraform_apply.member
  metric_types             = { for name, d in google_monitoring_metric_descriptor.workload : name => d.type }

  # Pub/Sub checks it may sign as the push account when a push subscription is created.
  depends_on = [
    google_project_service.enabled,
    google_service_account_iam_member.pubsub_mints_push_token,
    google_service_account_iam_member.terraform_apply_acts_as_push,
  ]
}

# The identities every system shares came out of the default system's module: the
# default system's accounts and grants become the environment's, nothing is destroyed.
# (Other systems' own push and smoke accounts are deleted: nothing else uses them.)
moved {
  from = module.system["recordline"].google_service_account.push
  to   = google_service_account.push
}

moved {
  from = module.system["recordline"].google_service_account.smoke
  to   = google_service_account.smoke
}

moved {
  from = module.system["recordline"].google_service_account_iam_member.pubsub_mints_push_token
  to   = google_service_account_iam_member.pubsub_mints_push_token
}

moved {
  from = module.system["recordline"].google_service_account_iam_member.deployer_mints_smoke_tokens
  to   = google_service_account_iam_member.deployer_mints_smoke_tokens
}

moved {
  from = module.system["recordline"].google_service_account_iam_member.terraform_apply_acts_as["push"]
  to   = google_service_account_iam_member.terraform_apply_acts_as_push
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
  from = google_cloud_run_v2_service.recordline
  to   = module.system["recordline"].google_cloud_run_v2_service.recordline
}

moved {
  from = google_monitoring_dashboard.recordline
  to   = module.system["recordline"].google_monitoring_dashboard.recordline
}

moved {
  from = google_bigquery_dataset_iam_member.runtime_writes_dataset
  to   = module.system["recordline"].google_bigquery_dataset_iam_member.runtime_writes_dataset
}

moved {
  from = google_project_iam_member.runtime
  to   = module.system["recordline"].google_project_iam_member.runtime
}

moved {
  from = google_cloud_run_v2_service_iam_member.push_invoker
  to   = module.system["recordline"].google_cloud_run_v2_service_iam_member.push_invoker
}

moved {
  from = google_cloud_run_v2_service_iam_member.reader_invokers
  to   = module.system["recordline"].google_cloud_run_v2_service_iam_member.reader_invokers
}

moved {
  from = google_cloud_run_v2_service_iam_member.smoke_invoker
  to   = module.system["recordline"].google_cloud_run_v2_service_iam_member.smoke_invoker
}

moved {
  from = google_cloud_run_v2_service_iam_member.deployer_deploys
  to   = module.system["recordline"].google_cloud_run_v2_service_iam_member.deployer_deploys
}

moved {
  from = google_service_account_iam_member.deployer_acts_as_runtime
  to   = module.system["recordline"].google_service_account_iam_member.deployer_acts_as_runtime
}

moved {
  from = google_service_account_iam_member.terraform_apply_acts_as
  to   = module.system["recordline"].google_service_account_iam_member.terraform_apply_acts_as
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

moved {
  from = google_secret_manager_secret.page_token
  to   = module.system["recordline"].google_secret_manager_secret.page_token
}

moved {
  from = google_secret_manager_secret_version.page_token
  to   = module.system["recordline"].google_secret_manager_secret_version.page_token
}

moved {
  from = google_secret_manager_secret_iam_member.runtime_reads_page_token
  to   = module.system["recordline"].google_secret_manager_secret_iam_member.runtime_reads_page_token
}

moved {
  from = time_sleep.iam_propagation
  to   = module.system["recordline"].time_sleep.iam_propagation
}

moved {
  from = google_service_account.runtime
  to   = module.system["recordline"].google_service_account.runtime
}

moved {
  from = google_monitoring_custom_service.recordline
  to   = module.system["recordline"].google_monitoring_custom_service.recordline
}

moved {
  from = google_monitoring_slo.availability
  to   = module.system["recordline"].google_monitoring_slo.availability
}

moved {
  from = google_monitoring_slo.read_latency
  to   = module.system["recordline"].google_monitoring_slo.read_latency
}

moved {
  from = google_monitoring_slo.freshness
  to   = module.system["recordline"].google_monitoring_slo.freshness
}

