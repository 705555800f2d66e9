"""No filter a client sends makes a read answer 5xx: each is kept (200, every row it
returns matching it) or refused (400, a problem document naming the parameter)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.asgi import create_app
from app.store.duckdb.store import DuckDBStore
from tests.conftest import served_in_thread
from tests.conftest import settings as app_settings
from tests.fuzz.budget import EXAMPLES

KEYS = ["colour", "recordline-producer", "a.b", "k it", "clé", "", ":", '"', "\\"]
keys = st.sampled_from(KEYS) | st.text(max_size=12)
values = st.sampled_from(["red", "p0", "", "x:y", "☃"]) | st.text(max_size=12)
attribute = st.one_of(
    st.builds(lambda k, v: f"{k}:{v}", keys, values),
    st.text(max_size=30),
    st.builds(lambda n: "k" * n + ":v", st.integers(250, 260)),
    st.builds(lambda n: "k:" + "v" * n, st.integers(1020, 1030)),
)
field = st.one_of(
    st.builds(
        lambda path, v: f"{path}:{v}",
        st.sampled_from(["amount", "customer.email", "a..b", "1x", "_", "a" * 301]),
        values,
    ),
    st.text(max_size=30),
)
ids = st.sampled_from(["r-1", "m-001", "", "x" * 1025]) | st.text(max_size=20)
filters = st.fixed_dictionaries(
    {},
    optional={
        "attribute": st.lists(attribute, max_size=10),
        "producer": ids,
        "record_id": ids,
        "message_id": ids,
        "field": st.lists(field, max_size=3),
        "limit": st.integers(1, 5),
    },
)
PATHS = ["/v1/records", "/v1/rejections", "/v1/streams/records", "/v1/streams/rejections"]


def push_body(n: int) -> dict[str, Any]:
    payload = {"id": f"r-{n % 3}", "data": n} if n % 4 else {"no": "id"}
    return {
        "message": {
            "data": base64.b64encode(json.dumps(payload).encode()).decode(),
            "messageId": f"m-{n:03}",
            "publishTime": "2024-04-27T12:00:01Z",
            "attributes": {
                "recordline-producer": f"p{n % 2}",
                "recordline-epoch": "0",
                "recordline-seq": str(n // 2),
                "colour": ["red", "green"][n % 2],
                "a.b": "x:y" if n % 3 else "☃",
            },
        },
        "subscription": "projects/p/subscriptions/s",
    }


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with served_in_thread(create_app(app_settings())) as client:
        for n in range(12):
            assert client.post("/pubsub/push", json=push_body(n)).status_code == 204
        yield client


def matches(row: dict[str, Any], params: dict[str, Any]) -> bool:
    attributes = row["attributes"]
    wanted = [text.partition(":") for text in params.get("attribute", [])]
    if "producer" in params:
        wanted.append(("recordline-producer", ":", params["producer"]))
    return (
        all(attributes.get(key) == value for key, _, value in wanted)
        and params.get("record_id", row.get("id")) == row.get("id")
        and params.get("message_id", row["message_id"]) == row["message_id"]
    )


@pytest.mark.slow
@settings(
    max_examples=EXAMPLES * 4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(path=st.sampled_from(PATHS), params=filters)
def test_a_filter_is_kept_or_refused_never_a_5xx(
    client: httpx.Client, path: str, params: dict[str, Any]
) -> None:
    if path.startswith("/v1/streams"):
        params = {k: v for k, v in params.items() if k != "limit"} | {"offset": "-1"}
    answer = client.get(path, params=params)
    assert answer.status_code in (200, 400), answer.text
    if answer.status_code == 400:
        assert answer.headers["content-type"].startswith("application/problem+json")
        problem = answer.json()
        assert problem["parameter"] in {*params, "attribute", "field"}, problem
        return
    body = answer.json()
    rows = body if isinstance(body, list) else body.get("records", body.get("rejections"))
    assert all(matches(row, params) for row in rows), (params, rows)


columns = st.lists(
    st.sampled_from(["id", "message_id", "data", "data.n", "attributes.colour", "reason", ""])
    | st.text(max_size=15),
    max_size=40,
).map(",".join)
exports = st.fixed_dictionaries(
    {},
    optional={
        "format": st.sampled_from(["csv", "jsonl", "xml", ""]) | st.text(max_size=5),
        "columns": columns,
        "max_rows": st.integers(-2, 1_000_002) | st.text(max_size=8),
        "attribute": st.lists(attribute, max_size=3),
        "producer": ids,
        "since": st.sampled_from(["1h", "2999-01-01T00:00:00Z", "0000-00-00T00:00:00Z", "x"]),
        "page_token": st.text(max_size=30),
    },
)


@pytest.mark.slow
@settings(
    max_examples=EXAMPLES * 4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(name=st.sampled_from(["records", "rejections", "neither"]), params=exports)
def test_an_export_s_parameters_are_kept_or_refused_never_a_5xx(
    client: httpx.Client, name: str, params: dict[str, Any]
) -> None:
    answer = client.get(f"/v1/export/{name}", params=params)
    assert answer.status_code in (200, 400, 404), answer.text
    if answer.status_code != 200:
        assert answer.headers["content-type"].startswith("application/problem+json")
        return
    if params.get("format", "csv") == "jsonl":
        for line in answer.text.splitlines():
            row = json.loads(line)
            assert "recordline_export" in row or matches(row, params) or "columns" in params


# What JSONPath, JSON pointer or SQL may read as more than a character of a name.
# (A key holds no `:`, which ends it in `attribute=KEY:VALUE`.)
SPECIAL = "*?$@.[]()'/~%_-,;!&|=<>{}# é☃"
special_keys = st.text(alphabet=SPECIAL + "ab", min_size=1, max_size=6)


@pytest.fixture(scope="module")
def duckdb_client() -> Iterator[httpx.Client]:
    with served_in_thread(create_app(app_settings(), store=DuckDBStore(":memory:"))) as client:
        yield client


@pytest.mark.slow
@settings(
    max_examples=EXAMPLES * 2,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(key=st.sampled_from(["*", "**", "$", "a.*", "[*]", "/", "~0"]) | special_keys)
def test_an_attribute_key_is_asked_for_as_it_is_on_duckdb(
    duckdb_client: httpx.Client, key: str
) -> None:
    # The key is a name, however a JSONPath would read it: only its own row is kept.
    message_id = f"k-{key.encode().hex()}"
    body = push_body(1)
    body["message"]["messageId"] = message_id
    body["message"]["attributes"] = {key: message_id, "other": "x"}
    assert duckdb_client.post("/pubsub/push", json=body).status_code == 204
    for path in ("/v1/records", "/v1/streams/records"):
        params = {"attribute": f"{key}:{message_id}"}
        if path.startswith("/v1/streams"):
            params["offset"] = "-1"
        answer = duckdb_client.get(path, params=params)
        assert answer.status_code == 200, answer.text
        body_read = answer.json()
        rows = body_read if isinstance(body_read, list) else body_read["records"]
        assert [row["message_id"] for row in rows] == [message_id]
