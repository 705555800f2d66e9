"""Google-signed OIDC ID tokens, verified off the hot path.

Pub/Sub attaches the same token to every push until it nears expiry, so a verdict
is cached by the token's hash until it expires: a push costs one SHA-256 and one
look-up. Google's signing keys are fetched with an async client (`GoogleCerts`).
google-auth's `verify_token` is not used: it fetches the certificates on every
call with a blocking client.

Design: docs/security.md
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
import time
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from typing import Any

import httpx
import jwt
import msgspec
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.algorithms import RSAAlgorithm

# Declared with every other kind of error; raised here, and named from here by the
# routes that answer with it.
from app.errors import CertsUnavailable

log = logging.getLogger(__name__)

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v3/certs"
GOOGLE_ISSUERS = frozenset({"accounts.google.com", "https://accounts.google.com"})

# Google's clock and ours may disagree by a few seconds; 30 s tolerates that
# without accepting a token noticeably past its one-hour life.
CLOCK_SKEW_SECONDS = 30.0
# Google issues ID tokens for one hour (`exp - iat` is 3600 s). A token claiming
# a longer life is not one of Google's: refused, so that no token, least of all
# one whose signature Cloud Run replaced, is good for longer than Google meant.
MAX_TOKEN_LIFETIME_SECONDS = 3600.0
# Google's ID tokens are about 1 KB; anything past 8 KB is not one, and is
# refused before it is hashed or parsed.
MAX_TOKEN_LENGTH = 8192
# Pub/Sub reuses one token per subscription for up to an hour, and readers hold
# one each: a few thousand entries cover any realistic fleet, at ~200 bytes each.
TOKEN_CACHE_SIZE = 4096
# Google publishes a new key hours before it signs with it, so a token naming an
# unknown key is almost always forged; one refetch a minute still picks up a
# genuine rotation promptly.
UNKNOWN_KEY_REFETCH_SECONDS = 60.0
# Google serves its keys with max-age of several hours. Without a usable
# max-age, or with one below this floor, keys are kept this long, so a bad
# header cannot put a fetch on every request.
MIN_CERTS_TTL_SECONDS = 60.0
DEFAULT_CERTS_TTL_SECONDS = 300.0
# After a failed fetch, stale keys stay in use and the next attempt waits this long.
RETRY_FETCH_SECONDS = 10.0
FETCH_TIMEOUT_SECONDS = 5.0

_MAX_AGE = re.compile(r"(?:^|[,\s])max-age\s*=\s*(\d+)", re.IGNORECASE)


class InvalidToken(Exception):
    """The token proves nothing; the message says why, for the log only."""


class Identity(msgspec.Struct, frozen=True):
    """What a verified token says about its bearer."""

    email: str
    # The Google Workspace or Cloud organisation domain (`hd`), absent for
    # consumer accounts and service accounts.
    hosted_domain: str | None
    expires: float  # `exp`, seconds since the epoch


class NoSigningKeys(ValueError):
    """A certificate document Recordline cannot take a key from; the message says why."""


def certs_ttl(cache_control: str | None, age: str | None) -> float:
    """How long a certificate response may be used, from its caching headers."""
    match = _MAX_AGE.search(cache_control or "")
    if match is None:
        return DEFAULT_CERTS_TTL_SECONDS
    ttl = int(match.group(1))
    # A response served from a shared cache has already spent `Age` seconds.
    if age is not None and age.isdigit():
        ttl -= int(age)
    return max(float(ttl), MIN_CERTS_TTL_SECONDS)


def signing_keys(body: bytes, *, now: datetime | None = None) -> dict[str, jwt.PyJWK]:
    """The RS256 keys of a certificate document, by key id, in either format Google serves.

    Raises NoSigningKeys when the document is neither format or holds no usable key.
    """
    try:
        document = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise NoSigningKeys(f"the response is not JSON ({exc})") from None
    match document:
        case {"keys": list(entries)}:
            keys = _jwks_keys(entries)
        case dict() if document and all(
            isinstance(v, str) and "BEGIN CERTIFICATE" in v for v in document.values()
        ):
            keys = _certificate_keys(document, now or datetime.now(UTC))
        case _:
            raise NoSigningKeys(
                "the response is neither a JWKS (`keys`) nor a map of key ids to PEM certificates"
            )
    if not keys:
        raise NoSigningKeys("the response holds no usable RS256 signing key")
    return keys


def _jwks_keys(entries: list[Any]) -> dict[str, jwt.PyJWK]:
    keys: dict[str, jwt.PyJWK] = {}
    for entry in entries:
        kid = entry.get("kid") if isinstance(entry, dict) else None
        if not isinstance(kid, str) or entry.get("kty") != "RSA":
            continue
        if entry.get("use", "sig") != "sig" or entry.get("alg", "RS256") != "RS256":
            continue
        try:
            keys[kid] = jwt.PyJWK(entry, algorithm="RS256")
        except jwt.PyJWTError as exc:
            log.warning("ignoring signing key %s: %s", kid, exc)
    return keys


def _certificate_keys(certificates: dict[str, str], now: datetime) -> dict[str, jwt.PyJWK]:
    keys: dict[str, jwt.PyJWK] = {}
    for kid, pem in certificates.items():
        try:
            certificate = x509.load_pem_x509_certificate(pem.encode())
        except ValueError as exc:
            log.warning("ignoring certificate %s: %s", kid, exc)
            continue
        if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
            log.warning(
                "ignoring certificate %s: valid from %s to %s only",
                kid,
                certificate.not_valid_before_utc.isoformat(),
                certificate.not_valid_after_utc.isoformat(),
            )
            continue
        public_key = certificate.public_key()
        if not isinstance(public_key, RSAPublicKey):
            log.warning("ignoring certificate %s: not an RSA key", kid)
            continue
        jwk = RSAAlgorithm.to_jwk(public_key, as_dict=True)
        keys[kid] = jwt.PyJWK({**jwk, "kid": kid, "alg": "RS256", "use": "sig"}, algorithm="RS256")
    return keys


class GoogleCerts:
    """Google's token-signing keys, fetched asynchronously and cached.

    In either format Google serves them (a JWKS at /oauth2/v3/certs, a map of key
    id to X.509 certificate at /oauth2/v1/certs, the one google-auth reads), kept as
    long as the answer's `Cache-Control: max-age` allows, and fetched early only
    when a token names a key not held, at most once a minute: a flood of made-up
    key ids cannot turn into a flood of fetches. One fetch is in flight at a time;
    requests that arrive meanwhile wait for it rather than starting their own.
    """

    def __init__(
        self,
        url: str = GOOGLE_CERTS_URL,
        *,
        clock: Callable[[], float] = time.monotonic,
        unknown_key_refetch: float = UNKNOWN_KEY_REFETCH_SECONDS,
    ) -> None:
        self._url = url
        self._clock = clock
        self._unknown_key_refetch = unknown_key_refetch
        self._http: httpx.AsyncClient | None = None
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fresh_until = -math.inf
        self._last_attempt = -math.inf
        self._finished = 0  # fetch attempts completed, successful or not
        self._lock = asyncio.Lock()
        # Why the last fetch failed (URL and reason); None once one succeeded.
        self.failure: str | None = None

    async def open(self) -> None:
        self._http = httpx.AsyncClient(timeout=FETCH_TIMEOUT_SECONDS, follow_redirects=False)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def __aenter__(self) -> GoogleCerts:
        await self.open()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def key(self, kid: str) -> jwt.PyJWK:
        if self._clock() >= self._fresh_until:
            await self._refresh()
        key = self._keys.get(kid)
        if key is None and self._clock() - self._last_attempt >= self._unknown_key_refetch:
            await self._refresh()
            key = self._keys.get(kid)
        if key is not None:
            return key
        if not self._keys:
            raise CertsUnavailable("token-signing keys could not be fetched", retry_after=10)
        raise InvalidToken(f"signed with unknown key {kid!r}")

    async def check(self) -> None:
        """Raise CertsUnavailable, naming the URL and the reason, while no key is held.

        Called by the readiness probe, which so also fetches the keys before
        the first push needs them.
        """
        if self._clock() >= self._fresh_until:
            await self._refresh()
        if not self._keys:
            raise CertsUnavailable(
                f"no token-signing keys: {self.failure or self._url}", retry_after=10
            )

    async def _refresh(self) -> None:
        finished = self._finished
        async with self._lock:
            if self._finished != finished:
                return  # fetched (or tried) while this request waited for the lock
            self._last_attempt = self._clock()
            try:
                keys, ttl = await self._fetch()
            except (httpx.HTTPError, NoSigningKeys) as exc:
                keys, ttl = self._keys, RETRY_FETCH_SECONDS
                self.failure = f"{self._url}: {exc or type(exc).__name__}"
                log.warning(
                    "could not fetch token-signing keys from %s (%s); %s",
                    self._url,
                    exc or type(exc).__name__,
                    f"keeping {len(keys)} known keys" if keys else "none known yet",
                )
            else:
                self.failure = None
                log.info("fetched %d token-signing keys, fresh for %.0f s", len(keys), ttl)
            self._keys = keys
            self._fresh_until = self._clock() + ttl
            self._finished += 1

    async def _fetch(self) -> tuple[dict[str, jwt.PyJWK], float]:
        if self._http is None:
            raise httpx.TransportError("the certificate client is not open")
        response = await self._http.get(self._url, headers={"Accept": "application/json"})
        response.raise_for_status()
        keys = signing_keys(response.content)
        headers = response.headers
        return keys, certs_ttl(headers.get("cache-control"), headers.get("age"))


class IdTokenVerifier:
    """Verifies Google ID tokens for an audience (or any of several); remembers each
    verdict until `exp`.

    Only tokens that verified are remembered: an invalid token costs a parse
    and at most one RSA verification (~50 µs) each time it is presented.
    """

    def __init__(
        self,
        audience: str | Collection[str],
        certs: GoogleCerts,
        *,
        issuers: Collection[str] = GOOGLE_ISSUERS,
        clock: Callable[[], float] = time.time,
        cache_size: int = TOKEN_CACHE_SIZE,
        trust_upstream: bool = False,
    ) -> None:
        self._audience = audience
        self._trust_upstream = trust_upstream
        self._certs = certs
        self._issuers = issuers
        self._clock = clock
        self._cache_size = cache_size
        self._verified: dict[bytes, Identity] = {}

    @property
    def trusts_upstream(self) -> bool:
        """Whether a token whose signature Cloud Run replaced is judged by its claims."""
        return self._trust_upstream

    @property
    def cached_tokens(self) -> int:
        return len(self._verified)

    async def verify(self, token: str) -> Identity:
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken(f"{len(token)} characters long; not an ID token")
        # Hashed so the cache holds no usable credential.
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        identity = self._verified.get(digest)
        if identity is not None:
            if self._clock() < identity.expires:
                return identity
            del self._verified[digest]
        identity = await self._verify(token)
        self._remember(digest, identity)
        return identity

    async def _verify(self, token: str) -> Identity:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("not a JWT") from None
        # Checked before any key is looked up: `none`, and HS256 keyed with the
        # public key, never reach a verifier.
        if header.get("alg") != "RS256":
            raise InvalidToken(f"algorithm {header.get('alg')!r}, not RS256")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidToken("no key id")
        # Behind its invoker check, Cloud Run verifies the token and replaces its
        # signature before the request reaches us: nothing is left to verify it
        # with, so only the claims can be checked, and only when that gate is on.
        upstream = token.endswith(".SIGNATURE_REMOVED_BY_GOOGLE")
        if upstream and not self._trust_upstream:
            raise InvalidToken("signature removed by Google (token verified upstream)")
        key: jwt.PyJWK | str = "" if upstream else await self._certs.key(kid)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=["RS256"],
                audience=self._audience,
                issuer=self._issuers,
                # Times are checked below against our own (injectable) clock.
                options={
                    "require": ["exp", "iat", "aud", "iss"],
                    "verify_signature": not upstream,
                    "verify_aud": True,
                    "verify_iss": True,
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.InvalidSignatureError:
            raise InvalidToken("bad signature") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("wrong audience") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("wrong issuer") from None
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"invalid: {exc}") from None
        return self._identity(claims)

    def _identity(self, claims: dict[str, Any]) -> Identity:
        now = self._clock()
        expires, issued = claims["exp"], claims["iat"]
        if not _is_number(expires) or not _is_number(issued):
            raise InvalidToken("exp or iat is not a number")
        if not (math.isfinite(expires) and math.isfinite(issued)):
            raise InvalidToken("exp or iat is not a finite time")
        if expires - issued > MAX_TOKEN_LIFETIME_SECONDS + CLOCK_SKEW_SECONDS:
            raise InvalidToken(
                f"valid for {expires - issued:.0f} s; Google's tokens live "
                f"{MAX_TOKEN_LIFETIME_SECONDS:.0f} s"
            )
        if expires + CLOCK_SKEW_SECONDS <= now:
            raise InvalidToken("expired")
        if issued - CLOCK_SKEW_SECONDS > now:
            raise InvalidToken("issued in the future")
        email = claims.get("email")
        if not isinstance(email, str) or not email:
            raise InvalidToken("no email claim")
        # Only `true` will do: Google sends a JSON boolean, never the string.
        if claims.get("email_verified") is not True:
            raise InvalidToken("email not verified")
        hosted_domain = claims.get("hd")
        return Identity(
            email=email.lower(),
            hosted_domain=hosted_domain.lower() if isinstance(hosted_domain, str) else None,
            expires=float(expires) + CLOCK_SKEW_SECONDS,
        )

    def _remember(self, digest: bytes, identity: Identity) -> None:
        cache = self._verified
        if len(cache) >= self._cache_size:
            now = self._clock()
            for stale in [d for d, i in cache.items() if i.expires <= now]:
                del cache[stale]
            # Still full of live tokens: forget the oldest (dicts keep insertion order).
            while len(cache) >= self._cache_size:
                del cache[next(iter(cache))]
        cache[digest] = identity


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
