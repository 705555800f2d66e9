"""Masks that fail closed: JSON encoded again is masked inside, text the mask cannot
read is withheld, a masked reader's rejection reasons quote no value, a masked producer
id is a keyed hash wherever a reader or a scrape meets it, and a mask that would leave
the id or time columns unmasked stops the service at start."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from litestar.testing import TestClient

from app.asgi import create_app
from app.http.head import Recordline
from app.query.mask import MASKED, PSEUDONYM_PREFIX, UNREADABLE, Mask, Pseudonyms, quiet
from app.records import Record
from app.settings import SettingsError
from app.store.duckdb.store import DuckDBStore
from tests.conftest import envelope, settings
from tests.rows import shown_record, shown_rejection
from tests.waiting import until_blocking

SECRET = "a-push-secret-long-enough"
OPERATOR = {"Authorization": f"Bearer {SECRET}"}
HIDDEN = "alice@example.com"
APOSTROPHED = "it's " + HIDDEN  # its repr is in double quotes


def test_json_encoded_again_in_a_member_is_masked_inside() -> None:
    inner = {"email": HIDDEN, "n": 1}
    data = {
        "once": json.dumps(inner),
        "spaced": "  \n" + json.dumps([inner], indent=2),
        "twice": json.dumps(json.dumps(inner)),
        "deep": [{"x": json.dumps({"y": json.dumps(inner)})}],
        "plain": "write to email@ or {braces}",
        "quiet": '{"n": 1}',
    }
    seen = json.loads(bytes(Mask(["email"]).view(shown_record(json.dumps(data).encode())).data))
    assert HIDDEN not in json.dumps(seen)
    assert json.loads(seen["once"]) == {"email": MASKED, "n": 1}
    assert json.loads(seen["spaced"]) == [{"email": MASKED, "n": 1}]
    assert json.loads(json.loads(seen["twice"])) == {"email": MASKED, "n": 1}
    assert json.loads(json.loads(seen["deep"][0]["x"])["y"]) == {"email": MASKED, "n": 1}
    # Text that is not JSON, or JSON naming nothing masked, is as it was sent.
    assert (seen["plain"], seen["quiet"]) == (data["plain"], data["quiet"])


@pytest.mark.parametrize(
    "text",
    [
        '{"email": "alice@example.com"',  # cut short
        "{'email': 'alice@example.com'}",  # a repr, not JSON
        '[{"email": "alice@example.com"}] trailing',
        '"{\\"email\\": \\"alice@example.com\\""',  # a string holding JSON cut short
    ],
)
def test_text_opening_as_json_that_the_mask_cannot_read_is_withheld(text: str) -> None:
    payload = json.dumps({"x": text}).encode()
    seen = json.loads(bytes(Mask(["email"]).view(shown_record(payload)).data))
    # Withheld: in place of the text, or of the text inside the JSON string.
    assert seen["x"] in (UNREADABLE, json.dumps(UNREADABLE))


def test_a_rejected_payload_that_is_a_json_string_holding_json_is_masked_inside() -> None:
    # The usual reason it was rejected: a publisher that encoded its payload twice.
    payload = json.dumps(json.dumps({"email": HIDDEN, "n": 1})).encode()
    seen = Mask(["email"]).view(shown_rejection(payload)).data
    assert isinstance(seen, bytes)
    assert HIDDEN.encode() not in seen
    assert json.loads(json.loads(seen)) == {"email": MASKED, "n": 1}


@pytest.mark.parametrize(
    "reason",
    [
        f"recordline-seq: {HIDDEN!r} is not a decimal integer",
        f"`$.meta.created_at`: expected a time, got {HIDDEN!r}",
        f'a decoder failed (DecodeError("bad {HIDDEN}"))',
        f"recordline-signature: not producer {APOSTROPHED!r}'s signature",
    ],
)
def test_a_masked_readers_rejection_reason_quotes_no_value(reason: str) -> None:
    assert HIDDEN not in quiet(reason)
    seen = Mask(attributes=["client-ip"]).view(shown_rejection(b"{}", reason=reason))
    assert HIDDEN not in seen.reason
    # The rule and the path it names stay.
    assert seen.reason[:10] == reason[:10]


def test_a_rejection_reason_names_no_time_it_could_not_read() -> None:
    with TestClient(
        create_app(settings(RECORDLINE_PUSH_TOKEN=SECRET, RECORDLINE_TIME_FIELD="at"))
    ) as client:
        pushed = client.post(
            "/pubsub/push",
            params={"token": SECRET},
            json=envelope({"id": "r-1", "at": HIDDEN}, message_id="m-1"),
        )
        assert pushed.status_code == 204, pushed.text
        (rejection,) = client.get("/v1/rejections", headers=OPERATOR).json()["rejections"]
    assert HIDDEN not in rejection["reason"]
    assert "not an RFC 3339 time" in rejection["reason"]


@pytest.mark.parametrize(
    ("setting", "path", "masked"),
    [
        ("RECORDLINE_ID_FIELD", "customer.email", "email"),
        ("RECORDLINE_ID_FIELD", "customer.email", "customer"),
        ("RECORDLINE_ID_FIELD", "id", "id"),
        ("RECORDLINE_TIME_FIELD", "meta.created_at", "created_at"),
    ],
)
def test_masking_the_member_the_id_or_time_is_read_from_refuses_to_start(
    setting: str, path: str, masked: str
) -> None:
    loaded = settings(**{setting: path, "RECORDLINE_MASK_FIELDS": masked})
    with pytest.raises(SettingsError) as refused:
        create_app(loaded)
    assert refused.value.var == "RECORDLINE_MASK_FIELDS"
    assert setting in str(refused.value)
    # A member of another name is masked as before.
    create_app(settings(**{setting: path, "RECORDLINE_MASK_FIELDS": "phone"}))


# -- a masked producer id ---------------------------------------------------------------

PRODUCERS = (HIDDEN, "bob@example.com")
PRODUCED = 1_714_219_201_000_000  # µs


def ledger_row(message_id: str, sequence: int, producer: str) -> Record:
    attributes = {
        "recordline-producer": producer,
        "recordline-epoch": "0",
        "recordline-seq": str(sequence),
    }
    return Record(
        message_id=message_id,
        publish_time=PRODUCED,
        ingest_time=PRODUCED,
        id=f"{producer}/0/{sequence}",
        data='"x"',
        attributes=json.dumps(attributes),
    )


GRACE_SECONDS = 30.0
# When the ledger is written: its gaps are older than the grace when the service reads it.
WRITTEN_AGO_NS = 2 * int(GRACE_SECONDS * 1e9)


async def fill(path: Path) -> None:
    """Each producer's sequences 0 and 2, written WRITTEN_AGO_NS ago: 1 is missing."""
    store = DuckDBStore(str(path), clock=lambda: time.time_ns() - WRITTEN_AGO_NS)
    await store.start()
    try:
        await store.append([ledger_row(f"{p}-{n}", n, p) for p in PRODUCERS for n in (0, 2)])
    finally:
        await store.close()


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[TestClient[Recordline]]:
    path = tmp_path / "records.duckdb"
    asyncio.run(fill(path))
    app = create_app(
        settings(
            RECORDLINE_STORE=f"duckdb://{path}",
            RECORDLINE_PUSH_TOKEN=SECRET,
            RECORDLINE_MASK_ATTRIBUTES="recordline-producer",
            OTEL_METRICS_EXPORTER="prometheus",
            RECORDLINE_PRODUCER_GRACE_SECONDS=str(GRACE_SECONDS),
        )
    )
    with TestClient(app) as client:
        yield client


