# The cell (infra/README.md, "Cells"): one ingest service and one exporter pool
# for up to cell_max_systems systems, each system keeping its own topic, push
# subscription, audience, push account, dataset and serving database (modules/system).
# This root is one cell's Terraform state; the environment's identities, images and
# alerts are the environment root's (environment/), named here by their names.

data "google_project" "this" {
  project_id = var.project_id
}

locals {
  # The project's number, in Cloud Run's deterministic URLs: in a block of its own, so
  # that every other local here is known offline (tests give a number in its place).
  project_number = data.google_project.this.number
}

locals {
  cell                = var.cell != "" ? var.cell : var.service_name
  environment_project = var.environment_project_id != "" ? var.environment_project_id : var.project_id
  own_project         = local.environment_project != var.project_id

  # The environment's accounts (environment/service_accounts.tf), by their names: the
  # environment's state holds them, and a cell's plan needs them before they could be
  # read from it.
  environment_accounts = {
    for role, suffix in {
      deployer        = "deploy"
      terraform_plan  = "tf-plan"
      terraform_apply = "tf-apply"
      operator        = "operator"
      smoke           = "smoke"
    } : role => "${var.service_name}-${suffix}@${local.environment_project}.iam.gserviceaccount.com"
  }
  operator_member = "serviceAccount:${local.environment_accounts.operator}"
  deployer_member = "serviceAccount:${local.environment_accounts.deployer}"
  apply_member    = "serviceAccount:${local.environment_accounts.terraform_apply}"

  # Cloud Run's deterministic URL of the cell's service, known before it exists. Every
  # audience is derived from it and carries the project number, so a token minted for
  # one system, cell or environment is refused by any other.
  cell_url       = "https://${local.cell}-${local.project_number}.${var.region}.run.app"
  read_audience  = var.read_audience != "" ? var.read_audience : "${local.cell_url}/v1"
  push_audiences = { for name in keys(local.systems) : name => "${local.cell_url}/systems/${name}/pubsub/push" }

  # The cell's billing follows what its systems declare: instance-based, CPU
  # always allocated and at least one instance, at or above the break-even rate, where a
  # push every 100 ms keeps an instance billed by request all the time at the dearer
  # rate; per request below it (infra/fleet_cost.py prices both).
  rates                = { for name, s in local.systems : name => s.rate != null ? s.rate : var.serving_rate }
  cell_rate            = sum(concat([0], values(local.rates)))
  instance_based       = local.cell_rate >= var.billing_break_even_rate
  ingest_min_instances = local.instance_based ? max(1, var.min_instances) : var.min_instances

  # The share of pushes traced: trace_sample_ratio, but never more than keeps the cell
  # at about cell_traces_a_second traces whatever its rate. A trace shows where one push's
  # time went; a cell of a hundred busy systems traced at 1% kept ten a second, 788
  # million spans a month at a thousand systems, $0.16 a system (infra/fleet_cost.py),
  # with nothing in the ten that the one does not show. A caller's own sampled context
  # is traced whatever this says.
  cell_traces_a_second = 1
  trace_sample_ratio   = min(var.trace_sample_ratio, local.cell_traces_a_second / max(local.cell_rate, local.cell_traces_a_second))

  # Principals as the service checks them: e-mails and domain:DOMAIN, comma-separated.
  # The smoke-test account reads back what the deploy pushed; the operator account is
  # an operator of every system.
  readers_of   = { for name, s in local.systems : name => s.readers != null ? s.readers : tolist(var.readers) }
  operators_of = { for name, s in local.systems : name => s.operators != null ? s.operators : tolist(var.operators) }
  # Empty: every reader of the system exports (its entry names no export_principals).
  exporters_of = { for name, s in local.systems : name => s.exporters != null ? s.exporters : tolist(var.exporters) }
  principals = {
    for name in keys(local.systems) : name => {
      read = join(",", sort(distinct(concat(
        [for m in local.readers_of[name] : trimprefix(trimprefix(m, "user:"), "serviceAccount:")],
        [local.environment_accounts.smoke],
      ))))
      operate = join(",", sort(distinct(concat(
        [for m in local.operators_of[name] : trimprefix(trimprefix(m, "user:"), "serviceAccount:")],
        [local.environment_accounts.operator],
      ))))
      export = join(",", sort(distinct(
        [for m in local.exporters_of[name] : trimprefix(trimprefix(m, "user:"), "serviceAccount:")],
      )))
    }
  }

  # What the systems' file names rather than holds (docs/cells.md#size): each system's
  # declared schema, and each of its lists of principals longer than
  # principals_inline_max characters, a secret version of its own (the systems' values,
  # below), mounted as a file beside it and named in its entry as `@/path`, which the
  # service reads as if it were written there. The file then holds its systems, about
  # 650 bytes each at the longest names, not their bulk: fifty schemas were more than
  # the 64 KiB a secret holds.
  values_directory      = "/etc/recordline/values"
  principals_inline_max = 256
  systems_values = merge(
    { for name, s in local.systems : "${name}.schema" => file("${path.root}/../../${s.json_schema}") if s.json_schema != null },
    { for name in keys(local.systems) : "${name}.readers" => local.principals[name].read if length(local.principals[name].read) > local.principals_inline_max },
    { for name in keys(local.systems) : "${name}.operators" => local.principals[name].operate if length(local.principals[name].operate) > local.principals_inline_max },
    { for name in keys(local.systems) : "${name}.exporters" => local.principals[name].export if length(local.principals[name].export) > local.principals_inline_max },
  )
  # The one secret that holds them, each in a version of its own, where there is one.
  values_secret = length(local.systems_values) > 0 ? { (local.cell) = "${local.cell}-systems-values" } : {}

  # The cell's systems as the service reads them (RECORDLINE_SYSTEMS,
  # docs/configuration.md): each
  # system's store, serving database, audience, push account, principals and rate, and
  # what describes its payload where it has one. One source for the ingest service and
  # the exporter pool, written to a secret mounted as a file (an environment variable is
  # capped at 32 KiB, a secret at 64 KiB).
  systems_file = {
    for name, s in local.systems : name => merge(
      {
        store                 = "bigquery://${var.project_id}/${local.dataset_ids[name]}"
        push_audience         = local.push_audiences[name]
        push_service_accounts = "${name}-push@${var.project_id}.iam.gserviceaccount.com"
        read_principals       = local.principals[name].read
        operator_principals   = local.principals[name].operate
        rate                  = local.rates[name]
      },
      # Only where the system names exporters: otherwise every reader exports.
      local.principals[name].export == "" ? {} : { export_principals = local.principals[name].export },
      contains(local.serving_systems, name) ? {
        serving = "spanner://projects/${var.project_id}/instances/${local.serving_instance[name]}/databases/${name}"
      } : {},
      # The schema, and long lists of principals, by the file that holds them.
      s.json_schema == null ? {} : { json_topic_schema = "@${local.values_directory}/${name}.schema" },
      {
        for field, key in { read_principals = "readers", operator_principals = "operators", export_principals = "exporters" } :
        field => "@${local.values_directory}/${name}.${key}" if contains(keys(local.systems_values), "${name}.${key}")
      },
      # Where the payload keeps its record id and event time, where the system says.
      { for field, value in { id_field = s.id_field, time_field = s.time_field } : field => value if value != null },
    )
  }
  systems_json = jsonencode(local.systems_file)
  # Where the secrets are mounted, and the setting that names the file.
  systems_directory = "/etc/recordline/systems"
  systems_setting   = "@${local.systems_directory}/systems.json"
  # The throttles on-call sets (RECORDLINE_THROTTLES), at the latest version of their
  # secret: re-read by every instance, never part of what a revision is.
  throttles_directory = "/etc/recordline/throttles"
  # A job's command (job.py): `recordline` with the settings it names and no others,
  # whatever an execution's overrides put in its environment. Each job adds its
  # settings, NAME=value, and `--`; an execution's arguments follow. The image's
  # Python by its path (the Dockerfile's /opt/venv): an override of PATH picks nothing.
  job_command = ["/opt/venv/bin/python3", "-I", "-u", "-c", file("${path.module}/job.py")]

  # What Secret Manager holds in one version (https://cloud.google.com/secret-manager/quotas:
  # 64 KiB) and Cloud Run takes as custom audiences (their JSON list, 32,768 characters:
  # https://cloud.google.com/run/docs/configuring/custom-audiences). Terraform counts
  # characters: the bytes are those base64 encodes, 3 for every 4 of its characters.
  secret_bytes        = 65536
  systems_file_bytes  = length(base64encode(local.systems_json)) / 4 * 3
  values_bytes        = { for key, value in local.systems_values : key => length(base64encode(value)) / 4 * 3 }
  custom_audiences    = concat([local.read_audience], [for name in sort(keys(local.systems)) : local.push_audiences[name]])
  custom_audience_max = 32768

  # Set only when rows expire, so the service hears of it exactly when BigQuery drops them.
  retention_env = var.retention_days > 0 ? { RECORDLINE_RETENTION_DAYS = tostring(var.retention_days) } : {}

  # The dedupe window every system of the cell runs with: its Spanner retention
  # (modules/system/spanner.tf) and how far back BigQuery's records_unique looks.
  dedupe_window_seconds = tonumber(lookup(var.extra_env, "RECORDLINE_DEDUPE_WINDOW_SECONDS", "604800"))

  service_env = merge(var.extra_env, local.retention_env, local.cdn_pass_env, {
    RECORDLINE_CELL                   = local.cell
    RECORDLINE_SYSTEMS                = local.systems_setting
    RECORDLINE_CELL_MAX_SYSTEMS       = tostring(var.cell_max_systems)
    RECORDLINE_THROTTLES              = "${local.throttles_directory}/throttles.json"
    RECORDLINE_WRITE_DEADLINE_SECONDS = tostring(var.write_deadline_seconds)
    # Each system's own topic (modules/system names it as the system), where its
    # operators publish test messages.
    RECORDLINE_TOPIC = "projects/${var.project_id}/topics/{system}"
    # The service's own URL too: the uptime check's token names it (uptime.tf).
    RECORDLINE_READ_AUDIENCE            = "${local.read_audience},${local.cell_url}"
    RECORDLINE_QUERY_MAX_BYTES_BILLED   = tostring(var.query_max_bytes_billed)
    RECORDLINE_STREAM_SECONDS           = tostring(var.stream_seconds)
    RECORDLINE_SLO_READ_LATENCY_SECONDS = tostring(var.read_latency_threshold_seconds)
    RECORDLINE_SLO_FRESHNESS_SECONDS    = tostring(var.freshness_threshold_seconds)
    # Cloud Run's invoker check (invoker_iam_disabled = false) verifies each token and
    # replaces its signature before the request reaches the container; the service then
    # checks the claims (audience, sender, expiry) with each system's guard. With read
    # passes the check is off (a CDN miss reaches Cloud Run with a pass and no token): the
    # service verifies every token's signature itself, a push's as a reader's.
    RECORDLINE_TRUST_CLOUD_RUN_IAM = local.cdn_passes ? "false" : "true"
    RECORDLINE_HOST                = "0.0.0.0"
    RECORDLINE_LOG_FORMAT          = "json"
    OTEL_SERVICE_NAME              = local.cell
    OTEL_TRACES_EXPORTER           = "gcp_trace"
    # Every push starts a trace of its own (Pub/Sub's push carries no trace context):
    # kept whole, three spans a push at ten pushes a second were 79 million spans a
    # month a system, Cloud Trace's bill (infra/fleet_cost.py). A caller's own
    # sampling decision is still followed.
    OTEL_TRACES_SAMPLER     = "parentbased_traceidratio"
    OTEL_TRACES_SAMPLER_ARG = tostring(local.trace_sample_ratio)
    OTEL_METRICS_EXPORTER   = "gcp_monitoring"
    # Every two minutes, not every one: Cloud Monitoring bills each point, and a counter
    # is written on every export for as long as the instance lives (cumulative), so each
    # instance's series of every system it ever counted an incident of, and the cell's
    # distributions, cost half. The alerts read windows of five minutes and more; the
    # exporter pool writes as often (exporter.tf, infra/fleet_cost.py prices both).
    OTEL_METRIC_EXPORT_INTERVAL = "120000"
  })
}

