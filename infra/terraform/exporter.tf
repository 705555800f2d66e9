# The cell's exporter pool (app/exporter; infra/README.md, "The exporter pool"): one
# Cloud Run worker pool of `exporter_instances` instances (2 by default) runs
# `recordline exporter`, which feeds BigQuery from the Spanner database of every system
# of the cell with `serving`, each under a lease in that system's own database: each
# instance claims a fair share of the systems, and another takes a system over within a
# lease (15 s) when its holder dies. The cell's ingest service then runs nothing between
# requests (cell.tf). Nothing here exists without a serving system.
#
# A worker pool serves no request: no port, no URL, no probes. What stands in for a
# health check is the rollout's export gate (deploy-cell.yml): a new revision first
# takes the canary systems alone (their file, canary.json), and every instance gets it
# only once their export has moved, under a lag bound, for a soak; then the ingest
# service. What it does shows in its systems' export lag and loop restarts (each
# system's own metrics and alerts, whichever instance exports it) and in its logs (a
# worker pool's, not a revision's: outputs.tf, the directory). The lease ranks code
# versions, and code of an older row schema never takes a system back
# (app/store/spanner/ledger.py): docs/operations.md#rolling-the-exporter-back.

locals {
  # Each system's dataset: its name with `_` for `-`; the default system's is dataset_id.
  dataset_ids = {
    for name in keys(local.systems) : name => name == var.service_name ? var.dataset_id : replace(name, "-", "_")
  }

  # The worker pool, by the cell's name, once a system has `serving`.
  exporter = length(local.serving_systems) > 0 ? { (local.cell) = "${local.cell}-exporter" } : {}

  # The systems a new exporter revision takes first and the smoke test pushes to
  # (canary_systems): named, or those that represent the cell, each once: the first two
  # serving systems by name (the first two systems where none serves), the one with the
  # largest rate, the first with a topic schema and the first whose records have typed
  # columns (json_schema), serving ones first. A release then meets every shape of
  # payload and the busiest export before it meets the rest.
  canary_candidates = length(local.serving_systems) > 0 ? local.serving_systems : sort(keys(local.systems))
  canary_order      = distinct(concat(local.canary_candidates, sort(keys(local.systems))))
  canary_shapes = {
    busiest = [for name in local.canary_candidates : name if local.rates[name] == max(concat([0], [for c in local.canary_candidates : local.rates[c]])...)]
    schema  = [for name in local.canary_order : name if local.systems[name].schema != null]
    typed   = [for name in local.canary_order : name if local.systems[name].json_schema != null]
  }
  canary_systems = length(var.canary_systems) > 0 ? var.canary_systems : distinct(concat(
    slice(local.canary_candidates, 0, min(2, length(local.canary_candidates))),
    [for shape, names in local.canary_shapes : names[0] if length(names) > 0],
  ))
  canary_json      = jsonencode({ for name in local.canary_systems : name => local.systems_file[name] })
  canary_directory = "/etc/recordline/canary"
  canary_setting   = "@${local.canary_directory}/systems.json"

  # What the pool and the export job run with: the cell's systems' file, the cell's name
  # (each metric under its system's name: namespace), the throttles on-call sets (read
  # again every 10 s, as the ingest service reads them: a system's export slowed without
  # a deploy), logs as JSON, and the freshness SLO's bound: the lease holder counts each
  # exported row's freshness event. Its
  # metrics every two minutes, as the ingest service's (cell.tf): the lease holder
  # writes eight series of each serving system, the most of a cell's bill for Cloud
  # Monitoring (infra/fleet_cost.py); the alerts read windows of five minutes and more,
  # and a rollout's soak holds at least two points (export_soak_seconds).
  exporter_env = merge(var.extra_env, {
    RECORDLINE_CELL                  = local.cell
    RECORDLINE_SYSTEMS               = local.systems_setting
    RECORDLINE_THROTTLES             = "${local.throttles_directory}/throttles.json"
    GOOGLE_CLOUD_PROJECT             = var.project_id
    RECORDLINE_LOG_FORMAT            = "json"
    OTEL_SERVICE_NAME                = "${local.cell}-exporter"
    OTEL_METRICS_EXPORTER            = "gcp_monitoring"
    OTEL_METRIC_EXPORT_INTERVAL      = "120000"
    RECORDLINE_SLO_FRESHNESS_SECONDS = tostring(var.freshness_threshold_seconds)
  })
  # The export job's: the pool's but its throttles. Its commands pace nothing, and the
  # throttles' file is one on-call writes (the operator account adds its versions): in
  # a job whose environment an execution overrides, LD_PRELOAD naming that file runs
  # what it holds, before Python or job.py, as the exporter's account. So the job
  # mounts no file on-call writes.
  export_job_env = { for name, value in local.exporter_env : name => value if name != "RECORDLINE_THROTTLES" }
}

