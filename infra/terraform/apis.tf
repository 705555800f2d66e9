resource "google_project_service" "enabled" {
  # The environment's project enables what it runs (the environment root's apis.tf):
  # a cell there adds what it runs besides; a cell in a project of its own enables it all.
  for_each = setunion(
    [
      "bigquery.googleapis.com",
      "bigquerystorage.googleapis.com",
      "cloudscheduler.googleapis.com",
      "cloudtrace.googleapis.com",
      "pubsub.googleapis.com",
      "run.googleapis.com",
      "secretmanager.googleapis.com",
      "spanner.googleapis.com", # the serving tier (spanner.tf), once a system opts in
    ],
    local.own_project ? [
      "artifactregistry.googleapis.com",
      "cloudresourcemanager.googleapis.com",
      "iam.googleapis.com",
      "iamcredentials.googleapis.com",
      "logging.googleapis.com",
      "monitoring.googleapis.com",
      "serviceusage.googleapis.com",
    ] : [],
    # The load balancer and Cloud CDN of cdn.tf, where the cell has them.
    var.cdn.enabled ? ["compute.googleapis.com"] : [],
  )

  project = var.project_id
  service = each.value

  # Turning an API off would break whatever else in the project uses it (another cell).
  disable_on_destroy = false
}

# --- the Google-managed service agents this configuration grants roles to -----------

# Google creates a service's agent (service-NUMBER@gcp-sa-...) lazily: Pub/Sub's shortly
# after the API is enabled, Cloud Monitoring's notification agent (which the uptime
# check probes as) only when something first needs it. A grant naming an agent that
# does not exist yet fails with "Service account ... does not exist", so each agent is
# created here, explicitly, and every grant takes its e-mail from
# time_sleep.service_agents below: after the agent exists and IAM has had a minute to
# know it. The pause is taken once, on the apply that creates the agents. Asking for an
# agent that exists returns it: every cell of a project asks for the same ones.
locals {
  service_agent_apis = {
    pubsub     = "pubsub.googleapis.com"         # push tokens, dead letters, the BigQuery subscription
    scheduler  = "cloudscheduler.googleapis.com" # publishes the canaries
    monitoring = "monitoring.googleapis.com"     # the uptime check's ID tokens
  }
}

resource "google_project_service_identity" "agents" {
  # generateServiceIdentity is in the google-beta provider only.
  provider = google-beta
  for_each = local.service_agent_apis

  project = var.project_id
  service = each.value

  depends_on = [google_project_service.enabled]
}

resource "time_sleep" "service_agents" {
  create_duration = "60s"

  # The agents' e-mails, known once they exist: whatever reads them waits for the pause.
  triggers = { for name, agent in google_project_service_identity.agents : name => agent.email }
}
