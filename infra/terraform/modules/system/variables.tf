# Inputs of one Recordline system. The environment root (../../systems.tf) sets every
# one, with per-system overrides, so none has a default here: defaults and the full
# descriptions are the root variables of the same names (../../variables.tf), and so
# are the validations, but for readers and operators, which a system may override.

# --- where ---------------------------------------------------------------------

variable "project_id" {
  type        = string
  description = "Google Cloud project that holds this environment (one project per environment)."
}

variable "region" {
  type        = string
  description = "Region of the Cloud Run service and the Artifact Registry repository."
}

variable "environment" {
  type        = string
  description = "Environment name; also the GitHub environment that may deploy here."
}

variable "service_name" {
  type        = string
  description = "Name of the Cloud Run service, the image and the OpenTelemetry service."
}

# --- the service ---------------------------------------------------------------

variable "placeholder_image" {
  type        = string
  description = "Public Python image that runs placeholder.py until the first deploy; deploys replace it and Terraform ignores it afterwards."
}

variable "concurrency" {
  type        = number
  description = "Requests one instance serves at once (larger appends, as pushes wait on group commit)."
}

variable "min_instances" {
  type        = number
  description = "Instances kept warm (0: none at rest, request-based billing); 1 or more keeps the first push after a quiet period, and followers' streams, off a cold start, on instance-based billing."
}

variable "max_instances" {
  type        = number
  description = "Upper bound on instances; it caps the parallel Storage Write API connections too."
}

variable "cpu" {
  type        = string
  description = "CPU limit of one instance (Cloud Run syntax, e.g. \"1\" or \"2\")."
}

variable "memory" {
  type        = string
  description = "Memory limit of one instance; it must hold the batcher's queue (RECORDLINE_QUEUE_MAX_BYTES)."
}

variable "request_timeout_seconds" {
  type        = number
  description = "Cloud Run request timeout; above stream_seconds and the longest wait= (60 s), so followers' requests end by the service."
}

variable "stream_seconds" {
  type        = number
  description = "RECORDLINE_STREAM_SECONDS: how long a stream of pages stays open before it ends with the token to resume from."
}

variable "ingress" {
  type        = string
  description = "Cloud Run ingress."
}

variable "write_deadline_seconds" {
  type        = number
  description = "RECORDLINE_WRITE_DEADLINE_SECONDS: how long a push waits for its row to be stored."
}

variable "ack_deadline_margin_seconds" {
  type        = number
  description = "Added to the write deadline to get the acknowledgement deadline: time to send the answer back."
}

variable "push_audience" {
  type        = string
  description = "Audience of the OIDC token Pub/Sub attaches to each push (empty: the push URL)."
}

variable "read_audience" {
  type        = string
  description = "Audience readers put in their ID tokens (RECORDLINE_READ_AUDIENCE; empty: the service URL and /v1)."
}

variable "readers" {
  type        = set(string)
  description = "Who may read records: user:EMAIL, serviceAccount:EMAIL or domain:DOMAIN (RECORDLINE_READ_PRINCIPALS, and run.invoker)."

  # The service checks the token's e-mail or its domain; a token says nothing of
  # groups, so a group here would get past Cloud Run and be refused by the service.
  validation {
    condition     = alltrue([for m in var.readers : can(regex("^(user|serviceAccount|domain):[^\\s,]+$", m))])
    error_message = "Each reader must be user:EMAIL, serviceAccount:EMAIL or domain:DOMAIN: the service cannot check group membership."
  }
}

variable "operators" {
  type        = set(string)
  description = "Who may replay besides the operator account: user:EMAIL, serviceAccount:EMAIL or domain:DOMAIN (RECORDLINE_OPERATOR_PRINCIPALS, run.invoker, the replay subscription)."

  validation {
    condition     = alltrue([for m in var.operators : can(regex("^(user|serviceAccount|domain):[^\\s,]+$", m))])
    error_message = "Each operator must be user:EMAIL, serviceAccount:EMAIL or domain:DOMAIN: the service cannot check group membership."
  }
}

variable "push_service_account" {
  type        = string
  description = "E-mail of the environment's push account (root service_accounts.tf): the identity of every system's push subscription, which each service admits (RECORDLINE_PUSH_SERVICE_ACCOUNTS) with its own audience."
}

variable "smoke_service_account" {
  type        = string
  description = "E-mail of the environment's smoke-test account (root service_accounts.tf): a reader of every system, as which the deploy reads back its test message."
}

variable "oncall" {
  type        = set(string)
  description = "Who is on call (root variables.tf): they query this system's dead-letter table as themselves."
}

variable "operator_service_account" {
  type        = string
  description = "E-mail of the environment's operator account, which on-call acts as (root service_accounts.tf): an operator of every system."
}

variable "trace_sample_ratio" {
  type        = number
  description = "Share of the traces the service starts itself (pushes, and reads with no trace context) that are kept (OTEL_TRACES_SAMPLER_ARG)."
}

