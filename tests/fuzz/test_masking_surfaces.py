"""No masked value reaches a reader through any surface the service serves: whatever the
mask settings, however a publisher nests, encodes (JSON encoded again, a repr, a form)
or spells the payload and its attributes, a reader's pages, look-ups, messages,
rejections, streams, exports, producers, audit, metrics and error bodies hold neither
the value nor its base64 or JSON-escaped forms, where an operator's hold it."""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient

from app.asgi import create_app
from app.query import follow
from tests.conftest import envelope
from tests.conftest import settings as app_settings
from tests.fuzz.budget import EXAMPLES

SECRET = "a-push-secret-long-enough"
OPERATOR = {"Authorization": f"Bearer {SECRET}"}
# A value that is each example's own (a counter in it), of characters a publisher may
# send: quotes, unicode beyond the BMP, signs a form or a formula uses.
_examples = itertools.count()
# (Printable ones, which a repr keeps as they are.)
_CHARS = st.characters(
    codec="utf-8",
    exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"),
    exclude_characters="\\'",
    include_characters=" ",
)


def forms(value: str) -> set[str]:
    """`value` as a response may carry it: as it is, JSON-escaped up to eight times (as
    `holding` encodes twice three times over, the payload is a JSON string, and the
    answer is JSON; ASCII or not), base64, and as a CSV cell doubles its quotes."""
    found = {value}
    level = {value}
    for _ in range(8):
        level = {json.dumps(t, ensure_ascii=a)[1:-1] for t in level for a in (True, False)}
        found |= level
    found.add(base64.b64encode(value.encode()).decode())
    return found | {text.replace('"', '""') for text in found}


def key(name: str, escaped: bool) -> str:
    """A member's name as JSON text spells it, each character `\\u` escaped or not."""
    return '"' + "".join(f"\\u{ord(c):04x}" for c in name) + '"' if escaped else json.dumps(name)


@st.composite
def holding(draw: st.DrawFn, name: str, secret: str) -> Any:
    """A value holding `secret` under the masked member `name`: nested in objects and
    arrays, with JSON encoded again (once or twice) or text of another shape on the way."""
    node: Any = draw(st.sampled_from([secret, {"v": secret}, [secret, 1]]))
    node = {name: node, "kept": "shown"}
    for _ in range(draw(st.integers(0, 3))):
        match draw(st.sampled_from(["object", "array", "json", "json-twice", "text"])):
            case "object":
                node = {draw(st.sampled_from(["x", "emails", "data"])): node}
            case "array":
                node = [node, None]
            case "json":
                node = {"inner": json.dumps(node, indent=draw(st.none() | st.just(1)))}
            case "json-twice":
                node = {"inner": json.dumps(json.dumps(node))}
            case _:
                shape = draw(st.sampled_from(["repr", "form", "yaml"]))
                text = {
                    "repr": repr({name: secret}),
                    "form": f"{name}={secret}&n=1",
                    "yaml": f"n: 1\n{name}: {secret}\n",
                }[shape]
                node = {"note": text}
    return node


@st.composite
def along(draw: st.DrawFn, steps: list[str], secret: str) -> Any:
    """A payload's `data` holding `secret` at the masked path `steps` from its root: an
    array or JSON encoded again (once or twice) at any member on the way."""
    node: Any = draw(st.sampled_from([secret, {"v": secret}, [secret, 1]]))
    for step in reversed(steps):
        node = {step: node, "kept": "shown"}
        match draw(st.sampled_from(["as is", "array", "json", "json-twice"])):
            case "array":
                node = [node, {"other": 1}]
            case "json":
                node = json.dumps(node, indent=draw(st.none() | st.just(1)))
            case "json-twice":
                node = json.dumps(json.dumps(node))
    return node


# The mask settings drawn from, each served by one app for every example of it (an app
# for each example would spend most of the test starting apps). A setting's first
# field is where its examples' values are; a mode after its ':'.
MASKS = [
    (("email",), ()),
    (("card", "é"), ("client-ip",)),
    (("email", "card", "é"), ("client-ip", "recordline-producer")),
    (("é",), ("recordline-producer",)),
    (("customer.email:hash", "card:last2"), ("client-ip:hash", "recordline-producer:hash")),
    (("card:first3", "order.customer.é:last2"), ("client-ip:last2",)),
]


@dataclass(frozen=True)
class Example:
    masks: int  # which of MASKS
    number: int  # its own: in its value, its message's id and its record's
    secret: str
    raw: bytes
    attributes: dict[str, str]


