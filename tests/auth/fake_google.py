"""A stand-in for Google's token issuer: RSA keys, a key endpoint, and tokens signed with them.

The keys are served in either format Google serves them, `jwks` (like
/oauth2/v3/certs) or `x509` (like /oauth2/v1/certs: key id -> self-signed PEM
certificate), over real HTTP from a thread (http.server on 127.0.0.1:0),
with `Cache-Control: max-age` like Google's, and counts the requests it gets,
so tests can see when the service fetches keys.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import threading
import time
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

PUSH_AUDIENCE = "https://recordline.example.com/pubsub/push"
READ_AUDIENCE = "https://recordline.example.com"
PUSHER = "push@demo.iam.gserviceaccount.com"


@cache
def rsa_key(name: str) -> rsa.RSAPrivateKey:
    """One 2048-bit key per name for the whole run: generating one takes ~50 ms."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def certificate(
    key: rsa.RSAPrivateKey, *, valid_from: datetime.datetime, valid_until: datetime.datetime
) -> str:
    """A self-signed certificate for `key`, in PEM, as Google publishes its keys at v1."""
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "securetoken.example")])
    built = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid_from)
        .not_valid_after(valid_until)
        .sign(key, hashes.SHA256())
    )
    return built.public_bytes(serialization.Encoding.PEM).decode()


class FakeGoogle:
    def __init__(self, format: str = "jwks") -> None:
        self.format = format
        # Served as the body instead of the keys, when set (a broken endpoint).
        self.document: Any = None
        # Validity of the certificates served in the `x509` format.
        now = datetime.datetime.now(datetime.UTC)
        self.valid_from = now - datetime.timedelta(days=1)
        self.valid_until = now + datetime.timedelta(days=14)
        self.keys: dict[str, rsa.RSAPrivateKey] = {"k1": rsa_key("k1")}
        self.max_age = 3600
        self.status = 200
        self.requests = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(
            # A short poll keeps shutdown (and so each test's teardown) quick.
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.01},
            daemon=True,
        )

    @property
    def certs_url(self) -> str:
        host, port = self._server.server_address[:2]
        version = "v3" if self.format == "jwks" else "v1"
        return f"http://{host!s}:{port}/oauth2/{version}/certs"

    def start(self) -> FakeGoogle:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid, key in self.keys.items():
            jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
            keys.append({**jwk, "kid": kid, "alg": "RS256", "use": "sig"})
        return {"keys": keys}

    def certificates(self) -> dict[str, str]:
        return {
            kid: certificate(key, valid_from=self.valid_from, valid_until=self.valid_until)
            for kid, key in self.keys.items()
        }

    def served(self) -> Any:
        if self.document is not None:
            return self.document
        return self.jwks() if self.format == "jwks" else self.certificates()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        google = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                google.requests += 1
                body = json.dumps(google.served()).encode()
                self.send_response(google.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", f"public, max-age={google.max_age}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        return Handler

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {
            "iss": "https://accounts.google.com",
            "aud": PUSH_AUDIENCE,
            "azp": "111",
            "sub": "111",
            "email": PUSHER,
            "email_verified": True,
            "iat": now,
            "exp": now + 3600,
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def mint(
        self, *, kid: str = "k1", key: rsa.RSAPrivateKey | None = None, **overrides: Any
    ) -> str:
        """A token as Google would sign it; `key` signs in place of the published one."""
        signer = key if key is not None else self.keys[kid]
        return jwt.encode(self.claims(**overrides), signer, algorithm="RS256", headers={"kid": kid})

    def mint_text(self, claims: str, *, kid: str = "k1") -> str:
        """A token signed with the published key over claims written as JSON text, for
        values json.dumps never writes (`1e400`, which JSON parsers read as infinity)."""
        return jwt.PyJWS().encode(
            claims.encode(), self.keys[kid], algorithm="RS256", headers={"kid": kid}
        )

    def forge_hs256(self, kid: str = "k1") -> str:
        """HS256 keyed with the published public key: the classic algorithm-confusion attack."""
        secret = (
            self.keys[kid]
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        head = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
        body = _b64(json.dumps(self.claims()).encode())
        mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
        return f"{head}.{body}.{_b64(mac)}"

    def forge_none(self, kid: str = "k1") -> str:
        head = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": kid}).encode())
        body = _b64(json.dumps(self.claims()).encode())
        return f"{head}.{body}."

    def strip_signature(self, token: str) -> str:
        """What Cloud Run forwards once its own IAM check has verified a token."""
        head, body, _ = token.split(".")
        return f"{head}.{body}.SIGNATURE_REMOVED_BY_GOOGLE"
