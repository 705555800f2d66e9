# The documentation of the pages and tickets, held to what Cloud Monitoring accepts:
# at most 8,192 characters and 10,240 bytes of UTF-8, whichever is smaller
# (AlertPolicy.Documentation.content,
# https://cloud.google.com/monitoring/api/ref_v3/rest/v3/projects.alertPolicies#documentation).
# A policy past it would be refused in the middle of an apply, after the resources
# before it were changed; here the plan stops first, naming each text and its size.
# A module of one variable and one output, so that `terraform console` evaluates the
# check offline (tests/infra/test_alerts.py).

terraform {
  required_version = ">= 1.11, < 2.0"
}

variable "texts" {
  type        = map(string)
  description = "Each policy's documentation, by a key that names the policy in the error."

  # Terraform counts characters, not bytes: the bytes are those base64 encodes, 3 for
  # every 4 characters of its output less one for each `=` of padding.
  validation {
    condition = alltrue([
      for text in values(var.texts) :
      length(text) <= 8192 && length(base64encode(text)) / 4 * 3 - length(regexall("=", base64encode(text))) <= 10240
    ])
    error_message = "Cloud Monitoring takes an alerting policy's documentation of at most 8,192 characters and 10,240 bytes (AlertPolicy.Documentation.content). Past it: ${join("; ", [for key, text in var.texts : "${key}, ${length(text)} characters and ${length(base64encode(text)) / 4 * 3 - length(regexall("=", base64encode(text)))} bytes" if length(text) > 8192 || length(base64encode(text)) / 4 * 3 - length(regexall("=", base64encode(text))) > 10240])}. Shorten the text it is made of (fleet.tf, tickets.tf)."
  }
}

output "texts" {
  description = "The texts, each within Cloud Monitoring's limits."
  value       = var.texts
}
