# The dead-letter BigQuery subscription is checked against the Pub/Sub agent's access to
# its table the moment it is created, and does not retry. IAM changes take up to about a
# minute to propagate, so it waits this long after the grant; a grant made anew (its id
# changes) waits again. (The cell's service is created on the placeholder, whose probes
# need no grant: root cell.tf.)
resource "time_sleep" "iam_propagation" {
  create_duration = "60s"

  triggers = {
    dead_letters = google_bigquery_table_iam_member.pubsub_writes_dead_letters.id
  }
}
