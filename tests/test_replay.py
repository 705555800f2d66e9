"""Replaying rejections through today's validation: once, under the original message id."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import httpx
import msgspec
import pytest
from litestar.testing import AsyncTestClient

from app.asgi import create_app
from app.cli import main
from app.commands.replay import ReplayError, Service, replay_dead_letters, replay_rejected
from app.errors import QueryTooCostly, StoreUnavailable
from app.ingest.replay import MAX_REPLAY_MESSAGES
from app.records import Rejection
from app.settings import Settings
from app.store import MessageState, MessageStatus
from app.store.duckdb.store import DuckDBStore
from tests.auth.conftest import google  # noqa: F401 - the fake Google, as a fixture
from tests.auth.fake_google import READ_AUDIENCE, FakeGoogle
from tests.conftest import served, settings
from tests.fakes import FaultyStore


def quiet(line: str) -> None:
    """What a replay says of a message it could not send: unheard here."""


PUBLISHED = 1_714_219_201_000_000  # 2024-04-27T12:00:01Z
SUBSCRIPTION = "projects/p/subscriptions/orders-push"
OPERATOR = "oncall@example.org"
ANALYST = "analyst@example.org"


def rejection(message_id: str, payload: bytes, *, reason: str, ingest_time: int) -> Rejection:
    return Rejection(
        message_id=message_id,
        publish_time=PUBLISHED,
        ingest_time=ingest_time,
        data=payload,
        reason=reason,
        attributes='{"origin":"replay-test"}',
        subscription=SUBSCRIPTION,
    )


class RejectedStore(DuckDBStore):
    """Two rejections made by a validation bug since fixed, and one still invalid,
    stored through the store protocol as the service starts."""

    async def start(self) -> None:
        await super().start()
        now = 1_700_000_000_000_000
        await self.append(
            [
                # Valid today: the old rules wrongly refused a numeric `data`.
                rejection("m-fixed-1", b'{"id": "r1", "data": 42}', reason="bug", ingest_time=now),
                rejection("m-fixed-2", b'{"id": "r2", "data": [1]}', reason="bug", ingest_time=now),
                rejection("m-bad", b"{not json", reason="payload is not JSON", ingest_time=now + 1),
            ]
        )


@pytest.fixture
def rejected_store() -> DuckDBStore:
    return RejectedStore(":memory:")


def run_replay(url: str, **options: Any) -> Counter[str]:
    arguments: dict[str, Any] = {
        "since": None,
        "until": None,
        "reason_contains": None,
        "dry_run": False,
        **options,
    }
    token = arguments.pop("token", None)
    service = Service(url, token=token, note=arguments.pop("note", None))
    try:
        return replay_rejected(service, say=quiet, **arguments)
    finally:
        service.close()


async def test_a_fixed_rejection_becomes_one_record_under_its_original_id(
    rejected_store: DuckDBStore,
) -> None:
    app = create_app(settings(), store=rejected_store)
    async with served(app) as http:
        url = str(http.base_url).rstrip("/")
        dry = await asyncio.to_thread(run_replay, url, dry_run=True)
        assert dry == Counter({"stored": 2, "rejected": 1})
        assert (await http.get("/v1/messages/m-fixed-1")).json()["status"] == "rejected"

        first = await asyncio.to_thread(run_replay, url)
        assert first == Counter({"stored": 2, "rejected": 1})
        stored = (await http.get("/v1/messages/m-fixed-1")).json()
        assert stored["status"] == "stored"
        record = stored["record"]
        assert record["id"] == "r1"
        assert record["data"] == 42
        assert record["publish_time"] == "2024-04-27T12:00:01Z"
        assert record["attributes"] == {"origin": "replay-test"}
        # The subscription that first delivered it, not the replay's lack of one.
        assert record["subscription"] == SUBSCRIPTION
        still = (await http.get("/v1/messages/m-bad")).json()
        assert still["status"] == "rejected"

        second = await asyncio.to_thread(run_replay, url)
        assert second == Counter({"already_stored": 2, "rejected": 1})
        # Followers see each replayed record once; the rejections stay as they were.
        page = (await http.get("/v1/records", params={"since": "2023-01-01T00:00:00Z"})).json()
        assert sorted(r["message_id"] for r in page["records"]) == ["m-fixed-1", "m-fixed-2"]
        rejections = (
            await http.get("/v1/rejections", params={"since": "2023-01-01T00:00:00Z"})
        ).json()["rejections"]
        assert len(rejections) == 3


async def test_the_cli_s_note_is_kept_with_what_each_message_became(
    rejected_store: DuckDBStore, caplog: pytest.LogCaptureFixture
) -> None:
    """`recordline replay --note`: each request carries it, and its access line keeps it
    beside the messages' outcomes; a note past its bound is refused before anything is
    sent (exit 2, saying why)."""
    note = "the numeric data bug fixed in 4.2"
    async with served(create_app(settings(), store=rejected_store)) as http:
        url = str(http.base_url).rstrip("/")
        with caplog.at_level(logging.INFO, "recordline.access"):
            counts = await asyncio.to_thread(run_replay, url, note=note)
        lines = [r.fields["access"] for r in caplog.records if r.name == "recordline.access"]  # type: ignore[attr-defined]
    assert counts == Counter({"stored": 2, "rejected": 1})
    (line,) = [line for line in lines if line["action"] == "replay"]
    assert line["note"] == note
    assert sorted(line["messages"]) == [
        ["m-bad", "rejected"],
        ["m-fixed-1", "stored"],
        ["m-fixed-2", "stored"],
    ]
    with pytest.raises(SystemExit) as exited:
        main(["replay", "rejected", "--url", "http://127.0.0.1:9", "--note", "x" * 501])
    assert exited.value.code == 2


async def test_a_replay_says_what_an_edit_changed_and_the_access_record_keeps_it(
    rejected_store: DuckDBStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Each message replayed in place of a rejection is compared with it as kept: the
    answer and the access line say the paths an edit changed (none for one sent as it
    came); a message with no rejection to compare (a dead letter) says nothing."""

    def sent(message_id: str, payload: bytes, **fields: Any) -> dict[str, Any]:
        return {
            "message_id": message_id,
            "publish_time": "2024-04-27T12:00:01Z",
            "data": base64.b64encode(payload).decode(),
            "attributes": {"origin": "replay-test"},
            "subscription": SUBSCRIPTION,
            **fields,
        }

    messages = [
        sent(
            "m-fixed-1",
            b'{"id": "r1", "data": 43, "fixed": true}',
            attributes={"origin": "replay-test", "by": "oncall"},
        ),
        sent("m-fixed-2", b'{"id": "r2",\n "data": [1]}'),  # the same JSON, spaced
        sent("m-bad", b'{"id": "r3", "data": 1}', publish_time="2024-04-27T12:00:02Z"),
        sent("m-dead-letter", b'{"id": "r4", "data": 1}'),
    ]
    async with served(create_app(settings(), store=rejected_store)) as http:
        with caplog.at_level(logging.INFO, "recordline.access"):
            answered = await http.post("/v1/replay", json={"messages": messages, "note": "fix"})
        lines = [r.fields["access"] for r in caplog.records if r.name == "recordline.access"]  # type: ignore[attr-defined]
    assert answered.status_code == 200, answered.text
    changed = {r["message_id"]: r.get("changed") for r in answered.json()["results"]}
    assert changed == {
        "m-fixed-1": ["data.data", "data.fixed (added)", "attributes.by (added)"],
        "m-fixed-2": [],
        "m-bad": ["data (text)", "publish_time"],
        "m-dead-letter": None,
    }
    (line,) = [line for line in lines if line["action"] == "replay"]
    assert line["changed"] == [[m, paths] for m, paths in changed.items() if paths is not None]


