# --- where ---------------------------------------------------------------------

variable "project_id" {
  type        = string
  description = "The environment's own project: its identities (deploy, plan, apply, operator, smoke), images, alerts and dashboards, and the metrics scope every cell's project is added to. Its cells are in it, or in projects of their own (../env/<environment>/<cell>.tfvars.json)."
}

variable "region" {
  type        = string
  description = "Region of the Artifact Registry repository; each cell names its own region (the same one unless the region plan moved it)."
  default     = "europe-west1"
}

variable "standby_region" {
  type        = string
  description = <<-EOT
    A second region that holds every image too (artifact_registry.tf), where the
    cells move if their region is lost (docs/operations.md#losing-a-zone-or-a-region):
    empty for none. With a multi-region spanner_config (eur3) that covers both regions,
    no acknowledged message waits for the lost region to come back.
  EOT
  default     = ""

  validation {
    condition     = var.standby_region == "" || (can(regex("^[a-z]+-[a-z]+[0-9]+$", var.standby_region)) && var.standby_region != var.region)
    error_message = "standby_region must be empty or a region (such as europe-west4) other than region."
  }
}

variable "environment" {
  type        = string
  description = "Environment name; also the GitHub environment that may deploy here."

  validation {
    condition     = contains(["dev", "prod"], var.environment)
    error_message = "environment must be \"dev\" or \"prod\"."
  }
}

variable "service_name" {
  type        = string
  description = <<-EOT
    Name of the image and the prefix of the environment's own accounts (<name>-deploy,
    -tf-plan, -tf-apply, -operator, -smoke); every cell is given the same (its
    service_name).
  EOT
  default     = "recordline"

  # A system name (see `systems`) that also fits <name>-tf-apply in 30 characters.
  validation {
    condition = (
      can(regex("^[a-z][a-z0-9-]{1,19}[a-z0-9]$", var.service_name))
      && !startswith(var.service_name, "goog") && !endswith(var.service_name, "-dead-letter")
    )
    error_message = "service_name: 3 to 21 lower-case letters, digits and dashes, a letter first, no dash last, not starting with goog, not ending in -dead-letter."
  }
}

# --- who may act ---------------------------------------------------------------

variable "oncall" {
  type        = set(string)
  description = <<-EOT
    Who may act as the operator account (<service_name>-operator) to replay in any
    system: IAM members, groups included (group:oncall@example.com). They get
    roles/iam.serviceAccountTokenCreator on that account only: an ID token for the
    service (gcloud auth print-identity-token --impersonate-service-account) and
    Application Default Credentials for Pub/Sub. docs/operations.md#acting-as-the-operator-account.
  EOT
  default     = []

  # Without anyone who may act as the operator account, no runbook command works.
  validation {
    condition     = var.environment != "prod" || length(var.oncall) > 0
    error_message = "prod needs someone on call: list the on-call group (group:...) in oncall in env/prod.tfvars (infra/README.md, step 2)."
  }

  validation {
    condition = alltrue([
      for m in var.oncall : can(regex("^(user|group|serviceAccount|domain):[^\\s,]+$", m))
    ])
    error_message = "Each oncall entry must be an IAM member: user:, group:, serviceAccount: or domain:."
  }
}

# --- images --------------------------------------------------------------------

variable "artifact_repository_id" {
  type        = string
  description = "Artifact Registry repository the deploy workflow pushes images to."
  default     = "recordline"
}

variable "kept_image_versions" {
  type        = number
  description = "Most recent image versions kept in the repository; older ones are deleted (roll back within this window)."
  default     = 30
}

# --- GitHub Actions ------------------------------------------------------------

variable "github_owner" {
  type        = string
  description = "Owner (user or organisation) of the only GitHub repository whose workflows may authenticate."

  validation {
    condition     = can(regex("^[A-Za-z0-9-]+$", var.github_owner))
    error_message = "github_owner must be a GitHub user or organisation name."
  }
}

variable "github_repo" {
  type        = string
  description = "Name of that repository, without the owner."

  validation {
    condition     = can(regex("^[A-Za-z0-9._-]+$", var.github_repo))
    error_message = "github_repo must be a repository name (no owner, no slash)."
  }
}

variable "github_repository_id" {
  type        = string
  description = "Numeric id of that repository (gh api repos/OWNER/REPO --jq .id): tokens are accepted by id, so a repository created again under the same name is not."

  validation {
    condition     = can(regex("^[1-9][0-9]*$", var.github_repository_id))
    error_message = "github_repository_id must be the repository's numeric id: gh api repos/OWNER/REPO --jq .id (infra/README.md, step 2)."
  }
}

