# Recovering a serving database (docs/operations.md#recovering-a-serving-database), as
# the operator account on-call acts as. Two ways back, whatever the fleet's size:
#
# - rows an operator's mistake removed within spanner_recovery_hours: the live
#   database read as it was before the mistake (point-in-time recovery keeps every old
#   version that long), and the rows it lacks now written back by `recordline restore
#   rows`, which inserts only what is missing. No second database, no free slot needed.
# - the whole database as it was (a table or index dropped): a backup at that time,
#   restored into a scratch instance of its own (`<cell>-restore`, 100
#   processing units, created for the recovery and deleted after it: its instance's
#   database slots may all be taken), and the rows copied back by the same command.
#
# What that takes, and nothing more: on the project, the scratch instance's life, a
# backup's creation, restore and deletion, and reading a database; on each serving
# database, writing rows (modules/system/recovery.tf). Serving databases keep their
# drop protection, which Spanner enforces on their instance too: neither can be deleted
# with these permissions.

resource "google_project_iam_custom_role" "operator_restore" {
  project     = var.project_id
  role_id     = "recordlineOperatorRestore_${local.role_suffix}"
  title       = "Recordline on-call: backups and a scratch instance to restore into"
  description = "Back up a serving database, restore the backup into a scratch instance, read it, and delete both afterwards."
  permissions = [
    "spanner.backupOperations.get",
    "spanner.backups.create",
    "spanner.backups.delete",
    "spanner.backups.get",
    "spanner.backups.list",
    "spanner.backups.restoreDatabase",
    "spanner.databaseOperations.get",
    "spanner.databases.beginReadOnlyTransaction",
    "spanner.databases.create",
    "spanner.databases.createBackup",
    "spanner.databases.get",
    "spanner.databases.read",
    "spanner.databases.select",
    "spanner.instanceOperations.get",
    "spanner.instances.create",
    "spanner.instances.delete",
    "spanner.instances.get",
    "spanner.sessions.create",
    "spanner.sessions.delete",
    "spanner.sessions.get",
  ]

  depends_on = [google_project_service.enabled]
}

resource "google_project_iam_member" "operator_restore" {
  project = var.project_id
  role    = google_project_iam_custom_role.operator_restore.id
  member  = local.operator_member

  depends_on = [google_project_service.enabled]
}

# Writing rows back into a serving database: inserts in read-write transactions, no
# schema change (roles/spanner.databaseUser would also allow updateDdl). Granted on each
# serving database by its system's module.
resource "google_project_iam_custom_role" "operator_restore_rows" {
  project     = var.project_id
  role_id     = "recordlineOperatorRestoreRows_${local.role_suffix}"
  title       = "Recordline on-call: write rows back into a serving database"
  description = "Read and insert rows in read-write transactions, no schema change: granted on each serving database."
  permissions = [
    "spanner.databases.beginOrRollbackReadWriteTransaction",
    "spanner.databases.beginReadOnlyTransaction",
    "spanner.databases.read",
    "spanner.databases.select",
    "spanner.databases.write",
    "spanner.sessions.create",
    "spanner.sessions.delete",
    "spanner.sessions.get",
  ]

  depends_on = [google_project_service.enabled]
}

# A dataset deleted by mistake (docs/operations.md#a-deleted-dataset): BigQuery keeps it
# for its time-travel window (7 days by default) and `UNDROP SCHEMA` brings it back with
# its tables, as long as no dataset of that name exists meanwhile. Undropping is
# creating a dataset (https://cloud.google.com/bigquery/docs/reference/standard-sql/data-definition-language#undrop_schema_statement),
# in a query job (roles/bigquery.jobUser, the operator account's already).
resource "google_project_iam_custom_role" "operator_undrop" {
  project     = var.project_id
  role_id     = "recordlineOperatorUndrop_${local.role_suffix}"
  title       = "Recordline on-call: bring back a dataset deleted by mistake"
  description = "Undrop a deleted dataset (UNDROP SCHEMA), and read datasets' metadata: nothing of their rows."
  permissions = [
    "bigquery.datasets.create",
    "bigquery.datasets.get",
  ]

  depends_on = [google_project_service.enabled]
}

resource "google_project_iam_member" "operator_undrop" {
  project = var.project_id
  role    = google_project_iam_custom_role.operator_undrop.id
  member  = local.operator_member
}
