# Whatever holds messages (topics, subscriptions) or rows (the dataset and its tables)
# is protected by prevent_destroy: a plan that would destroy one, such as a system left
# out of `systems` or a change that forces a replacement, fails instead of losing
# data. Retiring a system on purpose: docs/operations.md#retiring-a-system.

resource "google_bigquery_dataset" "recordline" {
  #checkov:skip=CKV_GCP_81:Encrypted at rest with Google-managed keys; the data carries no requirement for customer-managed keys.
  project     = var.project_id
  dataset_id  = var.dataset_id
  location    = var.dataset_location
  description = "Records stored by ${var.service_name}, messages it rejected, and dead letters."

  # Access is granted with dataset IAM members below, never with access blocks here,
  # so the two cannot fight over the dataset's policy.
  delete_contents_on_destroy = false

  # Storage billed by the bytes BigQuery keeps compressed, not by their logical size:
  # physical prices are 2.2 times the logical ones, and rows of order-like JSON compress
  # about 4.6 times (`python3 dev.py bench storage`), so a row kept costs about half
  # (infra/fleet_cost.py). Physical storage also bills the time-travel window's changed
  # and deleted bytes: the tables are appended to, and the window stays 7 days, which
  # undropping a deleted dataset needs (docs/operations.md#a-deleted-dataset).
  storage_billing_model = "PHYSICAL"

  lifecycle {
    prevent_destroy = true
  }
}

# The records and rejected schemas are GENERATED from app/records.py (a test keeps them
# equal); the service writes exactly these columns through the Storage Write API.
# A system with a schema (a topic's, or a JSON topic's declared one) has `records`
# created with its typed columns too: the `fields` column its schema file makes, last,
# as generated beside the file by the service's own mapping (var.typed_columns), so
# they are there at apply and the service's merge of that revision changes nothing.
# Once `records` exists its schema is the service's: it adds the typed columns of each
# schema revision (`fields`, `projection_errors`) and a release's new columns, only ever
# adding, with the table's ETag. Terraform ignores the schema so that no plan tries to
# drop a column the service added (docs/typed-columns.md): what is here shapes a new
# table only.
#
# A layout's copies of an attribute or a typed field (root layouts.tf) come last, each a
# top-level NULLABLE column whose description names its source: the service reads them
# from the table and writes each row's value there (app/store/bigquery/layout.py). They
# are the table's from its creation: a copy added to a table that exists is a change of
# layout (docs/layouts.md#changing-a-layout).
locals {
  # The service's columns, and each layout's copies as columns (`records`' under "",
  # each table of the system's own under its name: fill.tf).
  service_schema = concat(
    jsondecode(file("${path.module}/schemas/records.json")),
    var.typed_columns == null ? [] : [jsondecode(var.typed_columns)],
  )
  copy_columns = {
    for table, columns in merge({ "" = var.layout.columns }, { for name, t in var.tables : name => t.columns }) : table => [
      for name, column in columns : {
        name        = name
        type        = column.type
        mode        = "NULLABLE"
        description = "Recordline layout copy of ${column.source}"
      }
    ]
  }
  records_schema = jsonencode(concat(local.service_schema, local.copy_columns[""]))
}

resource "google_bigquery_table" "records" {
  #checkov:skip=CKV_GCP_80:Encrypted at rest with Google-managed keys; the data carries no requirement for customer-managed keys.
  project             = var.project_id
  dataset_id          = google_bigquery_dataset.recordline.dataset_id
  table_id            = "records"
  description         = "Accepted messages, one row per delivery; reads remove duplicate message_ids."
  schema              = local.records_schema
  deletion_protection = true

  # By default reads page through ingest_time (the `since` axis): partitions prune a
  # page to its days, and clustering on ingest_time prunes it to the blocks inside the
  # day. Lookups by id and message_id use the search index below instead of clustering.
  # A system's layout may partition by the event's own time or a typed date, and cluster
  # by other columns (root layouts.tf, docs/layouts.md). Changing clustering is an
  # in-place update in provider 6.x (the schema does not mark it as forcing a new
  # table); BigQuery clusters rows written from then on. Changing the partitioning
  # forces a new table, which prevent_destroy refuses: BigQuery cannot re-partition a
  # table in place (docs/layouts.md#changing-a-layout). Partitions expire by their
  # column's date, so only ingest-time partitions expire (the plan refuses retention
  # with any other).
  time_partitioning {
    type          = var.layout.granularity
    field         = var.layout.partition
    expiration_ms = var.layout.partition == "ingest_time" ? local.partition_expiration_ms : null
  }
  clustering = var.layout.clustering

  lifecycle {
    prevent_destroy = true
    ignore_changes  = [schema]
  }
}

