"""Runs a GitHub workflow job's steps here, as a runner would, against tests/infra/fake_cloud.py.

Each `run:` step is run by bash as GitHub runs it (`bash --noprofile --norc -eo
pipefail`), with the workflow's, job's and step's `env:` (their `${{ }}` expressions
evaluated), GITHUB_OUTPUT, GITHUB_STEP_SUMMARY and the step outputs that follow. The
steps that use an action are what that action leaves behind: the Google auth action
logs gcloud in as its service account, checkout gives the repository's files, the
artifact download the image archive. `if:` conditions and `${{ }}` expressions are
evaluated for the part of GitHub's expression language the workflows use; anything
else is an error, so a workflow cannot pass here on something this runner skipped.

gcloud, curl and skopeo are fake_cloud.py on PATH; `sleep` returns at once.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
FAKE = "tests.infra.fake_cloud"  # on PATH as gcloud, curl, skopeo, bq and gh


@dataclass
class Step:
    name: str
    outcome: str  # success, failure, skipped
    outputs: dict[str, str]
    stderr: str = ""


@dataclass
class Job:
    steps: list[Step] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    summary: str = ""

    @property
    def result(self) -> str:
        return "failure" if any(s.outcome == "failure" for s in self.steps) else "success"

    def step(self, name: str) -> Step:
        (found,) = [s for s in self.steps if s.name == name]
        return found


class Cloud:
    """The fake cloud's world file, its commands on PATH, and the calls made."""

    def __init__(self, work: Path, world: dict[str, Any]) -> None:
        self.work = work
        self.bin = work / "bin"
        self.bin.mkdir(parents=True)
        self.world_file = work / "world.json"
        self.artifacts = work / "artifacts"  # what a job's download-artifact step gets
        self.world_file.write_text(json.dumps(world, indent=1))
        # The fake runs as a module (`-m`), so that each call loads its compiled bytecode
        # rather than compiling the whole fake again as a script is; -P keeps the step's
        # working directory off its import path. The bytecode goes where this process
        # keeps its own (dev.py test: .tools/pycache).
        cache = f'PYTHONPYCACHEPREFIX="{sys.pycache_prefix}" ' if sys.pycache_prefix else ""
        for tool in ("gcloud", "curl", "skopeo", "bq", "gh"):
            path = self.bin / tool
            # The fake Cloud Run reads pushes with the service's own code (app/ingest).
            path.write_text(
                f'#!/bin/sh\nPYTHONPATH="{ROOT}" {cache}exec "{sys.executable}" -P -m {FAKE} '
                f'{tool} "$@"\n'
            )
            path.chmod(0o755)
        # Files a checkout has besides the repository's own (a cell's variables).
        self.files: dict[str, str] = {}
        (self.bin / "sleep").write_text("#!/bin/sh\nexit 0\n")
        (self.bin / "sleep").chmod(0o755)

    @property
    def world(self) -> dict[str, Any]:
        return dict(json.loads(self.world_file.read_text()))

    def update(self, **changes: Any) -> None:
        world = self.world
        world.update(changes)
        self.world_file.write_text(json.dumps(world, indent=1))

    def calls(self, tool: str = "gcloud") -> list[list[str]]:
        log = self.world_file.with_name("calls.jsonl")
        if not log.exists():
            return []
        entries = [json.loads(line) for line in log.read_text().splitlines()]
        return [e["argv"] for e in entries if e["tool"] == tool]

    def env(self) -> dict[str, str]:
        return {
            "PATH": f"{self.bin}{os.pathsep}/usr/bin{os.pathsep}/bin",
            "HOME": str(self.work),
            "FAKE_CLOUD_WORLD": str(self.world_file),
            "LANG": "C.UTF-8",
        }

    def shell(self, script: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """A script as a person would paste it into bash."""
        return subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
            cwd=cwd or self.work,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


# --- expressions ------------------------------------------------------------------------

TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<num>\d+(?:\.\d+)?)|(?P<op>\|\||&&|==|!=|!|\(|\)|,|\[|\])"
    r"|(?P<name>[A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*|\[\d+\])*))"
)


