# CKV_RL_3. Resources named pass_* must pass, fail_* must fail.

resource "google_iam_workload_identity_pool_provider" "pass_pinned" {
  workload_identity_pool_id          = "github"
  workload_identity_pool_provider_id = "pinned"
  attribute_mapping                  = { "google.subject" = "assertion.sub" }
  attribute_condition                = "assertion.repository == 'owner/repo'"
  oidc {
    issuer_uri = "https://token.actions.githubusercontent.com"
  }
}

resource "google_iam_workload_identity_pool_provider" "fail_no_condition" {
  workload_identity_pool_id          = "github"
  workload_identity_pool_provider_id = "open"
  attribute_mapping                  = { "google.subject" = "assertion.sub" }
  oidc {
    issuer_uri = "https://token.actions.githubusercontent.com"
  }
}

resource "google_iam_workload_identity_pool_provider" "fail_owner_only" {
  workload_identity_pool_id          = "github"
  workload_identity_pool_provider_id = "owner"
  attribute_mapping                  = { "google.subject" = "assertion.sub" }
  attribute_condition                = "assertion.repository_owner == 'owner'"
  oidc {
    issuer_uri = "https://token.actions.githubusercontent.com"
  }
}

resource "google_iam_workload_identity_pool_provider" "fail_negated" {
  workload_identity_pool_id          = "github"
  workload_identity_pool_provider_id = "negated"
  attribute_mapping                  = { "google.subject" = "assertion.sub" }
  attribute_condition                = "assertion.repository != 'someone/else'"
  oidc {
    issuer_uri = "https://token.actions.githubusercontent.com"
  }
}
