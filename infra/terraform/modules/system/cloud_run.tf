resource "google_cloud_run_v2_service" "recordline" {
  project  = var.project_id
  name     = var.service_name
  location = var.region
  ingress  = var.ingress

  # Off: deletion_protection lives in the resource's own state, so once a retired
  # system's module instance is gone it cannot be lifted, and the apply that retires
  # it would fail part-way. The service holds nothing (messages wait in Pub/Sub, rows
  # are in BigQuery and Spanner, each with prevent_destroy, which a plan enforces) and
  # its URL is deterministic, so an unintended replacement shows in the plan as one.
  deletion_protection = false

  # Tokens are checked by Cloud Run (run.invoker) before the request reaches the
  # service, which checks them again. Both audiences are derived from the service's
  # deterministic URL (locals.tf), one pair per environment, known before it exists.
  invoker_iam_disabled = false
  custom_audiences     = [local.push_audience, local.read_audience]

  template {
    service_account                  = google_service_account.runtime.email
    max_instance_request_concurrency = var.concurrency
    timeout                          = "${var.request_timeout_seconds}s"
    execution_environment            = "EXECUTION_ENVIRONMENT_GEN2"

    scaling {
      min_instance_count = var.min_instances
      max_instance_count = var.max_instances
    }

    containers {
      # Until its first deploy a new system runs the placeholder (placeholder.py): 503
      # to every push, so Pub/Sub keeps the messages instead of acknowledging them to
      # a service that cannot store them. Deploys set the image and clear the command
      # and arguments (deploy-environment.yml).
      image   = var.placeholder_image
      command = ["python3"]
      args    = ["-c", file("${path.module}/placeholder.py")]

      ports {
        container_port = 8080 # Cloud Run passes it to the service as $PORT
      }

      resources {
        limits = {
          cpu    = var.cpu
          memory = var.memory
        }
        # Nothing the service runs must outlive a request: the group commit's flush is
        # awaited by the pushes in it, and the export to BigQuery is the exporter
        # service's (root exporter.tf). So an instance is billed by request (CPU only
        # while one is in flight: https://cloud.google.com/run/docs/configuring/billing-settings)
        # and the service scales to zero at rest. A system that keeps instances warm
        # (min_instances, for its followers) is billed for them whole anyway: it keeps
        # CPU between requests too, so its tail refresh and metrics never stall.
        cpu_idle          = var.min_instances == 0
        startup_cpu_boost = true
      }

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

      # Ready only once the store answers: a new revision takes traffic when it can write.
      startup_probe {
        http_get {
          path = "/readyz"
        }
        period_seconds    = 2
        timeout_seconds   = 2
        failure_threshold = 30
      }

      # Alive is deliberately not "store reachable": a BigQuery outage must give 503s
      # and redeliveries, not a restart loop.
      liveness_probe {
        http_get {
          path = "/healthz"
        }
        period_seconds    = 15
        timeout_seconds   = 3
        failure_threshold = 3
      }
    }
  }

  lifecycle {
    # Deploys own the image (.github/workflows/deploy-environment.yml), the command
    # and arguments they clear, what `gcloud run deploy` writes with them (template
    # annotations and labels, the revision name, client and client_version) and the
    # traffic split (each deploy promotes its revision; a rollback pins an earlier one).
    # Reverting them would make every infra apply after a deploy create a new revision,
    # or undo a rollback. Terraform owns the rest.
    ignore_changes = [
      template[0].containers[0].image,
      template[0].containers[0].command,
      template[0].containers[0].args,
      template[0].annotations,
      template[0].labels,
      template[0].revision,
      client,
      client_version,
      traffic,
    ]
  }

  # Cloud Run checks the runtime account's access to the secret when it creates the
  # revision; the grant has to have propagated by then (time_sleep.iam_propagation).
  depends_on = [
    google_secret_manager_secret_version.page_token,
    time_sleep.iam_propagation,
  ]
}
