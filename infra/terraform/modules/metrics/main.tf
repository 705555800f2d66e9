# Descriptors of the service's own metrics (app/telemetry/metrics.py), declared before
# anything refers to them. Cloud Monitoring refuses an SLO or an alert whose filter
# names a metric it does not know yet ("The metric referenced by the provided filter
# is unknown"), and the exporter only creates a descriptor with the first point it
# writes: on a new project that is after the first deploy, with rows stored.
#
# A project's descriptors are made once: by the environment root for its own project
# (environment/metrics.tf), and by a cell root for a project of its own
# (metrics.tf there, `create`); a cell in the environment's project reads the types.
#
# Kind, value type and unit are what the OpenTelemetry Cloud Monitoring exporter
# writes for each instrument (counter: CUMULATIVE; histogram: CUMULATIVE
# DISTRIBUTION; gauge: GAUGE; INT64 or DOUBLE from the value the app records), so the
# exporter's own create call finds an equal descriptor. Labels are the attributes the
# app records. Metrics arrive on the generic_task resource: the exporter's resource
# detector describes a Cloud Run instance that way.

terraform {
  required_version = ">= 1.11, < 2.0"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 6.23, < 7.0"
    }
  }
}

variable "project_id" {
  type        = string
  description = "The project the descriptors are made in."
}

variable "create" {
  type        = bool
  description = "Make the descriptors here: false where another root made them in this project already."
}