resource "google_bigquery_table" "rejected" {
  #checkov:skip=CKV_GCP_80:Encrypted at rest with Google-managed keys; the data carries no requirement for customer-managed keys.
  project             = var.project_id
  dataset_id          = google_bigquery_dataset.recordline.dataset_id
  table_id            = "rejected"
  description         = "Messages whose payload was invalid: raw bytes and the reason, kept for replay."
  schema              = file("${path.module}/schemas/rejected.json")
  deletion_protection = true

  # As for records: pages by ingest_time, lookups by message_id through the index.
  time_partitioning {
    type          = "DAY"
    field         = "ingest_time"
    expiration_ms = local.partition_expiration_ms
  }
  clustering = ["ingest_time"]

  lifecycle {
    prevent_destroy = true
  }
}

# The system's tables of its own (var.tables; docs/layouts.md, "Records as today, beside
# tables of your own"): records_NAME, with `records`' columns as Terraform creates
# `records` (the service's, the typed `fields`), then its own copies last, each
# described as `records`' are, partitioned and clustered as declared (root layouts.tf
# checks each at plan time as it checks `layout`). The label `recordline-fill = records`
# marks it for `recordline tables fill`, which the cell's fill job runs hourly
# (fill.tf): each whole day of `records`, once, in one DML job. Its partitions expire as
# `records`' do: a day gone from `records` is gone from here the same day.
#
# What the fill changes is its own: it widens the schema to every column `records` has
# gained (a release's, a schema revision's typed fields), and keeps up to which day it
# filled in the label `recordline-filled-through`, a hint. So the schema shapes a new
# table only, as for `records`, and the label is left alone: the provider's `labels`
# manage only the labels named here, and ignore_changes says so for the hint besides.
# A change of partitioning or of copies forces a new table, which prevent_destroy
# refuses (docs/layouts.md#changing-a-layout): declare a new table instead.
resource "google_bigquery_table" "filled" {
  #checkov:skip=CKV_GCP_80:Encrypted at rest with Google-managed keys; the data carries no requirement for customer-managed keys.
  for_each = var.tables

  project             = var.project_id
  dataset_id          = google_bigquery_dataset.recordline.dataset_id
  table_id            = "records_${each.key}"
  description         = "The rows of records (the first copy of each message), each whole day of ingest_time copied once by recordline tables fill, hourly; laid out for the analyst's own questions."
  schema              = jsonencode(concat(local.service_schema, local.copy_columns[each.key]))
  deletion_protection = true
  labels = {
    recordline-fill = "records"
  }

  time_partitioning {
    type          = each.value.granularity
    field         = each.value.partition
    expiration_ms = each.value.partition == "ingest_time" ? local.partition_expiration_ms : null
  }
  clustering = each.value.clustering

  lifecycle {
    prevent_destroy = true
    ignore_changes  = [schema, labels["recordline-filled-through"]]
  }
}

# Up to when BigQuery is complete, for analysts (README, "BigQuery"): with `serving`, the
# exporter (app/store/tiered/exporter.py) appends a row per table each time its watermark
# moves on by a minute, through the table's _default stream; every row of that table
# with an ingest_time before the watermark is in BigQuery. Empty without `serving`; here
# for every system all the same, so turning `serving` on needs nothing else. Generated
# from app/records.py (ExportWatermark), like records and rejected.
#
# Neither partitioned nor clustered: at most two rows a minute, about a million a year,
# some 18 bytes of them in the two columns the analyst's query reads (table_name,
# watermark). That query (the greatest watermark per table) has no date to prune by, so
# partitions would spare it nothing; it bills BigQuery's 10 MB minimum for the first
# half year and about 20 MB a year after (~$0.0001 a query). No expiry either: one would
# empty the table of a system whose export stopped, which is what it must show.
resource "google_bigquery_table" "export_watermarks" {
  #checkov:skip=CKV_GCP_80:Encrypted at rest with Google-managed keys; the data carries no requirement for customer-managed keys.
  project             = var.project_id
  dataset_id          = google_bigquery_dataset.recordline.dataset_id
  table_id            = "export_watermarks"
  description         = "With a serving tier: up to when records and rejected are complete. Every row of table_name with an ingest_time before watermark is in BigQuery: take the greatest watermark per table_name."
  schema              = file("${path.module}/schemas/export_watermarks.json")
  deletion_protection = true

  lifecycle {
    prevent_destroy = true
  }
}

