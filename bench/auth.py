"""Push throughput with OIDC verification on (cached tokens) against auth off.

    python3 dev.py bench auth [--seconds 10] [--connections 64] [--rounds 2]

Both servers are `recordline serve` on the in-memory store; the "on" server
verifies every push's Google-style token against a JWKS served from this
process (RSA key made here, `Cache-Control: max-age=3600`). wrk sends the same
valid token on every request, as Pub/Sub does for an hour. Rounds alternate
off/on so drift on a shared machine hits both. Target: on/off ≥ 0.9.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from app.auth.access import Credentials, PushAccess
from app.auth.oidc import GoogleCerts, IdTokenVerifier
from bench.harness import RECORDLINE, free_port, push_script, server, table, wrk

AUDIENCE = "https://recordline.bench/pubsub/push"
PUSHER = "push@bench.iam.gserviceaccount.com"
KID = "bench-1"


class Certs:
    """A JWKS endpoint like Google's, counting how often it is asked."""

    def __init__(self, key: rsa.RSAPrivateKey) -> None:
        jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        body = json.dumps({"keys": [{**jwk, "kid": KID, "alg": "RS256", "use": "sig"}]}).encode()
        self.requests = 0
        certs = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                certs.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "public, max-age=3600")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/oauth2/v3/certs"

    @contextmanager
    def serving(self) -> Iterator[Certs]:
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()


def token(key: rsa.RSAPrivateKey, subject: str = "1") -> str:
    now = int(time.time())
    claims = {
        "iss": "https://accounts.google.com",
        "aud": AUDIENCE,
        "sub": subject,
        "email": PUSHER,
        "email_verified": True,
        "iat": now,
        "exp": now + 3600,
    }
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": KID})


async def guard_cost(
    key: rsa.RSAPrivateKey, certs_url: str, n: int = 100_000
) -> tuple[float, float]:
    """µs per push check with the token cached, and per first sight of a token.

    CPU time in this process, so it holds still while wrk figures move with
    whatever else the machine runs.
    """
    async with GoogleCerts(certs_url) as certs:
        push = PushAccess(
            verifier=IdTokenVerifier(AUDIENCE, certs),
            service_accounts=frozenset({PUSHER}),
            shared_token=None,
        )
        header = Credentials(f"Bearer {token(key)}")
        await push.check(header, None)
        started = time.perf_counter()
        for _ in range(n):
            await push.check(header, None)
        cached = (time.perf_counter() - started) / n * 1e6
        fresh = IdTokenVerifier(AUDIENCE, certs, cache_size=1)
        tokens = [token(key, subject=str(i)) for i in range(200)]
        started = time.perf_counter()
        for t in tokens:
            await fresh.verify(t)
        first = (time.perf_counter() - started) / len(tokens) * 1e6
    return cached, first


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench auth")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    certs = Certs(key)
    base_env = {
        "RECORDLINE_LOG_LEVEL": "ERROR",
        # Empty means unset: whatever the shell exports does not leak in.
        "RECORDLINE_PUSH_AUDIENCE": "",
        "RECORDLINE_PUSH_SERVICE_ACCOUNTS": "",
        "RECORDLINE_PUSH_TOKEN": "",
        "RECORDLINE_READ_AUDIENCE": "",
        "RECORDLINE_READ_PRINCIPALS": "",
    }
    modes = {
        "auth off": (base_env, push_script()),
        "OIDC on (cached token)": (
            {
                **base_env,
                "RECORDLINE_PUSH_AUDIENCE": AUDIENCE,
                "RECORDLINE_PUSH_SERVICE_ACCOUNTS": PUSHER,
                "RECORDLINE_OIDC_CERTS_URL": certs.url,
            },
            push_script(headers={"Authorization": f"Bearer {token(key)}"}),
        ),
    }
    rates: dict[str, list[float]] = {name: [] for name in modes}
    rows = [["round", "mode", "msgs/s", "p50 ms", "p99 ms", "non-2xx", "cert fetches"]]
    with certs.serving():
        for round_ in range(1, args.rounds + 1):
            for name, (env, script) in modes.items():
                port = free_port()
                before = certs.requests
                command = [RECORDLINE, "serve", "--store", "memory:", "--port", str(port)]
                with server(command, port, env) as srv:
                    wrk(srv.url, script, connections=args.connections, seconds=2)  # warm up
                    load = wrk(srv.url, script, connections=args.connections, seconds=args.seconds)
                rates[name].append(load.rate)
                rows.append(
                    [
                        str(round_),
                        name,
                        f"{load.rate:,.0f}",
                        f"{load.p50:.1f}",
                        f"{load.p99:.1f}",
                        str(load.non2xx + load.socket_errors),
                        str(certs.requests - before),
                    ]
                )

        cached, first = asyncio.run(guard_cost(key, certs.url))

    off, on = (rates[name] for name in modes)
    ratios = [b / a for a, b in zip(off, on, strict=True)]
    print(f"POST /pubsub/push, wrk {args.connections} connections, {args.seconds:g} s per run")
    print(table(rows))
    print(
        f"on/off = {statistics.median(ratios):.3f} median over {len(ratios)} rounds "
        f"({', '.join(f'{r:.3f}' for r in ratios)}); target ≥ 0.90"
    )
    print(
        f"push check, token cached: {cached:.1f} µs; a token's first verification: {first:.0f} µs"
    )
    return 0