class Expressions:
    def __init__(self, context: dict[str, Any], status: dict[str, bool]) -> None:
        self.context = context
        self.status = status

    def evaluate(self, text: str) -> Any:
        tokens: list[tuple[str, str]] = []
        pos = 0
        text = text.strip()
        while pos < len(text):
            match = TOKEN.match(text, pos)
            if not match or match.end() == pos:
                raise ValueError(f"expression not understood here: {text!r} at {pos}")
            kind = match.lastgroup or ""
            tokens.append((kind, match.group(kind)))
            pos = match.end()
        self.tokens, self.at = tokens, 0
        value = self._or()
        if self.at != len(self.tokens):
            raise ValueError(f"expression not understood here: {text!r}")
        return value

    def _peek(self) -> str | None:
        return self.tokens[self.at][1] if self.at < len(self.tokens) else None

    def _take(self) -> tuple[str, str]:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def _or(self) -> Any:
        value = self._and()
        while self._peek() == "||":
            self._take()
            right = self._and()
            value = value or right
        return value

    def _and(self) -> Any:
        value = self._compare()
        while self._peek() == "&&":
            self._take()
            right = self._compare()
            value = value and right
        return value

    def _compare(self) -> Any:
        value = self._unary()
        while self._peek() in ("==", "!="):
            op = self._take()[1]
            right = self._unary()
            value = (value == right) if op == "==" else (value != right)
        return value

    def _unary(self) -> Any:
        if self._peek() == "!":
            self._take()
            return not self._unary()
        return self._atom()

    def _atom(self) -> Any:
        kind, text = self._take()
        if text == "(":
            value = self._or()
            assert self._take()[1] == ")"
            return value
        if kind == "str":
            return text[1:-1].replace("''", "'")
        if kind == "num":
            return float(text) if "." in text else int(text)
        if self._peek() == "(":
            self._take()
            args = []
            while self._peek() != ")":
                args.append(self._or())
                if self._peek() == ",":
                    self._take()
            self._take()
            value = self._call(text, args)
            while self._peek() == "[":  # fromJSON(x)[key]
                self._take()
                key = self._or()
                assert self._take()[1] == "]"
                value = value.get(key, "") if isinstance(value, dict) else ""
            return value
        if text in ("true", "false"):
            return text == "true"
        value = self._lookup(text)
        while self._peek() == "[":  # an index by expression: vars[matrix.provider]
            self._take()
            key = self._or()
            assert self._take()[1] == "]"
            value = value.get(key, "") if isinstance(value, dict) else ""
        return value

    def _call(self, name: str, args: list[Any]) -> Any:
        match name:
            case "success":
                return not self.status["failed"] and not self.status["cancelled"]
            case "failure":
                return self.status["failed"]
            case "cancelled":
                return self.status["cancelled"]
            case "always":
                return True
            case "fromJSON":
                return json.loads(args[0])
            case "toJSON":
                return json.dumps(args[0], indent=2)
        raise ValueError(f"function {name}() is not modelled")

    def _lookup(self, path: str) -> Any:
        value: Any = self.context
        for part in path.split("."):
            if value == "":  # what is missing (a step that did not run) is null: empty
                return ""
            if not isinstance(value, dict):
                raise ValueError(f"{path}: {part} of a non-object")
            value = value.get(part, "")
        return value


def interpolate(text: Any, expressions: Expressions) -> Any:
    if not isinstance(text, str):
        return text
    whole = re.fullmatch(r"\$\{\{(.*?)\}\}", text.strip(), re.S)
    if whole and text.count("${{") == 1:
        return expressions.evaluate(whole.group(1))
    return re.sub(r"\$\{\{(.*?)\}\}", lambda m: str(_text(expressions.evaluate(m.group(1)))), text)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