locals {
  workload_metrics = {
    "ingest.lag" = {
      kind        = "CUMULATIVE", value = "DISTRIBUTION", unit = "s", labels = []
      description = "Publish to durable storage (ingest_time - publish_time): freshness SLI"
    }
    "messages" = {
      kind        = "CUMULATIVE", value = "INT64", unit = "{message}", labels = ["outcome", "reason"]
      description = "Push deliveries by outcome: stored, rejected (reason), retried (reason), duplicate (a publisher's retry, not stored)"
    }
    "append.rows" = {
      kind        = "CUMULATIVE", value = "DISTRIBUTION", unit = "{row}", labels = []
      description = "Rows per store append"
    }
    "append.duration" = {
      kind        = "CUMULATIVE", value = "DISTRIBUTION", unit = "s", labels = []
      description = "Duration of one store append"
    }
    "query.duration" = {
      kind        = "CUMULATIVE", value = "DISTRIBUTION", unit = "s", labels = ["route"]
      description = "Duration of one store query, by the API route it serves"
    }
    "read.duration" = {
      kind        = "CUMULATIVE", value = "DISTRIBUTION", unit = "s", labels = ["route"]
      description = "From a read request to its response, by route; synthetic reads left out"
    }
    "query.bytes_billed" = {
      kind        = "CUMULATIVE", value = "INT64", unit = "By", labels = ["route"]
      description = "Bytes billed by the store's queries, by the API route they serve"
    }
    "queue.depth" = {
      kind        = "GAUGE", value = "INT64", unit = "{row}", labels = []
      description = "Rows accepted and waiting to be stored"
    }
    "watermark.lag" = {
      kind        = "GAUGE", value = "DOUBLE", unit = "s", labels = []
      description = "Now minus the read horizon (complete_until)"
    }
    "followers" = {
      kind        = "GAUGE", value = "INT64", unit = "{request}", labels = []
      description = "Pages waiting for a row (wait=) and streams of pages open"
    }
    "memory.held" = {
      kind        = "GAUGE", value = "INT64", unit = "By", labels = []
      description = "Bytes requests and answers in flight hold of the process's budget"
    }
    "conflicts" = {
      kind        = "CUMULATIVE", value = "INT64", unit = "{message}", labels = ["reason"]
      description = "Later copies of a stored message whose content differs; the first is kept"
    }
    "canary.age" = {
      kind        = "GAUGE", value = "DOUBLE", unit = "s", labels = []
      description = "Now minus the publish time of the newest canary stored"
    }
    # The serving tier's exporter, by table (records, rejected): reported only by the
    # systems with `serving`. Every instance reads the watermark from Spanner and
    # reports the lag; the one holding the export's lease reports rows and blocked.
    "export.rows" = {
      kind        = "CUMULATIVE", value = "INT64", unit = "{row}", labels = ["table"]
      description = "Rows the exporter appended to BigQuery, by table"
    }
    "export.lag" = {
      kind        = "GAUGE", value = "DOUBLE", unit = "s", labels = ["table"]
      description = "Now minus the export watermark: every row before it is in BigQuery"
    }
    "export.blocked" = {
      kind        = "GAUGE", value = "INT64", unit = "1", labels = ["table"]
      description = "1 while a row BigQuery refused stops the export of its table"
    }
    # A store's background loops (the serving tier's exporter, tail and watermark),
    # started again after a failure.
    "loop.restarts" = {
      kind        = "CUMULATIVE", value = "INT64", unit = "{restart}", labels = ["loop"]
      description = "Background loops started again after a failure, by loop"
    }
    # Connections a bound of the server refused or closed (app/http/limits.py), by
    # reason: the problem answered, or head-timeout, idle-evicted, malformed.
    "connections.refused" = {
      kind        = "CUMULATIVE", value = "INT64", unit = "{connection}", labels = ["reason"]
      description = "Connections a bound of the server refused or closed, by reason"
    }
    # Typed columns: reported by every instance that writes records to BigQuery.
    "typed.patches_refused" = {
      kind        = "CUMULATIVE", value = "INT64", unit = "{patch}", labels = []
      description = "Changes of the typed columns BigQuery refused; each is tried again"
    }
    # Service level events: every stored message of a system (`freshness`, good within
    # RECORDLINE_SLO_FRESHNESS_SECONDS of publish; with a serving tier counted by its
    # export lease holder as the row is exported), under the system's namespace; and a
    # cell's reads, under the cell's: every read answered (`availability`, good="false"
    # for a 5xx), every user read (`read_latency`, good within
    # RECORDLINE_SLO_READ_LATENCY_SECONDS). The SLOs are good/total ratios of it
    # (modules/system/slos.tf, slos.tf); a push's answer is Pub/Sub's to count.
    "slo.events" = {
      kind        = "CUMULATIVE", value = "INT64", unit = "{event}", labels = ["slo", "good"]
      description = "Service level events of a system, by objective (slo) and whether each was good"
    }
    # The completeness ledger of producer sequences: reported by systems on DuckDB or
    # with `serving`, for the 100 producers missing most (a series each).
    "producer.missing" = {
      kind        = "GAUGE", value = "INT64", unit = "{message}", labels = ["producer"]
      description = "Sequences of a producer missing past the grace period, by producer"
    }
    # The same, for the 100 producers in conflict most: sequences two different messages
    # claimed, and epochs whose declared ends disagree.
    "producer.conflicts" = {
      kind        = "GAUGE", value = "INT64", unit = "{sequence}", labels = ["producer"]
      description = "Sequences of a producer claimed by two different messages, and epochs whose declared ends disagree, by producer"
    }
  }
}

resource "google_monitoring_metric_descriptor" "workload" {
  for_each = var.create ? local.workload_metrics : {}

  project      = var.project_id
  type         = "workload.googleapis.com/recordline.${each.key}"
  display_name = "recordline.${each.key}"
  description  = each.value.description
  metric_kind  = each.value.kind
  value_type   = each.value.value
  unit         = each.value.unit

  dynamic "labels" {
    for_each = each.value.labels
    content {
      key        = labels.value
      value_type = "STRING"
    }
  }
}

output "types" {
  description = "Each metric's type, by short name: what filters and PromQL name."
  value       = { for name in keys(local.workload_metrics) : name => "workload.googleapis.com/recordline.${name}" }
}

output "value_types" {
  description = "Each metric's value type (DISTRIBUTION, INT64, DOUBLE), by short name: what a point of it is billed by (infra/fleet_cost.py)."
  value       = { for name, m in local.workload_metrics : name => m.value }
}

output "descriptors" {
  description = "The descriptors made here (none where `create` is false): what SLOs and alerts wait for."
  value       = [for d in google_monitoring_metric_descriptor.workload : d.id]
}
