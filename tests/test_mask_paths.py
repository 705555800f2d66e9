"""Masks by path and by mode: `customer.email` masks that member from the payload's
root (and nothing of the same name elsewhere), a mode shows a keyed hash or a value's
first or last characters, and a mask the service cannot honour stops it at start."""

from __future__ import annotations

import json
from typing import Any

import pytest
from litestar.testing import TestClient

from app.asgi import create_app
from app.query.mask import ELIDED, MASKED, PSEUDONYM_PREFIX, Mask, MaskError, Pseudonyms
from app.settings import SettingsError
from tests.conftest import envelope, settings
from tests.rows import shown_record, shown_rejection

SECRET = "a-push-secret-long-enough"
OPERATOR = {"Authorization": f"Bearer {SECRET}"}
EMAIL = "alice@example.com"
CARD = "4111111111111234"


def seen(mask: Mask, data: Any, attributes: dict[str, str] | None = None) -> Any:
    record = shown_record(
        json.dumps(data).encode(), attributes=json.dumps(attributes or {}).encode()
    )
    view = mask.view(record)
    return json.loads(bytes(view.data)), json.loads(bytes(view.attributes))


def test_a_path_masks_its_member_from_the_root_and_nothing_else_of_its_name() -> None:
    mask = Mask(["customer.email"])
    data = {
        "customer": {"email": EMAIL, "name": "Alice"},
        "seller": {"email": "shop@example.com"},
        "email": "support@example.com",
        # Each customer of an array is on the path: arrays are walked through.
        "customers": [{"email": "x"}],
        "orders": [{"customer": {"email": "y"}}],
    }
    data_seen, _ = seen(mask, data)
    assert data_seen["customer"] == {"email": MASKED, "name": "Alice"}
    assert data_seen["seller"] == data["seller"]
    assert data_seen["email"] == data["email"]
    assert data_seen["orders"] == data["orders"]
    # An array on the path itself: each element's member is masked.
    listed, _ = seen(mask, {"customer": [{"email": EMAIL}, {"email": "b@example.com"}]})
    assert listed == {"customer": [{"email": MASKED}, {"email": MASKED}]}


def test_a_path_is_masked_through_json_encoded_again_and_a_dotted_name() -> None:
    mask = Mask(["customer.email"])
    # The customer sent as JSON text, twice encoded, or the whole payload as text.
    once, _ = seen(mask, {"customer": json.dumps({"email": EMAIL})})
    assert EMAIL not in json.dumps(once)
    assert json.loads(once["customer"]) == {"email": MASKED}
    twice, _ = seen(mask, {"customer": json.dumps(json.dumps({"email": EMAIL}))})
    assert EMAIL not in json.dumps(twice)
    whole, _ = seen(mask, json.dumps({"customer": {"email": EMAIL}}))
    assert EMAIL not in json.dumps(whole)
    # The path's member named with its dots is the same member to whoever reads it.
    dotted, _ = seen(mask, {"customer.email": EMAIL})
    assert dotted == {"customer.email": MASKED}
    # Text at the path's parent that names the member but is no JSON is withheld.
    form, _ = seen(mask, {"customer": f"email={EMAIL}"})
    assert EMAIL not in json.dumps(form)
    # Elsewhere such text is no path's: a path masks its member only.
    elsewhere, _ = seen(mask, {"note": f"email={EMAIL}"})
    assert elsewhere == {"note": f"email={EMAIL}"}


def test_each_mode_shows_what_it_says() -> None:
    mask = Mask(
        ["customer.email:hash", "card:last4", "name:first1", "pin:last4", "ids:last2"],
        ["client-ip:hash"],
        Pseudonyms("a-page-token-secret"),
    )
    data = {
        "customer": {"email": EMAIL, "name": "Alice"},
        "payment": {"card": CARD, "pin": "1234"},
        "ids": [1, 2, 3],
    }
    data_seen, attributes = seen(mask, data, {"Client-IP": "10.0.0.1"})
    token = data_seen["customer"]["email"]
    assert token.startswith(PSEUDONYM_PREFIX)
    assert len(token) == len(PSEUDONYM_PREFIX) + 32
    assert data_seen["customer"]["name"] == "A" + ELIDED
    assert data_seen["payment"]["card"] == ELIDED + "1234"
    # A value shorter than twice what a mode shows would be half shown or more.
    assert data_seen["payment"]["pin"] == MASKED
    # A value that is not text: its JSON's characters.
    assert data_seen["ids"] == ELIDED + "3]"
    assert attributes["Client-IP"].startswith(PSEUDONYM_PREFIX)
    # The same value masks to the same token, in another record or as an attribute:
    # joinable. Another key gives another token; a plain hash is not what is shown.
    again, _ = seen(mask, {"customer": {"email": EMAIL}, "other": 1})
    assert again["customer"]["email"] == token
    other_key = Mask(["customer.email:hash"], pseudonyms=Pseudonyms("another-secret"))
    assert seen(other_key, data)[0]["customer"]["email"] != token


