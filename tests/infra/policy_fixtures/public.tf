# CKV_RL_2. Resources named pass_* must pass, fail_* must fail.

resource "google_cloud_run_v2_service_iam_member" "pass_named_invoker" {
  name     = "recordline"
  location = "europe-west1"
  role     = "roles/run.invoker"
  member   = "serviceAccount:push@p.iam.gserviceaccount.com"
}

resource "google_cloud_run_v2_service_iam_member" "fail_public_invoker" {
  name     = "recordline"
  location = "europe-west1"
  role     = "roles/run.invoker"
  member   = "allUsers"
}

resource "google_pubsub_topic_iam_binding" "fail_any_google_account" {
  topic   = "t"
  role    = "roles/pubsub.publisher"
  members = ["user:a@example.com", "allAuthenticatedUsers"]
}

resource "google_bigquery_dataset" "fail_public_dataset_access" {
  dataset_id = "d"

  access {
    role          = "READER"
    special_group = "allAuthenticatedUsers"
  }
}