@st.composite
def examples(draw: st.DrawFn) -> Example:
    """Mask settings, the example's masked value, a payload's bytes and attributes."""
    masks = draw(st.integers(0, len(MASKS) - 1))
    fields, attributes = MASKS[masks]
    number = next(_examples)
    secret = f"zq{number}" + draw(st.text(_CHARS, min_size=1, max_size=12))
    field, _, _ = draw(st.sampled_from(fields)).partition(":")
    steps = field.split(".")
    name = steps[-1]
    body = draw(holding(name, secret) if len(steps) == 1 else along(steps, secret))
    shape = draw(st.sampled_from(["record", "no id", "json string", "repr"]))
    payload: dict[str, Any] = {"data": body}
    if shape != "no id":
        payload["id"] = f"r-{number}"
    text = json.dumps(payload, ensure_ascii=draw(st.booleans()))
    if draw(st.booleans()):
        # The masked member's key spelled with escapes: the same key to a decoder.
        text = text.replace(json.dumps(name), key(name, True))
    raw = {
        "record": text.encode(),
        "no id": text.encode(),
        "json string": json.dumps(text).encode(),  # the whole payload encoded twice
        "repr": repr(payload).encode(),
    }[shape]
    sent = {"region": "eu-west"}
    named = {attribute.partition(":")[0] for attribute in attributes}
    if "client-ip" in named:
        sent["client-ip"] = secret
    if "recordline-producer" in named and draw(st.booleans()):
        sent |= {
            "recordline-producer": secret,
            "recordline-epoch": "0",
            "recordline-seq": draw(st.sampled_from(["0", "2", "-1"])),
        }
    return Example(masks, number, secret, raw, sent)


def served(client: TestClient[Any], headers: dict[str, str], number: int) -> str:
    """Every surface a caller reads, as text; rejections' payloads decoded beside."""
    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    texts = []
    for path, params in (
        ("/v1/records", {"limit": "1000"}),
        (f"/v1/records/r-{number}", {}),
        (f"/v1/messages/m-{number}", {}),
        ("/v1/rejections", {"limit": "1000"}),
        ("/v1/streams/records", {"offset": "-1"}),
        ("/v1/streams/rejections", {"offset": "-1"}),
        ("/v1/export/records", {}),
        ("/v1/export/records", {"format": "jsonl"}),
        ("/v1/export/records", {"columns": "data,attributes,data.data,data.email"}),
        ("/v1/export/rejections", {}),
        ("/v1/export/rejections", {"format": "jsonl"}),
        ("/v1/producers", {"limit": "1000"}),
        ("/v1/audit", {"since": since}),
        ("/metrics", {}),
        ("/v1/records", {"field": "data.email:x"}),
        ("/v1/records", {"attribute": "client-ip:x"}),
        ("/v1/producers/zq", {}),
    ):
        answer = client.get(path, params=params, headers=headers)
        assert answer.status_code < 500, (path, answer.text)
        texts.append(answer.text)
        if path == "/v1/rejections":
            rows = answer.json()["rejections"]
        elif path == "/v1/export/rejections":
            if params.get("format") == "jsonl":
                rows = [json.loads(line) for line in answer.text.splitlines()]
            else:
                rows = list(csv.DictReader(io.StringIO(answer.text)))
        else:
            continue
        for row in rows:
            texts.append(base64.b64decode(row["data"].lstrip("'")).decode("utf-8", "replace"))
    return "\n".join(texts)


@pytest.fixture(scope="module")
def clients() -> Iterator[list[TestClient[Any]]]:
    """A client of an app for each of MASKS."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(pytest.MonkeyPatch.context()).setattr(follow, "HEARTBEAT_SECONDS", 0.05)
        yield [
            stack.enter_context(
                TestClient(
                    create_app(
                        app_settings(
                            RECORDLINE_PUSH_TOKEN=SECRET,
                            RECORDLINE_STREAM_SECONDS="0.05",
                            OTEL_METRICS_EXPORTER="prometheus",
                            RECORDLINE_MASK_FIELDS=",".join(fields),
                            RECORDLINE_MASK_ATTRIBUTES=",".join(attributes),
                        )
                    )
                )
            )
            for fields, attributes in MASKS
        ]


@pytest.mark.slow
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(example=examples())
def test_no_masked_value_reaches_a_reader_through_any_surface(
    clients: list[TestClient[Any]], example: Example
) -> None:
    client = clients[example.masks]
    pushed = client.post(
        "/pubsub/push",
        params={"token": SECRET},
        json=envelope(
            None,
            message_id=f"m-{example.number}",
            attributes=example.attributes,
            raw_data=example.raw,
        ),
    )
    assert pushed.status_code == 204, pushed.text
    reader = served(client, {}, example.number)
    operator = served(client, OPERATOR, example.number)
    secret = example.secret
    # The value was stored and is served: an operator sees it.
    assert any(form in operator for form in forms(secret)), example
    leaked = [form for form in forms(secret) if form in reader]
    assert not leaked, (leaked, example)
