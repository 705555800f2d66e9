"""A workload identity provider for GitHub Actions must be pinned to a repository.

token.actions.githubusercontent.com signs tokens for every repository on GitHub;
a provider without a condition on the repository lets any of them exchange a token
in this project (the bindings' subjects are the only line left).
"""

from __future__ import annotations

import re
from typing import Any

from checkov.common.models.enums import CheckCategories, CheckResult
from checkov.terraform.checks.resource.base_resource_check import BaseResourceCheck

GITHUB_ISSUER = "token.actions.githubusercontent.com"

# `assertion.repository == "owner/repo"` (or repository_id), however the value is
# quoted or interpolated; `!=` and a bare mention do not count.
PINNED = re.compile(r"""(assertion|attribute)\.repository(_id)?\s*==\s*\\?["']""")


def _first(value: Any) -> Any:
    while isinstance(value, list):
        value = value[0] if value else None
    return value


class GithubProviderPinnedToRepository(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="GitHub Actions identity providers pin the repository in attribute_condition",
            id="CKV_RL_3",
            categories=[CheckCategories.IAM],
            supported_resources=["google_iam_workload_identity_pool_provider"],
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        oidc = _first(conf.get("oidc"))
        issuer = _first(oidc.get("issuer_uri")) if isinstance(oidc, dict) else None
        if not isinstance(issuer, str) or GITHUB_ISSUER not in issuer:
            return CheckResult.UNKNOWN

        condition = _first(conf.get("attribute_condition"))
        if not isinstance(condition, str) or not PINNED.search(condition):
            self.details.append("attribute_condition does not compare assertion.repository")
            return CheckResult.FAILED
        return CheckResult.PASSED


check = GithubProviderPinnedToRepository()
