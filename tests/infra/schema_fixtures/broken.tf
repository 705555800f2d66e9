# Each resource here breaks the provider schema in one way; see test_provider_schema.py.

resource "google_pubsub_topic" "misspelled_argument" {
  name                      = "t"
  message_retention_durtion = "600s"
}

resource "google_pubsub_subscription" "missing_required" {
  name = "s" # no topic
}

resource "google_bigquery_table" "unknown_block" {
  dataset_id = "d"
  table_id   = "t"
  time_partitioning {
    type        = "DAY"
    expiry_days = 3
  }
  range_partitionning {
    field = "x"
  }
}

resource "google_bigquery_table" "block_as_argument" {
  dataset_id        = "d"
  table_id          = "t"
  time_partitioning = { type = "DAY" }
}

resource "google_cloud_run_v2_service" "dynamic_block_misspelled" {
  name     = "s"
  location = "europe-west1"
  template {
    containers {
      image = "i"
      dynamic "envs" {
        for_each = {}
        content {
          name = envs.key
        }
      }
    }
  }
}

resource "google_monitoring_metric_descriptor" "missing_required_in_block" {
  type        = "custom.googleapis.com/x"
  metric_kind = "GAUGE"
  value_type  = "INT64"
  labels {
    description = "no key"
  }
}

resource "google_no_such_thing" "unknown_resource" {
  name = "x"
}

resource "google_project_service_identity" "beta_resource_on_ga" {
  service = "pubsub.googleapis.com"
}

resource "google_project_service_identity" "beta_misspelled" {
  provider = google-beta
  servce   = "pubsub.googleapis.com"
}