# --- jobs ---------------------------------------------------------------------------------


def load(name: str) -> dict[str, Any]:
    """A workflow as its file says: a copy of its own, since callers may change it."""
    return copy.deepcopy(_parsed(name))


@functools.cache
def _parsed(name: str) -> dict[str, Any]:
    """A workflow file parsed once per run (read, never changed), by libyaml where PyYAML
    has it: a drill runs its jobs dozens of times, and PyYAML's own parser took a tenth of
    its time."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return dict(yaml.load((WORKFLOWS / name).read_text(), Loader=loader))


def run_job(
    cloud: Cloud,
    workflow: str,
    job_id: str,
    *,
    inputs: dict[str, Any],
    variables: dict[str, str],
    github: dict[str, str],
    needs: dict[str, Any] | None = None,
    cancel_after: str | None = None,
    matrix: dict[str, Any] | None = None,
) -> Job:
    """Run one job's steps; `cancel_after` names a step after which the run is cancelled;
    `matrix` is the leg of the job's matrix it runs as."""
    definition = load(workflow)
    job_def = definition["jobs"][job_id]
    # Each job has a runner of its own: a fresh workspace and temporary directory.
    workspace = cloud.work / "workspace"
    shutil.rmtree(workspace, ignore_errors=True)
    workspace.mkdir()
    temp = cloud.work / "runner-temp"
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir()
    job = Job()
    steps: dict[str, Any] = {}
    status = {"failed": False, "cancelled": False}
    context: dict[str, Any] = {
        "inputs": inputs,
        "vars": variables,
        "github": {"token": "fake-github-token", **github},
        "needs": needs or {},
        "matrix": matrix or {},
        "steps": steps,
        "runner": {"temp": str(temp)},
        "env": {},
    }
    expressions = Expressions(context, status)
    env: dict[str, str] = {}
    for scope in (definition.get("env", {}), job_def.get("env", {})):
        for key, value in scope.items():
            env[key] = _text(interpolate(value, expressions))
    context["env"] = env
    for index, step in enumerate(job_def["steps"]):
        name = step.get("name") or step.get("uses") or step.get("id") or f"step {index}"
        condition = step.get("if", "success()")
        if isinstance(condition, str):
            condition = re.sub(r"^\$\{\{(.*)\}\}$", r"\1", condition.strip(), flags=re.S)
            # GitHub adds success() to a condition that names no status function.
            if not re.search(r"\b(success|failure|cancelled|always)\(", condition):
                condition = f"success() && ({condition})"
        wanted = condition if isinstance(condition, bool) else expressions.evaluate(condition)
        if not wanted:
            job.steps.append(Step(name, "skipped", {}))
            continue
        if "uses" in step:
            outputs, ok = _action(cloud, step, expressions, workspace, temp)
            stderr = ""
        else:
            defaults = definition.get("defaults", {}).get("run", {})
            outputs, ok, stderr = _run(
                cloud, step, expressions, env, workspace, temp, github, defaults
            )
        job.steps.append(Step(name, "success" if ok else "failure", outputs, stderr))
        if "id" in step:
            steps[step["id"]] = {"outputs": outputs, "outcome": "success" if ok else "failure"}
        if not ok:
            status["failed"] = True
        if cancel_after is not None and name == cancel_after:
            status["cancelled"] = True
    summary = temp / "summary.md"
    job.summary = summary.read_text() if summary.exists() else ""
    for key, value in job_def.get("outputs", {}).items():
        job.outputs[key] = _text(interpolate(value, expressions))
    return job


