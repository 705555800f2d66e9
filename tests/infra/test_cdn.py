"""A cell's Cloud CDN for followers (infra/terraform/cdn.tf), evaluated as a plan would:
off by default; on, it caches what the service's headers allow and nothing for a request
with credentials, serves reads of records and streams alone (every system's push path
is never routed to it), with read passes sends to the CDN only reads carrying one (its
keys on the backend and in the service's setting alike), and its cost is priced apart
from the fleet's, from Terraform's own values (infra/fleet_cost.py --cdn)."""

from __future__ import annotations

import base64
import functools
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from litestar import Request

from app.routes.follow import wants_stream
from tests.fuzz.budget import EXAMPLES
from tests.infra.console import require_terraform
from tests.infra.test_cost import fleet_cost
from tests.infra.test_fleet import _root_console, _root_console_run
from tests.infra.test_terraform import TERRAFORM, _load

ROOT = Path(__file__).resolve().parents[2]
DEPLOYING = ROOT / "docs" / "deploying.md"
STREAMS_ROUTES = ROOT / "app" / "routes" / "streams.py"
ON = (("cdn", '{ enabled = true, domains = ["records.example.com"] }'),)
# The CDN as it was before read passes, which a cell may still choose.
WITHOUT_PASSES = (
    ("cdn", '{ enabled = true, domains = ["records.example.com"], read_passes = false }'),
)
SETTINGS = (
    "{ cdn = local.cdn, rules = local.cdn_forwarding_rules, cache = local.cdn_cache,"
    " paths = local.cdn_read_paths, bypass = local.cdn_bypass_headers,"
    " origin = local.cdn_origin_host, pushes = local.push_audiences, cell = local.cell_url }"
)
# A full cell: the default system and 99 more, in a project whose quota holds their accounts.
HUNDRED = (
    '{ "recordline" = {}, ' + ", ".join(f'"system-{n:03d}" = {{}}' for n in range(1, 100)) + " }"
)
QUOTA = (("service_account_quota", "300"),)


def _cdn_resources() -> dict[str, dict[str, Any]]:
    """cdn.tf's resources by type.name, as written."""
    return _resources_of("cdn.tf")


def _resources_of(name: str) -> dict[str, dict[str, Any]]:
    """A root file's resources by type.name, as written."""
    return {
        f"{rtype}.{rname}": body
        for block in _load(TERRAFORM / name).get("resource", [])
        for rtype, named in block.items()
        for rname, body in named.items()
    }


def _matches(template: str, path: str) -> bool:
    """Whether a URL map's path template matches `path`: `{x=*}` one segment, `**` the
    rest (any number of segments)."""
    pattern = re.escape(template)
    pattern = re.sub(r"\\\{\w+=\\\*\\\}", "[^/]+", pattern)
    pattern = pattern.replace(r"\*\*", ".*")
    return re.fullmatch(pattern, path) is not None


@pytest.mark.slow
def test_off_by_default_a_cell_has_no_load_balancer() -> None:
    found = _root_console(SETTINGS, "{}")
    assert found["cdn"] == {}
    assert found["rules"] == 0
    # Every resource of cdn.tf is made once per entry of local.cdn, or of its read passes
    # (a map, or their keys' names), none of which a cell without the CDN has.
    resources = _cdn_resources()
    assert len(resources) == 16
    assert {body["for_each"] for body in resources.values()} == {
        "${local.cdn}",
        "${local.cdn_pass}",
        "${toset(local.cdn_pass_keys)}",
    }
    passes = _root_console(
        "{ passes = local.cdn_passes, pass = local.cdn_pass, keys = local.cdn_pass_keys,"
        " env = local.cdn_pass_env }",
        "{}",
    )
    assert passes == {"passes": False, "pass": {}, "keys": [], "env": {}}


def test_on_it_caches_what_the_service_marks_cacheable_and_no_more() -> None:
    found = _root_console(SETTINGS, HUNDRED, ON + QUOTA)
    assert found["rules"] == 1
    assert found["cache"] == {
        "cache_mode": "USE_ORIGIN_HEADERS",
        "request_coalescing": True,
        "serve_while_stale": 0,
        "negative_caching": False,
        "include_host": True,
        "include_protocol": True,
        "include_query_string": True,
    }
    backend = _cdn_resources()["google_compute_backend_service.cdn_reads"]
    assert backend["enable_cdn"] is True
    assert backend["load_balancing_scheme"] == "EXTERNAL_MANAGED"
    (policy,) = backend["cdn_policy"]
    for setting in ("cache_mode", "request_coalescing", "serve_while_stale", "negative_caching"):
        assert policy[setting] == f"${{local.cdn_cache.{setting}}}"
    # No time to live of the CDN's own: the service's max-age alone.
    assert not {"default_ttl", "max_ttl", "client_ttl", "negative_caching_policy"} & set(policy)
    # The whole URL is the key: no parameter left out, no header added.
    (key,) = policy["cache_key_policy"]
    assert set(key) == {"include_host", "include_protocol", "include_query_string"}


