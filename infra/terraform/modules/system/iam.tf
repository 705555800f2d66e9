# Least privilege: grants sit on the one resource they concern wherever the resource
# has its own policy. The cell's accounts (root cell.tf) hold what each of its systems
# has only through these grants, on this system's dataset, tables, database and schema.

# --- the cell's ingest service --------------------------------------------------

resource "google_bigquery_dataset_iam_member" "runtime_writes_dataset" {
  project    = var.project_id
  dataset_id = google_bigquery_dataset.recordline.dataset_id
  role       = "roles/bigquery.dataEditor"
  member     = local.runtime_member
}

# Reads and writes rows in this system's serving database only (spanner.tf): no role on
# the instance or the project. databaseUser also holds updateDdl, which the service
# never uses; no predefined role writes rows without it.
resource "google_spanner_database_iam_member" "runtime_uses_database" {
  for_each = google_spanner_database.serving

  project  = var.project_id
  instance = each.value.instance
  database = each.value.name
  role     = "roles/spanner.databaseUser"
  member   = local.runtime_member
}

# Reads the revisions of its topic's schema that messages name (pubsub.schemas.get):
# granted on the schema itself, the narrowest resource the provider has a policy for.
resource "google_pubsub_schema_iam_member" "runtime_reads_schema" {
  for_each = google_pubsub_schema.records

  project = var.project_id
  schema  = each.value.name
  role    = "roles/pubsub.viewer"
  member  = local.runtime_member
}

# Publishes an operator's test message (POST /v1/publish, the console) to this system's
# own topic alone: roles/pubsub.publisher holds pubsub.topics.publish and nothing more.
resource "google_pubsub_topic_iam_member" "runtime_publishes_test_messages" {
  project = var.project_id
  topic   = google_pubsub_topic.records.name
  role    = "roles/pubsub.publisher"
  member  = local.runtime_member
}

# This system's pushes reach the cell's service as its push account: Cloud Run's
# invoker check, then the system's own guard (its audience and account).
resource "google_cloud_run_v2_service_iam_member" "push_invoker" {
  project  = var.project_id
  location = var.cell.location
  name     = var.cell.ingest
  role     = "roles/run.invoker"
  member   = google_service_account.push.member
}

# --- on-call ------------------------------------------------------------------------

# Operators replay (docs/operations.md#replaying-dead-letters): they pull this system's
# dead letters and acknowledge each once the cell answered for it.
resource "google_pubsub_subscription_iam_member" "operators_pull_dead_letters" {
  for_each = local.operator_members

  project      = var.project_id
  subscription = google_pubsub_subscription.dead_letter_replay.name
  role         = "roles/pubsub.subscriber"
  member       = each.value
}

# On-call reads the exporter's state and the lease in this system's database
# (export_progress, export_lease; docs/operations.md#export-behind) as the operator
# account, which reads every record through the service already: SQL reads of this one
# database, no writes, no schema changes.
resource "google_spanner_database_iam_member" "operator_reads_database" {
  for_each = google_spanner_database.serving

  project  = var.project_id
  instance = each.value.instance
  database = each.value.name
  role     = "roles/spanner.databaseReader"
  member   = local.operator_member
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

# `recordline export verify` compares Spanner with BigQuery, run by on-call as the
# cell's export job or from a checkout as the operator account, which reads the serving
# database (operator_reads_database) and these two tables in query jobs of the project.
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
  member     = local.operator_member
}

# --- the cell's exporter pool (root exporter.tf) -------------------------------------

# It claims its lease, reads the rows and writes its progress in this system's serving
# database, and nothing else of the instance.
resource "google_spanner_database_iam_member" "exporter_uses_database" {
  for_each = var.cell.exporter != "" ? google_spanner_database.serving : {}

  project  = var.project_id
  instance = each.value.instance
  database = each.value.name
  role     = "roles/spanner.databaseUser"
  member   = local.exporter_member
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
    } : table => body if var.serving != null && var.cell.exporter != ""
  }

  project    = var.project_id
  dataset_id = google_bigquery_dataset.recordline.dataset_id
  table_id   = each.value.table_id
  role       = "roles/bigquery.dataEditor"
  member     = local.exporter_member
}

# It reads the revisions of the topic's schema its rows name, for their typed columns.
resource "google_pubsub_schema_iam_member" "exporter_reads_schema" {
  for_each = var.serving != null && var.cell.exporter != "" ? google_pubsub_schema.records : {}

  project = var.project_id
  schema  = each.value.name
  role    = "roles/pubsub.viewer"
  member  = local.exporter_member
}