# --- the cell's accounts ------------------------------------------------------------

# What the cell's ingest service runs as: it holds its systems' data through grants on
# each system's dataset, database and schema (modules/system/iam.tf), and its page-token
# key and systems' file here.
resource "google_service_account" "runtime" {
  project      = var.project_id
  account_id   = "${local.cell}-run"
  display_name = "${local.cell} cell: its ingest service (Cloud Run runtime)"

  depends_on = [google_project_service.enabled]
}

# Deploying a revision, creating the service and moving its traffic (a rollout, and
# on-call's rollbacks: .github/workflows/rollback.yml) all act as the account it runs
# as. The operator account does none of them: acting as this account with a right to
# change the service is deploying any image with the cell's data.
resource "google_service_account_iam_member" "acts_as_runtime" {
  for_each = {
    deployer        = local.deployer_member
    terraform_apply = local.apply_member
  }

  service_account_id = google_service_account.runtime.name
  role               = "roles/iam.serviceAccountUser"
  member             = each.value
}

# --- the cell's secrets ---------------------------------------------------------------

resource "google_secret_manager_secret" "page_token" {
  #checkov:skip=CKV_GCP_128:Google-managed encryption; the key only signs page tokens and rotates by adding a version.
  project   = var.project_id
  secret_id = "${local.cell}-page-token"

  replication {
    auto {}
  }

  depends_on = [google_project_service.enabled]
}