def test_a_request_with_credentials_is_never_answered_from_the_cache_nor_stored() -> None:
    found = _root_console(SETTINGS, "{}", ON)
    assert found["bypass"] == ["Authorization", "X-Serverless-Authorization"]
    (policy,) = _cdn_resources()["google_compute_backend_service.cdn_reads"]["cdn_policy"]
    (bypass,) = policy["dynamic"]
    assert bypass["bypass_cache_on_request_headers"]["for_each"] == "${local.cdn_bypass_headers}"


@pytest.mark.slow
def test_only_reads_of_records_and_streams_reach_the_cdn_and_never_a_push() -> None:
    found = _root_console(SETTINGS, HUNDRED, ON + QUOTA)
    paths = found["paths"]
    cell = found["cell"]
    assert len(found["pushes"]) == 100
    for system, audience in found["pushes"].items():
        push = audience.removeprefix(cell)
        assert push == f"/systems/{system}/pubsub/push"
        assert not any(_matches(t, push) for t in paths), push
        for read in (
            f"/systems/{system}/v1/records",
            f"/systems/{system}/v1/records/order-17",
            f"/systems/{system}/v1/streams/records",
        ):
            assert any(_matches(t, read) for t in paths), read
        for other in (
            f"/systems/{system}/v1/messages/17",
            f"/systems/{system}/v1/replay",
            f"/systems/{system}/v1/rejections",
            f"/systems/{system}/console",
            "/readyz",
        ):
            assert not any(_matches(t, other) for t in paths), other
    # The URL map routes those paths to the CDN's backend alone; every other path, and
    # any other host, is a 307 to the same path on the cell's run.app host.
    assert found["origin"] == cell.removeprefix("https://")
    url_map = _cdn_resources()["google_compute_url_map.cdn"]
    (matcher,) = url_map["path_matcher"]
    # Its rules, with read passes or without, match those paths and the pass's own alone.
    pass_path, catch_up = _root_console("[local.cdn_pass_path, local.cdn_catch_up_path]", "{}", ON)
    assert any(_matches(t, catch_up) for t in paths)
    reads_and_pass = [*paths, pass_path, catch_up]
    for overrides in (ON, WITHOUT_PASSES):
        for rule in _url_map(overrides):
            for match in rule["match_rules"]:
                assert match["path_template_match"] in reads_and_pass
    for redirect in (url_map["default_url_redirect"], matcher["default_url_redirect"]):
        (body,) = redirect
        assert body["host_redirect"] == "${local.cdn_origin_host}"
        assert body["redirect_response_code"] == "TEMPORARY_REDIRECT"
        assert body["strip_query"] is False
    assert "default_service" not in url_map
    assert "default_service" not in matcher
    # HTTPS alone, on the managed certificate of the cell's domains.
    rule = _cdn_resources()["google_compute_global_forwarding_rule.cdn"]
    assert rule["port_range"] == "443"


@pytest.mark.slow
def test_on_it_needs_a_domain_and_an_ingress_the_load_balancer_reaches() -> None:
    run = _root_console_run("local.cdn", "{}", (("cdn", "{ enabled = true }"),))
    assert run.returncode != 0
    assert "cdn.enabled needs at least one domain" in run.stderr
    run = _root_console_run("local.cdn", "{}", (("cdn", '{ domains = ["https://x.example"] }'),))
    assert run.returncode != 0
    assert "lower-case fully qualified names" in run.stderr
    rule = _cdn_resources()["google_compute_global_forwarding_rule.cdn"]
    (lifecycle,) = rule["lifecycle"]
    (precondition,) = lifecycle["precondition"]
    assert precondition["condition"] == '${var.ingress != "INGRESS_TRAFFIC_INTERNAL_ONLY"}'


# --- read passes ------------------------------------------------------------------

