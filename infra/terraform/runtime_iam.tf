# What every system's runtime account needs at the project, where it has no narrower
# home: BigQuery query jobs (its reads run as jobs, which belong to a project), spans
# and metrics. One role of exactly those permissions, bound once to every runtime
# account, rather than three project members per system: the provider changes a
# project's IAM policy one member at a time (a read-modify-write each, under one lock
# per project), so a hundred systems made three hundred of them in a row, most of a
# first apply. The binding is one policy change however many systems there are, and
# authoritative for this role alone, which nothing else in the project holds.

resource "google_project_iam_custom_role" "runtime" {
  project     = var.project_id
  role_id     = "recordlineRuntime"
  title       = "Recordline service: query jobs, spans and metrics"
  description = "What each system's runtime account needs at the project: run BigQuery query jobs, write spans and custom metrics."
  permissions = [
    # roles/bigquery.jobUser's (https://cloud.google.com/iam/docs/roles-permissions/bigquery):
    # a job's creator reads its own job and results without more.
    "bigquery.jobs.create",
    # roles/cloudtrace.agent's, for the Cloud Trace API the span exporter calls
    # (https://cloud.google.com/iam/docs/roles-permissions/cloudtrace).
    "cloudtrace.traces.patch",
    # roles/monitoring.metricWriter's (https://cloud.google.com/iam/docs/roles-permissions/monitoring):
    # the metric exporter writes points and creates a descriptor it does not find.
    "monitoring.metricDescriptors.create",
    "monitoring.metricDescriptors.get",
    "monitoring.metricDescriptors.list",
    "monitoring.monitoredResourceDescriptors.get",
    "monitoring.monitoredResourceDescriptors.list",
    "monitoring.timeSeries.create",
  ]

  depends_on = [google_project_service.enabled]
}

resource "google_project_iam_binding" "runtime" {
  project = var.project_id
  role    = google_project_iam_custom_role.runtime.id
  # The exporter service's account too (exporter.tf): its queries and metrics.
  members = sort(concat(
    [for system in module.system : "serviceAccount:${system.runtime_service_account}"],
    values(google_service_account.exporter)[*].member,
  ))

  depends_on = [google_project_service.enabled]
}

# The three project members each system had: left in the project when this change is
# applied, so no runtime account is without them for a moment (the binding above grants
# the same permissions in the same apply), and no longer Terraform's. Removing them
# afterwards is one command per member (docs/operations.md#after-the-runtime-roles-moved-to-one-binding).
removed {
  from = module.system.google_project_iam_member.runtime

  lifecycle {
    destroy = false
  }
}