# Generated at apply time and written without ever entering the state file.
ephemeral "random_password" "page_token" {
  length  = 48
  special = false
}

resource "google_secret_manager_secret_version" "page_token" {
  secret                 = google_secret_manager_secret.page_token.id
  secret_data_wo         = ephemeral.random_password.page_token.result
  secret_data_wo_version = 1 # bump to rotate the key (outstanding page tokens stop working)
}

resource "google_secret_manager_secret_iam_member" "runtime_reads_page_token" {
  project   = var.project_id
  secret_id = google_secret_manager_secret.page_token.secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.runtime.member
}

# The cell's systems (RECORDLINE_SYSTEMS), read by the ingest service, the exporter pool
# and the jobs, each as a file. Not a secret of anyone's (principals, URLs): a secret
# because a variable holds 32 KiB and a hundred systems' file more than that; their
# schemas and long lists of principals are files of their own (systems_values, below). Each version is named in the services' templates (`version`), so
# a new system makes new revisions, which read the new file. A revision is its image and
# the version it mounts: a version outlives every revision that mounts it (below).
resource "google_secret_manager_secret" "systems" {
  #checkov:skip=CKV_GCP_128:Google-managed encryption; the file names principals and URLs, nothing secret.
  project   = var.project_id
  secret_id = "${local.cell}-systems"

  replication {
    auto {}
  }

  depends_on = [google_project_service.enabled]
}

