locals {
  # Filters for this system's application metrics: the descriptors are the project's
  # (metrics.tf), each system's series carry its name as generic_task's `namespace`
  # (the service's OpenTelemetry resource attribute service.namespace, RECORDLINE_SYSTEM).
  workload_metric = {
    for name, type in var.metric_types :
    name => "metric.type=\"${type}\" resource.type=\"generic_task\" resource.label.\"namespace\"=\"${var.service_name}\""
  }

  # Pub/Sub acts as this Google-managed account when it mints push tokens, forwards
  # dead letters and writes to BigQuery.
  pubsub_service_agent = "serviceAccount:${var.service_agents["pubsub"]}"

  # The acknowledgement deadline is also how long Pub/Sub waits for the push answer.
  # The service gives up on a write after write_deadline_seconds and answers 503; the
  # margin leaves time for that answer to arrive, so a slow write is nacked and
  # redelivered instead of timing out. Pub/Sub accepts 10 to 600 s.
  ack_deadline_seconds = min(600, max(10, ceil(var.write_deadline_seconds + var.ack_deadline_margin_seconds)))

  # Readers as the service checks them: e-mails and domain:DOMAIN, comma-separated.
  # The smoke-test account reads back what the deploy workflow pushed.
  read_principals = join(",", sort(concat(
    [for m in var.readers : trimprefix(trimprefix(m, "user:"), "serviceAccount:")],
    [var.smoke_service_account, local.monitoring_service_agent],
  )))

  # Operators as the service checks them, the environment's operator account first
  # among equals; and as IAM members, keyed by something known before the account
  # exists (for_each keys must be).
  operator_principals = join(",", sort(concat(
    [for m in var.operators : trimprefix(trimprefix(m, "user:"), "serviceAccount:")],
    [var.operator_service_account],
  )))
  operator_members = merge(
    { for m in var.operators : m => m },
    { operator-account = "serviceAccount:${var.operator_service_account}" },
  )

  # Cloud Monitoring probes as this Google-managed account (uptime.tf).
  monitoring_service_agent = var.service_agents["monitoring"]

  # Partition expiry of records and rejected; null keeps partitions forever.
  partition_expiration_ms = var.retention_days > 0 ? var.retention_days * 86400000 : null

  # Cloud Run's deterministic URL, known before the service exists. Audiences derived
  # from it carry the project number, so each environment has its own: a token minted
  # for dev is refused by prod.
  service_url   = "https://${var.service_name}-${var.project_number}.${var.region}.run.app"
  push_audience = var.push_audience != "" ? var.push_audience : "${local.service_url}/pubsub/push"
  read_audience = var.read_audience != "" ? var.read_audience : "${local.service_url}/v1"

  # Set only when rows expire, so the service hears of it exactly when BigQuery drops them.
  retention_env = var.retention_days > 0 ? { RECORDLINE_RETENTION_DAYS = tostring(var.retention_days) } : {}

  # With `serving`, the database the service keeps recent rows in (spanner.tf).
  serving_env = {
    for name, database in google_spanner_database.serving :
    "RECORDLINE_SERVING" => "spanner://projects/${var.project_id}/instances/${var.serving.instance}/databases/${database.name}"
  }

  # Where the payload keeps the record id and event time, only where set: otherwise the
  # service's defaults, today's {"id", "timestamp", "data"} contract.
  mapping_env = {
    for name, value in {
      RECORDLINE_ID_FIELD          = var.id_field
      RECORDLINE_TIME_FIELD        = var.time_field
      RECORDLINE_JSON_TOPIC_SCHEMA = var.json_topic_schema
    } :
    name => value if value != null
  }

  service_env = merge(var.extra_env, local.retention_env, local.serving_env, local.mapping_env, {
    RECORDLINE_STORE                  = "bigquery://${var.project_id}/${google_bigquery_dataset.recordline.dataset_id}"
    RECORDLINE_WRITE_DEADLINE_SECONDS = tostring(var.write_deadline_seconds)
    RECORDLINE_PUSH_AUDIENCE          = local.push_audience
    RECORDLINE_PUSH_SERVICE_ACCOUNTS  = var.push_service_account
    # The service's own URL too: the uptime check's token names it (uptime.tf).
    RECORDLINE_READ_AUDIENCE          = "${local.read_audience},${local.service_url}"
    RECORDLINE_READ_PRINCIPALS        = local.read_principals
    RECORDLINE_OPERATOR_PRINCIPALS    = local.operator_principals
    RECORDLINE_QUERY_MAX_BYTES_BILLED = tostring(var.query_max_bytes_billed)
    RECORDLINE_STREAM_SECONDS         = tostring(var.stream_seconds)
    # Cloud Run's invoker check (cloud_run.tf: invoker_iam_disabled = false)
    # verifies each token and replaces its signature before the request reaches
    # the container; the service then checks the claims (audience, sender, expiry).
    RECORDLINE_TRUST_CLOUD_RUN_IAM = "true"
    RECORDLINE_HOST                = "0.0.0.0"
    RECORDLINE_LOG_FORMAT          = "json"
    OTEL_SERVICE_NAME              = var.service_name
    RECORDLINE_SYSTEM              = var.service_name
    OTEL_TRACES_EXPORTER           = "gcp_trace"
    # Every push starts a trace of its own (Pub/Sub's push carries no trace context):
    # kept whole, three spans a push at ten pushes a second were 79 million spans a
    # month a system, Cloud Trace's bill (infra/fleet_cost.py). A caller's own
    # sampling decision is still followed.
    OTEL_TRACES_SAMPLER     = "parentbased_traceidratio"
    OTEL_TRACES_SAMPLER_ARG = tostring(var.trace_sample_ratio)
    OTEL_METRICS_EXPORTER   = "gcp_monitoring"
  })
}

locals {
  # This system's push subscription, as Cloud Monitoring filters name it (dashboard.tf).
  push_subscription = join(" ", [
    "resource.type=\"pubsub_subscription\"",
    "resource.label.\"subscription_id\"=\"${google_pubsub_subscription.push.name}\"",
  ])
}