def _action(
    cloud: Cloud, step: dict[str, Any], expressions: Expressions, workspace: Path, temp: Path
) -> tuple[dict[str, str], bool]:
    action = step["uses"].split("@")[0]
    given = {k: interpolate(v, expressions) for k, v in step.get("with", {}).items()}
    match action:
        case "google-github-actions/auth":
            cloud.update(principal=f"serviceAccount:{given['service_account']}")
            return {"access_token": "fake-access-token"}, True
        case (
            "google-github-actions/setup-gcloud"
            | "docker/login-action"
            | "hashicorp/setup-terraform"
        ):
            return {}, True
        case "actions/checkout":
            shutil.copytree(ROOT / "infra", workspace / "infra", dirs_exist_ok=True)
            for name, text in cloud.files.items():
                (workspace / name).parent.mkdir(parents=True, exist_ok=True)
                (workspace / name).write_text(text)
            return {}, True
        case "actions/upload-artifact":
            uploaded = cloud.work / "uploaded" / str(given["name"])
            uploaded.mkdir(parents=True, exist_ok=True)
            for line in str(given["path"]).split():
                source = workspace / line
                if source.is_file():
                    shutil.copy(source, uploaded / source.name)
                elif source.is_dir() and any(source.iterdir()):
                    shutil.copytree(source, uploaded, dirs_exist_ok=True)
                elif given.get("if-no-files-found") == "error":
                    return {}, False
            return {}, True
        case "actions/download-artifact":
            target = Path(str(given["path"]))
            if not target.is_absolute():
                target = workspace / target
            target.mkdir(parents=True, exist_ok=True)
            if given.get("name") == "image":
                (target / "image.tar").write_bytes(b"an OCI archive")
                return {}, True
            # What an earlier job of the run uploaded, or what the test put in
            # cloud.artifacts (a saved plan); by name, or every one a pattern matches
            # (merge-multiple: into one directory, else one directory each).
            held = {
                path.name: path
                for place in (cloud.artifacts, cloud.work / "uploaded")
                if place.is_dir()
                for path in place.iterdir()
            }
            if "name" in given:
                if given["name"] not in held:
                    return {}, False
                shutil.copytree(held[str(given["name"])], target, dirs_exist_ok=True)
                return {}, True
            for name in sorted(held):
                if fnmatch.fnmatchcase(name, str(given["pattern"])):
                    into = target if given.get("merge-multiple") else target / name
                    shutil.copytree(held[name], into, dirs_exist_ok=True)
            return {}, True
    raise ValueError(f"action {action} is not modelled")


def _run(
    cloud: Cloud,
    step: dict[str, Any],
    expressions: Expressions,
    env: dict[str, str],
    workspace: Path,
    temp: Path,
    github: dict[str, str],
    defaults: dict[str, str],
) -> tuple[dict[str, str], bool, str]:
    script = temp / "step.sh"
    script.write_text(step["run"])
    directory = step.get("working-directory", defaults.get("working-directory", "."))
    output = temp / "output"
    output.write_text("")
    exported = temp / "env"
    exported.write_text("")
    step_env = {k: _text(interpolate(v, expressions)) for k, v in step.get("env", {}).items()}
    run = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
        cwd=workspace / directory,
        env={
            **cloud.env(),
            **env,
            **step_env,
            "GITHUB_OUTPUT": str(output),
            "GITHUB_ENV": str(exported),
            "GITHUB_WORKSPACE": str(workspace),
            "GITHUB_STEP_SUMMARY": str(temp / "summary.md"),
            "GITHUB_SHA": github["sha"],
            "GITHUB_RUN_ID": github["run_id"],
            "GITHUB_RUN_ATTEMPT": github["run_attempt"],
            "GITHUB_REPOSITORY": github.get("repository", "recordline/recordline"),
            "GITHUB_API_URL": "https://api.github.com",
            "GITHUB_SERVER_URL": "https://github.com",
            "RUNNER_TEMP": str(temp),
        },
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    outputs = dict(line.split("=", 1) for line in output.read_text().splitlines() if "=" in line)
    # What a step writes to GITHUB_ENV is in the environment of the job's later steps.
    env.update(line.split("=", 1) for line in exported.read_text().splitlines() if "=" in line)
    return outputs, run.returncode == 0, run.stdout + run.stderr


