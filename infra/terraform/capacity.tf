# Capacity that does not wait in a queue. The serving tier's instances grow with what
# Terraform computes (spanner.tf), but a change there is a merge, a plan and an apply in
# the environment's queue, behind whatever holds it: an hour-long rollout, a prod apply
# waiting for its reviewers. When Spanner's storage page or CPU ticket fires, on-call
# raises an instance's processing units at once, as the operator account, with one
# gcloud command (docs/operations.md#adding-spanner-capacity-now), then merges the same
# figure in spanner_processing_units. Until that merge no apply lowers it: the apply job
# refuses a plan that would give an instance fewer units than it has
# (terraform-environment.yml). Lowering is the same command, by hand, on purpose.

resource "google_project_iam_custom_role" "operator_capacity" {
  project     = var.project_id
  role_id     = "recordlineOperatorCapacity"
  title       = "Recordline on-call: the serving tier's processing units"
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
  member   = google_service_account.operator.member
}