resource "google_secret_manager_secret_version" "systems" {
  secret      = google_secret_manager_secret.systems.id
  secret_data = local.systems_json

  # A changed file is a new version (secret_data forces a replacement), created before
  # the old one is let go, and the old one is left enabled (ABANDON: DELETE, the default,
  # destroys it, DISABLE makes it unreadable): the revisions that mount it, those still
  # serving while the apply runs and those a rollback returns to, go on starting. A
  # rollout retires a version once no revision it keeps mounts it (deploy-cell.yml,
  # "Retire what no kept revision mounts"; docs/operations.md#rolling-back).
  deletion_policy = "ABANDON"

  lifecycle {
    create_before_destroy = true

    precondition {
      condition     = local.systems_file_bytes <= local.secret_bytes
      error_message = "The cell's systems file (RECORDLINE_SYSTEMS) would be ${local.systems_file_bytes} bytes for its ${length(local.systems)} systems, over the ${local.secret_bytes} a secret holds (https://cloud.google.com/secret-manager/quotas): move systems to another cell (each entry is about ${floor(local.systems_file_bytes / max(1, length(local.systems)))} bytes here; schemas, and lists of principals over ${local.principals_inline_max} characters, are files of their own already)."
    }
  }
}

# The values the systems' file names rather than holds (local.systems_values): each
# system's declared schema, and its long lists of principals, each a version of this
# one secret, mounted beside the file (a volume of its versions, each a file named by
# its key) wherever the file is: the ingest service, the exporter pool, the jobs.
resource "google_secret_manager_secret" "systems_values" {
  #checkov:skip=CKV_GCP_128:Google-managed encryption; schemas and principals, nothing secret.
  for_each = local.values_secret

  project   = var.project_id
  secret_id = each.value

  replication {
    auto {}
  }

  depends_on = [google_project_service.enabled]
}

# As the systems' file's: a changed value is a new version, which the next revisions
# mount; the old one outlives the revisions mounting it, and a rollout retires it.
resource "google_secret_manager_secret_version" "systems_values" {
  for_each = local.systems_values

  secret          = google_secret_manager_secret.systems_values[local.cell].id
  secret_data     = each.value
  deletion_policy = "ABANDON"

  lifecycle {
    create_before_destroy = true

    precondition {
      condition     = local.values_bytes[each.key] <= local.secret_bytes
      error_message = "${each.key} would be ${local.values_bytes[each.key]} bytes, over the ${local.secret_bytes} a secret's version holds (https://cloud.google.com/secret-manager/quotas): a shorter schema, or fewer principals."
    }
  }
}

