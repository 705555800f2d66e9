"""The access record: one line a request on the `recordline.access` log saying who read,
exported, replayed or was refused what, the rows and bytes it was served and whether a
mask showed them; a filter on a masked name kept as its keyed hash, never as sent."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from litestar.testing import TestClient

from app.asgi import create_app
from app.http.access import (
    MOST_CHARACTERS,
    MOST_FOLLOWING,
    MOST_PARAMETERS,
    MOST_PATH,
    AccessRecord,
)
from app.http.head import Recordline
from app.query.mask import PSEUDONYM_PREFIX
from app.query.served import served
from app.settings import Settings
from tests.auth.fake_google import PUSHER, FakeGoogle
from tests.auth.test_export_permission import ANALYST, EXPORTER, OPERATOR, STRANGER, token
from tests.auth.test_export_permission import settings as exporting
from tests.conftest import envelope
from tests.conftest import settings as loaded
from tests.waiting import until

SECRET = "a-push-secret-long-enough"
HIDDEN = "10.9.8.7"


@pytest.fixture(scope="module")
def google() -> Iterator[FakeGoogle]:
    fake = FakeGoogle().start()
    yield fake
    fake.stop()


def settings(google: FakeGoogle, **env: str) -> Settings:
    """The export permission's deployment (tests/auth/test_export_permission.py), with
    exporting a permission of its own and the client's address masked by hash."""
    return exporting(
        google,
        RECORDLINE_EXPORT_PRINCIPALS=EXPORTER,
        RECORDLINE_MASK_ATTRIBUTES="client-ip:hash",
        **env,
    )


@pytest.fixture
def client(google: FakeGoogle) -> Iterator[TestClient[Recordline]]:
    with TestClient(create_app(settings(google))) as client:
        for n in range(3):
            pushed = client.post(
                "/pubsub/push",
                json=envelope(
                    {"id": f"r-{n}", "data": {"n": n}},
                    message_id=f"m-{n}",
                    attributes={"client-ip": HIDDEN},
                ),
                headers=token(google, PUSHER),
            )
            assert pushed.status_code == 204, pushed.text
        yield client


