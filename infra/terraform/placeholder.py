"""What a new system's Cloud Run service runs until its first deploy (cloud_run.tf).

Pub/Sub acknowledges a push answered 2xx and forgets the message, so a service that
is not Recordline yet must refuse every push: 503 with Retry-After, and Pub/Sub
keeps the message and redelivers it with backoff (after max_delivery_attempts it is
dead-lettered, and kept there for replay). Cloud Run's probes get 200, so the
revision can become ready; every other path gets 503 too.

Run by the public Python image as `python3 -c <this file>`, with the standard
library only. Deploys replace the image and clear the command and arguments.
"""

import http.server
import os

PROBES = frozenset({"/healthz", "/readyz"})
BODY = b'{"title":"Not deployed yet","status":503}'


class Placeholder(http.server.BaseHTTPRequestHandler):
    def _answer(self) -> None:
        path = self.path.split("?", 1)[0]
        status = 200 if self.command == "GET" and path in PROBES else 503
        body = b'{"status":"placeholder"}' if status == 200 else BODY
        self.send_response(status)
        if status == 503:
            self.send_header("Retry-After", "60")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass  # Cloud Run logs every request already


port = int(os.environ.get("PORT", "8080"))
http.server.ThreadingHTTPServer(("", port), Placeholder).serve_forever()
