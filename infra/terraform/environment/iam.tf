# --- deploys (GitHub Actions, see github_oidc.tf) -------------------------------

# (The region's repository kept its grant's address when the standby came.)
moved {
  from = google_artifact_registry_repository_iam_member.deployer_pushes_images
  to   = google_artifact_registry_repository_iam_member.deployer_pushes_images["europe-west1"]
}

resource "google_artifact_registry_repository_iam_member" "deployer_pushes_images" {
  for_each = google_artifact_registry_repository.images

  project    = var.project_id
  location   = each.value.location
  repository = each.value.name
  role       = "roles/artifactregistry.writer"
  member     = google_service_account.deployer.member
}

# Each rollout reads each cell's services from its Terraform outputs in the state
# (deploy-environment.yml, deploy-cell.yml).
resource "google_storage_bucket_iam_member" "deployer_reads_state" {
  bucket = var.terraform_state_bucket
  role   = "roles/storage.objectViewer"
  member = google_service_account.deployer.member
}

# Each rollout records, beside the directory, what was live in the cell before it and
# what it made live (deploy-cell.yml, "release": directory/releases/<cell>.json), which
# on-call reads to roll back: it writes those objects and no other.
resource "google_storage_bucket_iam_member" "deployer_records_releases" {
  bucket = var.terraform_state_bucket
  role   = "roles/storage.objectUser"
  member = google_service_account.deployer.member

  condition {
    title       = "the release records only"
    description = "What each rollout of a cell made live and what was live before it (directory/releases/<cell>.json)."
    expression  = "resource.name.startsWith(\"projects/_/buckets/${var.terraform_state_bucket}/objects/directory/releases/\")"
  }
}

# The smoke test reads back as the smoke account, with ID tokens only
# (serviceAccountOpenIdTokenCreator), no access tokens; it pushes as each canary
# system's own push account (modules/system/service_accounts.tf).
resource "google_service_account_iam_member" "deployer_mints_smoke_tokens" {
  for_each = {
    smoke = google_service_account.smoke.name
  }

  service_account_id = each.value
  role               = "roles/iam.serviceAccountOpenIdTokenCreator"
  member             = google_service_account.deployer.member
}

# The export-health gate of every rollout (deploy-cell.yml) reads the canary systems'
# export lag and rows from Cloud Monitoring, over the metrics scope every cell's project
# is in (cells.tf): viewer of the metrics, nothing that changes them.
resource "google_project_iam_member" "deployer_reads_metrics" {
  project = var.project_id
  role    = "roles/monitoring.viewer"
  member  = google_service_account.deployer.member

  depends_on = [google_project_service.enabled]
}

# Each rollout reads the revisions of a cell's service and pool by identity (its release
# record, and which it keeps for a rollback: deploy-cell.yml), and Cloud Run checks
# listing revisions on the project (as for the operator account, below).
resource "google_project_iam_member" "deployer_lists_revisions" {
  project = var.project_id
  role    = "roles/run.viewer"
  member  = google_service_account.deployer.member

  depends_on = [google_project_service.enabled]
}

# --- Terraform (GitHub Actions, see github_oidc.tf) -----------------------------

# Each cell's ops job runs as the operator account (the cell root's ops.tf): creating
# it is acting as the account, and so is pointing it at another image, which every
# rollout does (the image its cell serves: deploy-cell.yml) and every rollback
# (rollback.yml), both as the deploy account. The operator account only runs it.
resource "google_service_account_iam_member" "acts_as_operator" {
  for_each = {
    deployer        = google_service_account.deployer.member
    terraform_apply = google_service_account.terraform_apply.member
  }

  service_account_id = google_service_account.operator.name
  role               = "roles/iam.serviceAccountUser"
  member             = each.value
}

# Plans run on pull requests, with code anyone who can push a branch controls, so the
# account reads configuration and never data: viewer roles per service, no basic roles.
# Every type Terraform manages needs its viewer here and its admin in
# terraform_apply_roles; tests/infra/test_iam_coverage.py maps each type to both.
resource "google_project_iam_member" "terraform_plan" {
  for_each = toset([
    "roles/artifactregistry.reader",
    "roles/bigquery.metadataViewer",
    "roles/bigquery.resourceViewer", # the search-index DDL jobs (bigquery.tf), refreshed on plan
    "roles/browser",
    "roles/cloudscheduler.viewer", # the canaries' jobs (modules/system/canary.tf)
    "roles/compute.viewer",        # a cell's load balancer (cdn.tf): configuration, never data
    "roles/iam.roleViewer",        # the operator's custom role
    "roles/iam.securityReviewer",
    "roles/iam.serviceAccountViewer",
    "roles/iam.workloadIdentityPoolViewer",
    "roles/monitoring.viewer",
    "roles/pubsub.viewer",
    "roles/run.viewer",
    "roles/secretmanager.viewer",
    "roles/serviceusage.serviceUsageViewer",
    "roles/spanner.viewer", # the serving tier's instance and databases, never their rows
  ])

  project = var.project_id
  role    = each.value
  member  = google_service_account.terraform_plan.member

  depends_on = [google_project_service.enabled]
}

