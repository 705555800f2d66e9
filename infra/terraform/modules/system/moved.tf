# Renamed resources keep their state.

moved {
  from = google_monitoring_uptime_check_config.canary_read
  to   = google_monitoring_uptime_check_config.read_path
}