variable "extra_env" {
  type        = map(string)
  description = "More environment variables for the service (tuning such as RECORDLINE_BATCH_MAX_ROWS)."
}

# --- the serving tier ------------------------------------------------------------

variable "serving" {
  type = object({
    instance       = string
    recovery_hours = number
    restore_role   = string
  })
  description = "The Spanner instance (root spanner.tf) that holds this system's serving database (spanner.tf, RECORDLINE_SERVING), how far back it can be recovered (hours of old versions kept) and the role on-call writes rows back with (root recovery.tf), or null: BigQuery serves every read."
}

variable "exporter_service_account" {
  type        = string
  description = "E-mail of the exporter service's account (root exporter.tf), which exports this system's serving database to its dataset; null: there is none (no system has `serving`)."
}

# --- Pub/Sub -------------------------------------------------------------------

variable "max_delivery_attempts" {
  type        = number
  description = "Deliveries of one message before it is moved to the dead-letter topic."
}

variable "retry_minimum_backoff" {
  type        = string
  description = "Shortest wait before a nacked message is pushed again."
}

variable "retry_maximum_backoff" {
  type        = string
  description = "Longest wait before a nacked message is pushed again."
}

variable "message_retention_duration" {
  type        = string
  description = "How long the subscription keeps unacknowledged messages; RECORDLINE_DEDUPE_WINDOW_SECONDS should cover it."
}

variable "topic_schema" {
  type = object({
    name       = string
    definition = string
    type       = string
    encoding   = string
  })
  description = "The topic's schema (pubsub.tf): its id, definition, type (AVRO or PROTOCOL_BUFFER) and the encoding publishers use (JSON or BINARY); null: none, any payload is accepted by Pub/Sub."
}

variable "id_field" {
  type        = string
  description = "RECORDLINE_ID_FIELD: where the payload keeps the record id; null leaves the service's default (id)."
}

variable "time_field" {
  type        = string
  description = "RECORDLINE_TIME_FIELD: where the payload keeps the event time; null leaves the service's default (timestamp)."
}

variable "json_topic_schema" {
  type        = string
  description = "RECORDLINE_JSON_TOPIC_SCHEMA: for a topic with no schema, an Avro record schema (its JSON text) whose fields become typed columns; null: none."
}

variable "typed_columns" {
  type        = string
  description = "The `fields` column (BigQuery's JSON of one column) that the system's schema file makes, generated beside it by the service's own mapping (`recordline schema typed`): `records` is created with it; null: created without, the service adds it with a revision's first row."
}

variable "canary_data" {
  type        = string
  description = "The canary's message data, base64, in the topic's shape (canary.tf); null: the default {\"id\", \"data\"} record."
}

# --- BigQuery ------------------------------------------------------------------

variable "dataset_id" {
  type        = string
  description = "BigQuery dataset holding records, rejected and dead_letters."
}

variable "dataset_location" {
  type        = string
  description = "BigQuery location of the dataset (a multi-region such as EU, or a region)."
}

variable "retention_days" {
  type        = number
  description = "Days a partition of records and rejected is kept, and RECORDLINE_RETENTION_DAYS; 0 keeps rows forever."
}

variable "query_max_bytes_billed" {
  type        = number
  description = "RECORDLINE_QUERY_MAX_BYTES_BILLED: the most bytes one read query may bill."
}


# --- monitoring ----------------------------------------------------------------




variable "availability_goal" {
  type        = number
  description = "Share of push and read requests that must not fail with a 5xx."
}

variable "read_latency_goal" {
  type        = number
  description = "Share of read queries that must finish within read_latency_threshold_seconds."
}

variable "read_latency_threshold_seconds" {
  type        = number
  description = "Bound of the read-latency SLO on recordline.query.duration, in seconds; a bucket boundary of that histogram."
}

variable "freshness_goal" {
  type        = number
  description = "Share of messages that must be stored within freshness_threshold_seconds of publish."
}

variable "freshness_threshold_seconds" {
  type        = number
  description = "Publish-to-stored bound of the freshness SLO, in seconds (a bucket boundary of recordline.ingest.lag)."
}

variable "slo_rolling_period_days" {
  type        = number
  description = "Compliance period of every SLO."
}



variable "project_number" {
  description = "The project's number (service agents and Cloud Run URLs are named by it)."
  type        = string
}

variable "deployer_member" {
  description = "IAM member of the account GitHub Actions deploys as (root service_accounts.tf)."
  type        = string
}

variable "terraform_apply_member" {
  description = "IAM member of the account Terraform applies as (root service_accounts.tf)."
  type        = string
}

variable "metric_types" {
  description = "Metric type of each application metric, by short name (root metrics.tf)."
  type        = map(string)
}

variable "service_agents" {
  description = "E-mails of the Google-managed service agents, by name (pubsub, scheduler, monitoring), each created before it is read (root apis.tf)."
  type        = map(string)
}
