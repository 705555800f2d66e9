"""What a request must carry to push or to read, and what it is told when it does not.

Refusals say no more than a client needs (401: bring a valid token; 403: this
identity may not do this); the reason goes to the log at WARNING, never the
token itself.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

from app.auth.oidc import Identity, IdTokenVerifier, InvalidToken
from app.auth.passes import InvalidPass, Pass, ReadPasses, pass_value
from app.errors import ExportForbidden, Forbidden, Unauthorized

log = logging.getLogger(__name__)


def split_list(value: str) -> frozenset[str]:
    """`a@x.com, b@y.com` → {"a@x.com", "b@y.com"}, lower-cased (e-mails compare so)."""
    return frozenset(item.strip().lower() for item in value.split(",") if item.strip())


def bearer_token(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def _refuse(error: Unauthorized | Forbidden, reason: str, what: str) -> Unauthorized | Forbidden:
    log.warning(
        "%s refused with %d: %s",
        what,
        error.status,
        reason,
        extra={"fields": {"auth_status": error.status, "auth_reason": reason}},
    )
    return error


class Credentials(NamedTuple):
    """The headers a caller may prove who it is with."""

    authorization: str | None
    # Cloud Run's: when a request carries it, Cloud Run's invoker check reads it, not
    # `Authorization`, which then reaches the service exactly as the caller wrote it.
    serverless_authorization: str | None = None


def presented(credentials: Credentials, *, behind_cloud_run: bool) -> str | None:
    """The `Authorization`-style header that names the caller.

    Behind Cloud Run's invoker check (`behind_cloud_run`), the caller is whom that
    check verified: `X-Serverless-Authorization` when the request carries it, else
    `Authorization`. Beside `X-Serverless-Authorization`, `Authorization` was checked
    by nobody, so it must say the same or the request is refused: otherwise any
    invoker could send its own token to Cloud Run and a forged one, its signature
    "removed by Google", to this service. Elsewhere only `Authorization` counts, and
    every token in it is verified here, signature included.
    """
    authorization, serverless = credentials
    if not behind_cloud_run or serverless is None:
        return authorization
    if authorization is not None and bearer_token(authorization) != bearer_token(serverless):
        raise InvalidToken("Authorization and X-Serverless-Authorization name different tokens")
    return serverless


async def verified_identity(
    verifier: IdTokenVerifier, credentials: Credentials, *, realm: str, what: str
) -> Identity:
    """The identity behind a valid bearer token, or a logged 401."""
    try:
        authorization = presented(credentials, behind_cloud_run=verifier.trusts_upstream)
    except InvalidToken as exc:
        raise _refuse(Unauthorized(realm=realm, invalid_token=True), str(exc), what) from None
    token = bearer_token(authorization)
    if token is None:
        reason = "no bearer token" if authorization is None else "not a bearer token"
        raise _refuse(Unauthorized(realm=realm), reason, what)
    try:
        return await verifier.verify(token)
    except InvalidToken as exc:
        raise _refuse(Unauthorized(realm=realm, invalid_token=True), str(exc), what) from None


class Principals:
    """Who may read: e-mail addresses, and `domain:example.com` for a whole domain.

    A domain matches the token's `hd` claim (the Google Workspace or Cloud
    organisation) or, failing that, the domain of its verified e-mail, which
    is how service accounts (`…@PROJECT.iam.gserviceaccount.com`) are named.
    """

    def __init__(self, entries: Iterable[str]) -> None:
        emails, domains = set(), set()
        for entry in entries:
            if entry.startswith("domain:"):
                domains.add(entry.removeprefix("domain:"))
            else:
                emails.add(entry)
        self.emails = frozenset(emails)
        self.domains = frozenset(domains)

    def admit(self, identity: Identity) -> bool:
        if identity.email in self.emails:
            return True
        if identity.hosted_domain is not None and identity.hosted_domain in self.domains:
            return True
        return identity.email.rpartition("@")[2] in self.domains

    def __bool__(self) -> bool:
        return bool(self.emails or self.domains)


# What a push with the shared secret (the emulator's) is told when it is wrong or missing.
WRONG_IN_URL = "The ?token= in the push URL is wrong."
MISSING_FROM_URL = "A push needs the shared secret as ?token= in its URL."


class PushAccess:
    """Only the push subscription may write.

    Two ways in, either of which is enough when both are configured: the
    Google-signed token Pub/Sub attaches (audience and service account
    checked), or the shared secret in the endpoint URL's `?token=`, for the
    Pub/Sub emulator, which signs nothing.
    """

    realm = "pubsub-push"

    def __init__(
        self,
        *,
        verifier: IdTokenVerifier | None,
        service_accounts: frozenset[str],
        shared_token: str | None,
    ) -> None:
        self._verifier = verifier
        self._service_accounts = service_accounts
        self._shared_token = shared_token.encode() if shared_token else None

    async def check(self, credentials: Credentials, url_token: str | None) -> None:
        if self._shared_token is not None and url_token is not None:
            # Bytes, so that a non-ASCII guess is simply wrong rather than a TypeError.
            if hmac.compare_digest(url_token.encode("utf-8", "replace"), self._shared_token):
                return
            wrong = Unauthorized(WRONG_IN_URL, realm=self.realm, invalid_token=True)
            raise _refuse(wrong, "wrong ?token=", "push")
        if self._verifier is None:
            missing = Unauthorized(MISSING_FROM_URL, realm=self.realm)
            raise _refuse(missing, "no ?token=", "push")
        identity = await verified_identity(
            self._verifier, credentials, realm=self.realm, what="push"
        )
        if identity.email not in self._service_accounts:
            raise _refuse(
                Forbidden("This identity may not push to this service."),
                f"{identity.email} is not in RECORDLINE_PUSH_SERVICE_ACCOUNTS",
                "push",
            )


class ReadAccess:
    """Reads (and replays) need a Google ID token for the read audience, from an
    allowed principal: `what` names the action and the setting that lists them."""

    realm = "recordline"

    def __init__(
        self,
        *,
        verifier: IdTokenVerifier,
        principals: Principals,
        what: str = "read",
        setting: str = "RECORDLINE_READ_PRINCIPALS",
    ) -> None:
        self._verifier = verifier
        self._principals = principals
        self._what = what
        self._setting = setting

    async def admits(self, credentials: Credentials) -> bool:
        """Whether these credentials name one of the principals, said without a refusal
        or a log line: what decides how much a read shows (masking), not whether it
        is served."""
        return await self.admitted(credentials) is not None

    async def admitted(self, credentials: Credentials) -> Identity | None:
        """The verified identity of one of the principals, or None (as `admits`)."""
        try:
            authorization = presented(credentials, behind_cloud_run=self._verifier.trusts_upstream)
            token = bearer_token(authorization)
            if token is None:
                return None
            identity = await self._verifier.verify(token)
        except InvalidToken:
            return None
        return identity if self._principals.admit(identity) else None

    async def check(self, credentials: Credentials) -> None:
        await self.identity(credentials)

    async def identity(self, credentials: Credentials) -> Identity:
        """The verified identity of one of the principals, as `check` admits it."""
        identity = await self.verified(credentials)
        self.require(identity)
        return identity

    async def verified(self, credentials: Credentials) -> Identity:
        """The identity behind the credentials' token, whoever it is (401 if none)."""
        return await verified_identity(
            self._verifier, credentials, realm=self.realm, what=self._what
        )

    def require(self, identity: Identity) -> None:
        """A logged 403 unless `identity` is one of the principals."""
        if not self._principals.admit(identity):
            raise _refuse(
                Forbidden(f"This identity may not {self._what} on this service."),
                f"{identity.email} is not in {self._setting}",
                self._what,
            )


