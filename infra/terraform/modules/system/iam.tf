# Least privilege: grants sit on the one resource they concern wherever the resource
# has its own policy; project-level roles are the ones that have no narrower home.

# --- the service ----------------------------------------------------------------

resource "google_bigquery_dataset_iam_member" "runtime_writes_dataset" {
  project    = var.project_id
  dataset_id = google_bigquery_dataset.recordline.dataset_id
  role       = "roles/bigquery.dataEditor"
  member     = google_service_account.runtime.member
}

# Its project-level permissions (query jobs, spans, metrics) come from one role bound to
# every system's runtime account at once (root runtime_iam.tf).

# Reads and writes rows in its own serving database only (spanner.tf): no role on the
# instance or the project. databaseUser also holds updateDdl, which the service never
# uses; no predefined role writes rows without it.
resource "google_spanner_database_iam_member" "runtime_uses_database" {
  for_each = google_spanner_database.serving

  project  = var.project_id
  instance = each.value.instance
  database = each.value.name
  role     = "roles/spanner.databaseUser"
  member   = google_service_account.runtime.member
}

# Reads the revisions of its topic's schema that messages name (pubsub.schemas.get):
# granted on the schema itself, the narrowest resource the provider has a policy for.
resource "google_pubsub_schema_iam_member" "runtime_reads_schema" {
  for_each = google_pubsub_schema.records

  project = var.project_id
  schema  = each.value.name
  role    = "roles/pubsub.viewer"
  member  = google_service_account.runtime.member
}

# --- who may call the service ---------------------------------------------------

resource "google_cloud_run_v2_service_iam_member" "push_invoker" {
  project  = var.project_id
  location = google_cloud_run_v2_service.recordline.location
  name     = google_cloud_run_v2_service.recordline.name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${var.push_service_account}"
}

resource "google_cloud_run_v2_service_iam_member" "reader_invokers" {
  for_each = var.readers

  project  = var.project_id
  location = google_cloud_run_v2_service.recordline.location
  name     = google_cloud_run_v2_service.recordline.name
  role     = "roles/run.invoker"
  member   = each.value
}

# The post-deploy smoke test reads back what it pushed (see deploy-environment.yml).
# Separate from reader_invokers: for_each keys must be known before the account exists.
resource "google_cloud_run_v2_service_iam_member" "smoke_invoker" {
  project  = var.project_id
  location = google_cloud_run_v2_service.recordline.location
  name     = google_cloud_run_v2_service.recordline.name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${var.smoke_service_account}"
}

# Operators replay (docs/operations.md#dead-letters): they call the service (Cloud Run's
# invoker check, then RECORDLINE_OPERATOR_PRINCIPALS) and pull this system's dead
# letters, acknowledging each once the service answered for it.
resource "google_cloud_run_v2_service_iam_member" "operator_invokers" {
  for_each = local.operator_members

  project  = var.project_id
  location = google_cloud_run_v2_service.recordline.location
  name     = google_cloud_run_v2_service.recordline.name
  role     = "roles/run.invoker"
  member   = each.value
}

resource "google_pubsub_subscription_iam_member" "operators_pull_dead_letters" {
  for_each = local.operator_members

  project      = var.project_id
  subscription = google_pubsub_subscription.dead_letter_replay.name
  role         = "roles/pubsub.subscriber"
  member       = each.value
}

# On-call rolls a bad revision back as the operator account (docs/operations.md#rolling-back):
# a traffic change is a change to the service, which Cloud Run allows developers of
# the service who may act as the account it runs as.
resource "google_cloud_run_v2_service_iam_member" "operator_account_rolls_back" {
  project  = var.project_id
  location = google_cloud_run_v2_service.recordline.location
  name     = google_cloud_run_v2_service.recordline.name
  role     = "roles/run.developer"
  member   = "serviceAccount:${var.operator_service_account}"
}

# On-call reads the exporter's state in this system's Spanner database (export_progress:
# each table's watermark, and why its export stopped; docs/operations.md#export-blocked)
# as the operator account, which reads every record through the service already: SQL
# reads of this one database, no writes, no schema changes.
resource "google_spanner_database_iam_member" "operator_reads_database" {
  for_each = google_spanner_database.serving

  project  = var.project_id
  instance = each.value.instance
  database = each.value.name
  role     = "roles/spanner.databaseReader"
  member   = "serviceAccount:${var.operator_service_account}"
}

resource "google_service_account_iam_member" "operator_account_acts_as_runtime" {
  service_account_id = google_service_account.runtime.name
  role               = "roles/iam.serviceAccountUser"
  member             = "serviceAccount:${var.operator_service_account}"
}

