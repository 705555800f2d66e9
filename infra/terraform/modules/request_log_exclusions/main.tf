# Which of Cloud Run's request logs are excluded before they are stored
# (https://cloud.google.com/logging/docs/routing/overview#exclusions): the environment
# root's for the cells in its project (environment/logging.tf), a cell root's for a
# project of the cell's own (project_iam.tf). A module of a variable, locals and an
# output (the local of the same name), so that both roots exclude the same entries and
# `terraform console` evaluates it offline.
#
# Cloud Run writes a request log entry for every request it serves
# (https://cloud.google.com/run/docs/logging#request): one per push. At 1,000 messages a
# second that is 86.4 million entries a day for one system, each about a kilobyte, all
# billed as ingested logs past the free allotment
# (https://cloud.google.com/stackdriver/pricing). A push that succeeded says nothing the
# metrics do not (Pub/Sub's push_request_count by response class, recordline.messages):
# 99.9% of them are excluded, a sample of one in a thousand kept to look at (a cell of a
# hundred systems keeps about one a second; a 1% sample was 300 GiB a month at a
# thousand systems, $0.15 a system, infra/fleet_cost.py).
#
# Reads too: a follower's long-poll is a request a second while its system is busy, two
# followers of each of a hundred systems some 600 GiB of request logs a month, $275 past
# the free allotment. A read answered under 400 says nothing the metrics do not
# (recordline.read.duration, the read SLOs' events by route): 99% are excluded, a 1%
# sample kept to look at (which system's reader is slow: `labels.system`,
# `httpRequest.latency`).
#
# A follower's long-poll (`wait=`, docs/reading.md) whole: it asks again as soon as it is
# answered, and its entries say nothing the read metrics and a sample of the other reads
# do not (who follows is each system's `recordline.followers`, how long a read took
# recordline.read.duration).
#
# Every refused or failed request (status 400 and up) and the service's own log lines
# are kept whole.

terraform {
  required_version = ">= 1.11, < 2.0"
}

variable "prefix" {
  type        = string
  description = "What each exclusion's name starts with: the service's name, or the cell's."
}

locals {
  # Cloud Run's request log entries, one a request.
  requests = [
    "resource.type=\"cloud_run_revision\"",
    "log_id(\"run.googleapis.com/requests\")",
  ]

  # Each exclusion, by the name of the resources that make it.
  exclusions = {
    successful_pushes = {
      name        = "${var.prefix}-successful-pushes"
      description = "99.9% of the request logs of pushes Recordline answered under 400 (docs/operations.md, Where to look)."
      filter = join(" AND ", concat(local.requests, [
        "httpRequest.requestMethod=\"POST\"",
        "httpRequest.requestUrl:\"/pubsub/push\"",
        "httpRequest.status<400",
        "sample(insertId, 0.999)",
      ]))
    }
    successful_reads = {
      name        = "${var.prefix}-successful-reads"
      description = "99% of the request logs of reads (GET) Recordline answered under 400 (docs/operations.md, Where to look)."
      filter = join(" AND ", concat(local.requests, [
        "httpRequest.requestMethod=\"GET\"",
        "httpRequest.status<400",
        "sample(insertId, 0.99)",
      ]))
    }
    follower_reads = {
      name        = "${var.prefix}-follower-reads"
      description = "The request logs of long-poll reads (wait=) Recordline answered under 400 (docs/operations.md, Where to look)."
      filter = join(" AND ", concat(local.requests, [
        "httpRequest.requestMethod=\"GET\"",
        "httpRequest.requestUrl:\"wait=\"",
        "httpRequest.status<400",
      ]))
    }
  }
}

output "exclusions" {
  description = "Each exclusion, by the name of the resources that make it: its name, description and filter."
  value       = local.exclusions
}
