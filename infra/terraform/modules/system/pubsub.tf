# Whatever holds messages (topics, subscriptions) or rows (the dataset and its tables)
# is protected by prevent_destroy: a plan that would destroy one, such as a system left
# out of `systems` or a change that forces a replacement, fails instead of losing
# data. Retiring a system on purpose: docs/operations.md#retiring-a-system.

resource "google_pubsub_topic" "records" {
  #checkov:skip=CKV_GCP_83:Encrypted at rest with Google-managed keys; the data carries no requirement for customer-managed keys.
  project = var.project_id
  name    = var.service_name

  # With a schema, Pub/Sub refuses a publish that does not fit it and marks each message
  # with the revision it fits, which the service decodes it with. No revision range:
  # every revision is accepted (provider 6.x has no first/last revision id). Adding,
  # changing or removing these settings updates the topic in place (the provider does
  # not replace a topic for them); prevent_destroy fails any plan that would.
  dynamic "schema_settings" {
    for_each = google_pubsub_schema.records
    content {
      schema   = schema_settings.value.id
      encoding = var.topic_schema.encoding
    }
  }

  lifecycle {
    prevent_destroy = true
  }
}

# The topic's schema, when the system has one. A changed definition is committed as a
# new revision of the same schema (Pub/Sub keeps up to 20; delete old ones once no
# message names them). The service fetches every revision messages name, so the schema
# outlives any of its revisions' messages: prevent_destroy.
resource "google_pubsub_schema" "records" {
  for_each = var.topic_schema != null ? { (var.topic_schema.name) = var.topic_schema } : {}

  project    = var.project_id
  name       = each.key
  type       = each.value.type
  definition = each.value.definition

  lifecycle {
    prevent_destroy = true
  }
}

resource "google_pubsub_topic" "dead_letter" {
  #checkov:skip=CKV_GCP_83:Encrypted at rest with Google-managed keys; the data carries no requirement for customer-managed keys.
  project = var.project_id
  name    = "${var.service_name}-dead-letter"

  lifecycle {
    prevent_destroy = true
  }
}

resource "google_pubsub_subscription" "push" {
  project = var.project_id
  name    = "${var.service_name}-push"
  topic   = google_pubsub_topic.records.id

  ack_deadline_seconds       = local.ack_deadline_seconds
  message_retention_duration = var.message_retention_duration

  push_config {
    push_endpoint = local.push_endpoint

    # The cell checks this token's signature, audience and e-mail on every push, with
    # this system's guard (its push_audience and push_service_accounts in the cell's
    # RECORDLINE_SYSTEMS); Cloud Run checks that the account holds run.invoker and that
    # the audience is one of the service's (root cell.tf, custom_audiences).
    oidc_token {
      service_account_email = google_service_account.push.email
      audience              = local.push_audience
    }
  }

  # A nack (503 when the store is unavailable or the queue is full) backs off the whole
  # subscription; exponential backoff keeps a struggling store from being hammered.
  retry_policy {
    minimum_backoff = var.retry_minimum_backoff
    maximum_backoff = var.retry_maximum_backoff
  }

  # Invalid payloads are acknowledged into `rejected`, so only messages the store could
  # not take max_delivery_attempts times in a row end up here.
  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter.id
    max_delivery_attempts = var.max_delivery_attempts
  }

  expiration_policy {
    ttl = "" # never expire, however quiet the topic is
  }

  depends_on = [
    google_pubsub_topic_iam_member.dead_letter_publisher,
    google_cloud_run_v2_service_iam_member.push_invoker,
    google_service_account_iam_member.pubsub_mints_push_token,
    google_service_account_iam_member.terraform_apply_acts_as_push,
  ]

  lifecycle {
    prevent_destroy = true
  }
}

# Keeps every dead letter, with its attributes and delivery metadata, in BigQuery.
resource "google_pubsub_subscription" "dead_letter_to_bigquery" {
  project = var.project_id
  name    = "${var.service_name}-dead-letter-bigquery"
  topic   = google_pubsub_topic.dead_letter.id

  bigquery_config {
    table          = "${var.project_id}.${google_bigquery_dataset.recordline.dataset_id}.${google_bigquery_table.dead_letters.table_id}"
    write_metadata = true
  }

  expiration_policy {
    ttl = ""
  }

  # Pub/Sub checks the agent's access to the table when the subscription is created.
  depends_on = [time_sleep.iam_propagation]

  lifecycle {
    prevent_destroy = true
  }
}

# Keeps every dead letter for `recordline replay dead-letters` (docs/operations.md#dead-letters):
# a pull subscription nothing reads until an operator replays, acknowledging a message only
# once the service stored or rejected it. Pub/Sub keeps an unacknowledged message 7 days.
resource "google_pubsub_subscription" "dead_letter_replay" {
  project                    = var.project_id
  name                       = "${var.service_name}-dead-letter-replay"
  topic                      = google_pubsub_topic.dead_letter.id
  ack_deadline_seconds       = 60
  message_retention_duration = "604800s"

  expiration_policy {
    ttl = ""
  }

  lifecycle {
    prevent_destroy = true
  }
}

# To forward messages to the dead-letter topic...
resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  project = var.project_id
  topic   = google_pubsub_topic.dead_letter.name
  role    = "roles/pubsub.publisher"
  member  = local.pubsub_service_agent
}

# ...and to acknowledge them on the source subscription once forwarded.
resource "google_pubsub_subscription_iam_member" "dead_letter_subscriber" {
  project      = var.project_id
  subscription = google_pubsub_subscription.push.name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}

# To write dead letters through the BigQuery subscription: this table only.
resource "google_bigquery_table_iam_member" "pubsub_writes_dead_letters" {
  project    = var.project_id
  dataset_id = google_bigquery_dataset.recordline.dataset_id
  table_id   = google_bigquery_table.dead_letters.table_id
  role       = "roles/bigquery.dataEditor"
  member     = local.pubsub_service_agent
}