# A pass as the URL map sees it: a cookie of that name (the CDN checks what it holds).
PASS = "Cloud-CDN-Cookie=URLPrefix=aHR0cHM6Ly9yZWNvcmRzLmV4YW1wbGUuY29tLw==:Expires=1:KeyName=k"
TOKEN = "Bearer eyJ"
SERVICE = re.compile(r'^\$\{google_compute_backend_service\.(\w+)\["cdn"\]\.id\}$')
EXPRESSION = re.compile(r"^\$\{(.*)\}$", re.S)


def _inside(written: str) -> str:
    """The expression of a `${...}` attribute, as python-hcl2 gives it."""
    found = EXPRESSION.match(written)
    assert found is not None, written
    return found.group(1)


def _expressions(node: Any, iterators: frozenset[str] = frozenset()) -> set[str]:
    """Every `${...}` of the URL map's path matcher that names neither a resource nor
    a dynamic block's iterator: what terraform console evaluates for it."""
    if isinstance(node, list):
        return set().union(*(_expressions(n, iterators) for n in node)) if node else set()
    if isinstance(node, dict):
        found: set[str] = set()
        for key, value in node.items():
            if key == "dynamic":
                for entry in value:
                    ((name, block),) = entry.items()
                    found |= _expressions(block["for_each"], iterators)
                    found |= _expressions(block["content"], iterators | {name})
            else:
                found |= _expressions(value, iterators)
        return found
    if isinstance(node, str) and (m := EXPRESSION.match(node)):
        head = m.group(1).split(".", 1)[0]
        if head not in iterators and not head.startswith("google_"):
            return {m.group(1)}
    return set()


def _expand(node: Any, values: dict[str, Any], bound: dict[str, Any]) -> Any:
    """`node` with its dynamic blocks made (one per item of their for_each) and every
    expression replaced by its value, as the plan would send the URL map."""
    if isinstance(node, list):
        return [_expand(n, values, bound) for n in node]
    if isinstance(node, dict):
        made: dict[str, Any] = {}
        for key, value in node.items():
            if key != "dynamic":
                made[key] = _expand(value, values, bound)
        for entry in node.get("dynamic", []):
            ((name, block),) = entry.items()
            for item in _expand(block["for_each"], values, bound):
                for content in block["content"]:
                    made.setdefault(name, []).append(
                        _expand(content, values, {**bound, f"{name}.value": item})
                    )
        return made
    if isinstance(node, str) and (m := EXPRESSION.match(node)):
        expression = m.group(1)
        if expression in bound:
            return bound[expression]
        iterator, _, attribute = expression.rpartition(".")
        if iterator in bound:
            return bound[iterator][attribute]
        if service := SERVICE.match(node):
            return service.group(1)
        return values[expression]
    return node


def _url_map(overrides: tuple[tuple[str, str], ...]) -> list[dict[str, Any]]:
    """The path matcher's route rules as a plan with `overrides` makes them."""
    (matcher,) = _cdn_resources()["google_compute_url_map.cdn"]["path_matcher"]
    expressions = sorted(_expressions(matcher))
    found = _root_console("[" + ", ".join(f"({e})" for e in expressions) + "]", "{}", overrides)
    rules = _expand(matcher, dict(zip(expressions, found, strict=True)), {})
    return sorted(rules.get("route_rules", []), key=lambda r: r["priority"])


@functools.cache
def _url_map_on() -> list[dict[str, Any]]:
    """`_url_map(ON)`, evaluated once: each evaluation is a run of Terraform."""
    return _url_map(ON)


def _header(match: dict[str, Any], headers: dict[str, str]) -> bool:
    value = headers.get(match["header_name"])
    if match.get("present_match"):
        held = value is not None
    elif match.get("exact_match") is not None:
        held = value == match["exact_match"]
    else:
        held = value is not None and re.fullmatch(match["regex_match"], value) is not None
    return held != bool(match.get("invert_match"))


def _query(match: dict[str, Any], query: dict[str, str]) -> bool:
    if match.get("present_match"):
        return match["name"] in query
    return query.get(match["name"]) == match["exact_match"]


