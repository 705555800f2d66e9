# What an on-call engineer is paged or ticketed for, as PromQL over the systems named:
# each output is a vector with one series per system in trouble (label `system`), or
# per cell (`cell`) or serving instance (`instance_id`) for what is theirs, empty when
# none is. The environment root counts them (one page per symptom, however many
# systems: fleet.tf) and keeps each one's series (one incident per system and symptom:
# tickets.tf). A module of locals and outputs only, so the same text serves both and
# `terraform console` evaluates it offline. Every cell's project is in the environment
# project's metrics scope (cells.tf), where these are evaluated.
#
# Metric names as Cloud Monitoring maps them to PromQL (the first / to :, other
# punctuation to _); a distribution is a histogram (_bucket with `le`, _count).

terraform {
  required_version = ">= 1.11, < 2.0"
}

variable "systems" {
  type        = list(string)
  description = "System names: each is its push subscription's prefix and its counters' `namespace`."
}

variable "every_system" {
  type        = bool
  description = "The systems are every system of the project: the queries match any name instead of listing them, so they stay one size whatever their number (the project holds Recordline's systems alone)."
  default     = false
}

variable "oldest_unacked_threshold_seconds" {
  type        = number
  description = "A backlog: the oldest unacknowledged message on the push subscription is older than this."
}

variable "canary_age_threshold_seconds" {
  type        = number
  description = "A stalled pipeline: the newest canary stored was published longer ago than this."
}

variable "unready_regions" {
  type        = number
  description = "A cell that cannot serve: its uptime check of /readyz failed every probe for 10 minutes in at least this many regions."
}

variable "slos" {
  type = map(object({
    goal = number
  }))
  description = "Goal of availability (a system's pushes, as Pub/Sub counts them, and a cell's reads), freshness (a system's) and read_latency (a cell's): each but the pushes a value of the `slo` label of recordline.slo.events."
}

variable "burn_rates" {
  type = map(object({
    long  = string
    short = string
    rate  = number
  }))
  description = "Multi-window burn rates by speed: the budget burns faster than `rate` over both the long and the short window."
}

variable "metric_types" {
  type        = map(string)
  description = "The type of each application metric by short name (root metrics.tf): read from the descriptors, so a query is written only once they exist."
}

variable "query_bytes_billed_daily_budget" {
  type        = number
  description = "Bytes a system's reads may bill in 24 h before its ticket opens."
}

variable "export_lag_threshold_seconds" {
  type        = number
  description = "The export to BigQuery is behind: a table's watermark is older than this (only systems with `serving` report an export lag)."
}

variable "loop_restarts_threshold" {
  type        = number
  description = "A background loop of a system (the serving tier's exporter, its tail, its watermark) restarted more than this many times in 10 minutes, over its instances."
  default     = 5
}

variable "spanner_storage_threshold" {
  type        = number
  description = "A serving instance holds more than this share of what its processing units allow (instance/storage/utilization)."
  default     = 0.7
}

variable "declared_rates" {
  type        = map(number)
  description = "Each system's declared rate (messages a second, its `rate`) where it is not default_rate: what its pushes over the last hour are held to."
  default     = {}
}

variable "default_rate" {
  type        = number
  description = "The rate every system not in declared_rates declares (the cell root's serving_rate)."
  default     = 10
}

variable "min_events" {
  type        = number
  description = "A ratio is judged only over at least this many requests (messages, reads) in its long window."
}