@pytest.mark.parametrize(
    ("before", "after", "said"),
    [
        # A member a mask hides is said whole: the names inside it may be data.
        (
            {"customer": {"alice@example.org": 1}, "n": 1},
            {"customer": {"bob@example.org": 1}, "n": 2},
            ["data.customer", "data.n"],
        ),
        ({"order": {"card": {"4111": "x"}, "total": 1}}, {"order": {"card": {}}}, None),
        ({"items": [{"customer": {"a": 1}}]}, {"items": [{"customer": {"b": 1}}]}, None),
        # Unchanged whole, in another order; `true` is not 1, nor 1.0 1.
        ({"customer": {"a": 1, "b": 2}}, {"customer": {"b": 2, "a": 1}}, []),
        ({"customer": {"a": 1}}, {"customer": {"a": True}}, ["data.customer"]),
        ({"flag": 1, "n": 1}, {"flag": True, "n": 1.0}, ["data.flag", "data.n"]),
    ],
)
def test_what_an_edit_changed_never_names_inside_what_a_mask_hides(
    before: dict[str, Any], after: dict[str, Any], said: list[str] | None
) -> None:
    from app.ingest.envelope import PushedMessage
    from app.ingest.replay import changes
    from app.query.mask import Mask

    mask = Mask(["customer", "order.card"])
    original = rejection("m-1", json.dumps(before).encode(), reason="r", ingest_time=1)
    edited = PushedMessage(
        message_id="m-1",
        publish_time=original.publish_time,
        data=json.dumps(after).encode(),
        raw_data=b"",
        attributes={"origin": "replay-test"},
        subscription=original.subscription,
    )
    found = changes(original, edited, mask.hides)
    if said is not None:
        assert found == said
    # No name a mask hides the inside of is ever said, whatever the edit.
    assert not any(name in path for path in found for name in ("@", "4111", "[0].customer."))
    unmasked = changes(original, edited)
    assert len(unmasked) >= len(found)


