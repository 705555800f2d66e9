resource "google_bigquery_dataset" "recordline" {
  #checkov:skip=CKV_GCP_81:Encrypted at rest with Google-managed keys; the data carries no requirement for customer-managed keys.
  project     = var.project_id
  dataset_id  = var.dataset_id
  location    = var.dataset_location
  description = "Records stored by ${var.service_name}, messages it rejected, and dead letters."

  # Access is granted with dataset IAM members below, never with access blocks here,
  # so the two cannot fight over the dataset's policy.
  delete_contents_on_destroy = false

  depends_on = [google_project_service.enabled]
}

# The records and rejected schemas are GENERATED from app/records.py (a test keeps them
# equal); the service writes exactly these columns through the Storage Write API.
resource "google_bigquery_table" "records" {
  #checkov:skip=CKV_GCP_80:Encrypted at rest with Google-managed keys; the data carries no requirement for customer-managed keys.
  project             = var.project_id
  dataset_id          = google_bigquery_dataset.recordline.dataset_id
  table_id            = "records"
  description         = "Accepted messages, one row per delivery; reads remove duplicate message_ids."
  schema              = file("${path.module}/schemas/records.json")
  deletion_protection = true

  # Reads page through ingest_time (the `since` axis), so partitions prune them; the
  # by-id lookup and read-side de-duplication filter on id and message_id.
  time_partitioning {
    type  = "DAY"
    field = "ingest_time"
  }
  clustering = ["id", "message_id"]
}

resource "google_bigquery_table" "rejected" {
  #checkov:skip=CKV_GCP_80:Encrypted at rest with Google-managed keys; the data carries no requirement for customer-managed keys.
  project             = var.project_id
  dataset_id          = google_bigquery_dataset.recordline.dataset_id
  table_id            = "rejected"
  description         = "Messages whose payload was invalid: raw bytes and the reason, kept for replay."
  schema              = file("${path.module}/schemas/rejected.json")
  deletion_protection = true

  time_partitioning {
    type  = "DAY"
    field = "ingest_time"
  }
  # No `id` here: an invalid payload may not have one.
  clustering = ["message_id"]
}

# Written by the BigQuery subscription on the dead-letter topic (write_metadata), so
# the columns are the ones Pub/Sub writes, not ours: hand-written, not generated.
resource "google_bigquery_table" "dead_letters" {
  #checkov:skip=CKV_GCP_80:Encrypted at rest with Google-managed keys; the data carries no requirement for customer-managed keys.
  project             = var.project_id
  dataset_id          = google_bigquery_dataset.recordline.dataset_id
  table_id            = "dead_letters"
  description         = "Messages that exhausted their push deliveries, as Pub/Sub forwarded them."
  schema              = file("${path.module}/schemas/dead_letters.json")
  deletion_protection = true

  time_partitioning {
    type  = "DAY"
    field = "publish_time"
  }
  clustering = ["message_id"]
}