# What a reader who may not export is told (`ExportAccess`).
NOT_AN_EXPORTER = (
    "This identity may read but not export here: exporting is a permission of its own "
    "(RECORDLINE_EXPORT_PRINCIPALS; in a cell, the system's export_principals)."
)
NAMES_NO_EXPORTER = (
    "A read pass names no one, and exporting here is a permission of its own "
    "(RECORDLINE_EXPORT_PRINCIPALS; in a cell, the system's export_principals): export "
    "with an exporter's token."
)


class ExportAccess:
    """Exports where they are a permission of their own: a reader's token (`read`
    checks it, with its refusals), whose identity is one of the `exporters`."""

    def __init__(self, read: ReadAccess, exporters: Principals) -> None:
        self._read = read
        self._exporters = exporters

    async def admits(self, credentials: Credentials) -> bool:
        """Whether these credentials name an exporter (as `ReadAccess.admits`)."""
        identity = await self._read.admitted(credentials)
        return identity is not None and self._exporters.admit(identity)

    async def check(self, credentials: Credentials) -> None:
        self.require(await self.verified(credentials))

    async def verified(self, credentials: Credentials) -> Identity:
        """The identity behind the credentials' token, as `ReadAccess.verified`."""
        return await self._read.verified(credentials)

    def require(self, identity: Identity) -> None:
        """A logged 403 unless `identity` reads and is one of the exporters."""
        self._read.require(identity)
        if not self._exporters.admit(identity):
            raise _refuse(
                ExportForbidden(NOT_AN_EXPORTER),
                f"{identity.email} is not in RECORDLINE_EXPORT_PRINCIPALS",
                "export",
            )

    def refuse_pass(self) -> Unauthorized | Forbidden:
        """What a request a read pass admitted is told (logged): a pass names no one."""
        return _refuse(ExportForbidden(NAMES_NO_EXPORTER), "a read pass", "export")