async def test_what_an_edit_changed_stops_at_a_masked_member_in_the_access_record(
    rejected_store: DuckDBStore, caplog: pytest.LogCaptureFixture
) -> None:
    edited = {
        "message_id": "m-fixed-2",
        "publish_time": "2024-04-27T12:00:01Z",
        "data": base64.b64encode(b'{"id": "r2", "data": [2, 3]}').decode(),
        "attributes": {"origin": "replay-test"},
        "subscription": SUBSCRIPTION,
    }
    app = create_app(settings(RECORDLINE_MASK_FIELDS="data"), store=rejected_store)
    async with served(app) as http:
        with caplog.at_level(logging.INFO, "recordline.access"):
            answered = await http.post("/v1/replay", json={"messages": [edited]})
        lines = [r.fields["access"] for r in caplog.records if r.name == "recordline.access"]  # type: ignore[attr-defined]
    assert answered.status_code == 200, answered.text
    # Unmasked it would say data.data[0] and data.data[1] (added).
    assert answered.json()["results"][0]["changed"] == ["data.data"]
    (line,) = [line for line in lines if line["action"] == "replay"]
    assert line["changed"] == [["m-fixed-2", ["data.data"]]]


class EnvelopedStore(DuckDBStore):
    """A rejection of the contract's shape, its record's data a member of the payload."""

    async def start(self) -> None:
        await super().start()
        payload = b'{"id": "r9", "data": {"customer": {"email": {"alice@example.org": 1}}}}'
        await self.append([rejection("m-env", payload, reason="bug", ingest_time=1)])


