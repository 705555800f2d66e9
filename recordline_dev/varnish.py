"""A shared cache in front of `recordline serve`: Varnish, configured as a CDN is.

`varnish_cache` writes a VCL into a directory and runs varnishd (Debian's,
`scripts/install-varnish.sh`) in the foreground on a free loopback port until the block
ends, beside varnishncsa logging each request's handling (`VarnishCache.statuses`). It
keys by method and full URL, honours the origin's `Cache-Control` and `Vary`, keeps
nothing stale (grace 0), passes a request with credentials or `wait=` straight through,
pipes a stream's `live=sse` or `Accept: text/event-stream`, and coalesces the requests
for one key on its waiting list (those there hold no thread).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from recordline_dev.cache import LOCK_MARGIN_SECONDS
from recordline_dev.processes import free_port, terminate, until_listening

# Where Debian puts them; VARNISHD_PATH names another varnishd (varnishncsa beside it).
VARNISHD = "/usr/sbin/varnishd"
# Bounded storage: the kept answers, and the short-lived and passed ones (Transient,
# unbounded by default).
STORAGE = "malloc,256m"
TRANSIENT = "malloc,256m"
# How long an answer no one may keep lets its key's requests go to the origin at once
# (hit-for-miss) rather than queue behind each other: short, so a key whose answers
# become cacheable again (a 503 passed) coalesces again soon.
UNCACHEABLE_SECONDS = 1

_VCL = """vcl 4.1;

backend origin {{
    .host = "127.0.0.1";
    .port = "{origin}";
    .connect_timeout = 5s;
    .first_byte_timeout = {read}s;
    .between_bytes_timeout = {read}s;
}}

sub vcl_recv {{
    if (req.method != "GET" && req.method != "HEAD") {{
        return (pass);
    }}
    # A stream of events, never one answer: a tunnel to the origin for the connection.
    if (req.url ~ "[?&]live=sse(&|$)" || req.http.Accept ~ "text/event-stream") {{
        return (pipe);
    }}
    # A request with credentials is never a cached answer, nor waits on another's.
    if (req.http.Authorization || req.http.X-Serverless-Authorization) {{
        return (pass);
    }}
    # HEAD says where the tail is now (no-store), and Varnish would fetch it as a GET.
    if (req.method == "HEAD") {{
        return (pass);
    }}
    # A page that waits (`wait=`) is never kept: its followers must not queue behind
    # each other. The streams' long-polls are what coalesce.
    if (req.url !~ "^/v1/streams/" && req.url ~ "[?&]wait=") {{
        return (pass);
    }}
    return (hash);
}}

sub vcl_hash {{
    hash_data(req.method);
    hash_data(req.url);
    return (lookup);
}}

sub vcl_pipe {{
    set bereq.http.Host = "localhost";
    set bereq.http.Connection = "close";
    return (pipe);
}}

sub vcl_backend_fetch {{
    # The origin on loopback answers only its own names (421 otherwise).
    set bereq.http.Host = "localhost";
    return (fetch);
}}

sub vcl_backend_response {{
    # Nothing is served stale: a 204 kept a second is never anyone's answer after it.
    set beresp.grace = 0s;
    set beresp.keep = 0s;
    if (bereq.uncacheable) {{
        return (deliver);
    }}
    if (beresp.ttl <= 0s
        || beresp.http.Cache-Control ~ "(^|[ ,])(private|no-store|no-cache)([ ,=]|$)"
        || !beresp.http.Cache-Control
        || beresp.http.Set-Cookie
        || beresp.http.Vary == "*") {{
        set beresp.ttl = {uncacheable}s;
        set beresp.uncacheable = true;
    }}
    return (deliver);
}}

