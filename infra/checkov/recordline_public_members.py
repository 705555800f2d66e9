"""Nothing is granted to the public.

allUsers and allAuthenticatedUsers (any Google account at all) may appear in any
IAM member, binding or dataset access entry; none of Recordline's resources is
meant to be public, so any occurrence is a failure.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from checkov.common.models.enums import CheckCategories, CheckResult
from checkov.terraform.checks.resource.base_resource_check import BaseResourceCheck

PUBLIC_MEMBERS = frozenset({"allUsers", "allAuthenticatedUsers"})


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


class NoPublicMembers(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="No IAM grant or access entry names allUsers or allAuthenticatedUsers",
            id="CKV_RL_2",
            categories=[CheckCategories.IAM],
            supported_resources=["google_*"],
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        public = sorted({s.strip() for s in _strings(conf)} & PUBLIC_MEMBERS)
        if public:
            self.details.append(f"grants to {', '.join(public)}")
            return CheckResult.FAILED
        return CheckResult.PASSED


check = NoPublicMembers()