variable "github_owner_id" {
  type        = string
  description = "Numeric id of the repository's owner (gh api repos/OWNER/REPO --jq .owner.id)."

  validation {
    condition     = can(regex("^[1-9][0-9]*$", var.github_owner_id))
    error_message = "github_owner_id must be the owner's numeric id: gh api repos/OWNER/REPO --jq .owner.id (infra/README.md, step 2)."
  }
}

variable "github_deploy_branch" {
  type        = string
  description = "The only branch whose workflows may obtain deploy or apply credentials."
  default     = "main"
}

variable "terraform_state_bucket" {
  type        = string
  description = "GCS bucket of this environment's Terraform state (created at bootstrap, see infra/README.md)."
}

variable "terraform_apply_roles" {
  type        = set(string)
  description = "Project roles of the account that applies this configuration from GitHub Actions."
  default = [
    "roles/artifactregistry.admin",
    "roles/bigquery.admin",
    "roles/cloudscheduler.admin",
    "roles/compute.loadBalancerAdmin", # a cell's Cloud CDN and its load balancer (cdn.tf)
    "roles/iam.roleAdmin",
    "roles/iam.serviceAccountAdmin",
    "roles/iam.workloadIdentityPoolAdmin",
    "roles/logging.configWriter", # the exclusion of successful pushes' request logs
    "roles/monitoring.admin",     # metrics scopes: each cell project in the environment's
    "roles/pubsub.admin",
    "roles/resourcemanager.projectIamAdmin",
    "roles/run.admin",
    "roles/secretmanager.admin",
    "roles/serviceusage.serviceUsageAdmin",
    "roles/spanner.admin",
  ]
}

# --- monitoring ----------------------------------------------------------------

variable "notification_channels" {
  type        = list(string)
  description = "Notification channel ids (projects/P/notificationChannels/N) that pages go to: one policy per symptom for the whole fleet (fleet.tf); prod needs at least one (infra/README.md)."
  default     = []

  # An alert without a channel opens an incident nobody hears of.
  validation {
    condition     = var.environment != "prod" || length(var.notification_channels) > 0
    error_message = "prod needs at least one notification channel: create one and list its id in env/prod.tfvars (see infra/README.md)."
  }

  validation {
    condition     = alltrue([for c in var.notification_channels : can(regex("^projects/[^/]+/notificationChannels/[0-9]+$", c))])
    error_message = "Each notification channel must be projects/PROJECT/notificationChannels/ID."
  }
}

variable "ticket_channels" {
  type        = list(string)
  description = "Notification channel ids that tickets go to: each system's own detail of every symptom, and what needs a look in working hours (tickets.tf). A system's own ticket_channels (in its cell's file) replace these."
  default     = []

  # Dead letters (kept 7 days for replay), the Spanner CPU and every system's tickets go
  # here unless a system names its own: in prod they must reach someone.
  validation {
    condition     = var.environment != "prod" || length(var.ticket_channels) > 0
    error_message = "prod needs at least one ticket channel: create one and list its id in ticket_channels in env/prod.tfvars (infra/README.md, step 3)."
  }

  validation {
    condition     = alltrue([for c in var.ticket_channels : can(regex("^projects/[^/]+/notificationChannels/[0-9]+$", c))])
    error_message = "Each ticket channel must be projects/PROJECT/notificationChannels/ID."
  }
}

