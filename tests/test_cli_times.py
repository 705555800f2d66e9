"""`recordline audit --since/--until` and `recordline tail --since` take any text a
person types: a time or how long ago, or a one-line argparse error (exit 2); a time
before the year 1 (`0001-01-01T00:00:00+01:00`) or longer ago than every store reaches
(`106751991d`) reads from the start, as the API's `since` does, never a traceback."""

from __future__ import annotations

import argparse
import contextlib
import io
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.commands import audit, tail
from app.records import micros, time_or_ago
from tests.fuzz.budget import EXAMPLES

FIRST = "0001-01-01T00:00:00Z"


def parsed(add: object, argv: list[str]) -> argparse.Namespace | None:
    """The arguments parsed, or None for argparse's own refusal (exit 2)."""
    parser = argparse.ArgumentParser(exit_on_error=False)
    add(parser)  # type: ignore[operator]
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            return parser.parse_args(argv)
        except (argparse.ArgumentError, SystemExit):
            return None


@pytest.mark.parametrize(
    "since", ["0001-01-01T00:00:00+01:00", "106751991d", "99999999999999999999999d"]
)
def test_a_time_before_every_store_reads_from_the_start(since: str) -> None:
    args = parsed(audit.add_arguments, ["--since", since])
    assert args is not None
    assert args.since == datetime(1, 1, 1, tzinfo=UTC)
    args = parsed(tail.add_arguments, ["--since", since])
    assert args is not None
    assert args.since == FIRST  # sent as the time it names: the API reads it so


def test_a_time_past_9999_reads_to_the_end() -> None:
    args = parsed(audit.add_arguments, ["--since", "1h", "--until", "9999-12-31T23:59:59-01:00"])
    assert args is not None
    assert args.until == datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


times = st.one_of(
    st.text(max_size=40),
    st.builds(
        lambda n, unit: f"{n}{unit}",
        st.integers(min_value=0, max_value=10**30),
        st.sampled_from("smhd"),
    ),
    st.builds(
        lambda d, hours, minutes: (
            f"{d.isoformat()}{'+' if hours >= 0 else '-'}{abs(hours):02}:{minutes:02}"
        ),
        st.datetimes(),
        st.integers(min_value=-23, max_value=23),
        st.integers(min_value=0, max_value=59),
    ),
)


@settings(max_examples=EXAMPLES * 4, deadline=None)
@given(since=times, until=times)
def test_any_since_is_a_time_or_a_usage_error(since: str, until: str) -> None:
    args = parsed(audit.add_arguments, ["--since", since, "--until", until])
    if args is not None:
        micros(args.since)  # a time every store can hold: no overflow on the way out
        micros(args.until)
        audit._rfc3339(args.since)
    args = parsed(tail.add_arguments, ["--since", since])
    if args is not None:
        micros(time_or_ago(args.since))  # what it sends, the API reads