# The values' volume and its mount, as every revision and job that mounts the systems'
# file has them beside it (this file's service, exporter.tf's pool and job, ops.tf's
# job): the secret, each version a file named by its key, in the values' directory.
# None where the file names no value. (A block of its own: it names resources, which
# the plain locals' `terraform console` evaluation does not have.)
locals {
  values_volumes = {
    for key, secret in google_secret_manager_secret.systems_values : key => {
      name       = "values"
      secret     = secret.secret_id
      mount_path = local.values_directory
      versions   = { for path, version in google_secret_manager_secret_version.systems_values : path => version.version }
    }
  }
}

resource "google_secret_manager_secret_iam_member" "reads_systems_values" {
  for_each = {
    for reader, member in merge(
      { runtime = google_service_account.runtime.member, operator = local.operator_member },
      { for pool, account in google_service_account.exporter : "exporter" => account.member },
      { for cell, account in google_service_account.fill : "fill" => account.member },
    ) : reader => member if length(local.values_secret) > 0
  }

  project   = var.project_id
  secret_id = google_secret_manager_secret.systems_values[local.cell].secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = each.value
}

# The deploy account reads the file too: a rollback says which systems the state it
# returns to serves (rollback.yml), as any revision it deploys may read it.
resource "google_secret_manager_secret_iam_member" "reads_systems" {
  for_each = merge(
    { runtime = google_service_account.runtime.member, operator = local.operator_member, deployer = local.deployer_member },
    { for pool, account in google_service_account.exporter : "exporter" => account.member },
    { for cell, account in google_service_account.fill : "fill" => account.member },
  )

  project   = var.project_id
  secret_id = google_secret_manager_secret.systems.secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = each.value
}

# The systems on-call has slowed (docs/cells.md#throttles): a JSON object, `{}` when none
# is. On-call adds a version (docs/operations.md#a-hot-system); every instance reads the
# latest within 12 s, with no deploy and no revision. Not a revision's state, so a
# rollback keeps the throttles in force. Who added each version, and when, is in Secret
# Manager's audit log (Admin Activity, always on); what each said is the version itself.
resource "google_secret_manager_secret" "throttles" {
  #checkov:skip=CKV_GCP_128:Google-managed encryption; the file names systems and who slowed them, nothing secret.
  project   = var.project_id
  secret_id = "${local.cell}-throttles"

  replication {
    auto {}
  }

  depends_on = [google_project_service.enabled]
}

# The first version, none throttled. On-call's versions come after it, outside Terraform,
# which never writes another: an apply leaves the throttles as on-call set them.
resource "google_secret_manager_secret_version" "throttles" {
  secret          = google_secret_manager_secret.throttles.id
  secret_data     = "{}"
  deletion_policy = "ABANDON"
}

resource "google_secret_manager_secret_iam_member" "throttles" {
  for_each = {
    "runtime reads"     = { role = "roles/secretmanager.secretAccessor", member = google_service_account.runtime.member }
    "operator reads"    = { role = "roles/secretmanager.secretAccessor", member = local.operator_member }
    "operator adds"     = { role = "roles/secretmanager.secretVersionAdder", member = local.operator_member }
    "operator versions" = { role = "roles/secretmanager.viewer", member = local.operator_member }
  }

  project   = var.project_id
  secret_id = google_secret_manager_secret.throttles.secret_id
  role      = each.value.role
  member    = each.value.member
}

