# Capacity that does not wait in a queue. The serving tier's instances grow with what
# Terraform computes (spanner.tf), but a change there is a merge, a plan and an apply in
# the cell's queue, behind whatever holds it: a rollout, a prod apply waiting for its
# reviewers. When Spanner's storage page or CPU ticket fires, on-call raises that one
# instance's processing units at once, as the operator account, with one gcloud command
# (docs/operations.md#adding-spanner-capacity-now), then merges the same figure for that
# instance alone (spanner_instance_units). Meanwhile no plan lowers it: the plan job
# reads each instance's units first (spanner_live_units), so an apply, an emergency's
# included, goes through; the apply job refuses only a plan made before the raise
# (terraform-apply.yml), which planning again mends. Lowering is the same command, by
# hand, on purpose.

locals {
  # The cell's custom roles carry its name: each project holds 300
  # (https://cloud.google.com/iam/quotas), and several cells may share one.
  role_suffix = replace(local.cell, "-", "_")
}

resource "google_project_iam_custom_role" "operator_capacity" {
  project     = var.project_id
  role_id     = "recordlineOperatorCapacity_${local.role_suffix}"
  title       = "Recordline on-call: the processing units of ${local.cell}'s serving instances"
  description = "Read and resize a Spanner instance (its processing units), nothing else: granted on the serving tier's instances."
  permissions = [
    "spanner.instanceOperations.get",
    "spanner.instances.get",
    "spanner.instances.update",
  ]

  depends_on = [google_project_service.enabled]
}

resource "google_spanner_instance_iam_member" "operator_capacity" {
  for_each = google_spanner_instance.serving

  project  = var.project_id
  instance = each.value.name
  role     = google_project_iam_custom_role.operator_capacity.id
  member   = local.operator_member
}
