# The service's metric descriptors in the environment's project, for the cells in it and
# before any alert names them (modules/metrics; a cell in a project of its own makes
# them there).
module "metrics" {
  source = "../modules/metrics"

  project_id = var.project_id
  create     = true

  depends_on = [google_project_service.enabled]
}

# A deployment made before cells made them at its root: the same descriptors, kept
# (deleting a descriptor deletes its metric's data).
moved {
  from = google_monitoring_metric_descriptor.workload
  to   = module.metrics.google_monitoring_metric_descriptor.workload
}