async def test_what_an_edit_changed_hides_a_masked_path_wherever_the_payload_holds_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A masked path names members of a record's data, which the contract's payload holds
    as its `data`: a rejection is shown with the path masked wherever it starts, and what
    an edit of it changed says the masked member whole, never the names inside it."""
    payload = b'{"id": "r9", "data": {"customer": {"email": {"bob@example.org": 1}}}}'
    edited = {
        "message_id": "m-env",
        "publish_time": "2024-04-27T12:00:01Z",
        "data": base64.b64encode(payload).decode(),
        "attributes": {"origin": "replay-test"},
        "subscription": SUBSCRIPTION,
    }
    app = create_app(
        settings(RECORDLINE_MASK_FIELDS="customer.email"), store=EnvelopedStore(":memory:")
    )
    async with served(app) as http:
        with caplog.at_level(logging.INFO, "recordline.access"):
            answered = await http.post("/v1/replay", json={"messages": [edited], "dry_run": True})
        lines = [r.fields["access"] for r in caplog.records if r.name == "recordline.access"]  # type: ignore[attr-defined]
    assert answered.status_code == 200, answered.text
    assert answered.json()["results"][0]["changed"] == ["data.data.customer.email"]
    (line,) = [line for line in lines if line["action"] == "replay"]
    assert "example.org" not in json.dumps(line)


def test_what_an_edit_changed_is_said_however_deep_the_payload() -> None:
    from app.ingest.envelope import PushedMessage
    from app.ingest.replay import changes

    for depth, path in [(5_000, "data (text)"), (500, "data" + "[0]" * 84 + "…")]:
        deep = b"[" * depth + b"1" + b"]" * depth
        original = rejection("m-1", deep, reason="r", ingest_time=1)
        edited = PushedMessage(
            message_id="m-1",
            publish_time=original.publish_time,
            data=deep.replace(b"1", b"2"),
            raw_data=b"",
            attributes={"origin": "replay-test"},
            subscription=original.subscription,
        )
        # Past what JSON is read to, text; a path cut as the access record cuts one.
        assert changes(original, edited) == [path]


@pytest.mark.parametrize(
    ("before", "after", "said"),
    [
        # Numbers a float cannot tell apart are stored as sent: an edit of one is said.
        (b'{"amount": 1234567890.123456789}', b'{"amount": 1234567890.123456780}', ["data.amount"]),
        (b'{"ratio": 0.1}', b'{"ratio": 0.10000000000000001}', ["data.ratio"]),
        (b'{"big": 1e400, "n": 1}', b'{"big": 2e400, "n": 1}', ["data.big"]),
        # The same number spelt otherwise, or spaced otherwise, is no change.
        (b'{"ratio": 2.5e-3, "n": [1]}', b'{"ratio": 0.0025, "n": [ 1 ]}', []),
    ],
)
def test_what_an_edit_changed_tells_numbers_apart_as_their_text_does(
    before: bytes, after: bytes, said: list[str]
) -> None:
    from app.ingest.envelope import PushedMessage
    from app.ingest.replay import changes

    original = rejection("m-1", before, reason="r", ingest_time=1)
    edited = PushedMessage(
        message_id="m-1",
        publish_time=original.publish_time,
        data=after,
        raw_data=b"",
        attributes={"origin": "replay-test"},
        subscription=original.subscription,
    )
    assert changes(original, edited) == said


def test_what_an_edit_changed_costs_what_the_rejection_holds_not_the_edit() -> None:
    """An edit far larger than its rejection (an array or object of a million members
    where the rejection held one) is compared only as far as the changes said: its
    added members are not each named before the first twenty are said."""
    import tracemalloc

    from app.ingest.envelope import PushedMessage
    from app.ingest.replay import MOST_CHANGES, changes

    wide = [
        (b"[0]", b"[" + b"0," * 999_999 + b"0]", "data[1] (added)"),
        (b"{}", b"{" + b",".join(b'"k%d":0' % n for n in range(300_000)) + b"}", "data.k0 (added)"),
    ]
    for before, after, first in wide:
        original = rejection("m-1", before, reason="r", ingest_time=1)
        edited = PushedMessage(
            message_id="m-1",
            publish_time=original.publish_time,
            data=after,
            raw_data=b"",
            attributes={"origin": "replay-test"},
            subscription=original.subscription,
        )
        tracemalloc.start()
        try:
            found = changes(original, edited)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert found[0] == first
        assert len(found) == MOST_CHANGES + 1
        # The edit decoded is ~8 MB (a list of a million) or ~30 MB (a dict of 300,000
        # members); naming each member too held ten times that.
        assert peak < 3 * len(after) + 40 * 2**20, peak


def test_a_replay_s_access_line_holds_what_its_edits_changed_within_a_bound() -> None:
    from app.ingest.replay import MOST_CHANGES, MOST_PATH_CHARACTERS, ReplayResult
    from app.routes.ingest import MOST_CHANGED_CHARACTERS, changed_within

    widest = ["d" * MOST_PATH_CHARACTERS + "…"] * MOST_CHANGES + ["…"]
    results = [
        ReplayResult(message_id=f"m-{n}", outcome="stored", changed=widest) for n in range(100)
    ]
    results += [
        ReplayResult(message_id="m-same", outcome="stored", changed=[]),
        ReplayResult(message_id="m-dead", outcome="stored"),  # none kept to compare
    ]
    said = changed_within(results)
    assert [m for m, _ in said] == [*(f"m-{n}" for n in range(100)), "m-same"]
    held = sum(len(p) for _, paths in said for p in paths)
    assert held <= MOST_CHANGED_CHARACTERS + 100
    assert said[0][1] == widest
    assert said[-2][1] == ["…"]
    assert said[-1][1] == []


async def test_only_rejections_whose_reason_matches_are_replayed(
    rejected_store: DuckDBStore,
) -> None:
    app = create_app(settings(), store=rejected_store)
    async with served(app) as http:
        url = str(http.base_url).rstrip("/")
        counts = await asyncio.to_thread(run_replay, url, reason_contains="not JSON")
        assert counts == Counter({"rejected": 1})
        assert (await http.get("/v1/messages/m-fixed-1")).json()["status"] == "rejected"


@pytest.mark.slow
async def test_a_replayed_record_joins_the_followers_stream_at_the_moment_of_replay(
    rejected_store: DuckDBStore,
) -> None:
    app = create_app(settings(), store=rejected_store)
    async with served(app) as http:
        url = str(http.base_url).rstrip("/")
        before = (await http.get("/v1/records")).json()
        assert before["records"] == []
        await asyncio.to_thread(run_replay, url)
        # A follower that started before the replay reads on from its token.
        after = await http.get("/v1/records", params={"page_token": before["next_page_token"]})
        assert sorted(r["message_id"] for r in after.json()["records"]) == [
            "m-fixed-1",
            "m-fixed-2",
        ]


async def test_bad_replays_get_clear_errors_and_store_nothing(rejected_store: DuckDBStore) -> None:
    app = create_app(settings(), store=rejected_store)
    async with served(app) as http:
        url = str(http.base_url).rstrip("/")
        with pytest.raises(ReplayError, match="400"):
            await asyncio.to_thread(run_replay, url, since="yesterday")
        bad = {"messages": [{"message_id": "x", "publish_time": "noon", "data": "e30="}]}
        refused = await http.post("/v1/replay", json=bad)
        assert refused.status_code == 400
        # A body's field, named as one: not a query parameter.
        assert refused.json()["type"] == "/problems/invalid-body"
        assert refused.json()["field"] == "messages[0].publish_time"
        assert "parameter" not in refused.json()
        too_many = {
            "messages": [
                {"message_id": f"m{n}", "publish_time": "2024-04-27T12:00:01Z", "data": "e30="}
                for n in range(101)
            ]
        }
        assert (await http.post("/v1/replay", json=too_many)).status_code == 400
        # Attributes are held to what Pub/Sub delivers, as on a push: 100 at most, keys
        # of 256 characters, values of 1,024.
        for attributes in (
            {f"k{n}": "v" for n in range(101)},
            {"k" * 257: "v"},
            {"k": "v" * 1025},
        ):
            message = {"message_id": "m-attrs", "publish_time": "2024-04-27T12:00:01Z"}
            oversized = {"messages": [{**message, "data": "e30=", "attributes": attributes}]}
            refused = await http.post("/v1/replay", json=oversized)
            assert refused.status_code == 400, refused.text
            assert "attributes" in refused.json()["detail"]
        assert (await http.get("/v1/messages/m-attrs")).status_code == 404
        # Data that is not base64, not even ASCII: a rejection, as on a push.
        odd = {
            "messages": [
                {"message_id": "m-odd", "publish_time": "2024-04-27T12:00:01Z", "data": "é"}
            ]
        }
        answer = await http.post("/v1/replay", json=odd)
        assert answer.status_code == 200
        assert answer.json()["results"][0]["outcome"] == "rejected"
        assert (await http.get("/v1/messages/m-odd")).json()["reason"].startswith("message.data")
        assert (await http.get("/v1/messages/m-fixed-1")).json()["status"] == "rejected"
    with pytest.raises(ReplayError, match="cannot reach"):
        await asyncio.to_thread(run_replay, "http://127.0.0.1:9")


REPLAY = {"messages": [{"message_id": "m", "publish_time": "2024-04-27T12:00:01Z", "data": ""}]}
PUSH_SECRET = "a-long-enough-push-secret"


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_where_pushes_carry_the_shared_secret_replay_needs_it_too(host: str) -> None:
    # On loopback too: a same-host proxy must not turn replay into an unauthenticated write.
    app = create_app(
        Settings.load(
            {
                "RECORDLINE_STORE": "memory:",
                "RECORDLINE_HOST": host,
                "RECORDLINE_PUSH_TOKEN": PUSH_SECRET,
                "RECORDLINE_PUBLIC_READS": "true",
                "RECORDLINE_PAGE_TOKEN_SECRET": "a-long-enough-page-secret",
            }
        )
    )
    from litestar.testing import TestClient

    with TestClient(app) as client:
        for headers in ({}, {"Authorization": "Bearer not-the-push-secret"}):
            refused = client.post("/v1/replay", json=REPLAY, headers=headers)
            assert refused.status_code == 401
            assert "RECORDLINE_PUSH_TOKEN" in refused.json()["detail"]
            assert client.get("/v1/messages/m").status_code == 404
        secret = {"Authorization": f"Bearer {PUSH_SECRET}"}
        assert client.post("/v1/replay", json=REPLAY, headers=secret).status_code == 200
        assert client.get("/v1/messages/m").status_code == 200


@pytest.mark.slow
def test_replay_is_refused_without_operators_where_pushes_are_google_signed() -> None:
    app = create_app(
        Settings.load(
            {
                "RECORDLINE_STORE": "memory:",
                "RECORDLINE_PUSH_AUDIENCE": "https://recordline.example.com/pubsub/push",
                "RECORDLINE_PUSH_SERVICE_ACCOUNTS": "push@demo.iam.gserviceaccount.com",
            }
        )
    )
    from litestar.testing import TestClient

    with TestClient(app) as client:
        response = client.post("/v1/replay", json=REPLAY)
        assert client.get("/v1/messages/m").status_code == 404
    assert response.status_code == 403
    assert "RECORDLINE_OPERATOR_PRINCIPALS" in response.json()["detail"]


async def test_only_operators_replay_and_operators_may_read(google: FakeGoogle) -> None:  # noqa: F811
    app = create_app(
        Settings.load(
            {
                "RECORDLINE_STORE": "memory:",
                "RECORDLINE_PUSH_TOKEN": "a-long-enough-push-secret",
                "RECORDLINE_READ_AUDIENCE": READ_AUDIENCE,
                "RECORDLINE_READ_PRINCIPALS": ANALYST,
                "RECORDLINE_OPERATOR_PRINCIPALS": OPERATOR,
                "RECORDLINE_OIDC_CERTS_URL": google.certs_url,
            }
        )
    )
    payload = base64.b64encode(json.dumps({"id": "r"}).encode()).decode()
    body = {
        "messages": [
            {"message_id": "m-op", "publish_time": "2024-04-27T12:00:01Z", "data": payload}
        ]
    }
    operator = {"Authorization": f"Bearer {google.mint(aud=READ_AUDIENCE, email=OPERATOR)}"}
    analyst = {"Authorization": f"Bearer {google.mint(aud=READ_AUDIENCE, email=ANALYST)}"}
    async with AsyncTestClient(app) as client:
        assert (await client.post("/v1/replay", json=body)).status_code == 401
        assert (await client.post("/v1/replay", json=body, headers=analyst)).status_code == 403
        assert (await client.get("/v1/messages/m-op", headers=analyst)).status_code == 404
        answer = await client.post("/v1/replay", json=body, headers=operator)
        assert answer.status_code == 200
        assert answer.json()["results"] == [{"message_id": "m-op", "outcome": "stored"}]
        assert (await client.get("/v1/rejections", headers=operator)).status_code == 200


def test_the_cli_says_when_it_lacks_operator_credentials() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"title": "Unauthorized", "detail": "no bearer token"})

    service = Service("http://recordline.invalid", transport=httpx.MockTransport(answer))
    with pytest.raises(ReplayError, match="operator's token"):
        replay_rejected(
            service,
            since=None,
            until=None,
            reason_contains=None,
            dry_run=False,
            say=quiet,
        )


class SentReplays(httpx.HTTPTransport):
    """The message ids of each replay request the CLI sends."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[list[str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/replay":
            body = json.loads(request.read())
            self.sent.append([m["message_id"] for m in body["messages"]])
        return super().handle_request(request)


