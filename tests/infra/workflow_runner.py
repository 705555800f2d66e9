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
FAKE = Path(__file__).with_name("fake_cloud.py")


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
        for tool in ("gcloud", "curl", "skopeo", "bq", "gh"):
            path = self.bin / tool
            # The fake Cloud Run reads pushes with the service's own code (app/ingest).
            path.write_text(
                f'#!/bin/sh\nPYTHONPATH="{ROOT}" exec "{sys.executable}" "{FAKE}" {tool} "$@"\n'
            )
            path.chmod(0o755)
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
            return self._call(text, args)
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
    return dict(yaml.safe_load((WORKFLOWS / name).read_text()))


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
    workspace = cloud.work / "workspace"
    workspace.mkdir(exist_ok=True)
    temp = cloud.work / "runner-temp"
    shutil.rmtree(temp, ignore_errors=True)  # each job has a runner of its own
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
            return {}, True
        case "actions/upload-artifact":
            uploaded = cloud.work / "uploaded" / str(given["name"])
            uploaded.mkdir(parents=True, exist_ok=True)
            for line in str(given["path"]).split():
                source = workspace / line
                if source.is_file():
                    shutil.copy(source, uploaded / source.name)
                elif given.get("if-no-files-found") == "error":
                    return {}, False
            return {}, True
        case "actions/download-artifact":
            target = Path(str(given["path"]))
            if not target.is_absolute():
                target = workspace / target
            target.mkdir(parents=True, exist_ok=True)
            if given["name"] == "image":
                (target / "image.tar").write_bytes(b"an OCI archive")
            else:  # a saved plan: the test put it in cloud.artifacts
                shutil.copytree(cloud.artifacts / str(given["name"]), target, dirs_exist_ok=True)
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
    step_env = {k: _text(interpolate(v, expressions)) for k, v in step.get("env", {}).items()}
    run = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
        cwd=workspace / directory,
        env={
            **cloud.env(),
            **env,
            **step_env,
            "GITHUB_OUTPUT": str(output),
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
    return outputs, run.returncode == 0, run.stdout + run.stderr
