"""The Varnish stand-in for a shared cache (recordline_dev/varnish.py): its VCL compiles
and keeps the CDN's rules, and its request log counts what reached the origin.

The compile is skipped where there is no varnishd (scripts/install-varnish.sh); CI
installs it and may not skip it.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from recordline_dev.varnish import (
    VarnishCache,
    VarnishMissing,
    arguments,
    find_varnishd,
    vcl,
)


@pytest.mark.varnish
def test_the_vcl_compiles(tmp_path: Path) -> None:
    try:
        varnishd = find_varnishd()
    except VarnishMissing as missing:
        pytest.skip(str(missing))
    source = tmp_path / "recordline.vcl"
    source.write_text(vcl(origin=8123, wait=20))
    compiled = subprocess.run(
        [str(varnishd), "-C", "-j", "none", "-n", str(tmp_path / "work"), "-f", str(source)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert compiled.returncode == 0, compiled.stderr[-2000:]
    # varnishd -C writes the C it compiled the VCL to on stderr: the origin is in it.
    assert '"127.0.0.1 8123"' in compiled.stderr


def test_the_vcl_keys_by_method_and_url_and_keeps_nothing_stale() -> None:
    text = vcl(origin=8123, wait=20)
    hashed = re.search(r"sub vcl_hash \{(.*?)\n\}", text, re.S)
    assert hashed is not None
    assert re.findall(r"hash_data\(([^)]*)\)", hashed[1]) == ["req.method", "req.url"]
    # A long-poll's first byte comes after its wait: the backend waits longer.
    assert ".first_byte_timeout = 60s;" in text
    assert "set beresp.grace = 0s;" in text
    argv = arguments(Path("varnishd"), Path("/tmp/x"), port=1, followers=10_000, wait=20)
    settings = dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "-p")
    assert settings["default_grace"] == "0"
    assert int(settings["thread_pool_max"]) > 10_000


def test_the_log_counts_misses_passes_and_pipes_as_origin_requests(tmp_path: Path) -> None:
    (tmp_path / "access.log").write_text(
        'miss 200 "/v1/streams/records?offset=a&live=long-poll"\n'
        'hit 200 "/v1/streams/records?offset=a&live=long-poll"\n'
        'pass 204 "/v1/streams/records?offset=a&live=long-poll"\n'
        'pipe - "/v1/streams/records?offset=a&live=sse"\n'
        'miss 200 "/v1/records"\n'
        'synth 404 "/v1/streams/records"\n'
    )
    cache = VarnishCache("http://127.0.0.1:1", 1, None, tmp_path)  # type: ignore[arg-type]
    assert cache.statuses()[3] == ("pipe", 0, True, "/v1/streams/records?offset=a&live=sse")
    assert cache.origin_requests("/v1/streams/") == 3
    assert cache.origin_requests() == 4
