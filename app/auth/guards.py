"""Push and read authentication as the settings ask for it, installed as Litestar guards.

Guards run after routing and before the body is read or any parameter is
parsed, so a push without credentials is refused on its headers alone, however
large its body.

The service fails closed: with no push authentication configured it starts
only on a loopback address, where nothing but this machine can write.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

from litestar import Litestar
from litestar.connection import ASGIConnection
from litestar.datastructures import Headers
from litestar.handlers import BaseRouteHandler
from litestar.types import Guard, Scope

from app.auth.access import (
    Credentials,
    ExportAccess,
    PassAccess,
    Principals,
    PushAccess,
    ReadAccess,
    SecretAccess,
    split_list,
)
from app.auth.oidc import GoogleCerts, Identity, IdTokenVerifier
from app.auth.passes import ReadPasses
from app.errors import AmbiguousRequest, CertsUnavailable, Forbidden, RecordlineError, Unauthorized
from app.settings import Settings, check_access, is_loopback

log = logging.getLogger(__name__)

# Set in a request's scope when a read pass, not a token, admitted it (`admitted_by_pass`).
ADMITTED_BY_COOKIE: Final = "recordline.read_pass"
# Set in a request's scope to who the caller proved to be to a guard (`proven_as`).
PROVEN_AS: Final = "recordline.principal"
# Who a guard admitted by the push secret as a bearer token, where no identity is checked.
SHARED_SECRET_HOLDER: Final = "holder of RECORDLINE_PUSH_TOKEN"  # noqa: S105 - a name, not a secret
NO_CREDENTIALS: Final = Credentials(None, None)
# Why an operator's write (a replay, a test message's publish) is refused to everyone:
# no operator can be told.
OPERATORS_UNKNOWN: Final = (
    "{what} needs RECORDLINE_READ_AUDIENCE and RECORDLINE_OPERATOR_PRINCIPALS on a "
    "service that authenticates pushes or is bound beyond loopback."
)
# What operators alone read, as a refusal names it: dead letters (a payload whole, never
# masked) and the access record (every reader named).
OPERATOR_READS: Final = "read the dead letters and the access record"
# Why `/metrics` beyond loopback answers no one: no operator can be told.
METRICS_REFUSAL: Final = (
    "/metrics beyond loopback is for operators: it needs RECORDLINE_READ_AUDIENCE and "
    "RECORDLINE_OPERATOR_PRINCIPALS (or RECORDLINE_PUSH_TOKEN as a bearer token where that is "
    "the setup); or send metrics to Cloud Monitoring (OTEL_METRICS_EXPORTER=gcp_monitoring)."
)


class Auth:
    """The guards for pushes and reads, and the certificate client they share."""

    def __init__(
        self,
        *,
        push: PushAccess | None,
        read: ReadAccess | None,
        certs: GoogleCerts | None,
        operate: ReadAccess | SecretAccess | None = None,
        replay_refusal: str | None = None,
        owns_certs: bool = True,
        passes: PassAccess | None = None,
        export: ExportAccess | None = None,
        metrics: ReadAccess | SecretAccess | None = None,
        metrics_refusal: str | None = None,
        publish: ReadAccess | SecretAccess | None = None,
        operator_reads: ReadAccess | SecretAccess | None = None,
    ) -> None:
        self._push = push
        # Where exporting is a permission of its own; None: every reader exports.
        self._export = export if read is not None else None
        self._read = read
        # Read passes, where configured (they need `read`: a token to be issued one).
        self.passes = passes if read is not None else None
        self._certs = certs
        # Whether this app opens and closes the key client, or a cell does it once for
        # every system's (`from_settings`' `certs`).
        self._owns_certs = owns_certs
        self._operate = operate
        self._replay_refusal = replay_refusal
        # The same operators, told and logged of a publish (`publish_guards`).
        self._publish = publish if publish is not None else operate
        # …and of a read of what operators alone read (`operator_read_guards`).
        self._operator_reads = operator_reads if operator_reads is not None else operate
        # `/metrics` beyond loopback: operators alone, or refused (None and None: open).
        self._metrics = metrics
        self._metrics_refusal = metrics_refusal

    @classmethod
    def from_settings(cls, settings: Settings, *, certs: GoogleCerts | None = None) -> Auth:
        """Raise SettingsError for a configuration that would leave the service open
        (`check_access`). Tokens are verified with `certs` where given (a cell's one
        key client, every system's), else with a client of this app's own."""
        check_access(settings)
        auth, host = settings.auth, settings.server.host
        accounts = split_list(auth.push_service_accounts)
        operators = Principals(split_list(auth.operator_principals))
        shared = certs
        certs = None
        if auth.push_audience or auth.read_audience:
            certs = shared or GoogleCerts(auth.oidc_certs_url)

        push = None
        if auth.push_audience or auth.push_token:
            push = PushAccess(
                verifier=IdTokenVerifier(
                    auth.push_audience, certs, trust_upstream=auth.trust_cloud_run_iam
                )
                if certs and auth.push_audience
                else None,
                service_accounts=accounts,
                shared_token=auth.push_token or None,
            )
        elif is_loopback(host):
            log.warning(
                "PUSH IS UNAUTHENTICATED: anything that reaches %s can write records. Set "
                "RECORDLINE_PUSH_AUDIENCE and RECORDLINE_PUSH_SERVICE_ACCOUNTS, or "
                "RECORDLINE_PUSH_TOKEN, before binding to another address.",
                host,
            )

        read: ReadAccess | None = None
        export: ExportAccess | None = None
        operate: ReadAccess | SecretAccess | None = None
        publish: ReadAccess | SecretAccess | None = None
        operator_reads: ReadAccess | SecretAccess | None = None
        metrics: ReadAccess | SecretAccess | None = None
        replay_refusal = None
        if certs is not None and auth.read_audience:
            # Several audiences: the read audience, and Cloud Run's URL, which an uptime
            # check's token names (Cloud Monitoring mints it for the URL it probes).
            audiences = [a.strip() for a in auth.read_audience.split(",") if a.strip()]
            verifier = IdTokenVerifier(audiences, certs, trust_upstream=auth.trust_cloud_run_iam)
            # Operators read what they replay (the rejections) as well, and exporters
            # what they export.
            exporters = split_list(auth.export_principals)
            readers = Principals(
                split_list(auth.read_principals) | split_list(auth.operator_principals) | exporters
            )
            read = ReadAccess(verifier=verifier, principals=readers)
            if exporters:
                # Operators export too: they read every row unmasked already.
                export = ExportAccess(
                    read, Principals(exporters | split_list(auth.operator_principals))
                )
            operate = ReadAccess(
                verifier=verifier,
                principals=operators,
                what="replay",
                setting="RECORDLINE_OPERATOR_PRINCIPALS",
            )
            publish = ReadAccess(
                verifier=verifier,
                principals=operators,
                what="publish",
                setting="RECORDLINE_OPERATOR_PRINCIPALS",
            )
            operator_reads = ReadAccess(
                verifier=verifier,
                principals=operators,
                what=OPERATOR_READS,
                setting="RECORDLINE_OPERATOR_PRINCIPALS",
            )
            metrics = ReadAccess(
                verifier=verifier,
                principals=operators,
                what="read /metrics",
                setting="RECORDLINE_OPERATOR_PRINCIPALS",
            )
        elif auth.push_token:
            # No Google identity to check (the emulator's setup): replay takes the
            # secret that configured the service, as a bearer token.
            operate = SecretAccess(auth.push_token)
            publish = SecretAccess(auth.push_token, what="publish")
            operator_reads = SecretAccess(auth.push_token, what=OPERATOR_READS)
            metrics = SecretAccess(auth.push_token, what="read /metrics")
        elif push is not None or not is_loopback(host):
            # Once anything is authenticated, a same-host proxy must not make replay an
            # unauthenticated write: only the loopback dev service, with no
            # authentication at all, replays for anyone who can reach it.
            replay_refusal = OPERATORS_UNKNOWN.format(what="Replay")
        if read is None and auth.public_reads:
            log.warning(
                "READS ARE PUBLIC (RECORDLINE_PUBLIC_READS): /v1 needs no token here, and only an "
                "outer gate such as Cloud Run's invoker check protects records and rejections."
            )
        passes = ReadPasses.from_settings(settings)
        # `/metrics` (where served) is anyone's on a loopback service, who could read its
        # files as well; beyond loopback its labels (producers, systems) and figures (a
        # system's traffic) are an operator's, as a replay is.
        metrics_refusal = None
        if is_loopback(host):
            metrics = None
        elif metrics is None:
            metrics_refusal = METRICS_REFUSAL
        return cls(
            metrics=metrics,
            metrics_refusal=metrics_refusal,
            push=push,
            read=read,
            certs=certs,
            operate=operate,
            replay_refusal=replay_refusal,
            publish=publish,
            operator_reads=operator_reads,
            owns_certs=shared is None,
            passes=None if passes is None else PassAccess(passes, ReadPasses.path_prefix(settings)),
            export=export,
        )

    async def operates(self, connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
        """Whether the caller may replay, as `replay_guards` decide, without refusing
        anyone: operators see what masking hides from other readers. With no
        authentication at all (the loopback dev service) every caller replays, and
        so operates."""
        operate = self._operate
        if operate is None:
            return self._replay_refusal is None
        return await operate.admits(credentials(connection))

    async def exports(self, connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
        """Whether a caller who reads may export, as `export_guards` decide, without
        refusing anyone (what the console offers): every reader, unless exporting is a
        permission of its own."""
        export = self._export
        return export is None or await export.admits(credentials(connection))

    @property
    def everyone_operates(self) -> bool:
        """Whether every caller may replay (no authentication at all, on loopback):
        a mask then hides nothing from anyone."""
        return self._operate is None and self._replay_refusal is None

    async def check(self) -> None:
        """Raise RetryLater while tokens cannot be verified (no signing keys)."""
        if self._certs is not None:
            await self._certs.check()

    @asynccontextmanager
    async def lifespan(self, _: Litestar) -> AsyncIterator[None]:
        if self._certs is None or not self._owns_certs:
            yield
            return
        await self._certs.open()
        try:
            yield
        finally:
            await self._certs.close()

    # Litestar deep-copies a Router as it registers it. A bound method would take a
    # copy of this object along, with a certificate client the lifespan never
    # opens; a closure is shared as it is.

    @property
    def push_guards(self) -> list[Guard]:
        push = self._push
        if push is None:
            return []

        async def check_push(
            connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
        ) -> None:
            await push.check(credentials(connection), connection.query_params.get("token"))

        return [check_push]

    @property
    def read_guards(self) -> list[Guard]:
        read = self._read
        if read is None:
            return []

        async def check_read(
            connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
        ) -> None:
            read.require(proven(connection, await read.verified(credentials(connection))))

        return [check_read]

    @property
    def pass_read_guards(self) -> list[Guard]:
        """`read_guards`, where a request without a token may bring a read pass instead:
        it then reads as a reader (never an operator), and `admitted_by_pass` says so.
        A request with a token is judged by its token alone."""
        read, passes = self._read, self.passes
        if read is None or passes is None:
            return self.read_guards

        async def check_read_or_pass(
            connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
        ) -> None:
            presented = credentials(connection)
            if presented == NO_CREDENTIALS and passes.admits(
                connection.headers.getall("cookie", [])
            ):
                connection.scope[ADMITTED_BY_COOKIE] = True  # type: ignore[typeddict-unknown-key]
                return
            read.require(proven(connection, await read.verified(presented)))

        return [check_read_or_pass]

    @property
    def export_guards(self) -> list[Guard]:
        """`pass_read_guards`, where every reader exports; where exporting is a permission
        of its own, an exporter's token (or an operator's), read as `read_guards` read it
        first: a reader not named is refused 403, as is a read pass, which names no one."""
        export, passes = self._export, self.passes
        if export is None:
            return self.pass_read_guards

        async def check_export(
            connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
        ) -> None:
            presented = credentials(connection)
            if (
                presented == NO_CREDENTIALS
                and passes is not None
                and passes.admits(connection.headers.getall("cookie", []))
            ):
                raise export.refuse_pass()
            export.require(proven(connection, await export.verified(presented)))

        return [check_export]

    @property
    def metrics_refused(self) -> str | None:
        """Why `/metrics` answers no one here (beyond loopback, with no operators), if so."""
        return self._metrics_refusal

    @property
    def metrics_refusals(self) -> tuple[type[RecordlineError], ...]:
        """What `metrics_guards` can answer besides the scrape: an operator's ID token
        missing, bad (401) or not an operator's (403), Google's keys unreachable (503);
        the push secret missing or wrong (401); everyone refused (403); nothing on
        loopback."""
        if self._metrics_refusal is not None:
            return (Forbidden,)
        if isinstance(self._metrics, SecretAccess):
            return (Unauthorized,)
        if self._metrics is not None:
            return (Unauthorized, Forbidden, CertsUnavailable)
        return ()

    @property
    def metrics_guards(self) -> list[Guard]:
        """`/metrics`: anyone on a loopback service; beyond it, operators alone, as a
        replay (their tokens, or the push secret where no identity is checked), and
        refused to everyone where no operator can be told."""
        return _operator_guards(self._metrics, self._metrics_refusal, "/metrics")

    @property
    def replay_guards(self) -> list[Guard]:
        """Operators only (or the push secret where no Google identity is checked);
        with no authentication at all, loopback callers only."""
        return _operator_guards(self._operate, self._replay_refusal, "replay")

    @property
    def publish_guards(self) -> list[Guard]:
        """`replay_guards`' operators, for a test message (`POST /v1/publish`): a refusal
        says, and its log line names, a publish."""
        refusal = self._replay_refusal and OPERATORS_UNKNOWN.format(
            what="Publishing a test message"
        )
        return _operator_guards(self._publish, refusal, "publish")

    @property
    def operator_read_guards(self) -> list[Guard]:
        """`replay_guards`' operators, for what they alone read (`GET /v1/dead-letters`,
        `GET /v1/access`): a refusal says, and its log line names, that read."""
        refusal = self._replay_refusal and OPERATORS_UNKNOWN.format(
            what="Reading the dead letters and the access record"
        )
        return _operator_guards(self._operator_reads, refusal, "operators' read")


def _operator_guards(
    operate: ReadAccess | SecretAccess | None, refusal: str | None, what: str
) -> list[Guard]:
    """Guards admitting whom `operate` admits; where it is None, everyone, or no one
    (403 `refusal`) where one is given."""
    if operate is not None:

        async def check_operator(
            connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
        ) -> None:
            presented = credentials(connection)
            if isinstance(operate, ReadAccess):
                operate.require(proven(connection, await operate.verified(presented)))
            else:
                await operate.check(presented)
                connection.scope[PROVEN_AS] = SHARED_SECRET_HOLDER  # type: ignore[typeddict-unknown-key]

        return [check_operator]
    if refusal is None:
        return []

    async def refuse_without_configuration(
        connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
    ) -> None:
        log.warning("%s refused with 403: %s", what, refusal)
        raise Forbidden(refusal)

    return [refuse_without_configuration]


def proven(connection: ASGIConnection[Any, Any, Any, Any], identity: Identity) -> Identity:
    """`identity`, said in the request's scope (`proven_as`) before a guard judges it."""
    connection.scope[PROVEN_AS] = identity.email  # type: ignore[typeddict-unknown-key]
    return identity


def proven_as(scope: Scope) -> str | None:
    """Who the caller of `scope` proved to be to a guard, admitted or refused: a verified
    token's e-mail, the holder of the push secret, or None where no guard named anyone
    (a read pass, a token that was not valid, or no authentication)."""
    found = scope.get(PROVEN_AS)
    return found if isinstance(found, str) else None


def admitted_by_pass(scope: Scope) -> bool:
    """Whether a read pass, not a token, admitted the request of `scope`."""
    return scope.get(ADMITTED_BY_COOKIE) is True


def credentials(connection: ASGIConnection[Any, Any, Any, Any]) -> Credentials:
    """The credentials a request carries; AmbiguousRequest if it carries one twice."""
    headers = connection.headers
    return Credentials(
        _once(headers, "Authorization"), _once(headers, "X-Serverless-Authorization")
    )


def _once(headers: Headers, name: str) -> str | None:
    """The header `name` of a request, which may carry it once at most: of two, which one
    a proxy checked (Cloud Run's invoker check reads one of them) cannot be known here."""
    values = headers.getall(name, [])
    if len(values) > 1:
        raise AmbiguousRequest(
            f"{len(values)} {name} headers: a request carries its credentials once"
        )
    return values[0] if values else None
