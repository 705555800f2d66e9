# The exporter service (app/exporter; infra/README.md, "The exporter service"): one
# Cloud Run worker pool of `exporter_instances` instances (2 by default) runs
# `recordline exporter`, which feeds BigQuery from the Spanner database of every
# system with `serving`, each under a lease in that system's own database: one
# instance exports a system at a time, and another takes it over within a lease
# (15 s) when that one dies. The ingest services then run nothing between requests
# and scale with their own traffic, to zero at rest (modules/system/cloud_run.tf).
# Nothing here exists without a serving system.
#
# A worker pool serves no request: no port, no URL, no probes. What it does shows in
# its systems' export lag and loop restarts (each system's own metrics and alerts,
# whichever instance exports it) and in its logs, each line labelled with its system.
# The pool is deployed before the ingest services in every rollout
# (.github/workflows/deploy-environment.yml), so the code that exports a row always
# knows the columns of the code that wrote it; the lease ranks code versions, and code
# of an older row schema never takes a system back (app/store/spanner/ledger.py).

locals {
  # Each system's dataset: its name with `_` for `-`; the default system's is dataset_id.
  dataset_ids = {
    for name in keys(local.systems) : name => name == var.service_name ? var.dataset_id : replace(name, "-", "_")
  }

  # What the exporter service is told of each system it exports: the settings of the
  # same names its ingest service runs with (RECORDLINE_SERVING, RECORDLINE_STORE,
  # RECORDLINE_JSON_TOPIC_SCHEMA), in RECORDLINE_EXPORT_SYSTEMS, which app/settings.py
  # reads and checks (ExporterSettings). About 170 bytes a system, plus a declared
  # schema's text: a hundred systems fit Cloud Run's 32 KiB for one variable
  # (tests/infra/test_exporter.py evaluates it).
  exported_systems = {
    for name in local.serving_systems : name => merge(
      {
        serving = "spanner://projects/${var.project_id}/instances/${local.serving_instance[name]}/databases/${name}"
        store   = "bigquery://${var.project_id}/${local.dataset_ids[name]}"
      },
      local.systems[name].json_schema == null ? {} : {
        json_topic_schema = file("${path.root}/../../${local.systems[name].json_schema}")
      },
    )
  }
  exported_systems_json = jsonencode(local.exported_systems)
  # https://cloud.google.com/run/docs/reference/rest/v2/Container#EnvVar: a value holds
  # at most 32,768 bytes.
  env_value_bytes = 32768

  # The worker pool, by name, once a system has `serving`.
  exporter = length(local.serving_systems) > 0 ? { (var.service_name) = "${var.service_name}-exporter" } : {}
}

# Its own account: it reads and writes every serving system's database and exported
# tables, and nothing an ingest service has besides (modules/system/iam.tf grants each).
resource "google_service_account" "exporter" {
  for_each = local.exporter

  project      = var.project_id
  account_id   = each.value
  display_name = "${var.service_name} exporter service: every serving system into BigQuery"

  depends_on = [google_project_service.enabled]
}

resource "google_cloud_run_v2_worker_pool" "exporter" {
  for_each = local.exporter

  project  = var.project_id
  name     = each.value
  location = var.region
  # Worker pools are a Preview of Cloud Run (https://cloud.google.com/run/docs/deploy-worker-pools).
  launch_stage = "BETA"

  # As the services' (modules/system/cloud_run.tf): it holds nothing.
  deletion_protection = false

  # Every instance requested runs, and is billed, all the time
  # (https://cloud.google.com/run/docs/configuring/workerpools/manual-scaling): two, so
  # that one's death leaves another exporting every system.
  scaling {
    scaling_mode          = "MANUAL"
    manual_instance_count = var.exporter_instances
  }

  template {
    service_account = google_service_account.exporter[each.key].email

    containers {
      # Until the first deploy it runs the placeholder (exporter_placeholder.py), which
      # waits and exports nothing: the ingest services' exporters, if any, still do. A
      # deploy sets the image and clears the command and arguments.
      image   = var.placeholder_image
      command = ["python3"]
      args    = ["-c", file("${path.module}/exporter_placeholder.py")]

      env {
        name  = "RECORDLINE_EXPORT_SYSTEMS"
        value = local.exported_systems_json
      }

      dynamic "env" {
        for_each = {
          GOOGLE_CLOUD_PROJECT  = var.project_id
          RECORDLINE_LOG_FORMAT = "json"
          OTEL_SERVICE_NAME     = each.value
          # Each system's metrics under its own name (service.namespace), as its ingest
          # service writes them: its export lag and loop restarts reach its alerts.
          OTEL_METRICS_EXPORTER = "gcp_monitoring"
        }
        content {
          name  = env.key
          value = env.value
        }
      }

      resources {
        limits = {
          cpu    = var.exporter_cpu
          memory = var.exporter_memory
        }
      }
    }
  }

  lifecycle {
    # Deploys own the image, the command and arguments they clear, and what
    # `gcloud run worker-pools deploy` writes with them (as for the services).
    ignore_changes = [
      template[0].containers[0].image,
      template[0].containers[0].command,
      template[0].containers[0].args,
      template[0].annotations,
      template[0].labels,
      template[0].revision,
      client,
      client_version,
      instance_splits,
    ]

    # One variable holds every system: past Cloud Run's limit, the apply would fail.
    precondition {
      condition     = length(local.exported_systems_json) <= local.env_value_bytes
      error_message = "RECORDLINE_EXPORT_SYSTEMS would be ${length(local.exported_systems_json)} bytes, over Cloud Run's ${local.env_value_bytes} for one variable: shorten the declared schemas (json_schema) of the serving systems, or run a second exporter service (infra/README.md, \"The exporter service\")."
    }
  }

  depends_on = [
    google_project_iam_binding.runtime,
    module.system,
  ]
}

# The deploy account deploys it (a new revision with the image), and acts as its
# account to do so; on-call restarts or moves it as the operator account
# (docs/operations.md#the-exporter-service).
resource "google_cloud_run_v2_worker_pool_iam_member" "deployer_deploys_exporter" {
  for_each = google_cloud_run_v2_worker_pool.exporter

  project  = var.project_id
  location = each.value.location
  name     = each.value.name
  role     = "roles/run.developer"
  member   = google_service_account.deployer.member
}

resource "google_cloud_run_v2_worker_pool_iam_member" "operator_runs_exporter" {
  for_each = google_cloud_run_v2_worker_pool.exporter

  project  = var.project_id
  location = each.value.location
  name     = each.value.name
  role     = "roles/run.developer"
  member   = google_service_account.operator.member
}

resource "google_service_account_iam_member" "acts_as_exporter" {
  for_each = {
    for pair in setproduct(keys(local.exporter), ["deployer", "operator", "terraform_apply"]) :
    "${pair[0]} ${pair[1]}" => { pool = pair[0], member = pair[1] }
  }

  service_account_id = google_service_account.exporter[each.value.pool].name
  role               = "roles/iam.serviceAccountUser"
  member = {
    deployer        = google_service_account.deployer.member
    operator        = google_service_account.operator.member
    terraform_apply = google_service_account.terraform_apply.member
  }[each.value.member]
}
