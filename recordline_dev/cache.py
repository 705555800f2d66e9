"""A shared cache in front of `recordline serve`: nginx, configured as a CDN is.

`shared_cache` runs nginx (Debian's, `scripts/install-nginx.sh`) on a free loopback port
until the block ends: keyed by method and full URI, one request per key reaches the origin
while the others wait for its answer, the origin's `Cache-Control` honoured, a request with
credentials or `live=sse` passed through, each request's cache status logged (`statuses`).
With `passes`, it is Cloud CDN with signed cookies: a `Cloud-CDN-Cookie` checked by njs
(read_pass.js), 403 if bad, its answer kept 60 s (catch-up) or 1 s whatever it says.
docs/deploying.md#behind-a-shared-cache says what the origin sends it.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import resource
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from recordline_dev.processes import free_port, terminate, until_listening

# Where Debian puts it; NGINX_PATH names another.
NGINX = "/usr/sbin/nginx"
NJS_MODULE = "ngx_http_js_module.so"
# A pass's key as the settings give it: a Cloud CDN key name, and base64url bytes.
_KEY = r"[A-Za-z0-9_-]{1,63}:[A-Za-z0-9_-]+={0,2}"
# Each follower holds a client connection; nginx itself needs a few more files.
SPARE_FILES = 256
# The origin's long-poll answers within its wait (LONG_POLL_SECONDS, 20 s);
# a request waiting for another's answer to one must wait longer than that, or it goes
# to the origin itself and the collapsing is lost.
LOCK_MARGIN_SECONDS = 10
STREAMS = "/v1/streams/"

_LOCATION = """
        location {path} {{{internal}
            proxy_pass http://origin{uri};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # The origin on loopback answers only its own names (421 otherwise).
            proxy_set_header Host localhost;
            proxy_buffering on;
            proxy_read_timeout {read}s;
            proxy_cache recordline;
            # HEAD answers the tail: never a GET's answer (nginx's default turns it into one).
            proxy_cache_convert_head off;
            proxy_cache_key $request_method$request_uri;
            proxy_cache_lock {lock};
            proxy_cache_lock_timeout {lock_seconds}s;
            proxy_cache_lock_age {lock_seconds}s;
            # A request with credentials, or a stream's `live=sse`, is never a cached
            # answer. Nothing is bypassed on `Accept`, which Cloud CDN cannot do: the
            # origin's `Vary: Accept` keeps a page from a client that asks for events.
            proxy_cache_bypass $http_authorization $http_x_serverless_authorization {direct};
            proxy_no_cache $http_authorization $http_x_serverless_authorization {direct};
            add_header X-Cache $upstream_cache_status always;{passes}
        }}
