# CKV_RL_1. Resources named pass_* must pass, fail_* must fail.

resource "google_pubsub_subscription" "pass_push_with_token_and_dead_letter" {
  name  = "pass"
  topic = "projects/p/topics/t"

  push_config {
    push_endpoint = "https://example.run.app/pubsub/push"
    oidc_token {
      service_account_email = "push@p.iam.gserviceaccount.com"
      audience              = "recordline-push"
    }
  }

  dead_letter_policy {
    dead_letter_topic     = "projects/p/topics/dead"
    max_delivery_attempts = 10
  }
}

resource "google_pubsub_subscription" "fail_push_without_token" {
  name  = "no-token"
  topic = "projects/p/topics/t"

  push_config {
    push_endpoint = "https://example.run.app/pubsub/push"
  }

  dead_letter_policy {
    dead_letter_topic     = "projects/p/topics/dead"
    max_delivery_attempts = 10
  }
}

resource "google_pubsub_subscription" "fail_push_without_dead_letter" {
  name  = "no-dead-letter"
  topic = "projects/p/topics/t"

  push_config {
    push_endpoint = "https://example.run.app/pubsub/push"
    oidc_token {
      service_account_email = "push@p.iam.gserviceaccount.com"
    }
  }
}

resource "google_pubsub_subscription" "fail_dead_letter_without_attempts" {
  name  = "no-attempts"
  topic = "projects/p/topics/t"

  push_config {
    push_endpoint = "https://example.run.app/pubsub/push"
    oidc_token {
      service_account_email = "push@p.iam.gserviceaccount.com"
    }
  }

  dead_letter_policy {
    dead_letter_topic = "projects/p/topics/dead"
  }
}
