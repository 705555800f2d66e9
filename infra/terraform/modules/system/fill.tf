# Filling this system's tables of its own (bigquery.tf, google_bigquery_table.filled):
# hourly, Cloud Scheduler runs the cell's fill job (root fill.tf) for this system,
# `recordline tables fill --system NAME --table records_NAME ...` (the job's arguments,
# overridden for this run), as the cell's fill account. One Scheduler job a system, so
# each system's run is its own execution, its own exit code and log, and one system's
# failing day never holds another's back. Each at its own minute of the hour (from its
# name), so that a cell's systems do not all start at once. The tables are named, not
# listed: a table labelled by hand, which the fill account may not write, is never run.
locals {
  # Known at plan time (the job's name, not its account's e-mail), as for_each needs.
  fill        = length(var.tables) > 0 && var.cell.fill_job != "" ? { (var.service_name) = var.cell.fill } : {}
  fill_member = "serviceAccount:${var.cell.fill}"
  fill_args = concat(
    ["tables", "fill", "--system", var.service_name],
    flatten([for name in sort(keys(var.tables)) : ["--table", "records_${name}"]]),
  )
  fill_minute = parseint(substr(sha256(var.service_name), 0, 8), 16) % 60
}

resource "google_cloud_scheduler_job" "fill" {
  for_each = local.fill

  project     = var.project_id
  region      = var.region
  name        = "${var.service_name}-fill"
  description = "Runs ${var.cell.fill_job} for ${var.service_name} every hour: each whole day of records copied once into its tables of its own (docs/operations.md#a-table-fill-that-fails)."
  schedule    = "${local.fill_minute} * * * *"
  time_zone   = "Etc/UTC"

  # The run's answer is the execution's start, not its end: the execution says how it
  # ended (its exit code, its log). A start Cloud Run refused is the next hour's to try.
  http_target {
    http_method = "POST"
    uri         = "https://run.googleapis.com/v2/projects/${var.project_id}/locations/${var.cell.location}/jobs/${var.cell.fill_job}:run"
    headers     = { "Content-Type" = "application/json" }
    body        = base64encode(jsonencode({ overrides = { containerOverrides = [{ args = local.fill_args }] } }))

    oauth_token {
      service_account_email = each.value
      scope                 = "https://www.googleapis.com/auth/cloud-platform"
    }
  }

  depends_on = [google_bigquery_table.filled]
}

# What a fill reads and writes, and nothing else of the dataset: the dataset's metadata
# (records_unique, the routine its jobs call, and each table's schema and labels; no
# row), the rows of `records` (and, behind the serving tier, of `export_watermarks`:
# where `records` is whole), and its own tables, which it inserts into, widens and
# labels. Its query jobs are the project's (root project_iam.tf).
resource "google_bigquery_dataset_iam_member" "fill_reads_metadata" {
  for_each = local.fill

  project    = var.project_id
  dataset_id = google_bigquery_dataset.recordline.dataset_id
  role       = "roles/bigquery.metadataViewer"
  member     = local.fill_member
}

resource "google_bigquery_table_iam_member" "fill_reads_records" {
  for_each = {
    for table, body in {
      records           = google_bigquery_table.records
      export_watermarks = google_bigquery_table.export_watermarks
    } : table => body if length(local.fill) > 0 && (table == "records" || var.serving != null)
  }

  project    = var.project_id
  dataset_id = google_bigquery_dataset.recordline.dataset_id
  table_id   = each.value.table_id
  role       = "roles/bigquery.dataViewer"
  member     = local.fill_member
}

resource "google_bigquery_table_iam_member" "fill_writes_tables" {
  for_each = length(local.fill) > 0 ? google_bigquery_table.filled : {}

  project    = var.project_id
  dataset_id = google_bigquery_dataset.recordline.dataset_id
  table_id   = each.value.table_id
  role       = "roles/bigquery.dataEditor"
  member     = local.fill_member
}
