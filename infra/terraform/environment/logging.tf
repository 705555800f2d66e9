# Most successful pushes' and reads' request logs, and every successful follower's
# long-poll's, excluded before they are stored (modules/request_log_exclusions says which
# and why). For every cell in this project; a cell in a project of its own excludes them
# there (the cell root's project_iam.tf).
module "request_log_exclusions" {
  source = "../modules/request_log_exclusions"

  prefix = var.service_name
}

resource "google_logging_project_exclusion" "successful_pushes" {
  project     = var.project_id
  name        = module.request_log_exclusions.exclusions.successful_pushes.name
  description = module.request_log_exclusions.exclusions.successful_pushes.description
  filter      = module.request_log_exclusions.exclusions.successful_pushes.filter

  depends_on = [google_project_service.enabled]
}

resource "google_logging_project_exclusion" "successful_reads" {
  project     = var.project_id
  name        = module.request_log_exclusions.exclusions.successful_reads.name
  description = module.request_log_exclusions.exclusions.successful_reads.description
  filter      = module.request_log_exclusions.exclusions.successful_reads.filter

  depends_on = [google_project_service.enabled]
}

resource "google_logging_project_exclusion" "follower_reads" {
  project     = var.project_id
  name        = module.request_log_exclusions.exclusions.follower_reads.name
  description = module.request_log_exclusions.exclusions.follower_reads.description
  filter      = module.request_log_exclusions.exclusions.follower_reads.filter

  depends_on = [google_project_service.enabled]
}
