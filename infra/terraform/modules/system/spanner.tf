# The serving tier (infra/README.md, "The serving tier"), when this system has
# `serving`: a Spanner database of its own on one of its cell's instances (root
# spanner.tf). It is the system of record: the cell acknowledges a batch once it is
# committed there, the cell's exporter pool appends its rows to BigQuery, each exactly
# once, keeping its lease and progress in the same database (`export_lease`,
# `export_progress`), and reads within its retention are answered from it (its
# `serving` in the cell's RECORDLINE_SYSTEMS). Without `serving`, nothing here is
# created and the system is served from BigQuery alone.

locals {
  serving_databases = var.serving != null ? { (var.service_name) = var.serving.instance } : {}

  # How far back the cell reads Spanner: the dedupe window it runs with
  # (RECORDLINE_DEDUPE_WINDOW_SECONDS, set through the cell's extra_env, else its
  # default of 7 days) and a day. BigQuery's records_unique looks back the same window (bigquery.tf). Spanner keeps each row two days past the window, rounded up to a day
  # (retention_days in app/store/spanner/schema.py; a test keeps the two equal).
  dedupe_window_seconds  = var.cell.dedupe_window_seconds
  spanner_retention_days = ceil(local.dedupe_window_seconds / 86400) + 2

  # `recordline schema spanner`'s statements (schemas/spanner.sql.tftpl, kept equal to
  # it by a test), one element each, as the DDL list wants them.
  spanner_ddl = [
    for statement in split(";", templatefile("${path.module}/schemas/spanner.sql.tftpl", { retention_days = local.spanner_retention_days })) :
    trimspace(statement) if trimspace(statement) != ""
  ]
}

resource "google_spanner_database" "serving" {
  #checkov:skip=CKV_GCP_93:Encrypted at rest with Google-managed keys, like the BigQuery tables holding the same rows; the data carries no requirement for customer-managed keys.
  for_each = local.serving_databases

  project  = var.project_id
  instance = each.value
  name     = var.service_name

  # The baseline, then the migrations (app/store/spanner/schema.py): the list only ever
  # grows. The provider runs statements appended at its end on the existing database;
  # a changed or removed one (a new dedupe window, a rewritten baseline) would replace
  # it, which prevent_destroy below turns into a failed plan (infra/README.md, "The
  # serving tier"). The service never changes the schema; it checks it at start.
  ddl = local.spanner_ddl

  # Point-in-time recovery: old versions kept this long (spanner_recovery_hours, 2 days
  # by default), so a bad delete or DDL can be read past or restored from
  # (docs/operations.md#recovering-a-serving-database). The service itself reads no
  # further back than 30 minutes (serving.py). The versions cost storage: the
  # instance is sized for them (root spanner.tf).
  version_retention_period = "${var.serving.recovery_hours}h"

  # Terraform refuses to delete it, and Spanner refuses to drop it (or its instance)
  # through any interface while drop protection is on.
  deletion_protection    = true
  enable_drop_protection = true

  lifecycle {
    prevent_destroy = true
  }
}