locals {
  # One alternation for every label matcher (PromQL anchors regular expressions); any
  # name at all for every system of the environment, whose length is the same for 2 or
  # 2,000.
  any = var.every_system ? "[a-z][a-z0-9-]*" : "(${join("|", var.systems)})"

  # PromQL's name of each application metric: workload.googleapis.com/recordline.ingest.lag
  # is workload_googleapis_com:recordline_ingest_lag.
  metric = {
    for name, type in var.metric_types : name => join(":", [
      replace(split("/", type)[0], "/[^a-zA-Z0-9_]/", "_"),
      replace(join("/", slice(split("/", type), 1, length(split("/", type)))), "/[^a-zA-Z0-9_]/", "_"),
    ])
  }

  workload = "monitored_resource=\"generic_task\",namespace=~\"${local.any}\""
  # A cell's own series: what every system's reads do (their SLO events, the bytes they
  # bill) is counted under its cell's namespace, and only there, so any name is a cell's.
  # Named by no list: where tickets go to several groups of systems, each group hears
  # of the cells' reads (its systems' readers among them).
  cells = "monitored_resource=\"generic_task\",namespace=~\"[a-z][a-z0-9-]*\""

  # Each system's pushes as Pub/Sub answered them (subscription/push_request_count, by
  # response_class), and those not answered: neither acknowledged nor refused with a 4xx
  # (a refusal is an answer), a 5xx, a timeout, unreachable or invalid.
  pushes     = "pubsub_googleapis_com:subscription_push_request_count{monitored_resource=\"pubsub_subscription\",subscription_id=~\"${local.any}-push\"}"
  unanswered = replace(local.pushes, "}", ",response_class!~\"ack|remote_server_4xx\"}")

  # Each SLO's parts, per SLO and window: bad events / all events, and all events, by
  # the label that names whose they are, and what makes `system` of that label.
  # Availability: each system's pushes (Pub/Sub's count), and each cell's reads; read
  # latency: each cell's reads; freshness: each system's stored messages
  # (recordline.slo.events, counted by its export lease holder).
  slo_events = {
    freshness    = "${local.metric["slo.events"]}{${local.workload},slo=\"freshness\"}"
    availability = "${local.metric["slo.events"]}{${local.cells},slo=\"availability\"}"
    read_latency = "${local.metric["slo.events"]}{${local.cells},slo=\"read_latency\"}"
  }
  by_namespace = {
    for name, events in local.slo_events : name => {
      bad    = "sum by (namespace) (rate(${replace(events, "}", ",good=\"false\"}")}[%[1]s])) / sum by (namespace) (rate(${events}[%[1]s]))"
      events = "sum by (namespace) (increase(${events}[%[1]s]))"
      label  = "namespace"
      owner  = "(.*)"
    }
  }
  sli = {
    availability = [
      {
        bad    = "sum by (subscription_id) (rate(${local.unanswered}[%[1]s])) / sum by (subscription_id) (rate(${local.pushes}[%[1]s]))"
        events = "sum by (subscription_id) (increase(${local.pushes}[%[1]s]))"
        label  = "subscription_id"
        owner  = "(.*)-push"
      },
      local.by_namespace["availability"],
    ]
    freshness    = [local.by_namespace["freshness"]]
    read_latency = [local.by_namespace["read_latency"]]
  }

  backlog      = "label_replace(max by (subscription_id) (pubsub_googleapis_com:subscription_oldest_unacked_message_age{monitored_resource=\"pubsub_subscription\",subscription_id=~\"${local.any}-push\"}), \"system\", \"$1\", \"subscription_id\", \"(.*)-push\") > ${var.oldest_unacked_threshold_seconds}"
  canary_stale = "label_replace(min by (namespace) (${local.metric["canary.age"]}{${local.workload}}), \"system\", \"$1\", \"namespace\", \"(.*)\") > ${var.canary_age_threshold_seconds}"

  # A cell that cannot serve: its one uptime check (/readyz on the cell's deterministic
  # URL, https://CELL-NUMBER.REGION.run.app) failed every probe for 10 minutes in enough
  # regions. /readyz is 503 only when the cell cannot serve at all (every system down,
  # or its own dependencies); one system's failure is that system's 503s, which its
  # availability SLO counts.
  cell_unready = "label_replace(count by (host) (max_over_time(monitoring_googleapis_com:uptime_check_check_passed{monitored_resource=\"uptime_url\",host=~\"[a-z][a-z0-9-]*-[0-9]+[.][a-z0-9-]+[.]run[.]app\"}[10m]) == 0), \"cell\", \"$1\", \"host\", \"(.*)-[0-9]+[.].*\") >= ${var.unready_regions}"

  # Tickets alone. Dead letters: an event, any in the last five minutes. Bytes billed:
  # the last 24 h of the reads' BigQuery bytes, over the budget. Canary absent: a system
  # none of whose instances reported a canary age for 10 minutes. Whom to expect comes
  # from the push subscriptions, whose backlog Pub/Sub reports every minute whatever
  # the service does: one series per system, less those that reported. Listing the
  # systems instead made the query grow by some 60 characters a system.
  dead_letters  = "label_replace(sum by (subscription_id) (increase(pubsub_googleapis_com:subscription_dead_letter_message_count{monitored_resource=\"pubsub_subscription\",subscription_id=~\"${local.any}-push\"}[5m])), \"system\", \"$1\", \"subscription_id\", \"(.*)-push\") > 0"
  bytes_billed  = "label_replace(sum by (namespace) (increase(${local.metric["query.bytes_billed"]}{${local.cells}}[1d])), \"system\", \"$1\", \"namespace\", \"(.*)\") > ${var.query_bytes_billed_daily_budget}"
  expected      = "label_replace(last_over_time(pubsub_googleapis_com:subscription_num_undelivered_messages{monitored_resource=\"pubsub_subscription\",subscription_id=~\"${local.any}-push\"}[10m]), \"system\", \"$1\", \"subscription_id\", \"(.*)-push\")"
  canary_absent = "count by (system) (${local.expected}) unless on (system) label_replace(count by (namespace) (last_over_time(${local.metric["canary.age"]}{${local.workload}}[10m])), \"system\", \"$1\", \"namespace\", \"(.*)\")"

  # The export to BigQuery, in the systems with `serving` (the others report neither
  # metric, so they never appear). Written only by the instance of the cell's exporter
  # pool that holds the system's lease: per table the least any instance
  # reports (a former holder's last value, for the minute after a takeover, is older),
  # per system its furthest-behind table. Blocked: 1 while a refused row stops a table,
  # 0 once that very row is exported, nothing for a table never blocked under the lease
  # (not blocked); an instance that loses the lease reports nothing of it, so the most
  # any instance reports. Per system, its furthest-behind (or any blocked) table.
  export_lag     = "label_replace(max by (namespace) (min by (namespace, table) (${local.metric["export.lag"]}{${local.workload}})), \"system\", \"$1\", \"namespace\", \"(.*)\") > ${var.export_lag_threshold_seconds}"
  export_blocked = "label_replace(max by (namespace) (max by (namespace, table) (${local.metric["export.blocked"]}{${local.workload}})), \"system\", \"$1\", \"namespace\", \"(.*)\") > 0"

  # A background loop that keeps failing (recordline.loop.restarts, by loop): its
  # supervisor restarts it with backoff from 0.5 s to 30 s, so a failure that happens
  # every time restarts it some 25 times in 10 minutes, a passing one once or twice.
  # Per system (or cell, for the cell's own loops), the loop restarted most, over its
  # instances.
  loop_restarts = "label_replace(max by (namespace) (sum by (namespace, loop) (increase(${local.metric["loop.restarts"]}{${local.workload}}[10m]))), \"system\", \"$1\", \"namespace\", \"(.*)\") > ${var.loop_restarts_threshold}"

  # A change of the typed columns BigQuery refused (permissions, a field it will not
  # take), tried again every 30 s while rows of its revision arrive: records are stored
  # and exported meanwhile, without the new columns. Any in the last 30 minutes.
  typed_refused = "label_replace(sum by (namespace) (increase(${local.metric["typed.patches_refused"]}{${local.workload}}[30m])), \"system\", \"$1\", \"namespace\", \"(.*)\") > 0"

  # Sequences of a producer missing past the grace period (the completeness ledger,
  # app/store/producers.py), in systems that keep one. Every instance reads the same
  # ledger: per producer the most any reports, per system their sum.
  producers_missing = "label_replace(sum by (namespace) (max by (namespace, producer) (${local.metric["producer.missing"]}{${local.workload}})), \"system\", \"$1\", \"namespace\", \"(.*)\") > 0"

  # The serving instances, each its own incident (label `instance_id`): high-priority CPU
  # over Google's recommended maximum for its configuration (65% regional, 45% per region
  # for a dual- or multi-region one: https://cloud.google.com/spanner/docs/cpu-utilization),
  # and storage over a share of what its processing units allow
  # (https://cloud.google.com/spanner/docs/compute-capacity).
  spanner_cpu     = "(max by (project_id, instance_id, instance_config) (sum by (project_id, instance_id, instance_config, location) (spanner_googleapis_com:instance_cpu_utilization_by_priority{monitored_resource=\"spanner_instance\",priority=\"high\",instance_config=~\"regional-.*\"})) > 0.65) or (max by (project_id, instance_id, instance_config) (sum by (project_id, instance_id, instance_config, location) (spanner_googleapis_com:instance_cpu_utilization_by_priority{monitored_resource=\"spanner_instance\",priority=\"high\",instance_config!~\"regional-.*\"})) > 0.45)"
  spanner_storage = "max by (project_id, instance_id) (spanner_googleapis_com:instance_storage_utilization{monitored_resource=\"spanner_instance\"}) > ${var.spanner_storage_threshold}"

  # Sequences of a producer two different messages claimed, and epochs whose declared
  # ends disagree: another publisher sends its producer id (a forger, or two instances
  # deriving one id and epoch). Both messages are stored; summed as the missing are.
  producers_conflicts = "label_replace(sum by (namespace) (max by (namespace, producer) (${local.metric["producer.conflicts"]}{${local.workload}})), \"system\", \"$1\", \"namespace\", \"(.*)\") > 0"

  # Messages a second Pub/Sub delivered to a system (acknowledged pushes) over the last
  # hour, above what the system declared: its `rate`, which its cell's billing, its share
  # of admission and its Spanner instance's sizing follow. Every system declaring the
  # default is matched by any name, less those declaring another, each held to its own
  # (grouped by rate: one term a distinct rate, not one a system).
  declared  = var.every_system ? var.declared_rates : { for name, rate in var.declared_rates : name => rate if contains(var.systems, name) }
  delivered = "sum by (subscription_id) (rate(pubsub_googleapis_com:subscription_push_request_count{monitored_resource=\"pubsub_subscription\",response_class=\"ack\",subscription_id=~\"NAMES-push\"}[1h]))"
  over_declared = join(" or ", concat(
    ["label_replace((${replace(local.delivered, "NAMES", local.any)} > ${var.default_rate})${length(local.declared) > 0 ? " unless on (subscription_id) ${replace(local.delivered, "NAMES", "(${join("|", sort(keys(local.declared)))})")}" : ""}, \"system\", \"$1\", \"subscription_id\", \"(.*)-push\")"],
    [
      for rate in sort(distinct([for r in values(local.declared) : tostring(r)])) :
      "label_replace(${replace(local.delivered, "NAMES", "(${join("|", sort([for name, r in local.declared : name if tostring(r) == rate]))})")} > ${rate}, \"system\", \"$1\", \"subscription_id\", \"(.*)-push\")"
    ],
  ))

  # The error budget burns at more than `rate` times its sustainable pace over both the
  # long window (it matters) and the short one (it is still happening), over at least
  # min_events: one 503 among a canary's sixty pushes an hour is not an outage. Each
  # part of an SLO (a system's pushes, a cell's reads) is judged on its own events.
  burning = {
    for name, parts in local.sli : name => {
      for speed, burn in var.burn_rates : speed => join(" or ", [
        for part in parts : join("", [
          "label_replace(",
          "(${format(part.bad, burn.long)}) / (1 - ${var.slos[name].goal}) > ${burn.rate}",
          " and (${format(part.bad, burn.short)}) / (1 - ${var.slos[name].goal}) > ${burn.rate}",
          " and ${format(part.events, burn.long)} >= ${var.min_events}",
          ", \"system\", \"$1\", \"${part.label}\", \"${part.owner}\")",
        ])
      ])
    }
  }
}

