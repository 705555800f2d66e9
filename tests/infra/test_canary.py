"""The synthetic canary: Cloud Scheduler publishes to the records topic what the service
recognises, with a publisher grant on that topic only, and both alerts watch its age."""

from __future__ import annotations

import base64
import json

import msgspec

from app.ingest.payload import Payload
from app.records import CANARY_ATTRIBUTE
from tests.infra.test_terraform import _evaluate, _expression, _locals, _resources


def test_scheduler_publishes_the_canary_to_the_records_topic_every_minute() -> None:
    job = _resources("google_cloud_scheduler_job")["canary"]
    assert job["schedule"] == "* * * * *"
    (target,) = job["pubsub_target"]
    assert target["topic_name"] == "${google_pubsub_topic.records.id}"
    assert _locals()["canary_attribute"] == CANARY_ATTRIBUTE
    assert target["attributes"] == {"${(local.canary_attribute)}": "1"}


def test_canary_payload_is_a_valid_record() -> None:
    # Rejected canaries would not count: the payload must pass the service's schema.
    job = _resources("google_cloud_scheduler_job")["canary"]
    (target,) = job["pubsub_target"]
    # The default one; a system with a topic schema or its own id field sends its own.
    assert target["data"] == "${local.canary_data}"
    assert _locals()["canary_data"] == (
        "${var.canary_data != null ? var.canary_data : local.default_canary_data}"
    )
    data = _evaluate(
        _expression(_locals()["default_canary_data"]),
        (("canary_attribute", json.dumps(CANARY_ATTRIBUTE)),),
    )
    payload = msgspec.json.decode(base64.b64decode(data), type=Payload)
    assert payload.id == CANARY_ATTRIBUTE


def test_scheduler_may_publish_on_the_records_topic_only() -> None:
    grant = _resources("google_pubsub_topic_iam_member")["canary_publisher"]
    assert grant["topic"] == "${google_pubsub_topic.records.name}"
    assert grant["role"] == "roles/pubsub.publisher"
    assert grant["member"] == "${local.scheduler_service_agent}"
    assert 'var.service_agents["scheduler"]' in _locals()["scheduler_service_agent"]
    for binding in _resources("google_project_iam_member").values():
        assert "scheduler_service_agent" not in str(binding["member"])


def test_canary_age_is_watched_for_staleness_and_for_absence() -> None:
    # Stale: the fleet's page and each system's ticket, on the minimum over instances.
    assert (
        _locals()["canary_stale"].startswith(
            '${"label_replace(min by (namespace) (${local.metric[\\"canary.age\\"]}'
        )
        or "min by (namespace)" in _locals()["canary_stale"]
    )
    assert "canary.age" in _locals()["canary_stale"]
    # Absent: a ticket, per system: no instance reported a canary age for 10 minutes.
    from tests.infra.test_alerts import _symptoms

    # Whom to expect: every system with a push subscription, named by no list (each
    # system's subscription reports its backlog, empty or not, every minute).
    absent = _symptoms(("orders", "payments"))["canary_absent"]
    assert absent.startswith("count by (system) (label_replace(last_over_time(")
    assert "pubsub_googleapis_com:subscription_num_undelivered_messages{" in absent
    assert 'subscription_id=~"(orders|payments)-push"' in absent
    assert "unless on (system)" in absent
    assert "last_over_time(workload_googleapis_com:recordline_canary_age{" in absent
    assert "[10m]" in absent
    assert "canary_absent" in _locals()["ticket_specs"]
