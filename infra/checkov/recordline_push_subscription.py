"""A push subscription must authenticate its pushes and must not retry forever.

Without an OIDC token the endpoint cannot tell Pub/Sub from anyone else on the
internet; without a dead-letter policy one message the store keeps refusing is
retried for the whole retention period, and every nack backs off the entire
subscription.
"""

from __future__ import annotations

from typing import Any

from checkov.common.models.enums import CheckCategories, CheckResult
from checkov.terraform.checks.resource.base_resource_check import BaseResourceCheck


def _block(conf: dict[str, Any], name: str) -> dict[str, Any] | None:
    # checkov wraps every block and attribute in a list.
    value = conf.get(name)
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, dict) and value else None


def _set(conf: dict[str, Any], name: str) -> bool:
    value = conf.get(name)
    if isinstance(value, list):
        value = value[0] if value else None
    return value not in (None, "", [])


class PushSubscriptionAuthenticatedAndDeadLettered(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="Pub/Sub push subscriptions send an OIDC token and have a dead-letter policy",
            id="CKV_RL_1",
            categories=[CheckCategories.GENERAL_SECURITY],
            supported_resources=["google_pubsub_subscription"],
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        push = _block(conf, "push_config")
        if push is None:
            return CheckResult.UNKNOWN  # pull or BigQuery subscription: not ours to judge

        oidc = _block(push, "oidc_token")
        if oidc is None or not _set(oidc, "service_account_email"):
            self.details.append("push_config has no oidc_token with a service_account_email")
            return CheckResult.FAILED

        dead_letter = _block(conf, "dead_letter_policy")
        if dead_letter is None or not _set(dead_letter, "dead_letter_topic"):
            self.details.append("no dead_letter_policy with a dead_letter_topic")
            return CheckResult.FAILED
        if not _set(dead_letter, "max_delivery_attempts"):
            self.details.append("dead_letter_policy has no max_delivery_attempts")
            return CheckResult.FAILED

        return CheckResult.PASSED


check = PushSubscriptionAuthenticatedAndDeadLettered()