# On-call queries this system's dead letters as themselves (docs/operations.md, "Where
# to look"): reading this table, nothing else of the dataset.
resource "google_bigquery_table_iam_member" "oncall_reads_dead_letters" {
  for_each = var.oncall

  project    = var.project_id
  dataset_id = google_bigquery_dataset.recordline.dataset_id
  table_id   = google_bigquery_table.dead_letters.table_id
  role       = "roles/bigquery.dataViewer"
  member     = each.value
}

resource "google_cloud_run_v2_service_iam_member" "deployer_deploys" {
  project  = var.project_id
  location = google_cloud_run_v2_service.recordline.location
  name     = google_cloud_run_v2_service.recordline.name
  role     = "roles/run.developer"
  member   = var.deployer_member
}

# A revision runs as the runtime account, so deploying one means acting as it.
resource "google_service_account_iam_member" "deployer_acts_as_runtime" {
  service_account_id = google_service_account.runtime.name
  role               = "roles/iam.serviceAccountUser"
  member             = var.deployer_member
}

# Creating the Cloud Run service means acting as the account it runs as (the push
# subscription's account, shared, is granted at the root: service_accounts.tf).
resource "google_service_account_iam_member" "terraform_apply_acts_as" {
  for_each = {
    runtime = google_service_account.runtime.name
  }

  service_account_id = each.value
  role               = "roles/iam.serviceAccountUser"
  member             = var.terraform_apply_member
}

# On-call runs the export commands as the operator account (docs/operations.md#running-export-commands):
# it points this system's export job at the image that serves and runs it with the
# command's arguments (run.jobs.update, run.jobs.runWithOverrides), and reads which
# execution ran last (run.executions.list). The job runs as the runtime account, which
# the operator account may act as already (operator_account_acts_as_runtime).
resource "google_cloud_run_v2_job_iam_member" "operator_runs_export" {
  for_each = google_cloud_run_v2_job.export

  project  = var.project_id
  location = each.value.location
  name     = each.value.name
  role     = "roles/run.developer"
  member   = "serviceAccount:${var.operator_service_account}"
}

# `recordline export verify` compares Spanner with BigQuery: as the operator account,
# from a checkout, it reads the serving database (operator_reads_database) and these
# two tables, in query jobs of the project (the root's roles/bigquery.jobUser).
resource "google_bigquery_table_iam_member" "operator_reads_exported" {
  for_each = {
    for table, body in {
      records  = google_bigquery_table.records
      rejected = google_bigquery_table.rejected
    } : table => body if var.serving != null
  }

  project    = var.project_id
  dataset_id = google_bigquery_dataset.recordline.dataset_id
  table_id   = each.value.table_id
  role       = "roles/bigquery.dataViewer"
  member     = "serviceAccount:${var.operator_service_account}"
}

# --- the exporter service (root exporter.tf) -------------------------------------

# It claims its lease, reads the rows and writes its progress in this system's serving
# database, and nothing else of the instance.
resource "google_spanner_database_iam_member" "exporter_uses_database" {
  for_each = var.exporter_service_account != null ? google_spanner_database.serving : {}

  project  = var.project_id
  instance = each.value.instance
  database = each.value.name
  role     = "roles/spanner.databaseUser"
  member   = "serviceAccount:${var.exporter_service_account}"
}

# It appends the rows to `records` and `rejected` (offset streams) and its watermarks to
# `export_watermarks`, adds typed columns to `records` as a revision needs them, and
# reads back what they hold to settle a batch: the three tables, not the dataset.
resource "google_bigquery_table_iam_member" "exporter_writes_tables" {
  for_each = {
    for table, body in {
      records           = google_bigquery_table.records
      rejected          = google_bigquery_table.rejected
      export_watermarks = google_bigquery_table.export_watermarks
    } : table => body if var.serving != null && var.exporter_service_account != null
  }

  project    = var.project_id
  dataset_id = google_bigquery_dataset.recordline.dataset_id
  table_id   = each.value.table_id
  role       = "roles/bigquery.dataEditor"
  member     = "serviceAccount:${var.exporter_service_account}"
}

# It reads the revisions of the topic's schema its rows name, for their typed columns.
resource "google_pubsub_schema_iam_member" "exporter_reads_schema" {
  for_each = var.serving != null && var.exporter_service_account != null ? google_pubsub_schema.records : {}

  project = var.project_id
  schema  = each.value.name
  role    = "roles/pubsub.viewer"
  member  = "serviceAccount:${var.exporter_service_account}"
}
