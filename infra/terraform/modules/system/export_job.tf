# On-call's remedies for the export to BigQuery (docs/operations.md#running-export-commands):
# `recordline export …` runs as a Cloud Run job of this system, as the service's own
# account with the service's own settings, so that nobody needs a checkout, credentials
# or a role on the serving database at 3 a.m. The runbook points the job at the image
# the service's traffic runs before each run (that code wrote the rows and the progress),
# so Terraform leaves the image alone after the first apply. Only with `serving`.

resource "google_cloud_run_v2_job" "export" {
  for_each = local.serving_databases

  project  = var.project_id
  name     = "${var.service_name}-export"
  location = var.region

  # As the service's (cloud_run.tf): the job holds nothing.
  deletion_protection = false

  template {
    task_count = 1

    template {
      service_account = google_service_account.runtime.email
      # A command is a decision (a retry, a rejection, a resync): one that failed is
      # read and run again by a person, never again on its own.
      max_retries = 0
      # `export verify` over a day reads a Spanner call per hour and a BigQuery query
      # per day (app/store/tiered/verify.py): well within an hour.
      timeout = "3600s"

      containers {
        image   = var.placeholder_image
        command = ["recordline"]
        args    = ["export", "status"]

        dynamic "env" {
          for_each = local.service_env
          content {
            name  = env.key
            value = env.value
          }
        }

        env {
          name = "RECORDLINE_PAGE_TOKEN_SECRET"
          value_source {
            secret_key_ref {
              secret  = google_secret_manager_secret.page_token.secret_id
              version = "latest"
            }
          }
        }

        resources {
          limits = {
            cpu    = "1"
            memory = "512Mi"
          }
        }
      }
    }
  }

  lifecycle {
    # The runbook sets the image to the one that serves before each run.
    ignore_changes = [
      template[0].template[0].containers[0].image,
      client,
      client_version,
    ]
  }

  depends_on = [
    google_secret_manager_secret_version.page_token,
    time_sleep.iam_propagation,
  ]
}
