# Inputs of one Recordline system of a cell. The cell root (../../systems.tf) sets every
# one, with per-system overrides, so none has a default here: defaults and the full
# descriptions are the root variables of the same names (../../variables.tf), and so
# are the validations, but for operators, which a system may override.

# --- where ---------------------------------------------------------------------

variable "project_id" {
  type        = string
  description = "Google Cloud project of the cell this system is in."
}

variable "region" {
  type        = string
  description = "Region of the cell's Cloud Run services and of the canary's Scheduler job."
}

variable "service_name" {
  type        = string
  description = "The system's name: its topic, subscriptions, dataset, database, push account and metrics' `namespace`."
}

# --- the cell it is in (root cell.tf) ----------------------------------------------

variable "cell" {
  type = object({
    name                  = string
    uri                   = string
    ingest                = string
    location              = string
    url                   = string
    slo_service           = string
    runtime               = string
    exporter              = string
    fill                  = string
    fill_job              = string
    dedupe_window_seconds = number
  })
  description = <<-EOT
    The cell: its name; its ingest service's URI (where pushes go), name and location
    (its invoker grant); its deterministic URL (https://CELL-NUMBER.REGION.run.app,
    under which /systems/NAME/pubsub/push is this system's push audience); its SLO
    service; the e-mails of its runtime and exporter accounts (exporter empty when no
    system of the cell has `serving`); the e-mail of its fill account and the name of
    its fill job (both empty when no system of the cell has `tables`: root fill.tf);
    and the dedupe window it runs with (RECORDLINE_DEDUPE_WINDOW_SECONDS: this system's
    Spanner retention).
  EOT
}

variable "operators" {
  type        = set(string)
  description = "Who may replay this system's dead letters besides the operator account: user:EMAIL, serviceAccount:EMAIL or domain:DOMAIN (its operator_principals, the replay subscription)."

  validation {
    condition     = alltrue([for m in var.operators : can(regex("^(user|serviceAccount|domain):[^\\s,]+$", m))])
    error_message = "Each operator must be user:EMAIL, serviceAccount:EMAIL or domain:DOMAIN: the service cannot check group membership."
  }
}

variable "oncall" {
  type        = set(string)
  description = "Who is on call (root variables.tf): they query this system's dead-letter table as themselves."
}

variable "operator_service_account" {
  type        = string
  description = "E-mail of the environment's operator account, which on-call acts as: an operator of every system, and what the cell's ops job runs as."
}

variable "deployer_member" {
  type        = string
  description = "IAM member of the account GitHub Actions deploys as: it mints this system's push tokens for the smoke test."
}

variable "terraform_apply_member" {
  type        = string
  description = "IAM member of the account Terraform applies as: it acts as the push account to create the push subscription."
}

variable "service_agents" {
  type        = map(string)
  description = "E-mails of the cell project's Google-managed service agents, by name (pubsub, scheduler), each created before it is read (root apis.tf)."
}

# --- the serving tier ------------------------------------------------------------

variable "serving" {
  type = object({
    instance       = string
    recovery_hours = number
    restore_role   = string
  })
  description = "The Spanner instance (root spanner.tf) that holds this system's serving database, how far back it can be recovered (hours of old versions kept) and the role on-call writes rows back with (root recovery.tf), or null: BigQuery serves every read."
}

# --- Pub/Sub -------------------------------------------------------------------

variable "write_deadline_seconds" {
  type        = number
  description = "RECORDLINE_WRITE_DEADLINE_SECONDS of the cell: how long a push waits for its row to be stored."
}

variable "ack_deadline_margin_seconds" {
  type        = number
  description = "Added to the write deadline to get the acknowledgement deadline: time to send the answer back."
}

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

variable "typed_columns" {
  type        = string
  description = "The `fields` column (BigQuery's JSON of one column) that the system's schema file makes, generated beside it by the service's own mapping (`recordline schema typed`): `records` is created with it; null: created without, the service adds it with a revision's first row."
}

variable "layout" {
  type = object({
    partition                   = string
    granularity                 = string
    clustering                  = list(string)
    pages_read_whole_partitions = bool
    columns = map(object({
      source = string
      type   = string
    }))
  })
  description = "How `records` is laid out (root layouts.tf, checked there at plan time): the column it is partitioned by and the unit (DAY, MONTH or YEAR), the columns it is clustered by, and the top-level copies of an attribute or typed field it is created with, by name (source attributes.KEY or fields.PATH, and type)."
}

variable "tables" {
  type = map(object({
    partition   = string
    granularity = string
    clustering  = list(string)
    columns = map(object({
      source = string
      type   = string
    }))
  }))
  description = "The system's tables of its own beside `records`, by name (root layouts.tf, checked there at plan time as `layout` is): each is records_NAME, laid out as a layout lays out `records`, and filled hourly by the cell's fill job (fill.tf). Empty: none."
}

variable "delete_marker" {
  type = object({
    field = string
    value = string
  })
  description = "What marks a record deleted (root variables.tf, systems): a payload holding `value` at the field path `field` of `data`; records_latest leaves out an id whose newest version is one. null: nothing is deleted."
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
  description = "Days a partition of records and rejected is kept; 0 keeps rows forever."
}

# --- service level objectives ----------------------------------------------------

variable "metric_types" {
  type        = map(string)
  description = "Metric type of each application metric, by short name (modules/metrics)."
}

variable "availability_goal" {
  type        = number
  description = "Share of the system's pushes that must be answered without a 5xx or a timeout (its reads' are the cell's SLO)."
}

variable "freshness_goal" {
  type        = number
  description = "Share of the system's messages that must be stored within the cell's RECORDLINE_SLO_FRESHNESS_SECONDS of publish."
}

variable "freshness_threshold_seconds" {
  type        = number
  description = "The freshness SLO's bound (RECORDLINE_SLO_FRESHNESS_SECONDS of the cell), for the SLO's name."
}

variable "slo_rolling_period_days" {
  type        = number
  description = "Compliance period of every SLO."
}