def _routed(
    rules: list[dict[str, Any]],
    path: str,
    query: dict[str, str],
    headers: dict[str, str],
    method: str = "GET",
) -> str:
    """Where the URL map sends a request: the first route rule by priority with a match
    rule every condition of which holds, else the redirect to run.app. Its method is the
    `:method` header a match may name."""
    headers = headers | {":method": method}
    for rule in rules:
        for match in rule["match_rules"]:
            if not _matches(match["path_template_match"], path):
                continue
            if not all(_query(q, query) for q in match.get("query_parameter_matches", [])):
                continue
            if all(_header(h, headers) for h in match.get("header_matches", [])):
                return str(rule["service"])
    return "redirect"


def test_with_passes_only_a_read_carrying_one_and_no_token_reaches_the_cdn() -> None:
    rules = _url_map(ON)
    # Each priority once, as the URL map requires.
    assert [r["priority"] for r in rules] == [1, 2, 3, 4, 5]
    records = "/systems/orders/v1/records"
    stream = "/systems/orders/v1/streams/records"
    rejections = "/systems/orders/v1/streams/rejections"
    cases = [
        # A read with a pass, the pass's cookie first or after another, to the CDN.
        (records, {"limit": "100"}, {"Cookie": PASS}, "cdn_reads"),
        (f"{records}/order-17", {}, {"Cookie": "theme=dark; " + PASS}, "cdn_reads"),
        (stream, {"offset": "-1", "live": "long-poll"}, {"Cookie": PASS}, "cdn_reads"),
        # A catch-up read of the records stream to the CDN keeping it a minute, the
        # pass's cookie first or after another.
        (stream, {"offset": "-1"}, {"Cookie": PASS}, "cdn_catch_up"),
        (stream, {"offset": "2vNCZ5LvW"}, {"Cookie": "theme=dark; " + PASS}, "cdn_catch_up"),
        # Live, from `now`, from no offset, or of rejections (revalidated): a second.
        (stream, {"offset": "2vNCZ5LvW", "live": "long-poll"}, {"Cookie": PASS}, "cdn_reads"),
        (stream, {"live": "long-poll"}, {"Cookie": PASS}, "cdn_reads"),
        (stream, {"offset": "now"}, {"Cookie": PASS}, "cdn_reads"),
        (stream, {}, {"Cookie": PASS}, "cdn_reads"),
        (rejections, {"offset": "-1"}, {"Cookie": PASS}, "cdn_reads"),
        # A catch-up read with a token or without a pass: around the CDN, as any read.
        (stream, {"offset": "-1"}, {"Cookie": PASS, "Authorization": TOKEN}, "cdn_direct"),
        (
            stream,
            {"offset": "-1"},
            {"Cookie": PASS, "X-Serverless-Authorization": TOKEN},
            "cdn_direct",
        ),
        (stream, {"offset": "-1"}, {}, "cdn_direct"),
        (stream, {"offset": "now", "live": "long-poll"}, {"Authorization": TOKEN}, "cdn_direct"),
        # With a token (judged by it), without a pass, or a cookie only like one: around it.
        (records, {}, {"Cookie": PASS, "Authorization": TOKEN}, "cdn_direct"),
        (records, {}, {"Cookie": PASS, "X-Serverless-Authorization": TOKEN}, "cdn_direct"),
        (records, {}, {"Authorization": TOKEN}, "cdn_direct"),
        (records, {}, {}, "cdn_direct"),
        (records, {}, {"Cookie": "NotCloud-CDN-Cookie=x"}, "cdn_direct"),
        # SSE, asked either way, and the pass's own path: never through the CDN.
        (stream, {"offset": "-1", "live": "sse"}, {"Cookie": PASS}, "cdn_direct"),
        (records, {}, {"Cookie": PASS, "Accept": "text/event-stream"}, "cdn_direct"),
        (stream, {}, {"Cookie": PASS, "Accept": "text/event-stream; q=1"}, "cdn_direct"),
        (stream, {"offset": "-1", "live": "sse"}, {"Cookie": "a=b; " + PASS}, "cdn_direct"),
        ("/systems/orders/v1/read-pass", {}, {"Authorization": TOKEN}, "cdn_direct"),
        # Every other path: where it always was.
        ("/systems/orders/pubsub/push", {}, {"Authorization": TOKEN}, "redirect"),
        ("/systems/orders/v1/messages/17", {}, {"Cookie": PASS}, "redirect"),
        ("/readyz", {}, {}, "redirect"),
    ]
    for path, query, headers, where in cases:
        assert _routed(rules, path, query, headers) == where, (path, query, headers)
    # A HEAD names the tail now: never a kept GET's headers, so never through the CDN,
    # with whatever parameters; a GET of the same URL is.
    for query in ({}, {"offset": "-1"}, {"offset": "now"}):
        assert _routed(rules, stream, query, {"Cookie": PASS}, "HEAD") == "cdn_direct"
        assert _routed(rules, stream, query, {"Cookie": PASS}) != "cdn_direct"
    assert _routed(rules, records, {}, {"Cookie": PASS}, "HEAD") == "cdn_direct"


