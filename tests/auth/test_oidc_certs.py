"""Signing keys are fetched rarely and never on the hot path; verdicts are cached until `exp`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from app.auth.oidc import (
    MIN_CERTS_TTL_SECONDS,
    UNKNOWN_KEY_REFETCH_SECONDS,
    CertsUnavailable,
    GoogleCerts,
    IdTokenVerifier,
    InvalidToken,
    certs_ttl,
)
from tests.auth.fake_google import PUSH_AUDIENCE, PUSHER, FakeGoogle, rsa_key


class Clock:
    """Both clocks the verifier reads (monotonic for keys, wall for tokens), moved by hand."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def certs(google: FakeGoogle, clock: Clock) -> AsyncIterator[GoogleCerts]:
    async with GoogleCerts(google.certs_url, clock=clock) as certs:
        yield certs


@pytest.fixture
def verifier(certs: GoogleCerts, clock: Clock) -> IdTokenVerifier:
    return IdTokenVerifier(PUSH_AUDIENCE, certs, clock=clock)


async def test_keys_are_refetched_after_max_age(
    google: FakeGoogle, certs: GoogleCerts, clock: Clock
) -> None:
    google.max_age = 600
    await certs.key("k1")
    clock.advance(599)
    await certs.key("k1")
    assert google.requests == 1

    clock.advance(2)
    await certs.key("k1")
    assert google.requests == 2


async def test_an_unknown_kid_refetches_once_then_is_rate_limited(
    google: FakeGoogle, certs: GoogleCerts, clock: Clock
) -> None:
    await certs.key("k1")
    clock.advance(UNKNOWN_KEY_REFETCH_SECONDS)
    google.keys["k2"] = rsa_key("k2")  # Google rotates in a new key

    assert await certs.key("k2") is not None
    assert google.requests == 2

    # A flood of made-up kids right after costs no fetch at all...
    for n in range(100):
        with pytest.raises(InvalidToken):
            await certs.key(f"bogus-{n}")
    assert google.requests == 2

    # ...and later costs one fetch per interval, not one per request.
    clock.advance(UNKNOWN_KEY_REFETCH_SECONDS)
    for n in range(100):
        with pytest.raises(InvalidToken):
            await certs.key(f"bogus-{n}")
    assert google.requests == 3


async def test_concurrent_first_requests_share_one_fetch(
    google: FakeGoogle, certs: GoogleCerts
) -> None:
    await asyncio.gather(*(certs.key("k1") for _ in range(50)))
    assert google.requests == 1


async def test_stale_keys_stay_in_use_while_google_is_unreachable(
    google: FakeGoogle, certs: GoogleCerts, clock: Clock
) -> None:
    google.max_age = 600
    await certs.key("k1")
    google.status = 503
    clock.advance(601)

    assert await certs.key("k1") is not None
    # Failed fetches are retried after a pause, not on every request.
    for _ in range(20):
        await certs.key("k1")
    assert google.requests == 2


async def test_no_keys_at_all_is_retry_later(google: FakeGoogle, certs: GoogleCerts) -> None:
    google.status = 500
    with pytest.raises(CertsUnavailable):
        await certs.key("k1")
    with pytest.raises(CertsUnavailable):
        await certs.key("k1")
    assert google.requests == 1


@pytest.mark.parametrize(
    ("cache_control", "age", "ttl"),
    [
        ("public, max-age=19800, must-revalidate, no-transform", None, 19800),
        ("public, max-age=19800", "800", 19000),
        ("no-cache", None, 300),
        (None, None, 300),
        ("max-age=0", None, MIN_CERTS_TTL_SECONDS),
    ],
)
def test_certs_ttl_follows_cache_control(
    cache_control: str | None, age: str | None, ttl: float
) -> None:
    assert certs_ttl(cache_control, age) == ttl


async def test_a_verified_token_is_cached_until_it_expires(
    google: FakeGoogle, verifier: IdTokenVerifier, clock: Clock
) -> None:
    now = int(clock.now)
    token = google.mint(iat=now, exp=now + 120)

    first = await verifier.verify(token)
    google.keys.clear()  # were the signature checked again, the key would be missing
    google.max_age = 0
    assert await verifier.verify(token) == first
    assert first.email == PUSHER

    clock.advance(120 + 31)  # past exp and the 30 s clock skew
    with pytest.raises(InvalidToken, match="expired"):
        await verifier.verify(token)


async def test_the_token_cache_is_bounded(google: FakeGoogle, certs: GoogleCerts) -> None:
    verifier = IdTokenVerifier(PUSH_AUDIENCE, certs, cache_size=8)
    tokens = [google.mint(sub=str(n)) for n in range(20)]
    for token in tokens:
        await verifier.verify(token)
    assert verifier.cached_tokens == 8
    # The oldest were forgotten, and verify again from the cached keys.
    assert (await verifier.verify(tokens[0])).email == PUSHER
    assert google.requests == 1