# The access record (docs/security.md#who-read-what): a row per line of the
# `recordline.access` log, appended by each instance through the table's _default stream
# every few seconds, read back newest first by `GET /v1/access` and the console's Access
# page (app/store/bigquery/store.py). Generated from app/records.py (AccessRow).
#
# A few lines a second at most, a few hundred bytes each: partitioned by day on `time`
# and clustered on it, so a page bills the days its bounds reach, no more (BigQuery's
# 10 MB minimum for a page of a day or a week). Its partitions expire after 400 days
# whatever the records' retention (app.store.access.ACCESS_RETENTION_DAYS): an audit
# record's year and a month.
resource "google_bigquery_table" "access_record" {
  #checkov:skip=CKV_GCP_80:Encrypted at rest with Google-managed keys; the data carries no requirement for customer-managed keys.
  project             = var.project_id
  dataset_id          = google_bigquery_dataset.recordline.dataset_id
  table_id            = "access_record"
  description         = "Who read, exported, replayed or was refused what: a row per line of the recordline.access log, at least once (take one row per time and id)."
  schema              = file("${path.module}/schemas/access_record.json")
  deletion_protection = true

  time_partitioning {
    type          = "DAY"
    field         = "time"
    expiration_ms = 400 * 24 * 60 * 60 * 1000
  }
  clustering = ["time"]

  lifecycle {
    prevent_destroy = true
  }
}

# records_unique(since, until), for analysts (README, "BigQuery"): the first copy of each
# message among the records with an ingest_time in [since, until), the copies the
# service's own reads leave out left out too (sql/records_unique.sql.tftpl), and a
# publisher's later copies of a message that carries a producer sequence (another message
# id, the same producer, epoch and sequence, record id, event time and attributes; another
# message under the sequence is kept). Without a serving tier the table is at-least-once,
# a row per delivery and per publish, and reads remove the copies of a message id; with
# one, Spanner stores each message and each retry once, the exporter appends it once,
# and this changes nothing.
#
# A table function, not a view: a view over a window function (LAG ... PARTITION BY
# message_id) cannot take a caller's filter on ingest_time below the window, so every
# query of it would scan the whole table; the function's arguments bound its scans, and
# BigQuery prunes by them as by constants. What a call bills: every column of the
# partitions of `records` the range touches (it returns whole rows), plus message_id,
# ingest_time, id, timestamp and attributes of the dedupe window's partitions before `since`, at least 10 MB; the
# clustering on ingest_time trims the range's first and last day to their blocks.
#
# No return_table_type: the columns are those of `records` at query time, so a column
# added there (a migration) is returned without a change here, and the API's spelling of
# a declared type can never differ from ours on every plan.
resource "google_bigquery_routine" "records_unique" {
  project      = var.project_id
  dataset_id   = google_bigquery_dataset.recordline.dataset_id
  routine_id   = "records_unique"
  routine_type = "TABLE_VALUED_FUNCTION"
  language     = "SQL"
  description  = "The first copy of each message among the records with an ingest_time in [since, until), as the service's reads show them: a later delivery of a message within the dedupe window (${local.dedupe_window_seconds} s) is left out, and so is a publisher's later copy of a producer sequence (recordline-producer, -epoch, -seq; another message id, the same record id, event time and attributes). Bills every column of the partitions in [since, until) and message_id, ingest_time, id, timestamp, attributes of the window before since (at least 10 MB). With a serving tier BigQuery holds each message once already; this also removes copies stored before it."

  definition_body = templatefile("${path.module}/sql/records_unique.sql.tftpl", {
    records = "`${var.project_id}.${google_bigquery_dataset.recordline.dataset_id}.${google_bigquery_table.records.table_id}`"
    # The window the service reads with (spanner.tf), and its clock margin
    # (CLOCK_SKEW_MICROS in app/records.py; a test keeps them equal).
    window_micros     = format("%d", floor(local.dedupe_window_seconds * 1000000))
    clock_skew_micros = 60000000
  })

  arguments {
    name      = "since"
    data_type = jsonencode({ typeKind = "TIMESTAMP" })
  }
  arguments {
    name      = "until"
    data_type = jsonencode({ typeKind = "TIMESTAMP" })
  }
}

