"""The argument types the commands share, each refused at once by argparse (exit 2)."""

from __future__ import annotations

import argparse
import urllib.parse

from app.records import rfc3339, time_or_ago


def service_url(text: str) -> str:
    """`--url`, unless it is no http(s) URL: without a scheme, `127.0.0.1:8080` would be
    retried as if the service were down."""
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        hint = f"; did you mean http://{text}?" if "://" not in text else ""
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an http:// or https:// URL of the service{hint}"
        )
    return text


def at_least_one(text: str) -> int:
    """A whole number of 1 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not 1 or more")
    return value


def time_text(text: str) -> str:
    """`--since` or `--until` (`time_or_ago`), as the RFC 3339 text a command sends the
    service: how long ago is counted once, as the command starts, so every page it reads
    names one range."""
    return rfc3339(time_or_ago(text))


def number(text: str) -> float:
    """A finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def not_negative(text: str) -> float:
    """0 or more."""
    value = number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def positive_seconds(text: str) -> float:
    """More than 0 seconds."""
    value = number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not more than 0 seconds")
    return value