# Its own account: it reads and writes its systems' databases and exported tables, and
# nothing an ingest service has besides (modules/system/iam.tf grants each).
resource "google_service_account" "exporter" {
  for_each = local.exporter

  project      = var.project_id
  account_id   = each.value
  display_name = "${local.cell} cell: its exporter pool, every serving system into BigQuery"

  depends_on = [google_project_service.enabled]
}

# The canary systems' file: what a new exporter revision reads while it is on trial
# (RECORDLINE_SYSTEMS pointed at it by the rollout), mounted beside the full one.
resource "google_secret_manager_secret" "canary_systems" {
  #checkov:skip=CKV_GCP_128:Google-managed encryption; the file names principals and URLs, nothing secret.
  for_each = local.exporter

  project   = var.project_id
  secret_id = "${local.cell}-canary-systems"

  replication {
    auto {}
  }

  depends_on = [google_project_service.enabled]
}

# As the cell's systems' file (cell.tf): every revision of the pool mounts it, so a
# version outlives the revisions that mount it, and a rollout retires it.
resource "google_secret_manager_secret_version" "canary_systems" {
  for_each = local.exporter

  secret          = google_secret_manager_secret.canary_systems[each.key].id
  secret_data     = local.canary_json
  deletion_policy = "ABANDON"

  lifecycle {
    create_before_destroy = true
  }
}

resource "google_secret_manager_secret_iam_member" "exporter_reads_canary" {
  for_each = local.exporter

  project   = var.project_id
  secret_id = google_secret_manager_secret.canary_systems[each.key].secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.exporter[each.key].member
}

# The throttles on-call sets (cell.tf): the pool paces a system's export as they say.
resource "google_secret_manager_secret_iam_member" "exporter_reads_throttles" {
  for_each = local.exporter

  project   = var.project_id
  secret_id = google_secret_manager_secret.throttles.secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.exporter[each.key].member
}