def token_bytes(token: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except binascii.Error:
        return token.encode()


def test_a_masked_producer_is_listed_by_its_keyed_hash_and_never_looked_up_by_id(
    ledger: TestClient[Recordline],
) -> None:
    operator = ledger.get("/v1/producers", headers=OPERATOR).json()
    assert sorted(p["producer"] for p in operator["producers"]) == sorted(PRODUCERS)
    # A reader: each producer by its pseudonym, a page at a time, the token holding none.
    first = ledger.get("/v1/producers", params={"limit": 1})
    assert first.status_code == 200, first.text
    token = first.json()["next_page_token"]
    assert all(p.encode() not in token_bytes(token) for p in PRODUCERS)
    second = ledger.get("/v1/producers", params={"limit": 1, "page_token": token})
    assert second.status_code == 200, second.text
    listed = [p["producer"] for page in (first, second) for p in page.json()["producers"]]
    assert len(set(listed)) == 2
    assert all(p.startswith(PSEUDONYM_PREFIX) for p in listed)
    for answer in (first, second):
        assert all(p not in answer.text for p in PRODUCERS)
    # An operator's token is not a reader's (it is readable), nor a reader's an operator's.
    operators_token = ledger.get("/v1/producers", params={"limit": 1}, headers=OPERATOR)
    refused = ledger.get(
        "/v1/producers", params={"page_token": operators_token.json()["next_page_token"]}
    )
    assert refused.status_code == 400
    # A look-up by id would tell the id exists: refused, naming the setting.
    looked_up = ledger.get(f"/v1/producers/{HIDDEN}")
    assert looked_up.status_code == 403
    assert looked_up.json()["type"] == "/problems/masked-look-up"
    assert "RECORDLINE_MASK_ATTRIBUTES" in looked_up.json()["detail"]
    assert ledger.get(f"/v1/producers/{HIDDEN}", headers=OPERATOR).status_code == 200
    # The audit's ranges name producers by the same pseudonyms.
    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    audit = ledger.get("/v1/audit", params={"since": since})
    assert audit.status_code == 200, audit.text
    assert all(p not in audit.text for p in PRODUCERS)
    assert {r["producer"] for r in audit.json()["missing_ranges"]} == set(listed)


def test_a_masked_producer_labels_the_metrics_by_its_keyed_hash(
    ledger: TestClient[Recordline],
) -> None:
    def scraped() -> str | None:
        text = ledger.get("/metrics").text
        return text if "recordline_producer_missing{" in text else None

    text = until_blocking(scraped, timeout=30, what="the producers' missing metric")
    assert isinstance(text, str)
    assert all(p not in text for p in PRODUCERS)
    listed = {p["producer"] for p in ledger.get("/v1/producers").json()["producers"]}
    labelled = [line for line in text.splitlines() if line.startswith("recordline_producer_")]
    assert all(any(f'producer="{p}"' in line for p in listed) for line in labelled)


def test_a_pseudonym_is_the_same_for_the_same_value_and_key_only() -> None:
    one, again, other = Pseudonyms("a-secret"), Pseudonyms("a-secret"), Pseudonyms("b-secret")
    assert one.of(HIDDEN) == again.of(HIDDEN) != other.of(HIDDEN)
    assert one.of(HIDDEN) != one.of("bob@example.com")
    assert HIDDEN not in one.of(HIDDEN)


def test_a_masked_name_is_masked_however_unicode_composes_it() -> None:
    # `é` as one code point (as the setting says it) and as `e` with a combining accent.
    decomposed = "e\u0301"
    mask = Mask(["é"])
    for key in (decomposed, "\u00e9"):
        for data in (
            json.dumps({key: HIDDEN}, ensure_ascii=False).encode(),
            json.dumps({"x": json.dumps({key: HIDDEN}, ensure_ascii=False)}).encode(),
            json.dumps({"x": f"{key}={HIDDEN}"}, ensure_ascii=False).encode(),
        ):
            seen = bytes(mask.view(shown_record(data)).data)
            assert HIDDEN.encode() not in seen, data
    assert mask.names_in(["a", decomposed]) == decomposed
    assert Mask(["e\u0301"]).names_in(["\u00e9"]) == "\u00e9"


# -- ways around the masks a hostile publisher or decoder finds -----------------------


def test_a_masked_member_sent_twice_is_not_served_as_sent() -> None:
    # A duplicate member decodes to its last value: `[masked]` there made masking
    # look like it changed nothing, and the text as sent (with the first) was served.
    payload = f'{{"email": "{HIDDEN}", "email": "{MASKED}"}}'.encode()
    inner = json.dumps({"x": payload.decode()}).encode()
    mask = Mask(["email"])
    assert HIDDEN.encode() not in bytes(mask.view(shown_record(payload)).data)
    assert HIDDEN.encode() not in bytes(mask.view(shown_record(inner)).data)
    rejected = mask.view(shown_rejection(payload)).data
    assert isinstance(rejected, bytes)
    assert HIDDEN.encode() not in rejected


@pytest.mark.parametrize(
    ("name", "spelled"),
    [
        ("API_KEY", "API_\u212aEY"),  # KELVIN SIGN, which NFC makes K
        ("\u00c5ngstr\u00f6m", "\u212bngstr\u00f6m"),  # ANGSTROM SIGN, NFC Å
        ("\u1ec7", "\u1eb9\u0302"),  # ệ as ẹ and a circumflex: NFC, neither spelling
    ],
)
def test_a_masked_name_spelled_in_another_canonical_form_is_masked(name: str, spelled: str) -> None:
    # The name matches (a filter on it is refused), so its value must be masked too,
    # not passed on unread because its bytes spell neither the NFC nor the NFD name.
    mask = Mask([name])
    assert mask.names_in([spelled]) == spelled
    payload = json.dumps({spelled: HIDDEN}, ensure_ascii=False).encode()
    assert HIDDEN.encode() not in bytes(mask.view(shown_record(payload)).data)
    repr_text = json.dumps({"x": f"{{'{spelled}': '{HIDDEN}'}}"}, ensure_ascii=False)
    assert HIDDEN not in bytes(mask.view(shown_record(repr_text.encode())).data).decode()


_UNKEYED = pytest.mark.xfail(
    strict=True,
    reason="text naming a masked member as neither a key (before ':' or '=') nor an XML "
    "element (a CSV header, percent-encoded JSON) is served whole",
)


@pytest.mark.parametrize(
    "text",
    [
        f"<user><email>{HIDDEN}</email></user>",
        f'<user email-type="work"><email kind="a">{HIDDEN}</email></user>',
        pytest.param(f"name,email\nbob,{HIDDEN}", marks=_UNKEYED),
        pytest.param("%7B%22email%22%3A%22alice%40example.com%22%7D", marks=_UNKEYED),
    ],
)
def test_text_of_another_shape_naming_a_masked_member_is_withheld(text: str) -> None:
    payload = json.dumps({"x": text}).encode()
    seen = bytes(Mask(["email"]).view(shown_record(payload)).data).decode()
    assert HIDDEN not in seen
    assert "alice%40example.com" not in seen


def _protobuf_enum_reason() -> str:
    from google.protobuf import json_format, type_pb2

    try:
        json_format.Parse(json.dumps({"name": "t", "syntax": HIDDEN}), type_pb2.Type())
    except json_format.ParseError as exc:
        return f"not Protocol Buffers JSON of this revision: {exc}"
    raise AssertionError("parsed")


@pytest.mark.xfail(
    strict=True,
    reason="a decoder's own words may name a value without quotes (protobuf's "
    "'Invalid enum value … for enum type'), which quiet() cannot find",
)
def test_a_masked_readers_reason_holds_no_value_a_decoder_names_unquoted() -> None:
    reason = _protobuf_enum_reason()
    assert HIDDEN in reason
    seen = Mask(["syntax"]).view(shown_rejection(b"", reason=reason))
    assert HIDDEN not in seen.reason


# -- mask settings a careless operator writes -----------------------------------------

RECORD_AT = {"id": "r-1", "timestamp": "2024-01-01T00:00:00Z"}


def test_a_masked_attribute_is_masked_on_an_unwrapped_push_however_it_is_cased() -> None:
    loaded = settings(RECORDLINE_PUSH_TOKEN=SECRET, RECORDLINE_MASK_ATTRIBUTES="Client-IP")
    with TestClient(create_app(loaded)) as client:
        wrapped = envelope(
            {**RECORD_AT, "data": {}}, message_id="w-1", attributes={"Client-IP": HIDDEN}
        )
        pushed = client.post("/pubsub/push", params={"token": SECRET}, json=wrapped)
        assert pushed.status_code == 204, pushed.text
        unwrapped = {
            "x-goog-pubsub-message-id": "u-1",
            "x-goog-pubsub-publish-time": "2024-04-27T12:00:01Z",
            "Client-IP": HIDDEN,
        }
        body = json.dumps({**RECORD_AT, "id": "r-2", "data": {}})
        pushed = client.post(
            "/pubsub/push", params={"token": SECRET}, content=body, headers=unwrapped
        )
        assert pushed.status_code == 204, pushed.text
        operators = client.get("/v1/records", headers=OPERATOR).json()["records"]
        assert len(operators) == 2
        assert HIDDEN in json.dumps(operators)
        page = client.get("/v1/records")
        # Nor may a reader find it by a filter on its lower-cased name.
        probe = client.get("/v1/records", params={"attribute": f"client-ip:{HIDDEN}"})
    assert page.status_code == 200
    assert HIDDEN not in page.text
    assert probe.status_code == 403, probe.text


@pytest.mark.parametrize("number", ["1e999", "9" * 5000], ids=["beyond-float", "beyond-int-digits"])
def test_a_stored_number_the_mask_cannot_decode_breaks_no_masked_read(number: str) -> None:
    # The contract's `data` is stored as sent, unread: a number beyond what JSON's
    # decoder here holds is stored, and a masked reader's page must still be answered.
    loaded = settings(RECORDLINE_PUSH_TOKEN=SECRET, RECORDLINE_MASK_FIELDS="email")
    payload = b'{"id": "r-1", "data": {"email": "%s", "n": %s}}' % (
        HIDDEN.encode(),
        number.encode(),
    )
    with TestClient(create_app(loaded)) as client:
        pushed = client.post(
            "/pubsub/push", params={"token": SECRET}, json=envelope(None, raw_data=payload)
        )
        assert pushed.status_code == 204, pushed.text
        stored = client.get("/v1/records", headers=OPERATOR)
        assert stored.status_code == 200, stored.text[:200]
        assert HIDDEN in stored.text
        surfaces = [
            client.get("/v1/records"),
            client.get("/v1/records/r-1"),
            client.get("/v1/messages/m-1"),
            client.get("/v1/export/records", params={"format": "jsonl"}),
        ]
    for answer in surfaces:
        assert answer.status_code == 200, (answer.url, answer.status_code, answer.text)
        assert HIDDEN not in answer.text