output "backlog" {
  description = "Systems whose oldest unacknowledged push is older than the threshold (value: its age, s)."
  value       = local.backlog
}

output "canary_stale" {
  description = "Systems whose newest stored canary, over all instances, is older than the threshold (value: its age, s)."
  value       = local.canary_stale
}

output "cell_unready" {
  description = "Cells whose /readyz uptime check failed every probe for 10 minutes in enough regions (label `cell`; value: how many regions)."
  value       = local.cell_unready
}

output "burning" {
  description = "Per SLO (availability, freshness, read_latency) and speed: systems (pushes, freshness) or cells (reads, labelled `system` too) burning their error budget that fast (value: the long window's burn rate)."
  value       = local.burning
}

output "dead_letters" {
  description = "Systems whose push subscription dead-lettered messages in the last 5 minutes (value: how many)."
  value       = local.dead_letters
}

output "bytes_billed" {
  description = "Cells whose reads (every system's) billed more than the daily budget in the last 24 h (label `system`: the cell's name; value: bytes)."
  value       = local.bytes_billed
}

output "spanner_cpu" {
  description = "Serving instances whose high-priority CPU is over Google's recommended maximum (label `instance_id`; value: the CPU, 1 = 100%)."
  value       = local.spanner_cpu
}

output "spanner_storage" {
  description = "Serving instances holding more than the threshold of what their processing units allow (label `instance_id`; value: the share)."
  value       = local.spanner_storage
}