"""

# With passes, an answer to a request with a valid one is kept whatever the origin says,
# as Cloud CDN keeps an answer to a signed request for its backend's
# signed_url_cache_max_age_sec: a second (a long-poll's 204 no longer), or a minute for a
# catch-up read of the records stream, which infra/terraform/cdn.tf routes to a backend
# of its own. Here it goes to a location of its own, on the same cache key.
_SIGNED_LOCATION = """
            proxy_ignore_headers Cache-Control Expires;
            proxy_cache_valid 200 204 {seconds}s;"""
_CATCH_UP_SECONDS = 60
_CATCH_UP = "/.catch-up"
_TO_CATCH_UP = """
            if ($read_pass_catch_up) {{
                rewrite ^ {catch_up}$uri last;
            }}"""

# The requests a pass is checked for and cached: those with `Cloud-CDN-Cookie` that are
# no stream of events (Cloud CDN's URL map sends the others to a backend without it).
_SIGNED_HTTP = """
    js_path {scripts};
    js_import read_pass from read_pass.js;
    js_var $read_pass_keys "{keys}";
    js_set $read_pass_verdict read_pass.verdict;
    map $read_pass_verdict $read_pass_refused {{ ok ""; default $read_pass_verdict; }}
    map $http_cookie $read_pass_cookie {{ "~(^|;)\\s*Cloud-CDN-Cookie=" 1; default ""; }}
    map $http_accept $events {{ "~*(event-stream|text/\\*|\\*/\\*.*;|;.*\\*/\\*)" 1; default ""; }}
    map "$read_pass_cookie:$stream$events:$request_method" $read_pass_route {{
        # A HEAD names the tail now: never a kept GET's headers (the service checks its pass).
        "1::HEAD" direct;
        "~^1::" pass;
        default direct;
    }}
    map $read_pass_route $read_pass_direct {{ pass ""; default 1; }}
    # A catch-up read: a GET of the records stream from an offset, neither live nor `now`.
    map "$read_pass_route:$request_method:$uri:$arg_live:$arg_offset" $read_pass_catch_up {{
        "~^pass:GET:/v1/streams/records::(?!now$)." 1;
        default "";
    }}"""

# A bad pass is refused before anything is looked up or passed on, as at the edge: only a
# verdict of "ok" passes, so a check that fails (an empty verdict) refuses.
_SIGNED_SERVER = """
        if ($read_pass_verdict != "ok") {
            return 403;
        }
        add_header X-Read-Pass-Refused $read_pass_refused always;"""

_CONFIG = """
{modules}daemon off;
{user}
worker_processes 1;
worker_rlimit_nofile {files};
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{
    worker_connections {connections};
}}
http {{
    client_body_temp_path {directory}/body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    proxy_cache_path {directory}/cache levels=1:2 keys_zone=recordline:16m max_size=1g
                     inactive=10m use_temp_path=off;
    log_format status '$upstream_cache_status $status "$upstream_addr" "$request_uri"';
    map $arg_live $stream {{ sse 1; default ""; }}{pass_http}
    upstream origin {{
        server 127.0.0.1:{origin};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        access_log {directory}/access.log status;{pass_server}
        # The streams collapse followers at one offset onto one request; a page that
        # waits (`wait=`) is not kept, so its followers must not queue behind each other.
{streams}{catch_up}
{pages}
    }}
}}
"""


class NginxMissing(RuntimeError):
    """No nginx to run: scripts/install-nginx.sh installs it."""


def find_nginx() -> Path:
    found = Path(os.environ.get("NGINX_PATH", NGINX))
    if not os.access(found, os.X_OK):
        raise NginxMissing(f"nginx not found at {found}: run scripts/install-nginx.sh")
    return found


def find_njs(nginx: Path) -> Path:
    """nginx's JavaScript module (Debian's `libnginx-mod-http-js`), which checks passes:
    NGINX_JS_MODULE names it, or it is in the modules directory nginx was built with."""
    if named := os.environ.get("NGINX_JS_MODULE"):
        found = Path(named)
    else:
        built = subprocess.run(  # noqa: S603 - our own argv, no shell
            [str(nginx), "-V"], capture_output=True, text=True, timeout=10, check=False
        ).stderr
        modules = re.search(r"--modules-path=(\S+)", built)
        found = Path(modules[1] if modules else "/usr/lib/nginx/modules") / NJS_MODULE
    if not found.is_file():
        raise NginxMissing(
            f"nginx's JavaScript module is not at {found}: run scripts/install-nginx.sh"
        )
    return found


def pass_keys(keys: str) -> str:
    """`keys` as RECORDLINE_READ_PASS_KEYS gives them (`name:base64urlkey[,…]`), checked
    before they go into the configuration."""
    if not re.fullmatch(rf"{_KEY}(,{_KEY})*", keys):
        raise ValueError("passes: `name:base64urlkey[,name:key…]`")
    return keys


@dataclass(slots=True)
class SharedCache:
    """A running nginx in front of the origin."""

    url: str
    port: int
    process: subprocess.Popen[bytes]
    directory: Path

    def statuses(self) -> list[tuple[str, int, bool, str]]:
        """Each request so far, in order: its cache status (`HIT`, `MISS`, `BYPASS`,
        `-`…), its status code, whether it reached the origin, and its URI."""
        log = self.directory / "access.log"
        found = []
        for line in log.read_text().splitlines() if log.exists() else []:
            cache, status, upstream, uri = line.split(" ", 3)
            found.append((cache, int(status), upstream.strip('"') != "-", uri.strip('"')))
        return found

    def settled(self, requests: int, timeout: float = 5.0) -> list[tuple[str, int, bool, str]]:
        """`statuses` once `requests` are logged (a request is logged just after its
        answer leaves)."""
        deadline = time.monotonic() + timeout
        while len(found := self.statuses()) < requests and time.monotonic() < deadline:
            time.sleep(0.01)
        return found

    def origin_requests(self, path: str = "") -> int:
        """How many requests reached the origin so far (those whose URI starts `path`)."""
        return sum(1 for _, _, origin, uri in self.statuses() if origin and uri.startswith(path))


def configuration(
    directory: Path,
    *,
    port: int,
    origin: int,
    followers: int,
    wait: float,
    passes: str | None = None,
    njs: Path | None = None,
) -> str:
    lock_seconds = int(wait + LOCK_MARGIN_SECONDS)
    read = lock_seconds + 30

    def location(path: str, lock: str, seconds: int = 1, internal: bool = False) -> str:
        signed = ""
        if passes:
            signed = _SIGNED_LOCATION.format(seconds=seconds)
            if path == STREAMS:
                signed += _TO_CATCH_UP.format(catch_up=_CATCH_UP)
        return _LOCATION.format(
            path=path,
            # Reached by the rewrite alone, and passed on as it was asked.
            internal="\n            internal;" if internal else "",
            uri="$request_uri" if internal else "",
            lock=lock,
            lock_seconds=lock_seconds,
            read=read,
            direct="$read_pass_direct" if passes else "$stream",
            passes=signed,
        )

    # The user directive is only for a master started as root: workers keep its user.
    user = ""
    if os.geteuid() == 0:
        user = f"user {pwd.getpwuid(0).pw_name} {grp.getgrgid(0).gr_name};"
    # A follower is a client connection, and one to the origin while its request is
    # passed on; files to match, within the hard limit (a container's root may not
    # raise it either).
    files = min(2 * followers + 2 * SPARE_FILES, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    connections = files - SPARE_FILES
    modules = pass_http = pass_server = ""
    if passes:
        if njs is None:
            raise ValueError("passes are checked by nginx's JavaScript module: name it")
        modules = f"load_module {njs};\n"
        scripts = Path(__file__).parent
        pass_http = _SIGNED_HTTP.format(scripts=scripts, keys=pass_keys(passes))
        pass_server = _SIGNED_SERVER
    return _CONFIG.format(
        modules=modules,
        pass_http=pass_http,
        pass_server=pass_server,
        user=user,
        files=files,
        connections=connections,
        directory=directory,
        origin=origin,
        port=port,
        streams=location(STREAMS, "on"),
        catch_up=location(f"{_CATCH_UP}/", "on", _CATCH_UP_SECONDS, internal=True)
        if passes
        else "",
        pages=location("/", "off"),
    )


@contextlib.contextmanager
def shared_cache(
    origin: int,
    directory: Path,
    *,
    followers: int = 1000,
    wait: float = 20.0,
    passes: str | None = None,
) -> Iterator[SharedCache]:
    """nginx on a free loopback port in front of the origin's `origin` port, for up to
    `followers` clients, whose long-polls wait `wait` seconds, until the block ends.
    With `passes` (the keys, as RECORDLINE_READ_PASS_KEYS), it is Cloud CDN with signed
    cookies: see `_SIGNED_HTTP`."""
    nginx = find_nginx()
    njs = find_njs(nginx) if passes else None
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = directory / "nginx.conf"
    conf.write_text(
        configuration(
            directory,
            port=port,
            origin=origin,
            followers=followers,
            wait=wait,
            passes=passes,
            njs=njs,
        )
    )
    error_log = directory / "error.log"
    process = subprocess.Popen(  # noqa: S603 - our own argv, no shell
        [str(nginx), "-e", str(error_log), "-p", str(directory), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        until_listening(port, process, error_log, "nginx", 10)
        yield SharedCache(f"http://127.0.0.1:{port}", port, process, directory)
    finally:
        # SIGTERM is nginx's fast stop: held requests are cut, as a restart cuts them.
        terminate(process)


def available() -> bool:
    """Whether there is an nginx to run."""
    return shutil.which(os.environ.get("NGINX_PATH", NGINX)) is not None