"""


class VarnishMissing(RuntimeError):
    """No varnishd to run: scripts/install-varnish.sh installs it."""


def find_varnishd() -> Path:
    found = Path(os.environ.get("VARNISHD_PATH", VARNISHD))
    if not os.access(found, os.X_OK):
        raise VarnishMissing(f"varnishd not found at {found}: run scripts/install-varnish.sh")
    return found


def find_varnishncsa(varnishd: Path) -> Path:
    for found in (varnishd.parent.parent / "bin" / "varnishncsa", varnishd.parent / "varnishncsa"):
        if os.access(found, os.X_OK):
            return found
    raise VarnishMissing(f"no varnishncsa beside {varnishd}: run scripts/install-varnish.sh")


@dataclass(slots=True)
class VarnishCache:
    """A running varnishd in front of the origin, and its request log."""

    url: str
    port: int
    process: subprocess.Popen[bytes]
    directory: Path

    def statuses(self) -> list[tuple[str, int, bool, str]]:
        """Each request so far, in the order they ended: its handling (`hit`, `miss`,
        `pass`, `pipe`, `synth`), its status code (0 for a pipe), whether it reached the
        origin (a miss, a pass or a pipe: a request that waited for another's answer is a
        hit), and its URL."""
        log = self.directory / "access.log"
        found = []
        for line in log.read_text().splitlines() if log.exists() else []:
            handling, status, uri = line.split(" ", 2)
            reached = handling in {"miss", "pass", "pipe"}
            # A pipe's status is the origin's, which Varnish does not read: `-`, logged 0.
            code = int(status) if status.isdigit() else 0
            found.append((handling, code, reached, uri.strip('"')))
        return found

    def settled(self, requests: int, timeout: float = 5.0) -> list[tuple[str, int, bool, str]]:
        """`statuses` once `requests` are logged (varnishncsa reads them from varnishd's
        shared memory log as each ends)."""
        deadline = time.monotonic() + timeout
        while len(found := self.statuses()) < requests and time.monotonic() < deadline:
            time.sleep(0.01)
        return found

    def origin_requests(self, path: str = "") -> int:
        """How many requests reached the origin so far (those whose URL starts `path`)."""
        return sum(1 for _, _, origin, uri in self.statuses() if origin and uri.startswith(path))


def vcl(*, origin: int, wait: float) -> str:
    """The VCL for an origin on loopback port `origin` whose long-polls wait `wait`
    seconds: its first byte may take that long and more."""
    read = int(wait + LOCK_MARGIN_SECONDS) + 30
    return _VCL.format(origin=origin, read=read, uncacheable=UNCACHEABLE_SECONDS)


def arguments(
    varnishd: Path, directory: Path, *, port: int, followers: int, wait: float
) -> list[str]:
    """varnishd's argv: in the foreground, as this user, in `directory`, bounded storage.
    A follower on the waiting list holds its session but no thread; a thread serves each
    request while it is looked up, fetched or delivered, so there are as many as
    followers at most, and room to queue them all for one."""
    threads = max(1000, followers + 100)
    return [
        str(varnishd),
        "-F",
        "-j",
        "none",
        "-n",
        str(directory / "work"),
        "-a",
        f"127.0.0.1:{port}",
        "-f",
        str(directory / "recordline.vcl"),
        "-s",
        STORAGE,
        "-s",
        f"Transient={TRANSIENT}",
        # The client's Accept-Encoding goes to the origin as it came, and the origin's
        # Vary keys by it: Varnish neither asks for gzip nor unzips for a client.
        "-p",
        "http_gzip_support=off",
        # No default: an answer without Cache-Control is not kept (USE_ORIGIN_HEADERS).
        "-p",
        "default_ttl=0",
        "-p",
        "default_grace=0",
        "-p",
        "default_keep=0",
        "-p",
        "thread_pools=1",
        "-p",
        f"thread_pool_max={threads}",
        "-p",
        f"thread_queue_limit={threads}",
        # A follower's next request comes within the long-poll's wait.
        "-p",
        f"timeout_idle={int(wait + LOCK_MARGIN_SECONDS)}",
        "-p",
        f"pipe_timeout={int(wait + LOCK_MARGIN_SECONDS) + 30}",
    ]


@contextlib.contextmanager
def varnish_cache(
    origin: int, directory: Path, *, followers: int = 1000, wait: float = 20.0
) -> Iterator[VarnishCache]:
    """varnishd on a free loopback port in front of the origin's `origin` port, for up
    to `followers` clients, whose long-polls wait `wait` seconds, until the block ends."""
    varnishd = find_varnishd()
    ncsa = find_varnishncsa(varnishd)
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (directory / "recordline.vcl").write_text(vcl(origin=origin, wait=wait))
    error_log = directory / "varnishd.log"
    with error_log.open("wb") as errors:
        process = subprocess.Popen(  # noqa: S603 - our own argv, no shell
            arguments(varnishd, directory, port=port, followers=followers, wait=wait),
            stdout=errors,
            stderr=subprocess.STDOUT,
        )
    logger: subprocess.Popen[bytes] | None = None
    try:
        # varnishd compiles the VCL with cc before it listens: a few seconds.
        until_listening(port, process, error_log, "varnishd", 60)
        logger = subprocess.Popen(  # noqa: S603 - our own argv, no shell
            [
                str(ncsa),
                "-n",
                str(directory / "work"),
                "-F",
                '%{Varnish:handling}x %s "%U%q"',
                "-w",
                str(directory / "access.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _logging(port, directory / "access.log", logger)
        yield VarnishCache(f"http://127.0.0.1:{port}", port, process, directory)
    finally:
        if logger is not None:
            terminate(logger)
        terminate(process)


def _logging(port: int, log: Path, logger: subprocess.Popen[bytes]) -> None:
    # varnishncsa logs what ends after it attached: a request is sent until one is logged.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if logger.poll() is not None:
            raise RuntimeError(f"varnishncsa exited {logger.returncode}")
        with socket.create_connection(("127.0.0.1", port), 5) as probe:
            probe.sendall(b"OPTIONS /varnish-ready HTTP/1.1\r\nHost: localhost\r\n\r\n")
            probe.recv(4096)
        time.sleep(0.2)
        if log.exists() and "/varnish-ready" in log.read_text():
            return
    raise RuntimeError("varnishncsa logged nothing within 30 s")


def available() -> bool:
    """Whether there is a varnishd to run."""
    return shutil.which(os.environ.get("VARNISHD_PATH", VARNISHD)) is not None