# A rollback first checks that the version the revision it returns to mounts is still
# enabled (rollback.yml as the deploy account, and on-call reading as the operator
# account: docs/operations.md#rolling-back); a rollout
# retires the versions no revision it keeps mounts (the deploy account: deploy-cell.yml).
# Each secret a revision mounts: the systems' file and its values, the canary systems'
# and the read passes' keys (cdn.tf), where the cell has them.
resource "google_secret_manager_secret_iam_member" "versions" {
  for_each = merge(
    {
      "systems operator" = { secret = google_secret_manager_secret.systems.secret_id, role = "roles/secretmanager.viewer", member = local.operator_member }
      "systems deployer" = { secret = google_secret_manager_secret.systems.secret_id, role = "roles/secretmanager.secretVersionManager", member = local.deployer_member }
    },
    { for pool, secret in google_secret_manager_secret.canary_systems : "canary deployer" => { secret = secret.secret_id, role = "roles/secretmanager.secretVersionManager", member = local.deployer_member } },
    { for pool, secret in google_secret_manager_secret.canary_systems : "canary operator" => { secret = secret.secret_id, role = "roles/secretmanager.viewer", member = local.operator_member } },
    { for key, secret in google_secret_manager_secret.systems_values : "values deployer" => { secret = secret.secret_id, role = "roles/secretmanager.secretVersionManager", member = local.deployer_member } },
    { for key, secret in google_secret_manager_secret.systems_values : "values operator" => { secret = secret.secret_id, role = "roles/secretmanager.viewer", member = local.operator_member } },
    { for key, secret in google_secret_manager_secret.read_pass : "read-pass deployer" => { secret = secret.secret_id, role = "roles/secretmanager.secretVersionManager", member = local.deployer_member } },
    { for key, secret in google_secret_manager_secret.read_pass : "read-pass operator" => { secret = secret.secret_id, role = "roles/secretmanager.viewer", member = local.operator_member } },
  )

  project   = var.project_id
  secret_id = each.value.secret
  role      = each.value.role
  member    = each.value.member
}

# Cloud Run checks the runtime account's access to the secrets when it creates a
# revision, and does not retry: IAM takes up to a minute to propagate.
resource "time_sleep" "secrets_propagation" {
  create_duration = "60s"

  triggers = {
    page_token = google_secret_manager_secret_iam_member.runtime_reads_page_token.id
    systems    = google_secret_manager_secret_iam_member.reads_systems["runtime"].id
    values     = join(",", [for grant in google_secret_manager_secret_iam_member.reads_systems_values : grant.id])
    throttles  = google_secret_manager_secret_iam_member.throttles["runtime reads"].id
    # The read passes' keys (cdn.tf), where the cell has them.
    read_pass = join(",", [for grant in google_secret_manager_secret_iam_member.runtime_reads_read_pass : grant.id])
  }
}

# --- the cell's ingest service --------------------------------------------------------

