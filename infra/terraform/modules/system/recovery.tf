# On-call writes rows back into this system's serving database after an operator's
# mistake (`recordline restore rows`, docs/operations.md#recovering-a-serving-database),
# as the operator account: inserts only, through the cell's role (root recovery.tf).
resource "google_spanner_database_iam_member" "operator_restores_rows" {
  for_each = google_spanner_database.serving

  project  = var.project_id
  instance = each.value.instance
  database = each.value.name
  role     = var.serving.restore_role
  member   = local.operator_member
}