async def test_a_rejection_stored_since_says_so_and_is_not_sent_again(
    rejected_store: DuckDBStore,
) -> None:
    async with served(create_app(settings(), store=rejected_store)) as http:
        url = str(http.base_url).rstrip("/")

        async def rejections(**params: Any) -> httpx.Response:
            return await http.get(
                "/v1/rejections", params={"since": "2023-01-01T00:00:00Z", **params}
            )

        def replay() -> tuple[Counter[str], list[list[str]]]:
            transport = SentReplays()
            service = Service(url, transport=transport)
            try:
                counts = replay_rejected(
                    service, since=None, until=None, reason_contains=None, dry_run=False,
                    say=quiet,
                )  # fmt: skip
            finally:
                service.close()
            return counts, transport.sent

        before = (await rejections()).json()["rejections"]
        assert [r["stored"] for r in before] == [False, False, False]
        # A full page of rejections may still change: revalidated, never kept as final.
        full = await rejections(limit=1)
        assert full.headers["cache-control"] == "no-cache"
        assert full.headers["etag"]

        first, sent = await asyncio.to_thread(replay)
        assert first == Counter({"stored": 2, "rejected": 1})
        assert sent == [["m-fixed-1", "m-fixed-2", "m-bad"]]
        after = {r["message_id"]: r for r in (await rejections()).json()["rejections"]}
        assert {m: r["stored"] for m, r in after.items()} == {
            "m-fixed-1": True,
            "m-fixed-2": True,
            "m-bad": False,
        }
        # The rejection and the message's own answer agree.
        for message_id, rejection_row in after.items():
            status = (await http.get(f"/v1/messages/{message_id}")).json()["status"]
            assert status == ("stored" if rejection_row["stored"] else "rejected")
        # The same page answered again, now different: its ETag changed with it.
        assert (await rejections(limit=1)).headers["etag"] != full.headers["etag"]

        second, sent = await asyncio.to_thread(replay)
        assert second == Counter({"already_stored": 2, "rejected": 1})
        assert sent == [["m-bad"]]  # only what may still change