# Media ranges and qualities a follower's Accept may carry, spelled in any case.
_RANGES = ["text/event-stream", "application/json", "text/*", "application/*", "*/*", "text/html"]
_QUALITIES = [None, "0", "0.5", ".5", "1"]


def _streams(accept: str) -> bool:
    """Whether the service answers a page asked with this Accept as a stream of events."""
    scope = {"type": "http", "headers": [(b"accept", accept.encode())], "state": {}}
    return wants_stream(Request(scope))  # type: ignore[arg-type]


@pytest.mark.slow
@settings(max_examples=EXAMPLES, deadline=None)
@given(
    ranges=st.lists(
        st.tuples(st.sampled_from(_RANGES), st.sampled_from(_QUALITIES)), min_size=1, max_size=3
    ),
    upper=st.booleans(),
)
@example(ranges=[("text/event-stream", None)], upper=True)
@example(ranges=[("text/*", None)], upper=False)
@example(ranges=[("application/json", ".5"), ("*/*", None)], upper=False)
def test_with_passes_a_page_the_service_streams_never_reaches_the_cdn(
    ranges: list[tuple[str, str | None]], upper: bool
) -> None:
    # The service negotiates Accept as RFC 9110 says (any case, wildcards, qualities):
    # whatever it answers as events goes around the CDN, which would keep what it got of
    # the stream as a signed request's answer.
    accept = ", ".join(r if q is None else f"{r};q={q}" for r, q in ranges)
    accept = accept.upper() if upper else accept
    if _streams(accept):
        headers = {"Cookie": PASS, "Accept": accept}
        routed = _routed(_url_map_on(), "/systems/orders/v1/records", {}, headers)
        assert routed == "cdn_direct", accept


def test_with_passes_a_page_asked_as_clients_ask_for_json_reaches_the_cdn() -> None:
    for accept in ("*/*", "application/json", "application/json, text/plain, */*"):
        assert not _streams(accept)
        headers = {"Cookie": PASS, "Accept": accept}
        assert _routed(_url_map_on(), "/systems/orders/v1/records", {}, headers) == "cdn_reads"


def test_without_passes_every_read_goes_to_the_cdn_as_before() -> None:
    rules = _url_map(WITHOUT_PASSES)
    assert [(r["priority"], r["service"]) for r in rules] == [(1, "cdn_reads")]
    for headers in (
        {},
        {"Cookie": PASS},
        {"Authorization": TOKEN},
        {"Accept": "text/event-stream"},
    ):
        assert _routed(rules, "/systems/orders/v1/records", {}, headers) == "cdn_reads"
    assert _routed(rules, "/systems/orders/v1/read-pass", {}, {}) == "redirect"
    found = _root_console(
        "{ pass = local.cdn_pass, env = local.service_env }", "{}", WITHOUT_PASSES
    )
    assert found["pass"] == {}
    assert found["env"]["RECORDLINE_TRUST_CLOUD_RUN_IAM"] == "true"
    assert "RECORDLINE_READ_PASS_URL" not in found["env"]


def test_with_passes_the_service_verifies_every_token_and_knows_the_cdn_s_origin() -> None:
    found = _root_console(
        "{ passes = local.cdn_passes, env = local.service_env, keys = local.cdn_pass_keys }",
        "{}",
        (("cdn", '{ enabled = true, domains = ["records.example.com", "r.example.org"] }'),),
    )
    assert found["passes"] is True
    assert found["keys"] == ["pass-1"]
    env = found["env"]
    # Cloud Run's invoker check is off (a miss reaches it with a pass and no token): the
    # service checks each token's signature itself, a push's too.
    assert env["RECORDLINE_TRUST_CLOUD_RUN_IAM"] == "false"
    assert env["RECORDLINE_READ_PASS_URL"] == "https://records.example.com"
    assert "RECORDLINE_READ_PASS_KEYS" not in env  # a secret's, never a plain variable
    service = _resources_of("cell.tf")["google_cloud_run_v2_service.ingest"]
    assert service["invoker_iam_disabled"] == "${local.cdn_passes}"
    (container,) = service["template"][0]["containers"]
    (keys,) = [
        d["env"]
        for d in container["dynamic"]
        if "env" in d and d["env"]["content"][0]["name"] == "RECORDLINE_READ_PASS_KEYS"
    ]
    assert keys["for_each"] == "${google_secret_manager_secret_version.read_pass}"
    (content,) = keys["content"]
    assert content["name"] == "RECORDLINE_READ_PASS_KEYS"
    (ref,) = content["value_source"][0]["secret_key_ref"]
    # The version that holds the keys: a rotation makes a revision that reads it.
    assert ref["version"] == "${env.value.version}"
    assert ref["secret"] == "${google_secret_manager_secret.read_pass[env.key].secret_id}"