@pytest.mark.parametrize(
    ("fields", "attributes", "named"),
    [
        ("email:hashed", "", "RECORDLINE_MASK_FIELDS"),
        ("card:last0", "", "RECORDLINE_MASK_FIELDS"),
        ("card:last65", "", "RECORDLINE_MASK_FIELDS"),
        ("customer..email", "", "RECORDLINE_MASK_FIELDS"),
        ("customer.email,customer.email:hash", "", "RECORDLINE_MASK_FIELDS"),
        ("email:", "", "RECORDLINE_MASK_FIELDS"),
        ("items.0.card", "", "RECORDLINE_MASK_FIELDS"),
        ("", "client-ip:first", "RECORDLINE_MASK_ATTRIBUTES"),
        ("", "Client-IP,client-ip:hash", "RECORDLINE_MASK_ATTRIBUTES"),
    ],
)
def test_a_mask_with_no_member_or_mode_there_is_refuses_to_start(
    fields: str, attributes: str, named: str
) -> None:
    loaded = settings(
        RECORDLINE_PUSH_TOKEN=SECRET,
        RECORDLINE_MASK_FIELDS=fields,
        RECORDLINE_MASK_ATTRIBUTES=attributes,
    )
    with pytest.raises(SettingsError) as refused:
        create_app(loaded)
    assert refused.value.var == named
    assert named in str(refused.value)
    with pytest.raises(MaskError):
        Mask(fields.split(",") if fields else (), attributes.split(",") if attributes else ())


@pytest.mark.parametrize(
    ("id_field", "masked"),
    [
        ("customer.email", "customer.email:hash"),
        ("customer.email", "customer:last4"),
        ("customer.email.address", "customer.email"),
    ],
)
def test_a_path_over_the_id_refuses_to_start(id_field: str, masked: str) -> None:
    loaded = settings(RECORDLINE_ID_FIELD=id_field, RECORDLINE_MASK_FIELDS=masked)
    with pytest.raises(SettingsError) as refused:
        create_app(loaded)
    assert refused.value.var == "RECORDLINE_MASK_FIELDS"
    create_app(settings(RECORDLINE_ID_FIELD=id_field, RECORDLINE_MASK_FIELDS="seller.email"))


def test_a_reader_sees_each_mode_on_every_read_and_an_operator_sees_it_whole() -> None:
    loaded = settings(
        RECORDLINE_PUSH_TOKEN=SECRET,
        RECORDLINE_MASK_FIELDS="customer.email:hash,card:last4",
        RECORDLINE_MASK_ATTRIBUTES="client-ip",
    )
    payload = {
        "id": "r-1",
        "timestamp": "2024-01-01T00:00:00Z",
        "data": {"customer": {"email": EMAIL}, "card": CARD, "seller": {"email": "s@x"}},
    }
    with TestClient(create_app(loaded)) as client:
        pushed = client.post(
            "/pubsub/push",
            params={"token": SECRET},
            json=envelope(payload, attributes={"client-ip": "10.9.8.7"}),
        )
        assert pushed.status_code == 204, pushed.text
        operator = client.get("/v1/records/r-1", headers=OPERATOR)
        answers = [
            client.get("/v1/records"),
            client.get("/v1/records/r-1"),
            client.get("/v1/messages/m-1"),
            client.get("/v1/export/records", params={"format": "csv"}),
            client.get("/v1/export/records", params={"columns": "data.card,data.customer.email"}),
        ]
        refused = [
            client.get("/v1/records", params={"field": f"customer.email:{EMAIL}"}),
            client.get("/v1/records", params={"field": f"customer:{EMAIL}"}),
        ]
        # Another member of the same name is no path's: its filter is not refused for
        # the mask (a plain JSON topic has no typed field to filter on: a 400).
        kept = client.get("/v1/records", params={"field": "seller.email:s@x"})
    assert operator.status_code == 200
    for whole in (EMAIL, CARD, "10.9.8.7"):
        assert whole in operator.text
    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert EMAIL not in answer.text
        assert CARD not in answer.text
        assert "10.9.8.7" not in answer.text
        assert "1234" in answer.text
        assert PSEUDONYM_PREFIX in answer.text
    for answer in refused:
        assert answer.status_code == 403, answer.text
        assert "customer.email" in answer.text
    assert kept.status_code == 400, kept.text
    assert "no typed field" in kept.text


def test_a_rejections_payload_is_masked_wherever_a_path_starts() -> None:
    # A rejection's payload is the message as sent: under the contract a record's
    # `data` is a member of it, and it may be of any shape at all.
    mask = Mask(["customer.email"])
    payload = json.dumps(
        {"data": {"customer": {"email": EMAIL}}, "x": [{"customer": json.dumps({"email": EMAIL})}]}
    ).encode()
    seen_data = bytes(mask.view(shown_rejection(payload)).data)
    assert EMAIL not in seen_data.decode()
    assert json.loads(seen_data)["data"] == {"customer": {"email": MASKED}}


@pytest.mark.parametrize(
    "sent",
    [
        # The member sent twice: a decoder keeps the last, the text holds the first.
        b'{"customer":{"email":"%s"},"customer":{"name":"Alice"}}',
        b'{"a":{"ssn":"%s"},"a":1}',
        b'{"customer":{"email":"%s","email":"x@example.com"}}',
        # The same inside JSON text, and as a rejection's payload.
        b'{"note":"{\\"a\\":{\\"ssn\\":\\"%s\\"},\\"a\\":1}"}',
    ],
)
def test_a_member_sent_twice_shows_neither_of_its_values(sent: bytes) -> None:
    mask = Mask(["customer.email", "ssn"])
    data = sent % EMAIL.encode()
    assert EMAIL not in bytes(mask.view(shown_record(data)).data).decode()
    assert EMAIL not in bytes(mask.view(shown_rejection(data)).data).decode()


def test_a_member_named_with_some_of_a_paths_dots_is_on_the_path() -> None:
    mask = Mask(["customer.address.zip"])
    for data in (
        {"customer.address": {"zip": "94110"}},
        {"customer": {"address.zip": "94110"}},
        {"customer.address": [{"zip": "94110"}]},
    ):
        masked, _ = seen(mask, data)
        assert "94110" not in json.dumps(masked), data
    # Dots that name no step of the path are no path's.
    kept, _ = seen(mask, {"customer.addr": {"zip": "94110"}})
    assert kept == {"customer.addr": {"zip": "94110"}}
