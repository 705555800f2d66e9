"""The Google credentials a command finds where it runs: a key file, gcloud's login, or
the metadata server (a cell's Cloud Run job), each looked for within a bound.
"""

from __future__ import annotations

import threading
from typing import Any, Final

# How long looking for Google's default credentials may take. A key file or gcloud's
# login is found at once, and on Google Cloud the metadata server answers in
# milliseconds; elsewhere google-auth waits for that server ~14 s (three tries of
# 3 s) before it says there are none.
CREDENTIALS_SECONDS: Final = 3.0
PUBSUB_SCOPE: Final = "https://www.googleapis.com/auth/pubsub"


class NoCredentials(RuntimeError):
    """No Google credentials here (or no ID token for an audience); the message says
    what to set, in one line."""


def google_credentials(*, seconds: float = CREDENTIALS_SECONDS) -> Any:
    """Application Default Credentials for Pub/Sub, or NoCredentials within `seconds`."""
    import google.auth
    from google.auth.exceptions import GoogleAuthError

    found: list[Any] = []

    def look() -> None:
        try:
            found.append(google.auth.default(scopes=[PUBSUB_SCOPE])[0])
        except GoogleAuthError as exc:
            found.append(exc)

    # A daemon: one still asking the metadata server does not keep the command alive.
    looking = threading.Thread(target=look, name="credentials", daemon=True)
    looking.start()
    looking.join(seconds)
    how = (
        "set PUBSUB_EMULATOR_HOST to use the dev stack's emulator (`recordline dev` prints "
        "it; `python3 dev.py dev` from a checkout), or sign in for a Google Cloud project "
        "(`gcloud auth application-default login`, or GOOGLE_APPLICATION_CREDENTIALS)"
    )
    if not found:
        raise NoCredentials(f"no Google credentials found within {seconds:g} s: {how}")
    if isinstance(found[0], GoogleAuthError):
        raise NoCredentials(f"no Google credentials: {how}")
    return found[0]


class IdTokens:
    """ID tokens for `audience` from the credentials found where the command runs (a
    service account's key file, else the metadata server, as in a cell's Cloud Run
    job: google-auth's `fetch_id_token_credentials`), each minted again once it
    expires, for a command may outlast a token's hour. NoCredentials if none can be
    minted. The metadata server's tokens name the account (`format=full`), which the
    service's read guard checks against its principals."""

    def __init__(self, audience: str) -> None:
        self.audience = audience
        self._credentials: Any = None
        self._request: Any = None

    def __call__(self) -> str:
        import google.auth.transport.requests
        from google.auth.exceptions import GoogleAuthError
        from google.oauth2 import id_token

        try:
            if self._request is None:
                self._request = google.auth.transport.requests.Request()
            if self._credentials is None:
                self._credentials = id_token.fetch_id_token_credentials(  # type: ignore[no-untyped-call]
                    self.audience, request=self._request
                )
            if not self._credentials.valid:
                self._credentials.refresh(self._request)
        except GoogleAuthError as exc:
            said = " ".join(str(exc).split()) or type(exc).__name__
            raise NoCredentials(f"cannot mint an ID token for {self.audience}: {said}") from None
        return str(self._credentials.token)
