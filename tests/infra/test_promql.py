"""Every PromQL query the pages and tickets send parses, by Prometheus's own grammar.

Cloud Monitoring refuses a policy whose query does not parse only when it is applied;
this parses each one here, as Terraform writes it for a fleet and for one system, with
@prometheus-io/lezer-promql (the parser of Prometheus's own query editor, from npm).
It checks the syntax, not what Cloud Monitoring's data makes of it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable

import pytest

from tests.infra.test_alerts import _symptoms

LEZER_PROMQL_VERSION = "0.315.0"
Parse = Callable[[dict[str, str]], dict[str, list[str]]]

CHECK = """
const { parser } = require("@prometheus-io/lezer-promql");
const queries = JSON.parse(require("fs").readFileSync(0, "utf8"));
const bad = {};
for (const [name, query] of Object.entries(queries)) {
  const errors = [];
  parser.parse(query).iterate({
    enter: (node) => {
      if (node.type.isError) errors.push(query.slice(Math.max(0, node.from - 30), node.to + 30));
    },
  });
  if (errors.length) bad[name] = errors;
}
process.stdout.write(JSON.stringify(bad));
"""


@pytest.fixture(scope="module")
def parse(tmp_path_factory: pytest.TempPathFactory) -> Parse:
    if shutil.which("npm") is None or shutil.which("node") is None:
        pytest.skip("Node and npm are not installed: the PromQL parser comes from npm")
    work = tmp_path_factory.mktemp("promql")
    install = subprocess.run(
        [
            "npm",
            "install",
            "--silent",
            "--no-audit",
            "--no-fund",
            "--prefix",
            str(work),
            f"@prometheus-io/lezer-promql@{LEZER_PROMQL_VERSION}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert install.returncode == 0, install.stderr
    (work / "check.cjs").write_text(CHECK)

    def problems(queries: dict[str, str]) -> dict[str, list[str]]:
        run = subprocess.run(
            ["node", str(work / "check.cjs")],
            input=json.dumps(queries),
            cwd=work,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert run.returncode == 0, run.stderr
        return dict(json.loads(run.stdout))

    return problems


def _queries(systems: tuple[str, ...]) -> dict[str, str]:
    symptoms = _symptoms(systems)
    queries = {
        name: symptoms[name]
        for name in (
            "backlog",
            "canary_stale",
            "cell_unready",
            "dead_letters",
            "bytes_billed",
            "canary_absent",
            "export_lag",
            "export_blocked",
            "typed_refused",
            "producers_missing",
            "loop_restarts",
            "spanner_cpu",
            "spanner_storage",
            "producers_conflicts",
        )
    }
    for slo, speeds in symptoms["burning"].items():
        queries.update({f"{slo} {speed}": q for speed, q in speeds.items()})
        queries[f"{slo} ticket"] = f"({speeds['fast']}) or ({speeds['slow']})"
    return queries


@pytest.mark.slow
def test_the_parser_finds_a_broken_query(parse: Parse) -> None:
    assert parse({"broken": "sum by (a) (rate(x[5m]) > "})


@pytest.mark.slow
@pytest.mark.parametrize("systems", [("orders",), ("recordline", "orders", "payments")])
def test_every_page_and_ticket_query_parses(parse: Parse, systems: tuple[str, ...]) -> None:
    queries = _queries(systems)
    # The pages count the systems that have the symptom.
    queries.update({f"page {name}": f"count({q})" for name, q in list(queries.items())})
    assert parse(queries) == {}


def test_the_combined_queries_parse(parse: Parse) -> None:
    # Where the alerts are combined (environment/combined.tf), each policy's one
    # condition joins every symptom's query, held by a subquery where it must last.
    from tests.infra.test_alerts import _alerts_run

    conditions = _alerts_run(
        1,
        1,
        "recordline-prod",
        '{ page = join(" or ", [for s, p in local.combined_pages : p[2]]),'
        ' tickets = [for g, t in local.combined_tickets : join(" or ", [for s, p in t : p[2]])],'
        ' instances = join(" or ", [for s, p in local.combined_instance_tickets : p[2]]) }',
        True,
    )
    queries = {"page": conditions["page"], "instances": conditions["instances"]}
    queries.update({f"ticket {n}": q for n, q in enumerate(conditions["tickets"])})
    assert "count_over_time((" in queries["page"]
    assert parse(queries) == {}
    # A held query with its subquery's parenthesis left open does not.
    broken = queries["page"].replace("[120s:1m])", "[120s:1m]", 1)
    assert parse({"broken": broken})
