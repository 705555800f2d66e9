# Cloud Run writes a request log entry for every request it serves
# (https://cloud.google.com/run/docs/logging#request): one per push. At 1,000 messages a
# second that is 86.4 million entries a day for one system, each about a kilobyte, all
# billed as ingested logs past the free allotment
# (https://cloud.google.com/stackdriver/pricing). A push that succeeded says nothing the
# metrics do not (Pub/Sub's push_request_count by response class, recordline.messages):
# 99.9% of them are excluded before they are stored
# (https://cloud.google.com/logging/docs/routing/overview#exclusions), a sample of one
# in a thousand kept to look at (a cell of a hundred systems keeps about one a second;
# a 1% sample was 300 GiB a month at a thousand systems, $0.15 a system, infra/fleet_cost.py). Every refused or failed push (status 400 and up) and the
# service's own log lines are kept whole. For every cell in this project; a cell in a
# project of its own excludes them there (the cell root's project_iam.tf).
resource "google_logging_project_exclusion" "successful_pushes" {
  project     = var.project_id
  name        = "${var.service_name}-successful-pushes"
  description = "99.9% of the request logs of pushes Recordline answered under 400 (docs/operations.md, Where to look)."
  filter = join(" AND ", [
    "resource.type=\"cloud_run_revision\"",
    "log_id(\"run.googleapis.com/requests\")",
    "httpRequest.requestMethod=\"POST\"",
    "httpRequest.requestUrl:\"/pubsub/push\"",
    "httpRequest.status<400",
    "sample(insertId, 0.999)",
  ])

  depends_on = [google_project_service.enabled]
}

# Reads too: a follower's long-poll is a request a second while its system is busy, two
# followers of each of a hundred systems some 600 GiB of request logs a month, $275 past
# the free allotment. A read answered under 400 says nothing the metrics do not
# (recordline.read.duration, the read SLOs' events by route): 99% are excluded, a 1%
# sample kept to look at (which system's reader is slow: `labels.system`,
# `httpRequest.latency`); every refused or failed read is kept whole.
resource "google_logging_project_exclusion" "successful_reads" {
  project     = var.project_id
  name        = "${var.service_name}-successful-reads"
  description = "99% of the request logs of reads (GET) Recordline answered under 400 (docs/operations.md, Where to look)."
  filter = join(" AND ", [
    "resource.type=\"cloud_run_revision\"",
    "log_id(\"run.googleapis.com/requests\")",
    "httpRequest.requestMethod=\"GET\"",
    "httpRequest.status<400",
    "sample(insertId, 0.99)",
  ])

  depends_on = [google_project_service.enabled]
}

# A follower's long-poll (`wait=`, docs/reading.md) whole: it asks again as soon as it is
# answered, about a request a second while its system is busy, and its entries say
# nothing the read metrics and a sample of the other reads do not (who follows is each
# system's `recordline.followers`, how long a read took recordline.read.duration). Every
# refused or failed one is kept whole, as every read is.
resource "google_logging_project_exclusion" "follower_reads" {
  project     = var.project_id
  name        = "${var.service_name}-follower-reads"
  description = "The request logs of long-poll reads (wait=) Recordline answered under 400 (docs/operations.md, Where to look)."
  filter = join(" AND ", [
    "resource.type=\"cloud_run_revision\"",
    "log_id(\"run.googleapis.com/requests\")",
    "httpRequest.requestMethod=\"GET\"",
    "httpRequest.requestUrl:\"wait=\"",
    "httpRequest.status<400",
  ])

  depends_on = [google_project_service.enabled]
}