output "canary_absent" {
  description = "Systems none of whose instances reported a canary age in the last 10 minutes."
  value       = local.canary_absent
}

output "export_lag" {
  description = "Systems whose export to BigQuery is further behind now than the threshold, in its furthest-behind table (value: that lag, s)."
  value       = local.export_lag
}

output "typed_refused" {
  description = "Systems where BigQuery refused a change of the typed columns in the last 30 minutes (value: how many)."
  value       = local.typed_refused
}

output "loop_restarts" {
  description = "Systems a background loop of which restarted more than the threshold in 10 minutes (value: its restarts)."
  value       = local.loop_restarts
}

output "export_blocked" {
  description = "Systems whose export to BigQuery is stopped at a row BigQuery refused, in any table (value: 1)."
  value       = local.export_blocked
}

output "producers_missing" {
  description = "Systems with sequences of a producer missing past the grace period (value: how many, over all producers)."
  value       = local.producers_missing
}

output "producers_conflicts" {
  description = "Systems with sequences of a producer claimed by two different messages, or epochs whose declared ends disagree (value: how many, over all producers)."
  value       = local.producers_conflicts
}

output "over_declared" {
  description = "Systems to which Pub/Sub delivered more messages a second over the last hour than their declared rate (value: that rate)."
  value       = local.over_declared
}
