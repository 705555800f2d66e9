"""The argument types the commands share, each refused at once by argparse (exit 2)."""

from __future__ import annotations

import argparse
import urllib.parse


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