# --- whole workflows ------------------------------------------------------------------------

# A job whose `if` calls one of these decides alone whether it runs; without one, every
# job it needs must have succeeded too (GitHub's rule).
_STATUS_CHECKS = re.compile(r"\b(success|failure|cancelled|always)\(\)")


def runs(
    job: dict[str, Any],
    needs: dict[str, Any],
    context: dict[str, Any],
    *,
    failed: bool | None = None,
    cancelled: bool = False,
) -> bool:
    """Whether GitHub starts `job`, given what the jobs it needs ended as: `failed`, a
    job before it failed (its needs' results, unless given); `cancelled`, the run was."""
    needed = job.get("needs", [])
    needed = [needed] if isinstance(needed, str) else needed
    results = [needs.get(n, {}).get("result") for n in needed]
    if failed is None:
        failed = "failure" in results
    status = {"failed": failed, "cancelled": cancelled or "cancelled" in results}
    condition = job.get("if")
    if condition is None:
        return not status["cancelled"] and all(r == "success" for r in results)
    if isinstance(condition, bool):
        decided = condition
    else:
        # A job's `if` is an expression with or without its ${{ }}.
        bare = re.sub(r"^\$\{\{(.*)\}\}$", r"\1", condition.strip(), flags=re.S)
        decided = bool(Expressions(context, status).evaluate(bare))
    if isinstance(condition, str) and _STATUS_CHECKS.search(condition):
        return decided
    return decided and not status["cancelled"] and all(r == "success" for r in results)


@dataclass
class Workflow:
    """A workflow's run: each job's result (success, failure, skipped) and outputs, and
    what ran for it: a Job, or a Workflow for a job calling a reusable one; a matrix
    job's legs under `job[leg]`."""

    name: str
    results: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    ran: dict[str, Job | Workflow] = field(default_factory=dict)
    workflow_outputs: dict[str, Any] = field(default_factory=dict)
    cancelled: bool = False

    @property
    def result(self) -> str:
        return "failure" if "failure" in self.results.values() else "success"

    def job(self, path: str) -> Job:
        """The job at `path`: `job`, `job[leg]`, `caller/job` through a called workflow."""
        head, _, rest = path.partition("/")
        found = self.ran[head]
        if rest:
            assert isinstance(found, Workflow), path
            return found.job(rest)
        assert isinstance(found, Job), path
        return found

    def walk(self, prefix: str = "") -> list[tuple[str, Job]]:
        """Every job that ran, with its path, in the order it ran."""
        found: list[tuple[str, Job]] = []
        for key, value in self.ran.items():
            if isinstance(value, Workflow):
                found += value.walk(f"{prefix}{key}/")
            else:
                found.append((f"{prefix}{key}", value))
        return found


def _order(jobs: dict[str, Any]) -> list[str]:
    """The jobs in an order GitHub could run them: each after what it needs."""
    done: list[str] = []
    while len(done) < len(jobs):
        for name, job in jobs.items():
            needed = job.get("needs", [])
            needed = [needed] if isinstance(needed, str) else needed
            if name not in done and all(n in done for n in needed):
                done.append(name)
                break
        else:
            raise ValueError(f"a cycle among {sorted(set(jobs) - set(done))}")
    return done


