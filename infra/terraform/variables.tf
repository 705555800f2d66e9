# --- where ---------------------------------------------------------------------

variable "project_id" {
  type        = string
  description = "Google Cloud project of this cell: the environment's, or one of its own once the environment's project is full (environment/cells.tf sums what each project holds)."
}

variable "environment_project_id" {
  type        = string
  description = <<-EOT
    The environment's project, where its accounts (deploy, plan, apply, operator,
    smoke), images and alerts are (infra/terraform/environment): empty for project_id,
    the cell being in the environment's project. A cell in a project of its own enables
    its APIs, makes the metric descriptors and grants the environment's accounts what
    they need there.
  EOT
  default     = ""
}

variable "cell" {
  type        = string
  description = <<-EOT
    The cell's name (RECORDLINE_CELL; its file env/<environment>/<cell>.tfvars.json and
    its state's prefix): its ingest service, its exporter pool (<cell>-exporter), jobs
    (<cell>-export, <cell>-ops), accounts (<cell>-run, <cell>-exporter) and Spanner
    instances (<cell>-serving, -serving-2, ...). Empty: service_name, which keeps the
    names a single deployment had.
  EOT
  default     = ""

  # The service's pattern, and short enough for <cell>-exporter as an account id (30).
  validation {
    condition     = var.cell == "" || (can(regex("^[a-z][a-z0-9-]{1,18}[a-z0-9]$", var.cell)) && !startswith(var.cell, "goog"))
    error_message = "cell: 3 to 20 lower-case letters, digits and dashes, a letter first, no dash last, not starting with goog."
  }
}