def test_a_signed_answer_is_kept_a_second_or_a_catch_up_chunk_a_minute() -> None:
    # A minute: what the service's Cache-Control keeps a chunk reaching the tail.
    chunk = re.search(r"^CHUNK_MAX_AGE: Final = (\d+)$", STREAMS_ROUTES.read_text(), re.M)
    assert chunk is not None
    assert _root_console("local.cdn_signed_max_age", "{}", ON) == {
        "live": 1,
        "catch_up": int(chunk[1]),
    }
    reads = _cdn_resources()["google_compute_backend_service.cdn_reads"]
    (policy,) = reads["cdn_policy"]
    assert policy["signed_url_cache_max_age_sec"] == (
        "${local.cdn_passes ? local.cdn_signed_max_age.live : null}"
    )
    catch_up = _cdn_resources()["google_compute_backend_service.cdn_catch_up"]
    assert catch_up["for_each"] == "${local.cdn_pass}"
    (caught,) = catch_up["cdn_policy"]
    assert caught["signed_url_cache_max_age_sec"] == "${local.cdn_signed_max_age.catch_up}"
    # Otherwise the CDN's backend as it is: what the service marks cacheable, no
    # credentials, the whole URL the key, its cache status shown.
    assert {k: v for k, v in caught.items() if k != "signed_url_cache_max_age_sec"} == {
        k: v for k, v in policy.items() if k != "signed_url_cache_max_age_sec"
    }
    for setting in ("enable_cdn", "custom_response_headers", "backend", "log_config"):
        assert catch_up[setting] == reads[setting], setting
    direct = _cdn_resources()["google_compute_backend_service.cdn_direct"]
    assert direct["enable_cdn"] is False
    assert "cdn_policy" not in direct
    # Both on the cell's one endpoint group.
    assert direct["backend"] == reads["backend"]
    assert direct["load_balancing_scheme"] == reads["load_balancing_scheme"]


def test_a_key_is_the_same_on_the_backend_and_in_the_service_s_setting() -> None:
    resources = _cdn_resources()
    assert resources["random_bytes.read_pass"]["length"] == 16
    key = resources["google_compute_backend_service_signed_url_key.read_pass"]
    assert key["name"] == "${each.key}"
    assert key["backend_service"] == '${google_compute_backend_service.cdn_reads["cdn"].name}'
    # Each key on the catch-up backend too: a pass is checked on the backend it reaches.
    other = resources["google_compute_backend_service_signed_url_key.read_pass_catch_up"]
    assert other["backend_service"] == (
        '${google_compute_backend_service.cdn_catch_up["cdn"].name}'
    )
    assert {k: v for k, v in other.items() if k != "backend_service"} == {
        k: v for k, v in key.items() if k != "backend_service"
    }
    # Two keys, the newer first and so signing (a rotation's second apply), one of bytes
    # whose base64 has both characters base64url replaces.
    raw = {"pass-1": bytes([0xFB, 0xEF, 0xFF] * 5 + [0x3F]), "pass-2": bytes(range(16))}
    std = (
        "{ " + ", ".join(f'"{n}" = "{base64.b64encode(b).decode()}"' for n, b in raw.items()) + " }"
    )
    bytes_of = re.compile(r"random_bytes\.read_pass\[(\w+(?:\.\w+)?)\]\.base64")
    version = resources["google_secret_manager_secret_version.read_pass"]
    backend, setting = (
        bytes_of.sub(lambda m: f"{std}[{m.group(1)}]", _inside(written))
        for written in (key["key_value"], version["secret_data"])
    )
    rotating = (
        (
            "cdn",
            '{ enabled = true, domains = ["records.example.com"],'
            ' read_pass_keys = ["pass-2", "pass-1"] }',
        ),
    )
    found = _root_console(
        "{ setting = " + setting + ", backend = { for each in [for k in local.cdn_pass_keys"
        " : { key = k }] : each.key => " + backend + " } }",
        "{}",
        rotating,
    )
    expected = {n: base64.urlsafe_b64encode(b).decode() for n, b in raw.items()}
    assert found["backend"] == expected
    assert found["setting"] == f"pass-2:{expected['pass-2']},pass-1:{expected['pass-1']}"
    assert "+" in base64.b64encode(raw["pass-1"]).decode()
    assert "/" in base64.b64encode(raw["pass-1"]).decode()