resource "google_cloud_run_v2_worker_pool" "exporter" {
  for_each = local.exporter

  project  = var.project_id
  name     = each.value
  location = var.region
  # Worker pools are a Preview of Cloud Run (https://cloud.google.com/run/docs/deploy-worker-pools).
  launch_stage = "BETA"

  # As the ingest service's (cell.tf): it holds nothing.
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

    volumes {
      name = "systems"
      secret {
        secret = google_secret_manager_secret.systems.secret_id
        items {
          version = google_secret_manager_secret_version.systems.version
          path    = "systems.json"
        }
      }
    }

    # What the systems' file names rather than holds, each version a file (cell.tf).
    dynamic "volumes" {
      for_each = local.values_volumes
      content {
        name = volumes.value.name
        secret {
          secret = volumes.value.secret
          dynamic "items" {
            for_each = volumes.value.versions
            content {
              version = items.value
              path    = items.key
            }
          }
        }
      }
    }

    volumes {
      name = "canary"
      secret {
        secret = google_secret_manager_secret.canary_systems[each.key].secret_id
        items {
          version = google_secret_manager_secret_version.canary_systems[each.key].version
          path    = "systems.json"
        }
      }
    }

    # As the ingest service mounts it (cell.tf): no revision's state.
    volumes {
      name = "throttles"
      secret {
        secret = google_secret_manager_secret.throttles.secret_id
        items {
          # Fetched again at each read of the file, so a new version holds at once.
          version = "latest"
          path    = "throttles.json"
        }
      }
    }

    containers {
      # Until the first deploy it runs the placeholder (exporter_placeholder.py), which
      # waits and exports nothing. A deploy sets the image and clears the command and
      # arguments.
      image   = var.placeholder_image
      command = ["python3"]
      args    = ["-c", file("${path.module}/exporter_placeholder.py")]

      volume_mounts {
        name       = "systems"
        mount_path = local.systems_directory
      }

      volume_mounts {
        name       = "canary"
        mount_path = local.canary_directory
      }

      volume_mounts {
        name       = "throttles"
        mount_path = local.throttles_directory
      }

      dynamic "env" {
        for_each = local.exporter_env
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

      # Beside the systems' file, what it names rather than holds.
      dynamic "volume_mounts" {
        for_each = local.values_volumes
        content {
          name       = volume_mounts.value.name
          mount_path = volume_mounts.value.mount_path
        }
      }
    }
  }

  lifecycle {
    # Deploys own the image, the command and arguments they clear, and what
    # `gcloud run worker-pools deploy` writes with them (as for the ingest service), and
    # the instance split (a canary's, a rollback's pin). The provider sends the whole
    # pool when it updates it (a new system is a new file version): the apply job
    # refuses a plan older than the pool's last deploy (terraform-apply.yml).
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
  }

  depends_on = [
    google_project_iam_member.cell_accounts,
    google_secret_manager_secret_iam_member.reads_systems,
    google_secret_manager_secret_iam_member.reads_systems_values,
    google_secret_manager_secret_iam_member.exporter_reads_throttles,
    google_secret_manager_secret_version.throttles,
    module.system,
  ]
}

# The deploy account deploys it (a new revision with the image, a split of its
# instances), and acts as its account to do so, for a rollout and for on-call's
# rollbacks (rollback.yml, docs/operations.md#rolling-the-exporter-back). Nobody else:
# a split is a change that deploying any image as the exporter's account also is.
resource "google_cloud_run_v2_worker_pool_iam_member" "developers" {
  for_each = {
    for pool in keys(local.exporter) : "${pool} deployer" => { pool = pool, member = local.deployer_member }
  }

  project  = var.project_id
  location = google_cloud_run_v2_worker_pool.exporter[each.value.pool].location
  name     = google_cloud_run_v2_worker_pool.exporter[each.value.pool].name
  role     = "roles/run.developer"
  member   = each.value.member
}

resource "google_service_account_iam_member" "acts_as_exporter" {
  for_each = {
    for pair in setproduct(keys(local.exporter), ["deployer", "terraform_apply"]) :
    "${pair[0]} ${pair[1]}" => { pool = pair[0], member = pair[1] }
  }

  service_account_id = google_service_account.exporter[each.value.pool].name
  role               = "roles/iam.serviceAccountUser"
  member = {
    deployer        = local.deployer_member
    terraform_apply = local.apply_member
  }[each.value.member]
}

# --- the export job ---------------------------------------------------------------------