class SecretAccess:
    """Replay with the shared push secret, where no Google identity can be checked
    (the emulator's setup): it proves the caller holds what configured the service."""

    realm = "recordline"

    def __init__(self, secret: str, *, what: str = "replay") -> None:
        self._secret = secret.encode()
        self._what = what

    async def admits(self, credentials: Credentials) -> bool:
        """Whether the bearer token is the secret (as `ReadAccess.admits`: no refusal)."""
        token = bearer_token(credentials.authorization)
        return token is not None and hmac.compare_digest(
            token.encode("utf-8", "replace"), self._secret
        )

    async def check(self, credentials: Credentials) -> None:
        token = bearer_token(credentials.authorization)
        if token is None:
            missing = Unauthorized(
                f"To {self._what} here, send RECORDLINE_PUSH_TOKEN as a bearer token.",
                realm=self.realm,
            )
            raise _refuse(missing, "no bearer token", self._what)
        if not hmac.compare_digest(token.encode("utf-8", "replace"), self._secret):
            wrong = Unauthorized(
                "The bearer token is not RECORDLINE_PUSH_TOKEN.",
                realm=self.realm,
                invalid_token=True,
            )
            raise _refuse(wrong, "wrong shared secret", self._what)


class PassAccess:
    """Reads with a read pass (app.auth.passes) for this app's own `path_prefix`
    (`/v1/`, or a cell's `/systems/{system}/v1/`), and the passes it issues."""

    realm = "recordline"

    def __init__(
        self,
        passes: ReadPasses,
        path_prefix: str,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._passes = passes
        self.path_prefix = path_prefix
        self._clock = clock

    @property
    def seconds(self) -> int:
        """How long a pass lasts."""
        return self._passes.seconds

    def issue(self) -> Pass:
        return self._passes.issue(self.path_prefix, self._clock())

    def admits(self, cookies: list[str]) -> bool:
        """Whether a valid pass among the `Cookie` headers admits the read; False if they
        carry none, a logged 401 (the reason, never the cookie) for one not valid here."""
        try:
            value = pass_value(cookies)
            if value is None:
                return False
            self._passes.verify(value, self.path_prefix, self._clock())
        except InvalidPass as exc:
            refused = Unauthorized(
                "The read pass is not valid here: a reader's token gets a new one "
                "(POST read-pass beside this read).",
                realm=self.realm,
                invalid_token=True,
            )
            raise _refuse(refused, str(exc), "read with a pass") from None
        return True
