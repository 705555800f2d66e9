# What the cell's accounts need at its project, where they have no narrower home:
# BigQuery query jobs (its reads and the exporter's settling run as jobs, which belong
# to a project), spans and metrics. Two accounts a cell, so six members of the project's
# policy a cell, whatever its number of systems (where one member a system made a
# thousand-member binding); and the fill account's query jobs (fill.tf), where it is.
resource "google_project_iam_member" "cell_accounts" {
  for_each = merge(
    {
      for pair in setproduct(
        concat(["runtime"], length(local.exporter) > 0 ? ["exporter"] : []),
        ["roles/bigquery.jobUser", "roles/cloudtrace.agent", "roles/monitoring.metricWriter"],
      ) : "${pair[0]} ${pair[1]}" => { account = pair[0], role = pair[1] }
    },
    { for cell in keys(local.fill) : "fill roles/bigquery.jobUser" => { account = "fill", role = "roles/bigquery.jobUser" } },
  )

  project = var.project_id
  role    = each.value.role
  member = {
    runtime  = google_service_account.runtime.member
    exporter = join("", values(google_service_account.exporter)[*].member)
    fill     = join("", values(google_service_account.fill)[*].member)
  }[each.value.account]
}

# The metric descriptors the cell's SLOs and dashboard name, made in a project of the
# cell's own (the environment's are the environment root's: environment/metrics.tf).
module "metrics" {
  source = "./modules/metrics"

  project_id = var.project_id
  create     = local.own_project

  depends_on = [google_project_service.enabled]
}

# --- a project of the cell's own -----------------------------------------------------
#
# In the environment's project the environment root grants its accounts what they need
# at the project (environment/iam.tf); in a project of the cell's own, the same is
# granted here, and the cell's Cloud Run agent may pull the environment's images. Its
# first apply is made by an owner of that project (infra/README.md, "A cell in a
# project of its own"): it grants the apply account its roles here.

resource "google_project_iam_member" "own_project_apply" {
  #checkov:skip=CKV_GCP_49:The apply account creates and deletes this configuration's service accounts; creating one has no narrower scope than the project.
  for_each = local.own_project ? var.terraform_apply_roles : []

  project = var.project_id
  role    = each.value
  member  = local.apply_member
}

locals {
  # The plan account's viewer roles (environment/iam.tf's, which a test keeps equal).
  terraform_plan_roles = [
    "roles/artifactregistry.reader",
    "roles/bigquery.metadataViewer",
    "roles/bigquery.resourceViewer",
    "roles/browser",
    "roles/cloudscheduler.viewer",
    "roles/compute.viewer",
    "roles/iam.roleViewer",
    "roles/iam.securityReviewer",
    "roles/iam.serviceAccountViewer",
    "roles/monitoring.viewer",
    "roles/pubsub.viewer",
    "roles/run.viewer",
    "roles/secretmanager.viewer",
    "roles/serviceusage.serviceUsageViewer",
    "roles/spanner.viewer",
  ]
  # On-call looks as themselves: Cloud Monitoring, the logs, query jobs.
  oncall_project_roles = ["roles/monitoring.viewer", "roles/logging.viewer", "roles/bigquery.jobUser"]
}

resource "google_project_iam_member" "own_project_plan" {
  for_each = local.own_project ? toset(local.terraform_plan_roles) : toset([])

  project = var.project_id
  role    = each.value
  member  = "serviceAccount:${local.environment_accounts.terraform_plan}"
}

resource "google_project_iam_member" "own_project_oncall" {
  for_each = {
    for pair in setproduct(sort(tolist(var.oncall)), local.oncall_project_roles) :
    "${pair[1]} ${pair[0]}" => { member = pair[0], role = pair[1] } if local.own_project
  }

  project = var.project_id
  role    = each.value.role
  member  = each.value.member
}

# The runbook's commands as the operator account at this project (environment/iam.tf
# says why each): revisions listed, query jobs, and the canaries' Scheduler jobs resumed
# or paused through a role of exactly those permissions.
resource "google_project_iam_custom_role" "own_project_scheduler" {
  for_each = local.own_project ? toset(["scheduler"]) : toset([])

  project     = var.project_id
  role_id     = "recordlineOperatorScheduler_${local.role_suffix}"
  title       = "Recordline on-call: the canaries' Scheduler jobs of ${local.cell}"
  description = "Read, pause, resume and run Cloud Scheduler jobs (the canaries), nothing else."
  permissions = [
    "cloudscheduler.jobs.enable",
    "cloudscheduler.jobs.get",
    "cloudscheduler.jobs.list",
    "cloudscheduler.jobs.pause",
    "cloudscheduler.jobs.run",
  ]

  depends_on = [google_project_service.enabled]
}

resource "google_project_iam_member" "own_project_operator" {
  for_each = local.own_project ? {
    run_viewer = "roles/run.viewer"
    job_user   = "roles/bigquery.jobUser"
    scheduler  = google_project_iam_custom_role.own_project_scheduler["scheduler"].id
  } : {}

  project = var.project_id
  role    = each.value
  member  = local.operator_member
}

# The deploy account lists the cell's revisions at this project, as in the environment's
# (environment/iam.tf, deployer_lists_revisions).
resource "google_project_iam_member" "own_project_deployer" {
  for_each = local.own_project ? toset(["roles/run.viewer"]) : toset([])

  project = var.project_id
  role    = each.value
  member  = local.deployer_member
}

# Cloud Run pulls each revision's image as the project's Cloud Run agent: the
# environment's repository, in the environment's project, is another project's.
resource "google_artifact_registry_repository_iam_member" "cell_pulls_images" {
  for_each = local.own_project ? toset([var.region]) : toset([])

  project    = local.environment_project
  location   = each.key
  repository = var.artifact_repository_id
  role       = "roles/artifactregistry.reader"
  member     = "serviceAccount:service-${local.project_number}@serverless-robot-prod.iam.gserviceaccount.com"
}

# The request logs the environment excludes in its project (modules/request_log_exclusions
# says which and why), excluded in a project of the cell's own.
module "request_log_exclusions" {
  source = "./modules/request_log_exclusions"

  prefix = local.cell
}

resource "google_logging_project_exclusion" "successful_pushes" {
  for_each = local.own_project ? toset([local.cell]) : toset([])

  project     = var.project_id
  name        = module.request_log_exclusions.exclusions.successful_pushes.name
  description = module.request_log_exclusions.exclusions.successful_pushes.description
  filter      = module.request_log_exclusions.exclusions.successful_pushes.filter

  depends_on = [google_project_service.enabled]
}

resource "google_logging_project_exclusion" "successful_reads" {
  for_each = local.own_project ? toset([local.cell]) : toset([])

  project     = var.project_id
  name        = module.request_log_exclusions.exclusions.successful_reads.name
  description = module.request_log_exclusions.exclusions.successful_reads.description
  filter      = module.request_log_exclusions.exclusions.successful_reads.filter

  depends_on = [google_project_service.enabled]
}

resource "google_logging_project_exclusion" "follower_reads" {
  for_each = local.own_project ? toset([local.cell]) : toset([])

  project     = var.project_id
  name        = module.request_log_exclusions.exclusions.follower_reads.name
  description = module.request_log_exclusions.exclusions.follower_reads.description
  filter      = module.request_log_exclusions.exclusions.follower_reads.filter

  depends_on = [google_project_service.enabled]
}
