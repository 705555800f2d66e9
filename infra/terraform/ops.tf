# On-call's commands that go through the service or pull its dead letters, as a Cloud
# Run job of the cell (docs/operations.md#running-commands-as-a-cells-job): `recordline
# audit` (a system's producers, by hour), `recordline replay dead-letters` and `replay
# rejected`, each for one system (--system). It runs as the operator account, with
# on-call's rights and nothing more (an operator of every system, a reader of each
# replay subscription), from the image the cell serves (every rollout sets it:
# deploy-cell.yml), and mints its ID tokens for the cell from the metadata server: no
# checkout, no application-default login. Terraform leaves the image alone after the
# first apply. It reads the systems' file the service serves: the newest version, or,
# while a rollback pins the service to a revision, that revision's (pinned_settings; the
# runbook's rollback sets it, the next rollout sets the newest).
locals {
  ops_env = {
    RECORDLINE_CELL       = local.cell
    RECORDLINE_SYSTEMS    = local.systems_setting
    RECORDLINE_LOG_FORMAT = "json"
    # Where the cell answers, and the audience its tokens are minted for.
    RECORDLINE_URL           = local.cell_url
    RECORDLINE_READ_AUDIENCE = local.read_audience
  }
}

resource "google_cloud_run_v2_job" "ops" {
  project  = var.project_id
  name     = "${local.cell}-ops"
  location = var.region

  # As the ingest service's (cell.tf): the job holds nothing.
  deletion_protection = false

  template {
    task_count = 1

    template {
      service_account = local.environment_accounts.operator
      # A replay acknowledges only what the cell stored or rejected: run again, it
      # skips what it did; a person runs it again, never the job on its own.
      max_retries = 0
      timeout     = "3600s"

      volumes {
        name = "systems"
        secret {
          secret = google_secret_manager_secret.systems.secret_id
          items {
            # The file's newest version, or the one a rollback pinned the service to.
            version = lookup(var.pinned_settings, "ops", google_secret_manager_secret_version.systems.version)
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
        # Its settings in the command (job.py): an execution's overrides change its
        # arguments, never what it runs with.
        command = concat(local.job_command, [for name, value in local.ops_env : "${name}=${value}"], ["--"])
        args    = ["audit", "--help"]

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
    # The rollouts and the runbook set the image to the one the cell serves.
    ignore_changes = [
      template[0].template[0].containers[0].image,
      client,
      client_version,
    ]
  }

  depends_on = [google_secret_manager_secret_iam_member.reads_systems, google_secret_manager_secret_iam_member.reads_systems_values]
}

# The deploy account sets its image and file (a rollout, a rollback: rollback.yml).
resource "google_cloud_run_v2_job_iam_member" "ops_developers" {
  for_each = {
    deployer = local.deployer_member
  }

  project  = var.project_id
  location = google_cloud_run_v2_job.ops.location
  name     = google_cloud_run_v2_job.ops.name
  role     = "roles/run.developer"
  member   = each.value
}

# On-call runs it as the operator account with the command's arguments (run.jobs.run
# and run.jobs.runWithOverrides) and changes nothing of it.
resource "google_cloud_run_v2_job_iam_member" "ops_executors" {
  project  = var.project_id
  location = google_cloud_run_v2_job.ops.location
  name     = google_cloud_run_v2_job.ops.name
  role     = "roles/run.jobsExecutorWithOverrides"
  member   = local.operator_member
}