# The request-log exclusion (logging.tf) is read on every plan. roles/logging.viewer
# would also let the account list every log entry, which a pull request's code could
# print: the plan gets the exclusion's configuration and nothing else.
resource "google_project_iam_custom_role" "terraform_plan_logging" {
  project     = var.project_id
  role_id     = "recordlineTerraformPlanLogging"
  title       = "Recordline Terraform plan: log exclusions"
  description = "Read the project's log exclusions (their configuration, never a log entry)."
  permissions = [
    "logging.exclusions.get",
    "logging.exclusions.list",
  ]

  depends_on = [google_project_service.enabled]
}

resource "google_project_iam_member" "terraform_plan_logging" {
  project = var.project_id
  role    = google_project_iam_custom_role.terraform_plan_logging.id
  member  = google_service_account.terraform_plan.member
}

resource "google_storage_bucket_iam_member" "terraform_plan_reads_state" {
  bucket = var.terraform_state_bucket
  role   = "roles/storage.objectViewer"
  member = google_service_account.terraform_plan.member
}

resource "google_project_iam_member" "terraform_apply" {
  #checkov:skip=CKV_GCP_49:The apply account creates and deletes this configuration's service accounts; creating one has no narrower scope than the project.
  for_each = var.terraform_apply_roles

  project = var.project_id
  role    = each.value
  member  = google_service_account.terraform_apply.member

  depends_on = [google_project_service.enabled]
}

# State objects, and this bucket's own IAM (the grants in this file): the bucket only.
resource "google_storage_bucket_iam_member" "terraform_apply_owns_state" {
  bucket = var.terraform_state_bucket
  role   = "roles/storage.admin"
  member = google_service_account.terraform_apply.member
}

# --- on-call ----------------------------------------------------------------------

# ID tokens for the service and access tokens for Pub/Sub, as the operator account
# only: the grant is on the account, not the project.
resource "google_service_account_iam_member" "oncall_acts_as_operator" {
  for_each = var.oncall

  service_account_id = google_service_account.operator.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = each.value
}

# What the runbook's commands need at the project, as the operator account, for the
# cells in this project (a cell in a project of its own grants the same there: the cell
# root's operator_iam.tf). Each is run in tests/infra/test_runbook_commands.py against a
# fake that checks these permissions where Google does: run.viewer for `gcloud run
# revisions list`, which Cloud Run checks on the project however the service's own
# policy reads (and for `gcloud projects describe`: resourcemanager.projects.get); the
# canaries' Scheduler jobs resumed or paused (Cloud Scheduler has no per-job policy),
# through a role of exactly those permissions; query jobs for `recordline export
# verify` (BigQuery runs a job in a project; what it may read is granted per table:
# modules/system/iam.tf, operator_reads_exported).
resource "google_project_iam_member" "operator" {
  for_each = toset([
    "roles/run.viewer",
    "roles/bigquery.jobUser",
    google_project_iam_custom_role.operator_scheduler.id,
  ])

  project = var.project_id
  role    = each.value
  member  = google_service_account.operator.member
}

resource "google_project_iam_custom_role" "operator_scheduler" {
  project     = var.project_id
  role_id     = "recordlineOperatorScheduler"
  title       = "Recordline on-call: the canary's Scheduler jobs"
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

# On-call looks as themselves and acts as the operator account: the members of `oncall`
# see dashboards, alerts, Metrics Explorer and the Logs Explorer, and query the dead
# letters (the table itself is granted per system: modules/system/iam.tf), but change
# nothing. Reading the dead letters is no more than acting as the operator already
# allows (it pulls them to replay).
locals {
  oncall_project_roles = ["roles/monitoring.viewer", "roles/logging.viewer", "roles/bigquery.jobUser"]
}

resource "google_project_iam_member" "oncall_looks" {
  for_each = {
    for pair in setproduct(sort(tolist(var.oncall)), local.oncall_project_roles) :
    "${pair[1]} ${pair[0]}" => { member = pair[0], role = pair[1] }
  }

  project = var.project_id
  role    = each.value.role
  member  = each.value.member

  depends_on = [google_project_service.enabled]
}

# --- the directory ----------------------------------------------------------------

# Where each system is: every cell writes, at each apply, one object listing its systems
# with their project, region, cell, services, jobs, instance, database, dataset and
# accounts (the cell root's directory.tf), so that the runbook's commands name the
# right ones from a system's name alone (docs/operations.md, "Where to look"). On-call
# and the operator account read those objects and nothing else of the bucket (its state
# stays the plan and apply accounts'): a condition on the objects' names, and, for the
# runbook's `directory/*.json`, on the prefix a listing asks for. A listing is checked on
# the bucket, whose name no object's prefix matches: without its own clause
# (storage.googleapis.com/objectListPrefix) the grant would allow reading each object by
# its exact name and never finding them.
resource "google_storage_bucket_iam_member" "directory_readers" {
  # Keys known before the operator account exists (for_each keys must be).
  for_each = merge({ for m in var.oncall : m => m }, { operator-account = google_service_account.operator.member })

  bucket = var.terraform_state_bucket
  role   = "roles/storage.objectViewer"
  member = each.value

  condition {
    title       = "the directory only"
    description = "Where each system is (directory/<cell>.json), and each cell's last release, listed or read; never a Terraform state."
    expression  = "resource.name.startsWith(\"projects/_/buckets/${var.terraform_state_bucket}/objects/directory/\") || api.getAttribute(\"storage.googleapis.com/objectListPrefix\", \"\").startsWith(\"directory/\")"
  }
}