# On-call's remedies for the export to BigQuery, and who holds each lease
# (docs/operations.md#running-commands-as-a-cells-job): `recordline export …` runs as a
# Cloud Run job of the cell, as the exporter's own account with the pool's settings, so
# that nobody needs a checkout, credentials or a role on a serving database at 3 a.m.
# It runs the exporter's image: every rollout sets it to the image the pool runs
# (deploy-cell.yml), that code wrote the progress and holds the leases; so does the
# runbook's rollback of the pool. Terraform leaves the image alone after the first apply.
# It reads the systems' file the pool reads: the newest version, or, while a rollback
# pins the pool to a revision, that revision's (pinned_settings).
resource "google_cloud_run_v2_job" "export" {
  for_each = local.exporter

  project  = var.project_id
  name     = "${local.cell}-export"
  location = var.region

  # As the ingest service's (cell.tf): the job holds nothing.
  deletion_protection = false

  template {
    task_count = 1

    template {
      service_account = google_service_account.exporter[each.key].email
      # A command is a decision (a retry, a rejection, a resync): one that failed is
      # read and run again by a person, never again on its own.
      max_retries = 0
      # `export verify` over a day reads a Spanner call per hour and a BigQuery query
      # per day (app/store/tiered/verify.py): well within an hour.
      timeout = "3600s"

      volumes {
        name = "systems"
        secret {
          secret = google_secret_manager_secret.systems.secret_id
          items {
            # The file's newest version, or the one a rollback pinned the pool to.
            version = lookup(var.pinned_settings, "export", google_secret_manager_secret_version.systems.version)
            path    = "systems.json"
          }
        }
      }

      # What the systems' file names rather than holds, each version a file (cell.tf).
      dynamic "volumes" {
        for_each = local.values_volumes
        content {
          name = volumes.value.name
          secret {
            secret = volumes.value.secret
            dynamic "items" {
              for_each = volumes.value.versions
              content {
                version = items.value
                path    = items.key
              }
            }
          }
        }
      }

      containers {
        image = var.placeholder_image
        # The pool's settings in the command (job.py), but its throttles (export_job_env):
        # an execution's overrides change its arguments, never what it runs with nor
        # what it runs as.
        command = concat(local.job_command, [for name, value in local.export_job_env : "${name}=${value}"], ["--"])
        args    = ["export", "status"]

        volume_mounts {
          name       = "systems"
          mount_path = local.systems_directory
        }

        resources {
          limits = {
            cpu    = "1"
            memory = "512Mi"
          }
        }

        # Beside the systems' file, what it names rather than holds.
        dynamic "volume_mounts" {
          for_each = local.values_volumes
          content {
            name       = volume_mounts.value.name
            mount_path = volume_mounts.value.mount_path
          }
        }
      }
    }
  }

  lifecycle {
    # The rollouts and the runbook set the image to the one the pool runs.
    ignore_changes = [
      template[0].template[0].containers[0].image,
      client,
      client_version,
    ]
  }

  depends_on = [
    google_secret_manager_secret_iam_member.reads_systems,
    google_secret_manager_secret_iam_member.reads_systems_values,
  ]
}

# The deploy account keeps its image and file the pool's (run.jobs.update, a rollout
# and a rollback), acting as the exporter's account (acts_as_exporter).
resource "google_cloud_run_v2_job_iam_member" "export_developers" {
  for_each = {
    for pool in keys(local.exporter) : "${pool} deployer" => { pool = pool, member = local.deployer_member }
  }

  project  = var.project_id
  location = google_cloud_run_v2_job.export[each.value.pool].location
  name     = google_cloud_run_v2_job.export[each.value.pool].name
  role     = "roles/run.developer"
  member   = each.value.member
}

# On-call runs it as the operator account with the command's arguments (run.jobs.run
# and run.jobs.runWithOverrides; the executions are listed through run.viewer on the
# project) and changes nothing of it: running a job needs no acting as its account.
resource "google_cloud_run_v2_job_iam_member" "export_executors" {
  for_each = local.exporter

  project  = var.project_id
  location = google_cloud_run_v2_job.export[each.key].location
  name     = google_cloud_run_v2_job.export[each.key].name
  role     = "roles/run.jobsExecutorWithOverrides"
  member   = local.operator_member
}