variable "region" {
  type        = string
  description = "Region of the cell's Cloud Run services and jobs, and of its canaries' Scheduler jobs; the region plan moves it (docs/operations.md#losing-a-zone-or-a-region)."
  default     = "europe-west1"
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
    Name of the image, the prefix of the environment's own accounts
    (<name>-deploy, -tf-plan, -tf-apply, -operator, -smoke: the environment root's),
    the cell's name when `cell` is empty, and the system a cell without `systems` runs.
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

# --- the service ---------------------------------------------------------------

variable "placeholder_image" {
  type        = string
  description = <<-EOT
    Image of a new cell's first revisions, before any Recordline image is deployed to
    it: a public Python image running placeholder.py (the ingest service: 503 to every
    push, so Pub/Sub keeps the messages, and 200 to Cloud Run's probes) and
    exporter_placeholder.py (the exporter pool: waits). Deploys replace it
    (deploy-cell.yml) and Terraform ignores it afterwards. It runs as the cell's
    accounts, so it is pinned by digest: the base image the service's own Dockerfile
    pins (a test keeps the two equal), whose only code that runs is the interpreter.
  EOT
  default     = "docker.io/library/python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d"

  # A tag can be moved to other bytes by whoever publishes it; a digest cannot.
  validation {
    condition     = can(regex("@sha256:[0-9a-f]{64}$", var.placeholder_image))
    error_message = "placeholder_image must be pinned by digest: IMAGE@sha256:<64 hex>."
  }
}

variable "concurrency" {
  type        = number
  description = <<-EOT
    Requests one instance serves at once. Push requests mostly wait on the group-commit
    batcher, so an instance carries many of them; more concurrency means larger appends.
    A follower waiting for a record (`wait=`, or a stream of pages) holds one request and
    no CPU: at 80, a thousand followers would keep thirteen instances up for nothing.
    The batcher's queue (RECORDLINE_QUEUE_MAX_BYTES) still bounds what pushes hold, and
    Cloud Run adds instances on CPU as well.
  EOT
  default     = 1000

  validation {
    condition     = var.concurrency >= 1 && var.concurrency <= 1000
    error_message = "concurrency must be between 1 and 1000."
  }
}

variable "min_instances" {
  type        = number
  description = <<-EOT
    Instances of the cell's ingest service kept warm. Its billing follows the cell's
    declared rate (cell.tf): at or above billing_break_even_rate pushes a second it is
    instance-based, with at least one instance (CPU always allocated, no fee per
    request); below it, billed by request, this many (0: none at rest, and a push after
    a quiet period waits for an instance to start). docs/operations.md, "What it costs".
  EOT
  default     = 0

  validation {
    condition     = var.min_instances >= 0
    error_message = "min_instances must be 0 or more."
  }
}

variable "billing_break_even_rate" {
  type        = number
  description = <<-EOT
    Pushes a second above which an ingest instance billed by request costs more than
    one always on: a push holds an instance billed for at least 100 ms at the
    request-based rate, plus $0.40 a million requests, against the instance-based rate
    all the time. 6.6 for 1 vCPU and 1 GiB at list prices (infra/fleet_cost.py, which a
    test keeps equal to this for the cell's cpu and memory). A cell whose systems
    declare as much or more (the sum of their `rate`) is billed instance-based.
  EOT
  default     = 6.6

  validation {
    condition     = var.billing_break_even_rate > 0
    error_message = "billing_break_even_rate must be above 0 (pushes a second)."
  }
}

variable "cell_max_systems" {
  type        = number
  description = <<-EOT
    Systems this cell may hold (RECORDLINE_CELL_MAX_SYSTEMS of the service): 100. What
    bounds it: the cell's plan, first apply and rollout are sized for it
    (infra/fleet_limits.py), its SLO service holds 500 SLOs (two a system), and its
    systems' file must fit a secret (64 KiB: about 80 systems with a reader, an
    operator and a schema of their own, docs/cells.md#size) and their audiences Cloud
    Run's 32 KiB.
  EOT
  default     = 100

  validation {
    condition     = var.cell_max_systems >= 1 && var.cell_max_systems <= 249
    error_message = "cell_max_systems must be 1 to 249: a cell's SLO service holds 500 SLOs, two a system and the cell's two."
  }
}

variable "canary_systems" {
  type        = list(string)
  description = <<-EOT
    The systems of this cell a new exporter revision takes first, whose export health
    (rows moving, lag under export_gate_lag_seconds) a rollout watches for
    export_soak_seconds before it goes on (deploy-cell.yml), and which its smoke test
    pushes to: empty for the first two serving systems by name (or the first two
    systems, where none has `serving`) and, once each, the one with the largest rate,
    the first with a topic schema and the first with typed columns (json_schema). A
    named set must hold a system of each of those shapes the cell has (limits.tf).
  EOT
  default     = []
}

variable "kept_revisions" {
  type        = number
  description = <<-EOT
    How many of the newest revisions of the cell's ingest service and of its exporter pool
    a rollout keeps, with every settings version they mount, for a rollback to return to
    (docs/operations.md#rolling-back): older ones that serve nothing are deleted, and the
    versions none of the kept ones mounts retired. At most the environment's
    kept_image_versions, whose images the registry keeps.
  EOT
  default     = 10

  validation {
    condition     = var.kept_revisions >= 3 && var.kept_revisions <= 30
    error_message = "kept_revisions must be 3 to 30: the last release, the one before and an apply's revision at least, and no more than the registry keeps images of (kept_image_versions, 30)."
  }
}

variable "export_soak_seconds" {
  type        = number
  description = "How long a rollout watches the canary systems' export before the exporter takes every system, and again before the ingest service is deployed (deploy-cell.yml)."
  default     = 300

  # The exporter pool writes its metrics every two minutes (exporter.tf): a soak holds
  # at least two of its points.
  validation {
    condition     = var.export_soak_seconds >= 240 && var.export_soak_seconds <= 900
    error_message = "export_soak_seconds must be 240 to 900: at least two of the exporter pool's points (every 2 minutes), and within a rollout job's 20 minutes."
  }
}

variable "export_gate_lag_seconds" {
  type        = number
  description = "The most a canary system's export may lag behind now during a rollout's soak (recordline.export.lag, over the soak): past it, the rollout stops and returns the exporter to what ran before."
  default     = 120

  validation {
    condition     = var.export_gate_lag_seconds >= 15
    error_message = "export_gate_lag_seconds must be at least 15: a takeover alone may take a lease (15 s)."
  }
}

variable "exporter_instances" {
  type        = number
  description = "Instances of the exporter service (exporter.tf), which exports every system with `serving`, each under its own lease: one exports a system, another takes it over within a lease (15 s) when that one dies."
  default     = 2

  validation {
    condition     = var.exporter_instances >= 2
    error_message = "exporter_instances must be at least 2: with one, an instance lost stops every system's export until Cloud Run replaces it."
  }
}

variable "exporter_cpu" {
  type        = string
  description = "CPU limit of one exporter instance (Cloud Run syntax). A quiet system costs an instance about 0.005 of a core, a busy one what its rows cost to read and append (docs/operations.md, \"The exporter service\")."
  default     = "1"
}

variable "exporter_memory" {
  type        = string
  description = "Memory limit of one exporter instance: about 150 MiB, and under 1 MiB more a system (docs/operations.md, \"The exporter service\")."
  default     = "1Gi"
}

variable "max_instances" {
  type        = number
  description = "Upper bound on instances; it caps the parallel Storage Write API connections too."
  default     = 10

  validation {
    condition     = var.max_instances >= 1
    error_message = "max_instances must be at least 1."
  }
}

variable "cpu" {
  type        = string
  description = "CPU limit of one instance (Cloud Run syntax, e.g. \"1\" or \"2\")."
  default     = "1"
}

variable "memory" {
  type        = string
  description = "Memory limit of one instance; it must hold the batcher's queue (RECORDLINE_QUEUE_MAX_BYTES)."
  default     = "1Gi"
}

variable "request_timeout_seconds" {
  type        = number
  description = <<-EOT
    Cloud Run request timeout. Pushes and reads end well before it by their own deadlines
    (RECORDLINE_WRITE_DEADLINE_SECONDS, RECORDLINE_QUERY_TIMEOUT_SECONDS); what it bounds
    is a follower's request: a long-poll (`wait=`, at most 60 s) and a stream of pages
    (stream_seconds). Both must end by the service, with the token to resume from, not be
    cut by Cloud Run.
  EOT
  default     = 330

  validation {
    condition     = var.request_timeout_seconds >= max(var.stream_seconds, 60) + 10 && var.request_timeout_seconds <= 3600
    error_message = "request_timeout_seconds must be at least 10 s above stream_seconds and above 60 (the longest wait=), and at most 3600: a follower's request must end by the service, not be cut by Cloud Run."
  }
}

variable "stream_seconds" {
  type        = number
  description = <<-EOT
    How long a follower's stream of pages (server-sent events) stays open before it ends
    with the token to resume from (RECORDLINE_STREAM_SECONDS): the load balancer then
    spreads followers over instances again, and a deploy's old revision drains.
  EOT
  default     = 300

  validation {
    condition     = var.stream_seconds >= 10 && var.stream_seconds <= 3590
    error_message = "stream_seconds must be between 10 and 3590."
  }
}

variable "ingress" {
  type        = string
  description = <<-EOT
    Cloud Run ingress. Readers outside Google Cloud need INGRESS_TRAFFIC_ALL; every
    request still needs an ID token of a principal with run.invoker.
  EOT
  default     = "INGRESS_TRAFFIC_ALL"

  validation {
    condition = contains([
      "INGRESS_TRAFFIC_ALL",
      "INGRESS_TRAFFIC_INTERNAL_ONLY",
      "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER",
    ], var.ingress)
    error_message = "ingress must be one of INGRESS_TRAFFIC_ALL, INGRESS_TRAFFIC_INTERNAL_ONLY, INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER."
  }
}

variable "write_deadline_seconds" {
  type        = number
  description = <<-EOT
    RECORDLINE_WRITE_DEADLINE_SECONDS: how long a push waits for its row to be stored
    before it is answered 503. The subscription's acknowledgement deadline is derived
    from it, so the service always answers before Pub/Sub gives up on the delivery.
  EOT
  default     = 8

  validation {
    condition     = var.write_deadline_seconds > 0 && var.write_deadline_seconds <= 590
    error_message = "write_deadline_seconds must be in (0, 590]; the acknowledgement deadline tops out at 600 s."
  }
}

variable "ack_deadline_margin_seconds" {
  type        = number
  description = "Added to the write deadline to get the acknowledgement deadline: time to send the answer back."
  default     = 4
}


variable "read_audience" {
  type        = string
  description = <<-EOT
    Audience readers of every system of the cell put in their ID tokens
    (RECORDLINE_READ_AUDIENCE, the cell's), registered as a Cloud Run custom audience.
    Empty: https://CELL-PROJECT_NUMBER.REGION.run.app/v1, one per cell and environment.
  EOT
  default     = ""

  validation {
    condition     = var.read_audience == "" || startswith(var.read_audience, "https://")
    error_message = "read_audience must be a full https:// URL (or empty for the service's /v1 URL)."
  }
}

variable "readers" {
  type        = set(string)
  description = <<-EOT
    Principals allowed to read records of every system of the cell that names none of
    its own: IAM members of the form user:EMAIL, serviceAccount:EMAIL or
    domain:DOMAIN. They get run.invoker on the cell's service and are listed in each
    system's read_principals, which the cell checks itself.
  EOT
  default     = []

  validation {
    condition = alltrue([
      for m in var.readers : can(regex("^(user|serviceAccount|domain):[^\\s,]+$", m))
    ])
    error_message = "Each reader must be user:EMAIL, serviceAccount:EMAIL or domain:DOMAIN (the service cannot check group membership)."
  }
}

variable "operators" {
  type        = set(string)
  description = <<-EOT
    Principals who may replay dead letters and rejections in every system of the cell
    (a system's own `operators` replace these): user:EMAIL, serviceAccount:EMAIL or
    domain:DOMAIN. They are listed in each system's operator_principals, get
    run.invoker on the cell's service and may pull its dead-letter replay
    subscription. The operator account (<service_name>-operator, which `oncall` may
    act as) is always one of them.
  EOT
  default     = []

  validation {
    condition = alltrue([
      for m in var.operators : can(regex("^(user|serviceAccount|domain):[^\\s,]+$", m))
    ])
    error_message = "Each operator must be user:EMAIL, serviceAccount:EMAIL or domain:DOMAIN (the service cannot check group membership; put groups in oncall)."
  }
}

variable "exporters" {
  type        = set(string)
  description = <<-EOT
    Principals who may export (/v1/export/..., the console's export) from every system of
    the cell that names none of its own: user:EMAIL, serviceAccount:EMAIL or
    domain:DOMAIN. Empty, and a system's own unset: every reader of the system exports,
    and its entry names no export_principals. Set, they are its export_principals (and
    readers, with run.invoker on the cell's service): its other readers are refused
    exports (403 export-forbidden). Operators export either way (docs/security.md#who-exports).
  EOT
  default     = []

  validation {
    condition = alltrue([
      for m in var.exporters : can(regex("^(user|serviceAccount|domain):[^\\s,]+$", m))
    ])
    error_message = "Each exporter must be user:EMAIL, serviceAccount:EMAIL or domain:DOMAIN (the service cannot check group membership)."
  }
}

variable "oncall" {
  type        = set(string)
  description = <<-EOT
    Who is on call, as the environment's root has them (environment/variables.tf, who
    may act as the operator account): IAM members, groups included. In a cell they read
    each system's dead-letter table as themselves, and in a cell's own project they get
    the project roles to look (project_iam.tf). docs/operations.md#acting-as-the-operator-account.
  EOT
  default     = []

  # Without anyone who may act as the operator account, no runbook command works.
  validation {
    condition     = var.environment != "prod" || length(var.oncall) > 0
    error_message = "prod needs someone on call: list the on-call group (group:...) in oncall in the cell's file, env/prod/<cell>.tfvars.json, as in the environment's (infra/README.md, step 2)."
  }

  validation {
    condition = alltrue([
      for m in var.oncall : can(regex("^(user|group|serviceAccount|domain):[^\\s,]+$", m))
    ])
    error_message = "Each oncall entry must be an IAM member: user:, group:, serviceAccount: or domain:."
  }
}

variable "trace_sample_ratio" {
  type        = number
  description = <<-EOT
    Share of the traces each service starts itself that Cloud Trace keeps
    (OTEL_TRACES_SAMPLER=parentbased_traceidratio): every push starts one (Pub/Sub's
    push carries no trace context), three spans a push, billed per span past Cloud
    Trace's free allotment. 1% keeps a trace every ten seconds at ten pushes a second. A
    cell traces at most this share, and no more than keeps it at about a trace a second
    (cell.tf, cell_traces_a_second): 0.1% at a thousand pushes a second. A caller that
    sends its own sampled trace context is always traced.
  EOT
  default     = 0.01

  validation {
    condition     = var.trace_sample_ratio >= 0 && var.trace_sample_ratio <= 1
    error_message = "trace_sample_ratio must be between 0 and 1."
  }
}

variable "extra_env" {
  type        = map(string)
  description = "More environment variables for the cell's ingest service and exporter pool (tuning such as RECORDLINE_QUEUE_MAX_BYTES, or RECORDLINE_DEDUPE_WINDOW_SECONDS, which every system of the cell runs with)."
  default     = {}
}

# --- Pub/Sub -------------------------------------------------------------------

# How long an outage Pub/Sub absorbs before it dead-letters: the waits between a
# message's deliveries, from retry_minimum_backoff doubling up to retry_maximum_backoff.
# With the defaults, 32 deliveries wait 10 + 20 + 40 + 80 + 160 + 320 s, then 25 times
# 600 s: 15,630 s, 4 h 20 min, past a 4-hour outage of the service or its stores with
# nothing dead-lettered (docs/operations.md#outages-and-what-to-run-after; a test keeps
# that table equal to these figures). Pub/Sub also slows pushes to a failing endpoint,
# which only lengthens it.
variable "max_delivery_attempts" {
  type        = number
  description = "Deliveries of one message before it is moved to the dead-letter topic: 32 absorb an outage of 4 h 20 min with the default backoff."
  default     = 32

  validation {
    condition     = var.max_delivery_attempts >= 5 && var.max_delivery_attempts <= 100
    error_message = "Pub/Sub accepts between 5 and 100 delivery attempts."
  }
}

# What Pub/Sub accepts (RetryPolicy, https://cloud.google.com/pubsub/docs/reference/rest/v1/projects.subscriptions#retrypolicy;
# message retention, https://cloud.google.com/pubsub/docs/subscription-properties):
# refused here, at plan time, rather than by the API in the middle of an apply.
variable "retry_minimum_backoff" {
  type        = string
  description = "Shortest wait before a nacked message is pushed again (whole seconds, 0s to 600s)."
  default     = "10s"

  validation {
    condition     = can(regex("^[0-9]+s$", var.retry_minimum_backoff)) && try(tonumber(trimsuffix(var.retry_minimum_backoff, "s")) <= 600, false)
    error_message = "retry_minimum_backoff must be whole seconds from 0s to 600s: Pub/Sub's RetryPolicy takes no more than 600 s."
  }
}

variable "retry_maximum_backoff" {
  type        = string
  description = "Longest wait before a nacked message is pushed again (whole seconds, up to 600s, at least retry_minimum_backoff)."
  default     = "600s"

  validation {
    condition = (
      can(regex("^[0-9]+s$", var.retry_maximum_backoff))
      && try(tonumber(trimsuffix(var.retry_maximum_backoff, "s")) <= 600, false)
      && try(tonumber(trimsuffix(var.retry_maximum_backoff, "s")) >= tonumber(trimsuffix(var.retry_minimum_backoff, "s")), false)
    )
    error_message = "retry_maximum_backoff must be whole seconds up to 600s (Pub/Sub's RetryPolicy takes no more than 600 s) and at least retry_minimum_backoff."
  }
}

variable "message_retention_duration" {
  type        = string
  description = "How long the subscription keeps unacknowledged messages (whole seconds, 600s to 2678400s); RECORDLINE_DEDUPE_WINDOW_SECONDS should cover it."
  default     = "604800s"

  validation {
    condition     = can(regex("^[0-9]+s$", var.message_retention_duration)) && try(tonumber(trimsuffix(var.message_retention_duration, "s")) >= 600 && tonumber(trimsuffix(var.message_retention_duration, "s")) <= 2678400, false)
    error_message = "message_retention_duration must be whole seconds from 600s (10 minutes) to 2678400s (31 days), what Pub/Sub keeps a subscription's messages for."
  }
}

# --- BigQuery ------------------------------------------------------------------

variable "dataset_id" {
  type        = string
  description = "BigQuery dataset holding records, rejected and dead_letters."
  default     = "recordline"
}

variable "dataset_location" {
  type        = string
  description = "BigQuery location of the dataset (a multi-region such as EU, or a region)."
  default     = "EU"
}

variable "retention_days" {
  type        = number
  description = <<-EOT
    Days a partition of records and rejected is kept (time_partitioning.expiration_ms)
    and RECORDLINE_RETENTION_DAYS, so reads do not promise rows BigQuery has dropped.
    0 keeps rows forever.
  EOT
  default     = 0

  validation {
    condition     = var.retention_days >= 0 && floor(var.retention_days) == var.retention_days
    error_message = "retention_days must be a whole number of days, 0 or more (0 keeps rows forever)."
  }
}

variable "query_max_bytes_billed" {
  type        = number
  description = <<-EOT
    RECORDLINE_QUERY_MAX_BYTES_BILLED: BigQuery refuses a read query that would bill more
    than this, and the service answers 503 instead of paying for it. 2 GiB by default.
  EOT
  default     = 2147483648

  validation {
    condition     = var.query_max_bytes_billed > 0
    error_message = "query_max_bytes_billed must be greater than 0."
  }
}


variable "serving" {
  type        = bool
  description = <<-EOT
    Whether each system keeps its recent rows in a Spanner database of its own beside
    BigQuery (RECORDLINE_SERVING: reads answered by Spanner within its retention,
    followers without a settle window); a system's own `serving` replaces this. The
    systems that do share one instance (spanner_config, spanner_processing_units).
  EOT
  default     = false
}

variable "spanner_config" {
  type        = string
  description = <<-EOT
    Instance configuration of the serving tier's Spanner instance, where its replicas
    are: empty for regional-<region> (the service's region), or another one such as
    regional-europe-west4 or the multi-region eur3. The CPU alert's threshold follows
    it (65% regional, 45% dual- and multi-region, as Google recommends).
  EOT
  default     = ""

  validation {
    condition     = var.spanner_config == "" || can(regex("^[a-z][a-z0-9-]*[a-z0-9]$", var.spanner_config))
    error_message = "spanner_config must be empty or an instance configuration name such as regional-europe-west1 or eur3."
  }
}

variable "spanner_edition" {
  type        = string
  description = <<-EOT
    Spanner edition of the serving tier's instances: empty for the least the
    configuration allows (STANDARD for a regional one, ENTERPRISE_PLUS for a dual- or
    multi-region one such as eur3, which exist in that edition only), or STANDARD,
    ENTERPRISE or ENTERPRISE_PLUS. infra/fleet_cost.py prices it.
  EOT
  default     = ""

  validation {
    condition = contains(["", "STANDARD", "ENTERPRISE", "ENTERPRISE_PLUS"], var.spanner_edition) && (
      var.spanner_edition == "" || var.spanner_edition == "ENTERPRISE_PLUS" || var.spanner_config == "" || startswith(var.spanner_config, "regional-")
    )
    error_message = "spanner_edition must be empty, STANDARD, ENTERPRISE or ENTERPRISE_PLUS, and ENTERPRISE_PLUS (or empty) for a dual- or multi-region spanner_config: Spanner offers those configurations in that edition only."
  }
}

variable "binary_json_ratio" {
  type        = number
  description = <<-EOT
    How much larger a BINARY topic's message is as the JSON the service stores (every
    field named, numbers as text) than as published: what a serving system with a
    BINARY schema and no `json_bytes` of its own is sized by. The ratio follows the
    schema: the example order of schemas/orders.avsc is 49 bytes in Avro and 144 as
    JSON (2.9) with its strings filled in, 18 and 112 (6.2) with short ones; the fewer
    and longer the strings, the nearer 1. Declare a system's `json_bytes` (the size of
    its stored `data`, which /v1/records returns) rather than rely on this.
  EOT
  default     = 3

  validation {
    condition     = var.binary_json_ratio >= 1
    error_message = "binary_json_ratio must be at least 1: JSON names what binary leaves out."
  }
}

variable "spanner_processing_units" {
  type        = number
  description = <<-EOT
    The least compute capacity of each of the cell's serving instances: 100 processing
    units (a tenth of a node) is the smallest and cheapest. Each instance also has what
    its databases and their storage need (spanner.tf), and what
    spanner_instance_units gives it alone: raise one instance there, not every one here.
  EOT
  default     = 100

  # What Spanner accepts: 100 to 900 in steps of 100, then whole nodes of 1000.
  validation {
    condition = (
      (var.spanner_processing_units >= 100 && var.spanner_processing_units < 1000 && var.spanner_processing_units % 100 == 0)
      || (var.spanner_processing_units >= 1000 && var.spanner_processing_units % 1000 == 0)
    )
    error_message = "spanner_processing_units must be 100 to 900 in steps of 100, or a multiple of 1000."
  }
}

variable "serving_rate" {
  type        = number
  description = <<-EOT
    Messages per second, on average, each system declares unless its own `rate` says:
    what its Spanner instance is sized by for storage (spanner.tf, with
    serving_message_bytes), what the cell's billing follows (the sum over its systems,
    against billing_break_even_rate) and each system's share of admission (its `rate`
    in RECORDLINE_SYSTEMS). Declare each system's own where it differs.
  EOT
  default     = 10

  validation {
    condition     = var.serving_rate > 0
    error_message = "serving_rate must be greater than 0 (messages per second)."
  }
}

variable "serving_reads" {
  type        = number
  description = <<-EOT
    Rows a second, on average, each serving system's readers read from Spanner unless its
    own `reads` says: what its instance's CPU is sized by beside its pushes (spanner.tf).
    Followers at the tail are answered from each instance's memory, which reads each new
    row once: about the rate times the instances its followers reach. 20 by default, a
    system's followers on two instances at 10 messages a second.
  EOT
  default     = 20

  validation {
    condition     = var.serving_reads >= 0
    error_message = "serving_reads must be 0 or more (rows a second)."
  }
}

variable "spanner_instance_units" {
  type        = map(number)
  description = <<-EOT
    Processing units of one serving instance alone, by its name (<cell>-serving,
    <cell>-serving-2, ...), above what spanner.tf sizes it at: what on-call raised it to
    by hand (docs/operations.md#adding-spanner-capacity-now), merged. Each a size
    Spanner takes: 100 to 900 in steps of 100, then whole nodes of 1000.
  EOT
  default     = {}

  validation {
    condition     = alltrue([for units in values(var.spanner_instance_units) : (units >= 100 && units < 1000 && units % 100 == 0) || (units >= 1000 && units % 1000 == 0)])
    error_message = "Each of spanner_instance_units must be 100 to 900 in steps of 100, or a multiple of 1000 (1,800 is not a size Spanner takes: 2,000 is)."
  }
}

variable "spanner_live_units" {
  type        = map(number)
  description = <<-EOT
    The processing units each serving instance has now, by name, read by the plan job
    before it plans (terraform-environment.yml; empty when planned by hand): a plan never
    gives an instance fewer than it has, so capacity on-call added by hand stays until
    merged, and no apply meanwhile is refused for it.
  EOT
  default     = {}

  validation {
    condition     = alltrue([for units in values(var.spanner_live_units) : (units >= 100 && units < 1000 && units % 100 == 0) || (units >= 1000 && units % 1000 == 0)])
    error_message = "Each of spanner_live_units must be a size Spanner takes: 100 to 900 in steps of 100, or a multiple of 1000."
  }
}

variable "pinned_settings" {
  type        = map(string)
  description = <<-EOT
    The version of the cell's systems' file its ops job (`ops`) and its export job
    (`export`) mount while a rollback pins the ingest service's traffic, or the exporter
    pool's instances, to one revision: that revision's (docs/operations.md#rolling-back).
    Read by the plan job before it plans (terraform-environment.yml; empty when planned
    by hand, and when nothing is pinned): an apply meanwhile leaves each job on the file
    it was rolled back to. A job not named mounts the file's newest version.
  EOT
  default     = {}

  validation {
    condition     = alltrue([for job, version in var.pinned_settings : contains(["ops", "export"], job) && can(regex("^[1-9][0-9]*$", version))])
    error_message = "pinned_settings names the ops and export jobs, each with a secret version number (terraform-environment.yml reads them from the pinned revisions)."
  }
}

variable "serving_message_bytes" {
  type        = number
  description = "Mean size of a message's data (bytes) of a system with `serving`, unless its own `message_bytes` says (spanner.tf)."
  default     = 1024

  validation {
    condition     = var.serving_message_bytes > 0 && var.serving_message_bytes <= 10485760
    error_message = "serving_message_bytes must be between 1 and 10 MiB, Pub/Sub's largest message."
  }
}

variable "spanner_recovery_hours" {
  type        = number
  description = <<-EOT
    How far back each serving database can be read or restored to (Spanner's
    version_retention_period, point-in-time recovery): two days, long enough to notice
    an operator's mistake (a bad delete or DDL) made on a working day by the next, or
    on a Saturday by Monday morning. Old versions are kept that long, and cost storage
    (spanner.tf): each day of them is a twelfth of a serving system's storage at the
    default window, $0.38 a system a month (infra/fleet_cost.py). 72 covers a mistake
    made late on a Friday and found on Monday
    (docs/operations.md#recovering-a-serving-database).
  EOT
  default     = 48

  # What Spanner accepts: one hour to seven days.
  validation {
    condition     = var.spanner_recovery_hours >= 1 && var.spanner_recovery_hours <= 168 && floor(var.spanner_recovery_hours) == var.spanner_recovery_hours
    error_message = "spanner_recovery_hours must be a whole number of hours from 1 to 168 (Spanner's version_retention_period is 1h to 7d)."
  }
}

# --- images --------------------------------------------------------------------

variable "artifact_repository_id" {
  type        = string
  description = "Artifact Registry repository of the environment (its project, this cell's region) that the cell's services run images from; a cell in a project of its own grants its Cloud Run agent reading it."
  default     = "recordline"
}







variable "terraform_state_bucket" {
  type        = string
  description = "GCS bucket of the environment's Terraform states (created at bootstrap, see infra/README.md), where each cell also writes its directory (directory.tf)."
}

variable "terraform_apply_roles" {
  type        = set(string)
  description = "Project roles the environment's apply account is granted in a cell's project of its own (in the environment's project, the environment root grants them)."
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




# --- service level objectives ----------------------------------------------------

variable "availability_goal" {
  type        = number
  description = "Share of each system's pushes that must be answered without a 5xx or a timeout (its SLO: modules/system/slos.tf), and of the cell's reads without a 5xx (slos.tf)."
  default     = 0.999
}

variable "read_latency_goal" {
  type        = number
  description = "Share of the cell's reads (every system's) that must be answered within read_latency_threshold_seconds (its SLO: slos.tf)."
  default     = 0.95
}

variable "read_latency_threshold_seconds" {
  type        = number
  description = <<-EOT
    Bound of each system's read-latency SLO (RECORDLINE_SLO_READ_LATENCY_SECONDS: the
    cell counts each user read as good when answered within it, in
    recordline.slo.events). 5 s: a read on BigQuery runs one to three queries one after
    the other, each hundreds of milliseconds to seconds (docs/operations.md#slis-and-slos).
  EOT
  default     = 5

  validation {
    condition     = var.read_latency_threshold_seconds > 0
    error_message = "read_latency_threshold_seconds must be above 0."
  }
}

variable "freshness_goal" {
  type        = number
  description = "Share of each system's messages that must be stored within freshness_threshold_seconds of publish."
  default     = 0.99
}

variable "freshness_threshold_seconds" {
  type        = number
  description = "Publish-to-stored bound of each system's freshness SLO (RECORDLINE_SLO_FRESHNESS_SECONDS: the cell counts each stored message as good when stored within it, in recordline.slo.events)."
  default     = 5

  validation {
    condition     = var.freshness_threshold_seconds > 0
    error_message = "freshness_threshold_seconds must be above 0."
  }
}

variable "slo_rolling_period_days" {
  type        = number
  description = "Compliance period of every SLO."
  default     = 28
}

# --- the cell's systems ------------------------------------------------------------

variable "systems" {
  description = "The cell's systems, by name (each a modules/system instance named by its key; its resources, metric label `namespace` and log label `system` carry it, and its paths in the cell, /systems/NAME/...). Empty: one system named service_name. Each may override a few settings, `serving` among them; what the cell's service runs with (instances, extra_env) is the cell's."
  type = map(object({
    readers         = optional(list(string))
    operators       = optional(list(string))
    exporters       = optional(list(string))
    ticket_channels = optional(list(string))
    # A system's own instances and environment were its own service's; in a cell they
    # are the cell's (min_instances, max_instances, extra_env): refused here.
    min_instances = optional(number)
    max_instances = optional(number)
    extra_env     = optional(map(string))
    serving       = optional(bool)
    # With `serving`: its mean rate (messages/s) and message size (bytes, as published),
    # what the Spanner instance is sized by (serving_rate, serving_message_bytes by
    # default); and, for a BINARY topic, the size of a message's data as the JSON it
    # decodes to, which is what Spanner stores (message_bytes x binary_json_ratio if
    # left out).
    rate          = optional(number)
    message_bytes = optional(number)
    json_bytes    = optional(number)
    # With `serving`: rows its readers read from Spanner a second (serving_reads by
    # default), what its instance's CPU is sized by beside its pushes.
    reads = optional(number)
    # With `serving`: the Spanner instance of the cell its database is on, 1
    # (<cell>-serving) unless the first is full: an instance holds at most 90 of this
    # configuration's databases, and the systems added past that name 2
    # (<cell>-serving-2), and so on. Never changed once the database exists: it would be
    # replaced.
    spanner_instance = optional(number)
    # The topic's schema (README, "Your topic, your schema"): its definition, a file in
    # this repository (a path from its root); AVRO or PROTOCOL_BUFFER; the encoding
    # publishers use, JSON or BINARY; and its id if not the system's name (a schema
    # that exists already, imported).
    schema = optional(object({
      file     = string
      type     = string
      encoding = string
      name     = optional(string)
    }))
    # Where the payload keeps the record id and the event time (RECORDLINE_ID_FIELD,
    # RECORDLINE_TIME_FIELD): field paths such as order_id or meta.created_at.
    id_field   = optional(string)
    time_field = optional(string)
    # The canary's message in the topic's shape (a file in this repository, sent as its
    # bytes): required with a schema or an id_field, which today's canary would not fit.
    canary_file = optional(string)
    # For a topic with no schema (JSON): an Avro record schema, a file under schemas/,
    # whose fields become the records' typed columns (RECORDLINE_JSON_TOPIC_SCHEMA).
    json_schema = optional(string)
    # How `records` is laid out for analysts' queries (layouts.tf; docs/layouts.md):
    # the column it is partitioned by (ingest_time by default, the read API's axis;
    # timestamp, the event's own time; or a DATE or TIMESTAMP column of `columns`), by
    # DAY, MONTH or YEAR; up to four columns it is clustered by (ingest_time by
    # default); and top-level copies of an attribute or a typed field
    # (name = "attributes.KEY" or "fields.PATH"), which BigQuery can partition and
    # cluster by where it cannot by a JSON member or a RECORD's field. Checked at plan
    # time; a new partitioning is a new table (docs/layouts.md#changing-a-layout). A
    # clustering that does not start with ingest_time makes the read API's pages read
    # whole partitions: refused unless pages_read_whole_partitions says it is meant.
    layout = optional(object({
      partition                   = optional(string)
      granularity                 = optional(string)
      clustering                  = optional(list(string))
      columns                     = optional(map(string))
      pages_read_whole_partitions = optional(bool)
    }))
    # Tables of the system's own beside `records` (layouts.tf; docs/layouts.md, "Records
    # as today, beside tables of your own"), by name: each is records_NAME in its
    # dataset, laid out as `layout` lays out `records` and checked the same way (no
    # pages_read_whole_partitions: the read API never reads them), and filled from
    # `records` a whole day at a time by the cell's fill job, hourly (fill.tf). At most
    # four; a name is 1 to 30 lower-case letters, digits and _, a letter first.
    tables = optional(map(object({
      partition   = optional(string)
      granularity = optional(string)
      clustering  = optional(list(string))
      columns     = optional(map(string))
    })))
    # What marks a record deleted, if anything does: a payload holding `value` at
    # `field` (a field path in `data`, as id_field names one). records_latest leaves out
    # an id whose newest version is such a payload; without it, nothing is deleted.
    delete_marker = optional(object({
      field = string
      value = string
    }))
  }))
  default = {}

  # The limits every resource named after a system meets: 3 characters at least (its
  # topic), 24 at most (its push account, <name>-push, fits 30 with room); lower-case
  # letters, digits and dashes, a letter first and no dash last (Cloud Run); not
  # starting with goog (Pub/Sub refuses such topics); not ending in -dead-letter, the
  # suffix of every system's dead-letter topic.
  validation {
    condition = alltrue([
      for name in keys(var.systems) :
      can(regex("^[a-z][a-z0-9-]{1,22}[a-z0-9]$", name)) && !startswith(name, "goog") && !endswith(name, "-dead-letter")
    ])
    error_message = "System names: 3 to 24 lower-case letters, digits and dashes, a letter first, no dash last, not starting with goog, not ending in -dead-letter."
  }

  # The system a configuration without `systems` runs (named service_name) already
  # exists in the cell of that name: a map without it would destroy it. Keep it, or
  # retire it on purpose. (Another cell never had it.)
  validation {
    condition     = length(var.systems) == 0 || contains(keys(var.systems), var.service_name) || contains(var.retired_systems, var.service_name) || (var.cell != "" && var.cell != var.service_name)
    error_message = "systems must keep the system named service_name (the one a configuration without systems runs): leaving it out destroys it. Add it to systems, or retire it as docs/operations.md#retiring-a-system says."
  }

  # What Pub/Sub and the service accept (the field paths: app/settings.py's pattern).
  validation {
    condition = alltrue([
      for s in values(var.systems) : s.schema == null || (
        contains(["AVRO", "PROTOCOL_BUFFER"], try(s.schema.type, ""))
        && contains(["JSON", "BINARY"], try(s.schema.encoding, ""))
        && (try(s.schema.name, null) == null || can(regex("^[A-Za-z][-\\w.~+%]{2,254}$", s.schema.name)))
      )
    ])
    error_message = "A system's schema: type AVRO or PROTOCOL_BUFFER, encoding JSON or BINARY, and a name (if given) of 3 to 255 letters, digits and -_.~+%, a letter first."
  }

  validation {
    condition = alltrue(flatten([
      for s in values(var.systems) : [
        for path in [s.id_field, s.time_field] : path == null || can(regex("^[^.\\s]+(\\.[^.\\s]+)*$", path))
      ]
    ]))
    error_message = "id_field and time_field are field paths: names joined by dots, such as order_id or meta.created_at."
  }

  # A delete marker's field path, and a value put into records_latest's SQL as a string.
  validation {
    condition = alltrue([
      for s in values(var.systems) : s.delete_marker == null || (
        can(regex("^[^.\\s\"']+(\\.[^.\\s\"']+)*$", try(s.delete_marker.field, "")))
        && can(regex("^[^'\"\\\\\\n]*$", try(s.delete_marker.value, "")))
      )
    ])
    error_message = "A delete_marker's field is a field path (names joined by dots, no quotes) and its value holds no quote, backslash or line break."
  }

  # Files a system reads live under schemas/, which terraform.yml plans on: a changed
  # schema or canary is a change to the environment (a schema revision, a new canary).
  validation {
    condition = alltrue([
      for s in values(var.systems) : alltrue([
        for f in compact([try(s.schema.file, null), s.canary_file, s.json_schema]) : startswith(f, "schemas/") && !strcontains(f, "..")
      ])
    ])
    error_message = "A system's schema file, canary_file and json_schema are paths under schemas/ (from the repository's root), where terraform.yml looks for changes."
  }

  # A topic with a schema has its typed columns from it: a declared one would be ignored.
  validation {
    condition     = alltrue([for s in values(var.systems) : s.schema == null || s.json_schema == null])
    error_message = "A system has a topic schema or a json_schema, not both: its topic schema's fields are its typed columns already."
  }

  # A system's typed columns (the `fields` column `records` is created with, systems.tf)
  # come from its schema file through the service's own mapping, generated beside it as
  # <file>.bigquery.json: HCL cannot map a .proto or a nested Avro schema. The plan
  # refuses a schema file without one, or with one made from another version of the file
  # or for another type, naming the command that makes it. (A change of the mapping
  # itself: tests/infra/test_typed_columns.py.) A file that does not exist is left to
  # the file() that reads it, which names it. The check is written twice, as the
  # condition and as the message's list: a validation may read no local computed from
  # its own variable (a cycle), and its condition must read the variable.
  validation {
    condition = alltrue(flatten([
      for s in values(var.systems) : [
        for f in compact([try(s.schema.file, null), s.json_schema]) : !fileexists("${path.root}/../../${f}") || try(
          jsondecode(file("${path.root}/../../${f}.bigquery.json")).source_sha256 == filesha256("${path.root}/../../${f}")
          && jsondecode(file("${path.root}/../../${f}.bigquery.json")).type == try(s.schema.type, "AVRO"),
          false,
        )
      ]
    ]))
    error_message = "A system's schema file needs its typed columns generated beside it, from this version of the file (<file>.bigquery.json: the `fields` column records is created with, docs/typed-columns.md). Run from the repository's root and commit what it writes: ${join("; ", flatten([
      for s in values(var.systems) : [
        for f in compact([try(s.schema.file, null), s.json_schema]) : "python3 dev.py schema typed ${f} --type ${try(s.schema.type, "AVRO")} --write"
        if fileexists("${path.root}/../../${f}") && !try(
          jsondecode(file("${path.root}/../../${f}.bigquery.json")).source_sha256 == filesha256("${path.root}/../../${f}")
          && jsondecode(file("${path.root}/../../${f}.bigquery.json")).type == try(s.schema.type, "AVRO"),
          false,
        )
      ]
    ]))}."
  }

  # Scheduler publishes the canary to the topic every minute: with a schema Pub/Sub
  # refuses today's canary, and with another id field the service rejects it; either
  # way the canary alerts would fire for good.
  validation {
    condition = alltrue([
      for s in values(var.systems) : s.canary_file != null || (s.schema == null && s.id_field == null)
    ])
    error_message = "A system with a schema or an id_field needs canary_file: one message in its topic's shape, with its record id where id_field says (README, \"Pointing Recordline at an existing topic\")."
  }

  # A system's own readers, operators and exporters, as the service checks principals: it
  # cannot check a group's membership (the cell's readers, operators and exporters say
  # the same).
  validation {
    condition = alltrue(flatten([
      for s in values(var.systems) : [
        for m in concat(coalesce(s.readers, []), coalesce(s.operators, []), coalesce(s.exporters, [])) : can(regex("^(user|serviceAccount|domain):[^\\s,]+$", m))
      ]
    ]))
    error_message = "Each of a system's readers, operators and exporters must be user:EMAIL, serviceAccount:EMAIL or domain:DOMAIN: the service cannot check group membership."
  }

  # A cell's systems share its service: what it runs with is the cell's.
  validation {
    condition     = alltrue([for s in values(var.systems) : s.min_instances == null && s.max_instances == null && s.extra_env == null])
    error_message = "A system's min_instances, max_instances and extra_env are its cell's now: set them for the cell (min_instances, max_instances, extra_env), or put the system in a cell of its own."
  }

  # A cell holds at most cell_max_systems systems (cell_max_systems says why).
  validation {
    condition     = length(var.systems) <= var.cell_max_systems
    error_message = "More systems than one cell holds (cell_max_systems, ${var.cell_max_systems}): put the next ones in a new cell, env/${var.environment}/<cell>.tfvars.json (infra/README.md, \"Cells\")."
  }

  # Every system has a service account of its own (its push account), the cell two (its
  # runtime and exporter accounts), and the environment five in its own project: a plan
  # with more than the project may hold is refused here, before it creates any, rather
  # than failing part-way through the apply. (The environment's plan checks every cell of
  # a project together: environment/cells.tf.)
  validation {
    condition     = max(length(var.systems), 1) + 2 + (anytrue([for s in values(var.systems) : length(coalesce(s.tables, {})) > 0]) ? 1 : 0) + (var.environment_project_id == "" || var.environment_project_id == var.project_id ? 5 : 0) <= var.service_account_quota
    error_message = "More systems than the project's service-account quota holds: each system has one account, the cell two (three with a fill job), the environment five in its own project. Raise the quota (https://cloud.google.com/iam/quotas: ask for 200 for a cell of 100 systems) and service_account_quota with it, or put the cell in a project of its own."
  }

  # A retired system's topics and dataset are still there (prevent_destroy kept them).
  validation {
    condition     = length(setintersection(keys(var.systems), var.retired_systems)) == 0
    error_message = "A retired system's name cannot be used again: its topics and dataset still exist."
  }
}

variable "service_account_quota" {
  type        = number
  description = <<-EOT
    Service accounts the cell's project may hold: 100 by default
    (https://cloud.google.com/iam/quotas, "Service accounts per project"), more once a
    quota increase is granted. One account a system, two the cell (three once a
    system has tables of its own: the fill job's), five the
    environment's in its own project: 93 systems fit by default in the environment's
    project, 98 in a project of the cell's own; 200 holds a full cell.
  EOT
  default     = 100
}

variable "retired_systems" {
  type        = set(string)
  description = "Systems taken out of `systems` on purpose, their topics, subscriptions and dataset kept outside Terraform (docs/operations.md#retiring-a-system). Their names stay taken."
  default     = []
}

variable "cdn" {
  type = object({
    enabled        = optional(bool, false)
    domains        = optional(list(string), [])
    read_passes    = optional(bool, true)
    read_pass_keys = optional(list(string), ["pass-1"])
  })
  description = <<-EOT
    Cloud CDN in front of the cell's read paths (cdn.tf): an external Application Load
    Balancer on `domains` (each an A record to the `cdn` output's address, and on the
    managed certificate) whose URL map sends followers' reads of records and streams
    (`/systems/<system>/v1/records…`, `/systems/<system>/v1/streams/…`) to a backend with
    Cloud CDN, and answers everything else with a redirect to the run.app URL, where
    pushes stay. Off by default (docs/deploying.md#cloud-cdn-for-followers).

    `read_passes`, on by default with the CDN: in a cell every read needs a token, and
    the CDN caches nothing for a request with one, so without passes it caches nothing.
    A read pass is a Cloud CDN signed cookie the service issues to a reader for its token
    (`POST /systems/<system>/v1/read-pass`); reads carrying one (and no token) go to the
    CDN, every other read, SSE and the pass's path to a second backend without it. With
    passes, Cloud Run's invoker check is off and the service verifies every token itself.
    `read_pass_keys` names the signing keys, each 16 random bytes on the CDN's backend
    and in the service's RECORDLINE_READ_PASS_KEYS: the first signs, each verifies (at
    most 3, Cloud CDN's limit). To rotate: add the new name after the old, apply; put it
    first, apply; a pass's lifetime later (RECORDLINE_READ_PASS_SECONDS), remove the old.
  EOT
  default     = {}
  nullable    = false

  validation {
    condition     = !var.cdn.enabled || length(var.cdn.domains) > 0
    error_message = "cdn.enabled needs at least one domain in cdn.domains: the managed certificate is issued for them."
  }
  validation {
    condition     = length(var.cdn.domains) <= 100 && alltrue([for d in var.cdn.domains : can(regex("^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\.)+[a-z]{2,63}$", d))])
    error_message = "cdn.domains are lower-case fully qualified names (no scheme, port or wildcard), at most 100: what a managed certificate takes."
  }
  # What a key's name is on a backend service (RFC 1035), and the service's setting takes.
  validation {
    condition = (
      length(var.cdn.read_pass_keys) >= 1 && length(var.cdn.read_pass_keys) <= 3
      && length(distinct(var.cdn.read_pass_keys)) == length(var.cdn.read_pass_keys)
      && alltrue([for k in var.cdn.read_pass_keys : can(regex("^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$", k))])
    )
    error_message = "cdn.read_pass_keys: 1 to 3 distinct key names (a CDN backend holds at most 3), each up to 63 lower-case letters, digits and dashes, a letter first and no dash last."
  }
}
