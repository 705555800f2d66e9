# A few systems: every symptom in one paging policy and one ticket policy, not a policy
# per symptom (fleet.tf, tickets.tf).
#
# Each alerting condition is billed, $1.50 a month whatever it watches
# (https://cloud.google.com/stackdriver/pricing): a policy per symptom is 19 conditions,
# 25 with a serving tier, $28.50 or $37.50 a month, which one system alone would pay by
# itself (docs/operations.md#what-it-costs). Combined, each policy has one PromQL
# condition that joins every symptom's query with `or`, as Google advises for cost
# (https://cloud.google.com/monitoring/alerts/cost-control, "Consolidate alerting
# policies"): each symptom's series carries the label `symptom`, its runbook section, so
# no symptom hides another and each incident still names its system and its symptom, and
# its text links that section. A symptom that must last before it alerts (its policy's
# `duration`) is held in the query itself: present at each minute step of that long, a
# subquery (Cloud Monitoring's PromQL is Prometheus 2.44's,
# https://cloud.google.com/stackdriver/docs/managed-prometheus/promql-differences).
# (docs/operations.md#pages-and-tickets)

locals {
  # Combined while the environment holds fewer than 10 systems: from 10 the 19 to 25
  # conditions cost under $3.75 a system a month, and a page per symptom that counts the
  # systems (one incident for a shared outage) is worth more than they cost.
  combined = var.combined_alerts != null ? var.combined_alerts : length(local.system_names) < 10

  # A query held for `duration` seconds: present at every minute step of that long
  # (2 of the steps of the last 120 s, 5 of the last 300 s).
  combined_held = "(%[1]s) and count_over_time((%[1]s)[%[2]ds:1m]) >= %[3]d"
  # A symptom's series, named by `system` (a cell's by its cell) and `symptom`.
  combined_part = "label_replace(label_replace(%[1]s, \"system\", \"$1\", \"cell\", \"(.+)\"), \"symptom\", \"%[2]s\", \"symptom\", \".*\")"

  # By runbook section: [title, how long it holds, the query held so, labelled].
  combined_pages = {
    for key, page in local.paged : page[3] => [
      page[0], page[2],
      format(local.combined_part, tonumber(trimsuffix(page[2], "s")) == 0 ? page[1] : format(local.combined_held, page[1], tonumber(trimsuffix(page[2], "s")), tonumber(trimsuffix(page[2], "s")) / 60), page[3]),
    ]
  }
  combined_tickets = {
    for group in keys(local.ticket_groups) : group => {
      for symptom, spec in local.ticket_specs : spec[2] => [
        spec[0], spec[1],
        format(local.combined_part, tonumber(trimsuffix(spec[1], "s")) == 0 ? local.ticket_queries[group][symptom] : format(local.combined_held, local.ticket_queries[group][symptom], tonumber(trimsuffix(spec[1], "s")), tonumber(trimsuffix(spec[1], "s")) / 60), spec[2]),
      ] if local.any_serving || !contains(local.serving_symptoms, symptom)
    }
  }
  combined_instance_tickets = {
    for key, spec in local.instance_tickets : spec[3] => [
      spec[0], spec[2],
      format(local.combined_part, format(local.combined_held, spec[1], tonumber(trimsuffix(spec[2], "s")), tonumber(trimsuffix(spec[2], "s")) / 60), spec[3]),
    ]
  }

  # Each policy's text: the incident's system and symptom, the section that symptom has
  # in the runbook, every symptom the policy watches, and where the system is and what
  # serves it. The symptoms' own commands are in their sections.
  combined_list = "%s\n\n%s\nRunbook: docs/operations.md#$${metric.label.symptom}"
  combined_documentation = {
    page = format(
      local.combined_list,
      "$${metric.label.system} in ${var.environment}: $${metric.label.symptom} (a page: an incident for each system, or cell, and symptom). Every symptom this policy pages for, by its runbook section:\n${join("\n", [for section, page in local.combined_pages : "- `${section}`: ${page[0]}${page[1] == "0s" ? "" : ", held ${trimsuffix(page[1], "s")} s"}"])}",
      "${local.ticket_commands.revisions}For a cell (`cell-not-ready`), set SYSTEM to any system of it.\n",
    )
    ticket = format(
      local.combined_list,
      "$${metric.label.system} in ${var.environment}: $${metric.label.symptom} (a ticket: an incident for each system and symptom). Every symptom this policy tickets for, by its runbook section:\n${join("\n", [for section, spec in values(local.combined_tickets)[0] : "- `${section}`: ${spec[0]}${spec[1] == "0s" ? "" : ", held ${trimsuffix(spec[1], "s")} s"}"])}",
      local.ticket_commands.revisions,
    )
    instances = format(
      local.combined_list,
      "$${metric.label.instance_id} (${var.environment}): $${metric.label.symptom}. Every symptom this policy tickets for, by its runbook section:\n${join("\n", [for section, spec in local.combined_instance_tickets : "- `${section}`: ${spec[0]}, held ${trimsuffix(spec[1], "s")} s"])}",
      local.instance_commands,
    )
  }
}