class QueueSubscriber:
    """A pull subscription in memory: pull leases, acknowledge removes, a 0 deadline releases."""

    def __init__(self, payloads: list[bytes]) -> None:
        published = datetime(2024, 4, 27, 12, 0, 1, tzinfo=UTC)
        self.waiting = {
            f"dl-{n}": SimpleNamespace(
                message_id=f"dl-{n}", publish_time=published, attributes={}, data=payload
            )
            for n, payload in enumerate(payloads)
        }
        self.leased: set[str] = set()
        self.acknowledged: list[str] = []

    def pull(self, *, request: dict[str, Any], timeout: float) -> Any:
        free = [m for m in self.waiting if m not in self.leased][: request["max_messages"]]
        self.leased.update(free)
        received = [SimpleNamespace(ack_id=m, message=self.waiting[m]) for m in free]
        return SimpleNamespace(received_messages=received)

    def acknowledge(self, *, request: dict[str, Any]) -> None:
        for ack_id in request["ack_ids"]:
            del self.waiting[ack_id]
            self.leased.discard(ack_id)
            self.acknowledged.append(ack_id)

    def modify_ack_deadline(self, *, request: dict[str, Any]) -> None:
        assert request["ack_deadline_seconds"] == 0
        self.leased.difference_update(request["ack_ids"])


