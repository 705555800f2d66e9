locals {
  # Pub/Sub acts as this Google-managed account when it mints push tokens, forwards
  # dead letters and writes to BigQuery.
  pubsub_service_agent = "serviceAccount:${var.service_agents["pubsub"]}"

  # The acknowledgement deadline is also how long Pub/Sub waits for the push answer.
  # The cell gives up on a write after write_deadline_seconds and answers 503; the
  # margin leaves time for that answer to arrive, so a slow write is nacked and
  # redelivered instead of timing out. Pub/Sub accepts 10 to 600 s.
  ack_deadline_seconds = min(600, max(10, ceil(var.write_deadline_seconds + var.ack_deadline_margin_seconds)))

  # This system's paths in the cell: pushes to /systems/NAME/pubsub/push.
  # The audience is derived from the cell's deterministic URL, which carries the
  # project number, so a token minted for one system, cell or environment is refused
  # by any other; the push goes to the service's URI.
  push_audience = "${var.cell.url}/systems/${var.service_name}/pubsub/push"
  push_endpoint = "${var.cell.uri}/systems/${var.service_name}/pubsub/push"

  # Partition expiry of records and rejected; null keeps partitions forever.
  partition_expiration_ms = var.retention_days > 0 ? var.retention_days * 86400000 : null

  # The cell's accounts as IAM members; the operator account's; and who may replay this
  # system's dead letters, keyed by something known before the accounts exist.
  runtime_member  = "serviceAccount:${var.cell.runtime}"
  exporter_member = "serviceAccount:${var.cell.exporter}"
  operator_member = "serviceAccount:${var.operator_service_account}"
  operator_members = merge(
    { for m in var.operators : m => m },
    { operator-account = local.operator_member },
  )
}