resource "google_monitoring_alert_policy" "combined_page" {
  for_each = local.combined ? toset(["pages"]) : toset([])

  project               = var.project_id
  display_name          = "Recordline fleet (${var.environment}): every symptom that pages"
  combiner              = "OR"
  severity              = "CRITICAL"
  notification_channels = var.notification_channels

  conditions {
    display_name = "systems with a symptom that pages"
    condition_prometheus_query_language {
      query               = join(" or ", [for section, page in local.combined_pages : page[2]])
      duration            = "0s"
      evaluation_interval = "60s"
    }
  }

  documentation {
    mime_type = "text/markdown"
    subject   = "$${metric.label.system} (${var.environment}): $${metric.label.symptom}"
    content   = module.alert_documentation.texts["page combined"]
  }

  depends_on = [module.metrics]
}

resource "google_monitoring_alert_policy" "combined_ticket" {
  for_each = local.combined ? local.ticket_groups : {}

  project               = var.project_id
  display_name          = "Recordline (${var.environment}), each system: every symptom that tickets${length(local.ticket_groups) > 1 ? " [tickets ${each.key}]" : ""}"
  combiner              = "OR"
  severity              = "WARNING"
  notification_channels = each.value.channels

  conditions {
    display_name = "a system with a symptom that tickets"
    condition_prometheus_query_language {
      query               = join(" or ", [for section, spec in local.combined_tickets[each.key] : spec[2]])
      duration            = "0s"
      evaluation_interval = "60s"
    }
  }

  # Dead letters are events among them: an incident closes itself half an hour after
  # its symptom was last seen.
  alert_strategy {
    auto_close = "1800s"
  }

  documentation {
    mime_type = "text/markdown"
    subject   = "$${metric.label.system} (${var.environment}): $${metric.label.symptom}"
    content   = module.alert_documentation.texts["ticket combined"]
  }

  depends_on = [module.metrics]
}

resource "google_monitoring_alert_policy" "combined_instance_ticket" {
  for_each = local.combined && local.any_serving ? toset(["instances"]) : toset([])

  project               = var.project_id
  display_name          = "Recordline serving tier (${var.environment}), each instance: its CPU and storage"
  combiner              = "OR"
  severity              = "WARNING"
  notification_channels = var.ticket_channels

  conditions {
    display_name = "a serving instance past its CPU or storage"
    condition_prometheus_query_language {
      query               = join(" or ", [for section, spec in local.combined_instance_tickets : spec[2]])
      duration            = "0s"
      evaluation_interval = "60s"
    }
  }

  documentation {
    mime_type = "text/markdown"
    subject   = "$${metric.label.instance_id} (${var.environment}): $${metric.label.symptom}"
    content   = module.alert_documentation.texts["ticket combined instances"]
  }
}
