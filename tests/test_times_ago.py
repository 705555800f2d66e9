"""Every `since` and `until`, of the API and of the commands, takes both forms: an RFC
3339 time and how long ago (`/v1/records?since=1h` was a 400 where `tail --since 1h` read
on, and `/v1/audit?since=1h` a 400 where `/v1/records` took it); every refusal and help
text names both."""

from __future__ import annotations

import argparse

import pytest
from litestar.testing import TestClient

from app.cli import add_operator_commands
from app.commands import tail
from app.http.head import Recordline
from app.records import TIME_FORMS
from tests.conftest import envelope


def test_since_and_until_take_how_long_ago(client: TestClient[Recordline]) -> None:
    assert client.post("/pubsub/push", json=envelope({"id": "now"})).status_code == 204
    for params, ids in (
        ({"since": "1h"}, ["now"]),
        ({"until": "1h"}, []),  # until an hour ago: nothing yet
        ({"since": "7d"}, ["now"]),
        # Longer ago than any store reaches: from the start, as a time before the year 1.
        ({"since": "99999999999999999999d"}, ["now"]),
    ):
        answer = client.get("/v1/records", params=params)
        assert answer.status_code == 200, (params, answer.text)
        assert [r["id"] for r in answer.json()["records"]] == ids, params
    for params in ({"since": "1y"}, {"since": "-1h"}, {"until": "h"}):
        answer = client.get("/v1/records", params=params)
        assert answer.status_code == 400, (params, answer.text)
    assert client.get("/v1/rejections", params={"since": "2h"}).status_code == 200


def test_the_audit_takes_both_forms_and_names_them(client: TestClient[Recordline]) -> None:
    for since, until in (("1h", "0s"), ("2024-04-27T12:00:00Z", "2024-04-27T13:00:00Z")):
        answer = client.get("/v1/audit", params={"since": since, "until": until})
        assert answer.status_code == 200, (since, answer.text)
    answer = client.get("/v1/audit", params={"since": "yesterday"})
    assert answer.status_code == 400
    assert TIME_FORMS in answer.json()["detail"]
    answer = client.get("/v1/records", params={"until": "noon"})
    assert TIME_FORMS in answer.json()["detail"]


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {o: a for a in parser._actions for o in a.option_strings}


def every_time_option() -> list[tuple[str, argparse.Action]]:
    """Each command's `--since`, `--until` and `--at`, where the commands keep them."""
    root = argparse.ArgumentParser()
    commands = root.add_subparsers()
    add_operator_commands(commands.add_parser)
    tail.add_arguments(commands.add_parser("tail"))
    found = []
    pending = [("recordline", root)]
    while pending:
        name, parser = pending.pop()
        for option, action in _options(parser).items():
            if option in ("--since", "--until", "--at"):
                found.append((f"{name} {option}", action))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                pending.extend((f"{name} {n}", p) for n, p in action.choices.items())
    return found


@pytest.mark.parametrize(
    ("option", "action"),
    [pytest.param(o, a, id=o) for o, a in every_time_option()],
)
def test_every_commands_time_takes_both_forms_and_names_them(
    option: str, action: argparse.Action
) -> None:
    assert TIME_FORMS in (action.help or ""), option
    assert action.type is not None
    for text in ("2h", "2024-04-27T12:00:00Z"):
        action.type(text)  # type: ignore[operator]
    with pytest.raises(argparse.ArgumentTypeError, match="how long ago"):
        action.type("noon")  # type: ignore[operator]
