resource "google_secret_manager_secret" "page_token" {
  #checkov:skip=CKV_GCP_128:Google-managed encryption; the key only signs page tokens and rotates by adding a version.
  project   = var.project_id
  secret_id = "${var.service_name}-page-token"

  replication {
    auto {}
  }
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

# Two resources are checked against a grant the moment they are created, and neither
# retries: the dead-letter BigQuery subscription (the Pub/Sub agent's access to the
# table) and the Cloud Run revision (the runtime account's access to the secret; with
# `serving`, its startup probe, /readyz, also needs the runtime account's access to its
# Spanner database). IAM changes take up to about a minute to propagate, so both wait
# this long after their grants; a grant made anew (its id changes) waits again.
resource "time_sleep" "iam_propagation" {
  create_duration = "60s"

  triggers = merge(
    {
      dead_letters = google_bigquery_table_iam_member.pubsub_writes_dead_letters.id
      page_token   = google_secret_manager_secret_iam_member.runtime_reads_page_token.id
    },
    { for name, grant in google_spanner_database_iam_member.runtime_uses_database : "serving" => grant.id },
  )
}
