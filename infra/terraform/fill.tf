# The cell's fill job (docs/layouts.md, "Records as today, beside tables of your own"):
# `recordline tables fill` copies each whole day of a system's `records` into its tables
# of its own (a system's `tables`: modules/system/bigquery.tf), each day once, through
# one BigQuery DML job a day whose id is fixed (app/store/bigquery/fill.py). One Cloud
# Run job a cell, `<cell>-fill`, run hourly for each system with tables by that
# system's own Scheduler job (modules/system/fill.tf), which names the system and its
# tables in the run's arguments; on-call runs it by hand the same way for a backfill
# (docs/operations.md#a-table-fill-that-fails). Nothing here exists without a table.
#
# It runs the image the cell serves (every rollout sets it, as the ops job's:
# deploy-cell.yml) with the cell's systems' file, newest version, and the cell's
# extra_env (what the store's settings may say), its settings in its command (job.py).
locals {
  fill_systems = sort([for k, v in local.systems : k if length(coalesce(v.tables, {})) > 0])
  fill         = length(local.fill_systems) > 0 ? { (local.cell) = "${local.cell}-fill" } : {}
  fill_env = merge(var.extra_env, {
    RECORDLINE_CELL       = local.cell
    RECORDLINE_SYSTEMS    = local.systems_setting
    GOOGLE_CLOUD_PROJECT  = var.project_id
    RECORDLINE_LOG_FORMAT = "json"
  })
}

# Its own account: query jobs in the project (project_iam.tf), the metadata and rows of
# `records` and its own tables in each system's dataset that has tables, and nothing
# else (modules/system/fill.tf grants each). Scheduler runs the job as it too.
resource "google_service_account" "fill" {
  for_each = local.fill

  project      = var.project_id
  account_id   = each.value
  display_name = "${local.cell} cell: fills its systems' tables of their own from records, hourly"

  depends_on = [google_project_service.enabled]
}

# Terraform creates the job and the Scheduler jobs that run as it, and the deploy
# account sets the job's image (a rollout): both act as it.
resource "google_service_account_iam_member" "acts_as_fill" {
  for_each = {
    for pair in setproduct(keys(local.fill), ["deployer", "terraform_apply"]) :
    "${pair[0]} ${pair[1]}" => { cell = pair[0], member = pair[1] }
  }

  service_account_id = google_service_account.fill[each.value.cell].name
  role               = "roles/iam.serviceAccountUser"
  member = {
    deployer        = local.deployer_member
    terraform_apply = local.apply_member
  }[each.value.member]
}

# Cloud Scheduler mints the account's access token for each run it starts.
resource "google_service_account_iam_member" "scheduler_mints_fill_token" {
  for_each = local.fill

  service_account_id = google_service_account.fill[each.key].name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = "serviceAccount:${time_sleep.service_agents.triggers["scheduler"]}"
}

resource "google_cloud_run_v2_job" "fill" {
  for_each = local.fill

  project  = var.project_id
  name     = each.value
  location = var.region

  # As the ingest service's (cell.tf): the job holds nothing.
  deletion_protection = false

  template {
    task_count = 1

    template {
      service_account = google_service_account.fill[each.key].email
      # No retry of its own: the next hour's run is the retry. Each run goes on from
      # the first day not copied and never copies a day twice, so a retry at once adds
      # nothing the next run does not: exit 1 is a day whose job still runs (the next
      # run waits for it) or failed twice this run (a cause a person fixes; a retry
      # would spend two more job ids and bill again), exit 4 BigQuery not answering
      # (its days land an hour later). Each failed execution then shows once.
      max_retries = 0
      # Under the hour, so one run never overlaps the next: a run cut short leaves its
      # day's job running in BigQuery, and the next run finds it (a first run over a
      # long history takes several hours this way, a day a job).
      timeout = "3300s"

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

      containers {
        image = var.placeholder_image
        # Its settings in the command (job.py); each run's arguments (the system and its
        # tables) are the Scheduler job's overrides.
        command = concat(local.job_command, [for name, value in local.fill_env : "${name}=${value}"], ["--"])
        args    = ["tables", "fill", "--help"]

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
    # The rollouts set the image to the one the cell serves.
    ignore_changes = [
      template[0].template[0].containers[0].image,
      client,
      client_version,
    ]
  }

  depends_on = [
    google_secret_manager_secret_iam_member.reads_systems,
    google_secret_manager_secret_iam_member.reads_systems_values,
    google_service_account_iam_member.acts_as_fill,
  ]
}

# The deploy account keeps its image the cell's (run.jobs.update, a rollout).
resource "google_cloud_run_v2_job_iam_member" "fill_developers" {
  for_each = local.fill

  project  = var.project_id
  location = google_cloud_run_v2_job.fill[each.key].location
  name     = google_cloud_run_v2_job.fill[each.key].name
  role     = "roles/run.developer"
  member   = local.deployer_member
}

# Who runs it with a run's arguments (run.jobs.runWithOverrides): Scheduler, as the fill
# account, each hour for each system; on-call, as the operator account, for a backfill.
resource "google_cloud_run_v2_job_iam_member" "fill_executors" {
  for_each = {
    for pair in setproduct(keys(local.fill), ["fill", "operator"]) : "${pair[0]} ${pair[1]}" => pair
  }

  project  = var.project_id
  location = google_cloud_run_v2_job.fill[each.value[0]].location
  name     = google_cloud_run_v2_job.fill[each.value[0]].name
  role     = "roles/run.jobsExecutorWithOverrides"
  member   = each.value[1] == "fill" ? google_service_account.fill[each.value[0]].member : local.operator_member
}