async def test_a_dry_run_counts_every_dead_letter_and_leaves_them_all_waiting(
    rejected_store: DuckDBStore,
) -> None:
    # More than one request's worth, so the dry run must pull past the first batch.
    count = 2 * MAX_REPLAY_MESSAGES + 30
    queue = QueueSubscriber([b'{"id": "ok"}'] * (count - 1) + [b"{not json"])
    async with served(create_app(settings(), store=rejected_store)) as http:
        service = Service(str(http.base_url).rstrip("/"))

        def replay(dry_run: bool) -> Counter[str]:
            return replay_dead_letters(
                service, queue, "projects/p/subscriptions/s",
                limit=None, dry_run=dry_run, say=quiet,
            )  # fmt: skip

        dry = await asyncio.to_thread(replay, True)
        assert dry == Counter({"stored": count - 1, "rejected": 1})
        assert (len(queue.waiting), queue.leased, queue.acknowledged) == (count, set(), [])
        assert (await http.get("/v1/messages/dl-0")).status_code == 404

        real = await asyncio.to_thread(replay, False)
        service.close()
        assert real == dry
        assert (queue.waiting, queue.leased, len(queue.acknowledged)) == ({}, set(), count)


class CountingStore(FaultyStore):
    """Counts the look-ups a replay makes."""

    def __init__(self, inner: DuckDBStore) -> None:
        super().__init__(inner)
        self.lookups: Counter[str] = Counter()

    async def message(self, message_id: str) -> MessageStatus | None:
        self.lookups["message"] += 1
        return await self.inner.message(message_id)

    async def seen(self, message_ids: Sequence[str]) -> dict[str, MessageState]:
        self.lookups["seen"] += 1
        return await self.inner.seen(message_ids)

    async def rejections(self, message_ids: Sequence[str]) -> dict[str, Rejection]:
        self.lookups["rejections"] += 1
        return await self.inner.rejections(message_ids)


class UncomparedStore(FaultyStore):
    """A store whose read of the rejections to compare with fails as `failure` says."""

    def __init__(self, inner: DuckDBStore, failure: Exception) -> None:
        super().__init__(inner)
        self.failure = failure

    async def rejections(self, message_ids: Sequence[str]) -> dict[str, Rejection]:
        raise self.failure


