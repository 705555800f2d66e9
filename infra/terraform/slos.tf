# The cell's service in Cloud Monitoring's service monitoring: every system's SLOs are
# its (modules/system/slos.tf), three a system, within the 500 a service holds
# (https://cloud.google.com/stackdriver/docs/solutions/slo-monitoring/ui/create-slo;
# cell_max_systems is bounded by it). One service a cell, where one a system made a
# thousand. Made after the metric descriptors its SLOs name (metrics.tf).
resource "google_monitoring_custom_service" "cell" {
  project      = var.project_id
  service_id   = local.cell
  display_name = "${local.cell} (${var.environment}): ${length(local.systems)} systems"

  depends_on = [module.metrics]
}