def _defaults(workflow: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """The inputs as the workflow gets them: given, else each one's default."""
    on = workflow.get("on", workflow.get(True, {}))
    declared: dict[str, Any] = {}
    for trigger in ("workflow_call", "workflow_dispatch"):
        if isinstance(on, dict) and isinstance(on.get(trigger), dict):
            declared.update(on[trigger].get("inputs") or {})
    inputs = {name: spec.get("default", "") for name, spec in declared.items()}
    inputs.update(given)
    return inputs


def run_workflow(
    cloud: Cloud,
    workflow: str,
    *,
    inputs: dict[str, Any],
    variables: dict[str, str],
    github: dict[str, str],
    cancel_after: str | None = None,
    skip: frozenset[str] = frozenset(),
    assume: dict[str, dict[str, Any]] | None = None,
) -> Workflow:
    """Every job of a workflow, as GitHub runs them: in the order their `needs` give,
    each started or skipped by its `if` and what the jobs before it ended as; a matrix
    job once per leg, one after another (fail-fast, GitHub's default, starts no leg
    after one failed); a job that calls a reusable workflow of this repository runs it
    whole. `cancel_after` names a step after which the run is cancelled: no job starts
    then but those whose `if` asks for it. `skip`: jobs not run here (paths, as
    Workflow.job names them), as if GitHub had skipped them; `assume`: jobs not run
    here, as if they had ended so ({"result": ..., "outputs": {...}}), for what follows."""
    definition = load(workflow)
    run = Workflow(workflow)
    given = _defaults(definition, inputs)
    for name in _order(definition["jobs"]):
        job = definition["jobs"][name]
        if assume and name in assume:
            run.results[name] = assume[name]["result"]
            run.outputs[name] = assume[name].get("outputs", {})
            continue
        needed = job.get("needs", [])
        needed = [needed] if isinstance(needed, str) else needed
        needs = {n: {"result": run.results[n], "outputs": run.outputs.get(n, {})} for n in needed}
        context = {"needs": needs, "inputs": given, "vars": variables, "github": github}
        failed = "failure" in run.results.values()
        if name in skip or not runs(job, needs, context, failed=failed, cancelled=run.cancelled):
            run.results[name] = "skipped"
            continue
        status = {"failed": failed, "cancelled": run.cancelled}
        legs: list[dict[str, Any]] = [{}]
        strategy = job.get("strategy", {})
        if "matrix" in strategy:
            matrix = {
                key: interpolate(value, Expressions(context, status))
                for key, value in strategy["matrix"].items()
            }
            (key,) = matrix  # one dimension: what the workflows use
            legs = [{key: value} for value in matrix[key]]
        results = []
        for leg in legs:
            label = f"{name}[{next(iter(leg.values()))}]" if leg else name
            if label in skip:
                continue
            if "failure" in results and strategy.get("fail-fast", True) and leg:
                break
            leg_context = {**context, "matrix": leg}
            if "uses" in job:
                called = job["uses"].removeprefix("./.github/workflows/")
                with_ = {
                    k: interpolate(v, Expressions(leg_context, status))
                    for k, v in job.get("with", {}).items()
                }
                result: Job | Workflow = run_workflow(
                    cloud,
                    called,
                    inputs=with_,
                    variables=variables,
                    github=github,
                    cancel_after=cancel_after,
                    skip=frozenset(
                        s.removeprefix(f"{label}/") for s in skip if s.startswith(f"{label}/")
                    ),
                )
                outputs = result.workflow_outputs
                cancelled = result.cancelled
            else:
                result = run_job(
                    cloud,
                    workflow,
                    name,
                    inputs=given,
                    variables=variables,
                    github=github,
                    needs=needs,
                    cancel_after=cancel_after,
                    matrix=leg,
                )
                outputs = result.outputs
                cancelled = cancel_after is not None and any(
                    s.name == cancel_after and s.outcome != "skipped" for s in result.steps
                )
            run.ran[label] = result
            run.outputs[name] = outputs
            results.append(result.result)
            run.cancelled = run.cancelled or cancelled
        run.results[name] = "failure" if "failure" in results else "success"
    on = definition.get("on", definition.get(True, {}))
    declared = (on.get("workflow_call") or {}).get("outputs", {}) if isinstance(on, dict) else {}
    jobs_context = {
        n: {"outputs": run.outputs.get(n, {}), "result": r} for n, r in run.results.items()
    }
    expressions = Expressions({"jobs": jobs_context}, {"failed": False, "cancelled": False})
    run.workflow_outputs = {
        k: _text(interpolate(spec["value"], expressions)) for k, spec in declared.items()
    }
    return run