@pytest.mark.parametrize(
    "failure",
    [
        StoreUnavailable("injected: the read timed out"),
        QueryTooCostly("injected: over RECORDLINE_QUERY_MAX_BYTES_BILLED"),
        msgspec.ValidationError("injected: a stored row that does not decode"),
    ],
)
async def test_a_replay_whose_rejections_cannot_be_read_to_compare_is_replayed_uncompared(
    rejected_store: DuckDBStore, failure: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    """What an edit changed is said beside a replay, never in its way: where the read of
    the rejections fails (an outage, the cost cap, a row that does not decode) the
    messages are replayed as before, said uncompared (no `changed`), and the log says why."""
    store = UncomparedStore(rejected_store, failure)
    batch = [replayed("m-fixed-1", b'{"id": "r1", "data": 43}')]
    async with served(create_app(settings(), store=store)) as http:
        with caplog.at_level(logging.WARNING, "recordline.replay"):
            answered = await http.post("/v1/replay", json={"messages": batch})
        assert answered.status_code == 200, answered.text
        assert answered.json()["results"] == [{"message_id": "m-fixed-1", "outcome": "stored"}]
        assert (await http.get("/v1/messages/m-fixed-1")).json()["status"] == "stored"
    said = [r.getMessage() for r in caplog.records if r.name == "recordline.replay"]
    assert any("injected" in line for line in said)


def replayed(message_id: str, payload: bytes) -> dict[str, str]:
    data = base64.b64encode(payload).decode()
    return {"message_id": message_id, "publish_time": "2024-04-27T12:00:01Z", "data": data}


async def test_a_full_batch_costs_one_lookup_and_shares_its_appends(
    rejected_store: DuckDBStore,
) -> None:
    store = CountingStore(rejected_store)
    fresh = [replayed(f"m-new-{n}", b'{"id": "n%d"}' % n) for n in range(95)]
    batch = [
        *fresh,
        replayed("m-fixed-1", b'{"id": "r1", "data": 42}'),  # rejected before, valid now
        replayed("m-bad", b"{not json"),  # rejected before, still invalid
        replayed("m-new-0", b'{"id": "n0"}'),  # the same message twice in one batch
        replayed("m-dup-bad", b"[]"),
        replayed("m-dup-bad", b"[]"),
    ]
    assert len(batch) == MAX_REPLAY_MESSAGES
    async with served(create_app(settings(), store=store)) as http:
        answer = (await http.post("/v1/replay", json={"messages": batch})).json()["results"]
        # And one more for what the rejected ones were, to say what their edits changed.
        assert store.lookups == Counter({"seen": 1, "rejections": 1})
        store.lookups.clear()
        # One group commit takes them all, not one append per message.
        assert sum(store.appends) == 97
        assert len(store.appends) <= 3
        outcomes = [(r["message_id"], r["outcome"]) for r in answer]
        assert outcomes[:95] == [(f"m-new-{n}", "stored") for n in range(95)]
        assert outcomes[95:] == [
            ("m-fixed-1", "stored"),
            ("m-bad", "rejected"),
            ("m-new-0", "already_stored"),
            ("m-dup-bad", "rejected"),
            ("m-dup-bad", "rejected"),
        ]
        page = (await http.get("/v1/records", params={"limit": 1000})).json()["records"]
        assert len(page) == 96
        assert len({r["message_id"] for r in page}) == 96
        rejections = (await http.get("/v1/rejections", params={"limit": 1000})).json()
        assert [r["message_id"] for r in rejections["rejections"]].count("m-dup-bad") == 1
        # A page of rejections costs one look-up too, to say which were stored since.
        assert store.lookups == Counter({"seen": 1})
        store.lookups.clear()

        again = (await http.post("/v1/replay", json={"messages": batch})).json()["results"]
        assert Counter(r["outcome"] for r in again) == Counter(
            {"already_stored": 97, "rejected": 3}
        )
        assert store.lookups == Counter({"seen": 1, "rejections": 1})


async def test_seen_tells_stored_from_rejected_and_a_stored_copy_wins(
    rejected_store: DuckDBStore,
) -> None:
    async with served(create_app(settings(), store=rejected_store)) as http:
        await http.post("/v1/replay", json={"messages": [replayed("m-fixed-1", b'{"id": "r"}')]})
        await rejected_store.barrier()
        assert await rejected_store.seen([]) == {}
        # m-fixed-1 was rejected, then stored by the replay: stored wins.
        assert await rejected_store.seen(["m-fixed-1", "m-bad", "never", "m-fixed-1"]) == {
            "m-fixed-1": "stored",
            "m-bad": "rejected",
        }


BROWSER_WRITES = {
    "a form": {"Content-Type": "application/x-www-form-urlencoded"},
    "text": {"Content-Type": "text/plain"},
    "a multipart form": {"Content-Type": "multipart/form-data; boundary=x"},
    "no type": {},
}
CROSS_SITE = {
    "another site": {"Sec-Fetch-Site": "cross-site"},
    "a sibling site": {"Sec-Fetch-Site": "same-site"},
    "another origin": {"Origin": "http://attacker.example"},
    "an opaque origin": {"Origin": "null"},
}


@pytest.mark.parametrize("kind", list(BROWSER_WRITES))
async def test_a_replay_that_is_not_json_is_refused_and_stores_nothing(kind: str) -> None:
    # What a page of another site may send without asking: a form, text, nothing typed.
    store = DuckDBStore(":memory:")
    async with served(create_app(settings(), store=store)) as client:
        body = json.dumps(REPLAY).encode()
        answer = await client.post("/v1/replay", content=body, headers=BROWSER_WRITES[kind])
        assert answer.status_code == 415, answer.text
        assert answer.json()["type"] == "/problems/unsupported-media-type"
        assert (await client.get("/v1/messages/m")).status_code == 404


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(CROSS_SITE))
@pytest.mark.parametrize("path", ["/v1/replay", "/pubsub/push"])
async def test_a_write_a_browser_sends_for_another_site_is_refused(kind: str, path: str) -> None:
    # On loopback with no authentication, or through a proxy that adds credentials:
    # what the browser says of the page's origin is what refuses it.
    store = DuckDBStore(":memory:")
    async with served(create_app(settings(), store=store)) as client:
        body = REPLAY if path == "/v1/replay" else push_envelope()
        answer = await client.post(path, json=body, headers=CROSS_SITE[kind])
        assert answer.status_code == 403, answer.text
        assert answer.json()["type"] == "/problems/cross-site-request"
        assert (await client.get("/v1/messages/m")).status_code == 404
        # The service's own page (the console), and callers that are no browser, write.
        own = {"Sec-Fetch-Site": "same-origin", "Origin": "http://attacker.example"}
        origin = {"Origin": f"http://{client.base_url.netloc.decode()}"}
        for headers in (own, origin, {}):
            answer = await client.post(path, json=body, headers=headers)
            assert answer.status_code in (200, 204), answer.text


def push_envelope() -> dict[str, Any]:
    data = base64.b64encode(json.dumps({"id": "r", "data": 1}).encode()).decode()
    return {
        "message": {"data": data, "messageId": "m", "publishTime": "2024-04-27T12:00:01Z"},
        "subscription": SUBSCRIPTION,
    }