@pytest.mark.parametrize("keys", ["[]", '["a", "b", "c", "d"]', '["k-1", "k-1"]', '["Pass_1"]'])
def test_key_names_are_what_a_backend_holds(keys: str) -> None:
    run = _root_console_run(
        "local.cdn_pass_keys",
        "{}",
        (
            (
                "cdn",
                f'{{ enabled = true, domains = ["records.example.com"], read_pass_keys = {keys} }}',
            ),
        ),
    )
    assert run.returncode != 0
    assert "1 to 3 distinct key names" in run.stderr


# --- its cost ---------------------------------------------------------------------


@pytest.mark.slow
def test_the_cdn_is_priced_apart_and_changes_no_fleet_total() -> None:
    require_terraform()
    cost = fleet_cost()
    rows = [name for name, _ in cost.ROWS]
    assert not any("CDN" in name or "oad balancer" in name for name in rows)
    assert "CDN" not in cost.table()
    # What it prices is what Terraform declares for a cell that enables it.
    settings = cost.cdn_settings()
    found = _root_console(SETTINGS, "{}", ON)
    assert settings["enabled"] is True
    assert settings["forwarding_rules"] == found["rules"] == 1
    assert settings["cache"] == found["cache"]
    assert settings["concurrency"] == 1000


@pytest.mark.parametrize("followers", [1_000, 10_000, 100_000])
def test_a_month_of_followers_is_priced_from_terraform_s_values(followers: int) -> None:
    require_terraform()
    cost = fleet_cost()
    settings = cost.cdn_settings()
    through = cost.cdn_month(followers)
    # The forwarding rule: each of Terraform's, by the hour, whatever the followers.
    assert through["Load balancer forwarding rule"] == pytest.approx(
        settings["forwarding_rules"] * 0.025 * 730
    )
    requests = followers * cost.SECONDS_A_MONTH / 60
    assert cost.follower_requests(followers) == pytest.approx(requests)
    assert through["Cloud CDN cache lookups"] == pytest.approx(requests / 10_000 * 0.0075)
    # On run.app, a thousand followers are one instance's worth of held requests (its
    # concurrency), billed always on at Terraform's cpu and memory.
    direct = cost.run_app_month(followers)
    instance_month = cost._instance_second(settings) * cost.SECONDS_A_MONTH
    assert instance_month == pytest.approx(52.56)
    held = direct["Cloud Run: instances' share holding followers' requests"]
    assert held == pytest.approx(followers / settings["concurrency"] * instance_month)
    # A million requests through the CDN: its lookups ($0.75) and bytes, and a miss's share.
    through_million, direct_million = cost.cdn_per_million(followers)
    assert 0.75 < through_million < direct_million
    # The table's per-million line is these figures.
    line = f"{cost._dollars(through_million)} / {cost._dollars(direct_million)}"
    assert line in cost.cdn_table()


def test_the_deploying_guide_shows_the_table_and_the_break_even_it_computes() -> None:
    require_terraform()
    cost = fleet_cost()
    text = DEPLOYING.read_text()
    assert cost.cdn_table() in text, (
        "docs/deploying.md's CDN table is stale: paste `.venv/bin/python infra/fleet_cost.py --cdn`"
    )
    even = cost.cdn_break_even()
    assert f"from about {even:,} followers" in text
    # Below it the CDN costs more; at it, less.
    below = even - 100
    assert sum(cost.cdn_month(below).values()) >= sum(cost.run_app_month(below).values())
    assert sum(cost.cdn_month(even).values()) < sum(cost.run_app_month(even).values())
    fixed = cost.LB_FORWARDING_RULE_HOUR * cost.HOURS_A_MONTH
    assert f"(${fixed:.2f} a month)" in text