# records_latest(since, until), for analysts (docs/layouts.md, "The latest version of
# each record"): each record id's newest version among the records with an ingest_time
# in [since, until), by the rule GET /v1/records/{id} answers with, so the two agree for
# every id (tests/bigquery/test_records_latest.py); an id whose newest version carries
# the system's delete marker is left out. A table function for the reason
# records_unique is one: the arguments bound its scan, which a view's caller could not.
# What a call bills: the columns the caller reads and those the ranking reads (message_id,
# ingest_time, publish_time, trace_id, subscription, id, timestamp; data too with a
# delete marker), of the partitions [since, until) touches, at least 10 MB; on a layout
# partitioned by another column than ingest_time, of every partition (clustering on
# ingest_time first trims it to the range's blocks).
resource "google_bigquery_routine" "records_latest" {
  project      = var.project_id
  dataset_id   = google_bigquery_dataset.recordline.dataset_id
  routine_id   = "records_latest"
  routine_type = "TABLE_VALUED_FUNCTION"
  language     = "SQL"
  description  = "Each record id's newest version among the records with an ingest_time in [since, until), as GET /v1/records/{id} answers it: first copies only, then the latest event time (one beats none), publish time, ingest time and message id.${var.delete_marker == null ? "" : " An id whose newest version's payload holds ${var.delete_marker.value} at ${var.delete_marker.field} is deleted: left out."} Bills the columns read and message_id, ingest_time, publish_time, trace_id, subscription, id and timestamp of the partitions the range touches (at least 10 MB)."

  definition_body = templatefile("${path.module}/sql/records_latest.sql.tftpl", {
    records      = "`${var.project_id}.${google_bigquery_dataset.recordline.dataset_id}.${google_bigquery_table.records.table_id}`"
    delete_path  = var.delete_marker == null ? "" : "$.${join(".", [for name in split(".", var.delete_marker.field) : "\"${name}\""])}"
    delete_value = var.delete_marker == null ? "" : var.delete_marker.value
  })

  arguments {
    name      = "since"
    data_type = jsonencode({ typeKind = "TIMESTAMP" })
  }
  arguments {
    name      = "until"
    data_type = jsonencode({ typeKind = "TIMESTAMP" })
  }
}

# Search indexes on the lookup keys. The provider has no search-index resource, so each
# is a DDL query job; its id is derived from the statement, so a changed statement runs
# as a new job and an unchanged one is never run again (a job id is used once per
# project). IF NOT EXISTS makes a re-run harmless, for instance once BigQuery has
# forgotten the job after its 180 days of history and Terraform creates it anew.
#
# A lookup by id or message_id (`=` or IN) then reads only the blocks that hold the
# key instead of every block of the partitions it spans; rows written since the last
# indexing are searched without the index, so no row is missed. NO_OP_ANALYZER
# indexes each value whole: ids are matched exactly, never as text.
locals {
  search_indexes = {
    records_keys  = "CREATE SEARCH INDEX IF NOT EXISTS records_keys ON `${var.project_id}.${google_bigquery_dataset.recordline.dataset_id}.${google_bigquery_table.records.table_id}`(id, message_id) OPTIONS (analyzer = 'NO_OP_ANALYZER')"
    rejected_keys = "CREATE SEARCH INDEX IF NOT EXISTS rejected_keys ON `${var.project_id}.${google_bigquery_dataset.recordline.dataset_id}.${google_bigquery_table.rejected.table_id}`(message_id) OPTIONS (analyzer = 'NO_OP_ANALYZER')"
  }
}

resource "google_bigquery_job" "search_index" {
  for_each = local.search_indexes

  project  = var.project_id
  location = google_bigquery_dataset.recordline.location
  job_id   = "${var.service_name}_${each.key}_${substr(sha256(each.value), 0, 16)}"

  query {
    query          = each.value
    use_legacy_sql = false
    # DDL takes no dispositions; the provider's defaults would be refused.
    create_disposition = ""
    write_disposition  = ""
  }
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

  lifecycle {
    prevent_destroy = true
  }
}