resource "google_cloud_run_v2_service" "ingest" {
  project  = var.project_id
  name     = local.cell
  location = var.region
  ingress  = var.ingress

  # Off: deletion_protection lives in the resource's own state, so once a retired cell's
  # state is gone it cannot be lifted. The service holds nothing (messages wait in
  # Pub/Sub, rows are in BigQuery and Spanner, each with prevent_destroy, which a plan
  # enforces) and its URL is deterministic, so an unintended replacement shows in the
  # plan as one.
  deletion_protection = false

  # Tokens are checked by Cloud Run (run.invoker) before the request reaches the
  # service, which checks them again with the system's guard. Every audience is derived
  # from the deterministic URL, known before the service exists: the cell's read
  # audience, and each system's push audience. With read passes (cdn.tf) the check is
  # off: a read the CDN did not have reaches the service with a pass and no token, and
  # the service verifies every token itself (RECORDLINE_TRUST_CLOUD_RUN_IAM false above);
  # anyone may then reach an instance, to be answered 401.
  invoker_iam_disabled = local.cdn_passes
  custom_audiences     = local.custom_audiences

  template {
    service_account                  = google_service_account.runtime.email
    max_instance_request_concurrency = var.concurrency
    timeout                          = "${var.request_timeout_seconds}s"
    execution_environment            = "EXECUTION_ENVIRONMENT_GEN2"

    scaling {
      min_instance_count = local.ingest_min_instances
      max_instance_count = var.max_instances
    }

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

    # What the systems' file names rather than holds, each version a file.
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
      # Until its first deploy a new cell runs the placeholder (placeholder.py): 503 to
      # every push, so Pub/Sub keeps the messages instead of acknowledging them to a
      # service that cannot store them. Deploys set the image and clear the command and
      # arguments (deploy-cell.yml).
      image   = var.placeholder_image
      command = ["python3"]
      args    = ["-c", file("${path.module}/placeholder.py")]

      ports {
        container_port = 8080 # Cloud Run passes it to the service as $PORT
      }

      volume_mounts {
        name       = "systems"
        mount_path = local.systems_directory
      }

      volume_mounts {
        name       = "throttles"
        mount_path = local.throttles_directory
      }

      resources {
        limits = {
          cpu    = var.cpu
          memory = var.memory
        }
        # Billed by request below the break-even rate (CPU only while a request is in
        # flight: https://cloud.google.com/run/docs/configuring/billing-settings), so a
        # quiet cell scales to zero; instance-based at or above it, where an instance is
        # busy all the time anyway and the rate per second is lower. Nothing the service
        # runs must outlive a request either way: the group commit's flush is awaited by
        # the pushes in it, and the export is the exporter pool's (exporter.tf).
        cpu_idle          = !local.instance_based
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

      # The read passes' keys (cdn.tf), by the version that holds them: a rotation makes a
      # revision, which reads the keys it names.
      dynamic "env" {
        for_each = google_secret_manager_secret_version.read_pass
        content {
          name = "RECORDLINE_READ_PASS_KEYS"
          value_source {
            secret_key_ref {
              secret  = google_secret_manager_secret.read_pass[env.key].secret_id
              version = env.value.version
            }
          }
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

      # Ready once the cell can serve: /readyz is 503 only when no system can.
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
    # Deploys own the image (deploy-cell.yml), the command and arguments they clear,
    # what `gcloud run deploy` writes with them (template annotations and labels, the
    # revision name, client and client_version) and the traffic split (each deploy
    # promotes its revision; a rollback pins an earlier one). Terraform owns the rest.
    # The provider still sends the whole service when it updates it (a new system's file
    # is a new template): the apply job refuses a plan older than the last deploy
    # (terraform-apply.yml).
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

    precondition {
      condition     = length(jsonencode(local.custom_audiences)) <= local.custom_audience_max
      error_message = "The cell's audiences (its read audience and each system's push audience) are ${length(jsonencode(local.custom_audiences))} characters as a JSON list, over Cloud Run's ${local.custom_audience_max} (https://cloud.google.com/run/docs/configuring/custom-audiences): shorter system names, or fewer systems in this cell."
    }
    precondition {
      condition     = length(local.ingest_invokers) + length(keys(local.systems)) + 2 <= local.policy_principals
      error_message = "The cell's service would have ${length(local.ingest_invokers) + length(keys(local.systems)) + 2} principals in its IAM policy, over the ${local.policy_principals} an allow policy holds (https://cloud.google.com/iam/quotas): fewer readers or operators of its own per system, or fewer systems in this cell."
    }
  }

  # Cloud Run checks the runtime account's access to the secrets when it creates the
  # revision; the grants have to have propagated by then (time_sleep.secrets_propagation).
  depends_on = [
    google_secret_manager_secret_version.page_token,
    google_secret_manager_secret_version.throttles,
    time_sleep.secrets_propagation,
  ]
}

# --- who may call the cell ------------------------------------------------------------

locals {
  # Principals in one allow policy (https://cloud.google.com/iam/quotas): a service's
  # invokers and developers together. Each system's push account is an invoker
  # (modules/system/iam.tf); these are the rest, each once however many systems name it.
  policy_principals = 1500
  ingest_invokers = merge(
    { for m in distinct(flatten([for name in keys(local.systems) : concat(local.readers_of[name], local.operators_of[name], local.exporters_of[name])])) : m => m },
    {
      operator-account = local.operator_member
      smoke-account    = "serviceAccount:${local.environment_accounts.smoke}"
      # The uptime check of /readyz (uptime.tf) probes with its agent's ID token.
      uptime-probe = "serviceAccount:${time_sleep.service_agents.triggers["monitoring"]}"
    },
  )
}

resource "google_cloud_run_v2_service_iam_member" "invokers" {
  for_each = local.ingest_invokers

  project  = var.project_id
  location = google_cloud_run_v2_service.ingest.location
  name     = google_cloud_run_v2_service.ingest.name
  role     = "roles/run.invoker"
  member   = each.value
}

# Deploys replace the revision (deploy-cell.yml), and so does a rollback, which on-call
# asks the pipeline for (rollback.yml, docs/operations.md#rolling-back): a traffic
# change is a change to the service, which Cloud Run allows developers of the service
# who may act as its account. The deploy account alone.
resource "google_cloud_run_v2_service_iam_member" "developers" {
  for_each = {
    deployer = local.deployer_member
  }

  project  = var.project_id
  location = google_cloud_run_v2_service.ingest.location
  name     = google_cloud_run_v2_service.ingest.name
  role     = "roles/run.developer"
  member   = each.value
}