def records(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The access record's lines since the log was last cleared."""
    return [
        r.fields["access"]  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "recordline.access"
    ]


def test_a_read_says_who_read_what_and_whether_it_was_masked(
    client: TestClient[Recordline], google: FakeGoogle, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, "recordline.access"):
        caplog.clear()
        page = client.get(
            "/v1/records",
            params={"limit": 2},
            headers=token(google, ANALYST) | {"Accept-Encoding": "identity"},
        )
        (line,) = records(caplog)
    assert page.status_code == 200
    assert line["action"] == "read"
    assert line["principal"] == ANALYST
    assert line["method"] == "GET"
    assert line["path"] == "/v1/records"
    assert line["parameters"] == [["limit", "2"]]
    assert line["status"] == 200
    assert line["rows"] == 2
    assert line["bytes"] == len(page.content)
    assert line["masked"] is True
    # An operator reads unmasked, and is named so.
    with caplog.at_level(logging.INFO, "recordline.access"):
        caplog.clear()
        client.get("/v1/records/r-1", headers=token(google, OPERATOR))
        (line,) = records(caplog)
    assert (line["principal"], line["rows"], line["masked"]) == (OPERATOR, 1, False)


def test_an_export_and_a_refused_one_are_recorded(
    client: TestClient[Recordline], google: FakeGoogle, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, "recordline.access"):
        caplog.clear()
        # Bytes as sent: with no compression asked, what the client reads.
        plain = {"Accept-Encoding": "identity"}
        exported = client.get("/v1/export/records", headers=token(google, EXPORTER) | plain)
        refused = client.get("/v1/export/records", headers=token(google, ANALYST))
        stranger = client.get("/v1/records", headers=token(google, STRANGER))
        anonymous = client.get("/v1/records")
        done, forbidden, outsider, nobody = records(caplog)
    assert exported.status_code == 200
    assert (done["action"], done["principal"], done["rows"]) == ("export", EXPORTER, 3)
    assert done["bytes"] == len(exported.content)
    assert refused.status_code == 403
    assert (forbidden["action"], forbidden["status"], forbidden["rows"]) == ("export", 403, 0)
    # A refused caller is named wherever its token proved who it is.
    assert forbidden["principal"] == ANALYST
    assert (outsider["status"], outsider["principal"]) == (403, STRANGER)
    assert stranger.status_code == 403
    assert (nobody["status"], nobody["principal"], anonymous.status_code) == (401, None, 401)


def test_a_poll_that_finds_nothing_new_is_not_recorded(
    client: TestClient[Recordline], google: FakeGoogle, caplog: pytest.LogCaptureFixture
) -> None:
    first = client.get("/v1/records", headers=token(google, ANALYST)).json()
    with caplog.at_level(logging.INFO, "recordline.access"):
        caplog.clear()
        later = client.get(
            "/v1/records",
            params={"page_token": first["next_page_token"]},
            headers=token(google, ANALYST),
        )
        assert later.status_code == 200
        assert later.json()["records"] == []
        assert records(caplog) == []


@pytest.mark.parametrize(
    ("name", "value", "kept"),
    [
        ("attribute", f"client-ip:{HIDDEN}", "client-ip:" + PSEUDONYM_PREFIX),
        # An expression naming it is kept whole as its hash.
        ("where", f"attributes['client-ip'] = '{HIDDEN}' OR id = 'x'", PSEUDONYM_PREFIX),
    ],
)
def test_a_filter_on_a_masked_attribute_is_kept_as_its_keyed_hash(
    client: TestClient[Recordline],
    google: FakeGoogle,
    caplog: pytest.LogCaptureFixture,
    name: str,
    value: str,
    kept: str,
) -> None:
    with caplog.at_level(logging.INFO, "recordline.access"):
        caplog.clear()
        asked = {name: value, "limit": "5"}
        operator = client.get("/v1/records", params=asked, headers=token(google, OPERATOR))
        reader = client.get("/v1/records", params=asked, headers=token(google, ANALYST))
        by_operator, by_reader = records(caplog)
        # What the service wrote on its access log (the test's client logs its own
        # requests' addresses, filter and all, on a log of its own).
        lines = [r for r in caplog.records if r.name == "recordline.access"]
        logged = json.dumps(records(caplog)) + "".join(r.getMessage() for r in lines)
    assert operator.status_code == 200
    assert len(operator.json()["records"]) == 3
    assert reader.status_code == 403
    for line in (by_operator, by_reader):
        ((logged_name, logged_value), limit) = line["parameters"]
        assert logged_name == name
        assert logged_value.startswith(kept)
        assert limit == ["limit", "5"]
    assert by_operator["parameters"] == by_reader["parameters"]
    assert HIDDEN not in logged


def test_a_replay_and_a_read_pass_are_recorded_with_who_asked(
    client: TestClient[Recordline], google: FakeGoogle, caplog: pytest.LogCaptureFixture
) -> None:
    message = {
        "data": base64.b64encode(b'{"id": "r-9", "data": 1}').decode(),
        "message_id": "m-9",
        "publish_time": "2024-04-27T12:00:01Z",
    }
    with caplog.at_level(logging.INFO, "recordline.access"):
        caplog.clear()
        replayed = client.post(
            "/v1/replay", json={"messages": [message]}, headers=token(google, OPERATOR)
        )
        (line,) = records(caplog)
    assert replayed.status_code == 200, replayed.text
    assert (line["action"], line["principal"], line["status"]) == ("replay", OPERATOR, 200)
    # Which message became what, and the operator's words: none given here.
    assert (line["messages"], line["note"], line["dry_run"]) == ([["m-9", "stored"]], None, False)


def test_a_replay_s_note_is_kept_with_its_outcomes_and_bounded(
    client: TestClient[Recordline], google: FakeGoogle, caplog: pytest.LogCaptureFixture
) -> None:
    """An operator says why (a payload edited, and what for): the line keeps it with each
    message's outcome, a dry run's as a dry run's; a note past its bound is a 400 naming
    it, and replays nothing."""
    fixed = {
        "data": base64.b64encode(b'{"id": "r-8", "data": {"amount": 5}}').decode(),
        "message_id": "m-8",
        "publish_time": "2024-04-27T12:00:01Z",
    }
    note = "amount was a string; fixed to the number the producer meant"
    operator = token(google, OPERATOR)
    with caplog.at_level(logging.INFO, "recordline.access"):
        caplog.clear()
        checked = client.post(
            "/v1/replay",
            json={"messages": [fixed, fixed], "note": note, "dry_run": True},
            headers=operator,
        )
        replayed = client.post(
            "/v1/replay", json={"messages": [fixed], "note": note}, headers=operator
        )
        too_long = client.post(
            "/v1/replay", json={"messages": [fixed], "note": "x" * 501}, headers=operator
        )
        lines = records(caplog)
    assert checked.status_code == replayed.status_code == 200, (checked.text, replayed.text)
    assert too_long.status_code == 400, too_long.text
    assert "note" in too_long.json()["detail"]
    check, replay, refused = lines
    assert (check["dry_run"], check["note"]) == (True, note)
    assert check["messages"] == [["m-8", "stored"], ["m-8", "already_stored"]]
    assert (replay["dry_run"], replay["note"], replay["messages"]) == (
        False,
        note,
        [["m-8", "stored"]],
    )
    # Refused before it was read: no message named, nothing stored by it.
    assert refused["status"] == 400
    assert "messages" not in refused
    assert client.get("/v1/messages/m-8", headers=operator).json()["status"] == "stored"


def test_a_lines_parameters_are_bounded(caplog: pytest.LogCaptureFixture) -> None:
    with TestClient(create_app(loaded(RECORDLINE_PUSH_TOKEN=SECRET))) as client:
        pushed = client.post(
            "/pubsub/push", params={"token": SECRET}, json=envelope({"id": "r-1", "data": 1})
        )
        assert pushed.status_code == 204
        many = [(f"p{n}", "x" * 1000) for n in range(MOST_PARAMETERS + 5)]
        with caplog.at_level(logging.INFO, "recordline.access"):
            caplog.clear()
            page = client.get("/v1/records", params=[("limit", "5"), *many])
            (line,) = records(caplog)
    # A parameter the API does not take is a 400, recorded as any refusal is.
    assert page.status_code == 400
    assert line["status"] == 400
    assert line["principal"] is None  # reads here need no token
    assert len(line["parameters"]) == MOST_PARAMETERS + 1
    assert all(len(value) <= MOST_CHARACTERS + 1 for _, value in line["parameters"])
    assert line["parameters"][-1] == ["…", "6 more"]


def test_a_followers_polls_are_summed_a_line_for_each_who_followed_what(
    google: FakeGoogle, caplog: pytest.LogCaptureFixture
) -> None:
    analyst, operator = token(google, ANALYST), token(google, OPERATOR)
    with caplog.at_level(logging.INFO, "recordline.access"):
        with TestClient(create_app(settings(google))) as client:
            tokens: dict[str, str | None] = {ANALYST: None, OPERATOR: None}
            for n in range(3):
                pushed = client.post(
                    "/pubsub/push",
                    json=envelope({"id": f"r-{n}", "data": n}, message_id=f"m-{n}"),
                    headers=token(google, PUSHER),
                )
                assert pushed.status_code == 204
                for who, headers in ((ANALYST, analyst), (OPERATOR, operator)):
                    asked = {"wait": "1", "limit": "10"}
                    last = tokens[who]
                    if last is not None:
                        asked["page_token"] = last
                    caplog.clear()
                    poll = client.get("/v1/records", params=asked, headers=headers)
                    assert poll.status_code == 200, poll.text
                    assert len(poll.json()["records"]) == 1
                    tokens[who] = poll.json()["next_page_token"]
                    # Nothing yet: summed until a minute has passed or the app stops.
                    assert records(caplog) == []
            caplog.clear()
        summed = {line["principal"]: line for line in records(caplog)}
    assert set(summed) == {ANALYST, OPERATOR}
    for who, masked in ((ANALYST, True), (OPERATOR, False)):
        line = summed[who]
        assert (line["requests"], line["rows"], line["masked"]) == (3, 3, masked)
        # The page tokens, different at each poll, are left out of what is summed.
        assert line["parameters"] == [["wait", "1"], ["limit", "10"]]
        assert line["first"] <= line["last"]


def test_summed_polls_are_written_when_flushed_and_bounded_in_number(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Flushed by hand here, as the app's stop flushes them (its timer is the next test's).
    access = AccessRecord()

    async def answer(scope: Any, receive: Any, send: Any) -> None:
        served(2, masked=False)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    app = access.middleware("read")(answer)

    async def poll(query: bytes) -> None:
        scope: Any = {"type": "http", "method": "GET", "path": "/v1/records", "query_string": query}

        async def receive() -> Any:
            return {"type": "http.disconnect"}

        async def send(message: Any) -> None:
            return None

        await app(scope, receive, send)

    async def polls() -> None:
        await poll(b"wait=5&page_token=a")
        await poll(b"wait=5&page_token=b")
        await poll(b"wait=5&page_token=c")
        assert records(caplog) == []
        access.flush()
        ((line,),) = [records(caplog)]
        assert (line["requests"], line["rows"], line["bytes"]) == (3, 6, 6)
        caplog.clear()
        # A reader varying what it follows fills no more than MOST_FOLLOWING sums.
        for n in range(MOST_FOLLOWING + 1):
            await poll(b"wait=5&limit=%d" % (n + 1))
        assert len(records(caplog)) == MOST_FOLLOWING
        access.flush()  # the one past the bound, and its timer cancelled

    with caplog.at_level(logging.INFO, "recordline.access"):
        caplog.clear()
        asyncio.run(polls())


def test_a_path_cannot_start_a_line_of_its_own_on_a_terminal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = create_app(loaded(RECORDLINE_PUSH_TOKEN=SECRET))
    with TestClient(app) as client, caplog.at_level(logging.INFO, "recordline.access"):
        caplog.clear()
        client.get("/v1/records/x%0AINFO%20forged%20line")
        (record,) = [r for r in caplog.records if r.name == "recordline.access"]
    assert "\n" not in record.getMessage()
    assert "\\n" in record.getMessage()
    assert record.fields["access"]["path"] == "/v1/records/x\nINFO forged line"  # type: ignore[attr-defined]


def test_a_read_of_the_ledger_is_recorded(
    google: FakeGoogle, caplog: pytest.LogCaptureFixture
) -> None:
    with TestClient(create_app(settings(google))) as client:
        for n in range(2):
            sequenced = {"recordline-producer": f"p-{n}", "recordline-epoch": "0"}
            pushed = client.post(
                "/pubsub/push",
                json=envelope(
                    {"id": f"r-{n}", "data": n},
                    message_id=f"m-{n}",
                    attributes=sequenced | {"recordline-seq": "0"},
                ),
                headers=token(google, PUSHER),
            )
            assert pushed.status_code == 204
        with caplog.at_level(logging.INFO, "recordline.access"):
            caplog.clear()
            listed = client.get("/v1/producers", headers=token(google, ANALYST))
            one = client.get("/v1/producers/p-1", headers=token(google, OPERATOR))
            audited = client.get(
                "/v1/audit", params={"since": "1h"}, headers=token(google, ANALYST)
            )
            lines = records(caplog)
    assert (listed.status_code, one.status_code, audited.status_code) == (200, 200, 200)
    assert [(line["path"], line["principal"], line["rows"]) for line in lines] == [
        ("/v1/producers", ANALYST, 2),
        ("/v1/producers/p-1", OPERATOR, 1),
        ("/v1/audit", ANALYST, len(audited.json()["hours"])),
    ]


def test_a_count_is_recorded_with_what_it_counted(
    client: TestClient[Recordline], google: FakeGoogle, caplog: pytest.LogCaptureFixture
) -> None:
    # It answers no row, yet tells how many a filter keeps: a line, as a read of rows.
    with caplog.at_level(logging.INFO, "recordline.access"):
        caplog.clear()
        counted = client.get(
            "/v1/counts/records",
            params={"since": "1h", "where": "data.n >= 1"},
            headers=token(google, ANALYST),
        )
        (line,) = records(caplog)
    assert counted.status_code == 200, counted.text
    assert counted.json()["total"] == 2
    assert (line["action"], line["path"], line["principal"]) == (
        "read",
        "/v1/counts/records",
        ANALYST,
    )
    assert (line["rows"], line["counted"], line["masked"]) == (0, 2, True)


def test_a_head_is_recorded_as_a_head_that_sent_no_content(
    client: TestClient[Recordline], google: FakeGoogle, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, "recordline.access"):
        caplog.clear()
        head = client.head("/v1/records", headers=token(google, ANALYST))
        (line,) = records(caplog)
    assert head.status_code == 200
    assert head.content == b""
    assert (line["method"], line["rows"], line["bytes"]) == ("HEAD", 3, 0)


def test_summed_polls_are_written_a_minute_on_with_no_request_after_them(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("app.http.access.FOLLOWING_SECONDS", 0.05)
    access = AccessRecord()

    async def answer(scope: Any, receive: Any, send: Any) -> None:
        served(1, masked=False)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def nothing() -> Any:
        return {"type": "http.disconnect"}

    async def dropped(message: Any) -> None:
        return None

    async def poll_then_stop() -> None:
        scope: Any = {"type": "http", "method": "GET", "path": "/v1/records"}
        scope["query_string"] = b"wait=5"
        await access.middleware("read")(answer)(scope, nothing, dropped)
        assert records(caplog) == []
        # The follower stops; no one asks anything more of the app, which keeps running.
        await until(lambda: records(caplog), what="the sums written")

    with caplog.at_level(logging.INFO, "recordline.access"):
        caplog.clear()
        asyncio.run(poll_then_stop())
        ((line,),) = [records(caplog)]
    assert (line["requests"], line["rows"]) == (1, 1)


def test_a_long_path_is_cut_in_its_line(
    client: TestClient[Recordline], google: FakeGoogle, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, "recordline.access"):
        caplog.clear()
        client.get("/v1/records/" + "p" * 5000, headers=token(google, ANALYST))
        (line,) = records(caplog)
    assert line["path"] == "/v1/records/" + "p" * (MOST_PATH - len("/v1/records/")) + "…"
