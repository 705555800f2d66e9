# The access record (docs/security.md#who-read-what): the service writes a line on the
# `recordline.access` log for every read, export, replay, read pass and refusal of this
# system (a follower's long-polls summed a line a minute), labelled with the system's
# name. Cloud Logging keeps them in the project's _Default bucket (30 days); this sink
# copies them into the system's own dataset, in one partitioned table named after the
# log (`run_googleapis_com_stdout`: `use_partitioned_tables`), where they are kept as
# the dataset keeps its tables and asked with SQL: who exported which system last
# quarter. A sink writes with
# an account of its own (its writer identity), granted on this dataset alone.
resource "google_logging_project_sink" "access" {
  project     = var.project_id
  name        = "${var.service_name}-access"
  description = "Recordline's access record of ${var.service_name}, into its dataset (docs/security.md#who-read-what)."
  destination = "bigquery.googleapis.com/projects/${var.project_id}/datasets/${google_bigquery_dataset.recordline.dataset_id}"
  filter = join(" AND ", [
    "resource.type=\"cloud_run_revision\"",
    "jsonPayload.logger=\"recordline.access\"",
    "labels.system=\"${var.service_name}\"",
  ])
  unique_writer_identity = true

  bigquery_options {
    use_partitioned_tables = true
  }
}

resource "google_bigquery_dataset_iam_member" "access_sink_writes_dataset" {
  project    = var.project_id
  dataset_id = google_bigquery_dataset.recordline.dataset_id
  role       = "roles/bigquery.dataEditor"
  member     = google_logging_project_sink.access.writer_identity
}
