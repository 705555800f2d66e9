"""A cell's Cloud CDN for followers (infra/terraform/cdn.tf), evaluated as a plan would:
off by default; on, it caches what the service's headers allow and nothing for a request
with credentials, serves reads of records and streams alone (every system's push path
is never routed to it), and its cost is priced apart from the fleet's, from Terraform's
own values (infra/fleet_cost.py --cdn, the table docs/deploying.md shows)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.infra.console import require_terraform
from tests.infra.test_cost import fleet_cost
from tests.infra.test_fleet import _root_console, _root_console_run
from tests.infra.test_terraform import TERRAFORM, _load

ROOT = Path(__file__).resolve().parents[2]
DEPLOYING = ROOT / "docs" / "deploying.md"
ON = (("cdn", '{ enabled = true, domains = ["records.example.com"] }'),)
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
    return {
        f"{rtype}.{name}": body
        for block in _load(TERRAFORM / "cdn.tf").get("resource", [])
        for rtype, named in block.items()
        for name, body in named.items()
    }


def _matches(template: str, path: str) -> bool:
    """Whether a URL map's path template matches `path`: `{x=*}` one segment, `**` the
    rest (any number of segments)."""
    pattern = re.escape(template)
    pattern = re.sub(r"\\\{\w+=\\\*\\\}", "[^/]+", pattern)
    pattern = pattern.replace(r"\*\*", ".*")
    return re.fullmatch(pattern, path) is not None


def test_off_by_default_a_cell_has_no_load_balancer() -> None:
    found = _root_console(SETTINGS, "{}")
    assert found["cdn"] == {}
    assert found["rules"] == 0
    # Every resource of cdn.tf is made once per entry of local.cdn, and none otherwise.
    resources = _cdn_resources()
    assert len(resources) == 8
    assert {body["for_each"] for body in resources.values()} == {"${local.cdn}"}


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
    (route,) = matcher["route_rules"]
    assert route["service"] == '${google_compute_backend_service.cdn_reads["cdn"].id}'
    assert route["dynamic"][0]["match_rules"]["for_each"] == "${local.cdn_read_paths}"
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


# --- its cost ---------------------------------------------------------------------


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