variable "combined_alerts" {
  type        = bool
  description = <<-EOT
    Every symptom in one paging policy and one ticket policy per set of ticket channels
    (and one for the serving instances), a condition each, instead of a policy per
    symptom: 2 conditions without a serving tier, 3 with one, against 19 and 25, each
    $1.50 a month (https://cloud.google.com/stackdriver/pricing). Each incident still
    names its system (or cell, or instance) and its symptom, whose runbook section its
    text links; a page is then one incident per system, not one per symptom counting
    the systems. Unset: combined while the environment holds fewer than 10 systems
    (combined.tf), a policy per symptom from 10.
  EOT
  default     = null
}

variable "alert_min_events" {
  type        = number
  description = <<-EOT
    A ratio (an SLO's burn rate) is judged only over at least this many requests,
    messages or reads in its long window: at canary-level traffic one 503 among sixty
    pushes an hour is not an outage. A system that is down altogether still pages:
    its backlog and its canary do.
  EOT
  default     = 100

  validation {
    condition     = var.alert_min_events >= 1
    error_message = "alert_min_events must be at least 1."
  }
}

variable "availability_goal" {
  type        = number
  description = "Share of each system's pushes (as Pub/Sub answered them) and of each cell's reads that must not be answered 5xx (their SLOs, in the cell; here for the pages' burn rates)."
  default     = 0.999
}

variable "read_latency_goal" {
  type        = number
  description = "Share of each cell's reads (every system's) answered within read_latency_threshold_seconds (its SLO; here for the pages' burn rates)."
  default     = 0.95
}

variable "read_latency_threshold_seconds" {
  type        = number
  description = "Bound of each system's read-latency SLO (RECORDLINE_SLO_READ_LATENCY_SECONDS of its cell, which counts each read as good or not in recordline.slo.events), for the pages' text: each cell sets it (its read_latency_threshold_seconds)."
  default     = 5

  validation {
    condition     = var.read_latency_threshold_seconds > 0
    error_message = "read_latency_threshold_seconds must be above 0."
  }
}

variable "freshness_goal" {
  type        = number
  description = "Share of each system's messages stored within freshness_threshold_seconds of publish (its SLO, in its cell; here for the pages' burn rates)."
  default     = 0.99
}

variable "freshness_threshold_seconds" {
  type        = number
  description = "Publish-to-stored bound of each system's freshness SLO (RECORDLINE_SLO_FRESHNESS_SECONDS of its cell), for the pages' text: each cell sets it (its freshness_threshold_seconds)."
  default     = 5

  validation {
    condition     = var.freshness_threshold_seconds > 0
    error_message = "freshness_threshold_seconds must be above 0."
  }
}

variable "oldest_unacked_threshold_seconds" {
  type        = number
  description = "Alert when the oldest unacknowledged message on the push subscription is older than this."
  default     = 120
}

variable "canary_age_threshold_seconds" {
  type        = number
  description = "Alert when the newest canary stored (one is published a minute) was published longer ago than this."
  default     = 300
}

variable "export_lag_ticket_seconds" {
  type        = number
  description = "Ticket a system with `serving` whose export to BigQuery is further behind now than this (recordline.export.lag): BigQuery's readers miss what Spanner holds."
  default     = 3600
}

variable "loop_restarts_ticket_count" {
  type        = number
  description = "Ticket a system a background loop of which (the BigQuery store's bell or a writer, the serving tier's exporter, its tail or watermark) restarted more than this many times in 10 minutes, over its instances (recordline.loop.restarts): a failure that happens every time, a bug or a row nothing else contains."
  default     = 5
}

variable "export_lag_page_seconds" {
  type        = number
  description = <<-EOT
    Page when a system's export to BigQuery is further behind now than this. Spanner
    deletes a row retention_days(dedupe window) days after it was written (the window
    rounded up to days, plus 2: at least 3 days, 9 with the default window), exported or
    not; a row it deletes before the export reached it is in neither store. The default,
    6 hours, is beyond what BigQuery's own incidents usually last (the ticket covers
    those) and leaves at least 66 hours of the shortest retention to act in.
  EOT
  default     = 21600

  # At most a third of the shortest retention any system can have (3 days), so a page
  # leaves at least two days to act in; above the ticket, which comes first.
  validation {
    condition     = var.export_lag_page_seconds > var.export_lag_ticket_seconds && var.export_lag_page_seconds <= 86400
    error_message = "export_lag_page_seconds must be above export_lag_ticket_seconds and at most 86400 (a day, a third of the shortest retention of Spanner's rows): a page must leave time to act before rows are deleted."
  }
}

variable "query_bytes_billed_daily_budget" {
  type        = number
  description = "Alert when the service's queries bill more than this many bytes in a day (recordline.query.bytes_billed). 1 TiB by default."
  default     = 1099511627776

  validation {
    condition     = var.query_bytes_billed_daily_budget > 0
    error_message = "query_bytes_billed_daily_budget must be greater than 0."
  }
}

# --- quotas of the projects the cells are in --------------------------------------

variable "service_account_quota" {
  type        = number
  description = <<-EOT
    Service accounts a project may hold unless project_quotas says otherwise: 100 by
    default (https://cloud.google.com/iam/quotas, "Service accounts per project"). Each
    system has one (its push account), each cell two (its runtime and exporter
    accounts), the environment five in its own project: a full cell of 100 systems needs
    the quota raised to 200 (docs/operations.md, "Quotas to ask for").
  EOT
  default     = 100
}

variable "project_quotas" {
  type = map(object({
    service_accounts = optional(number)
    scheduler_jobs   = optional(number)
  }))
  description = <<-EOT
    Quotas granted above the defaults, by project (the environment's or a cell's):
    service accounts (100 by default, service_account_quota) and Cloud Scheduler jobs
    per region (1,000 by default, 5,000 at most: https://cloud.google.com/scheduler/quotas).
    The plan refuses cells that would need more than a project holds (cells.tf).
  EOT
  default     = {}
}
