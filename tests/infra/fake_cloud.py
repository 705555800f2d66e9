"""A stand-in for the Google Cloud a rollout or a runbook talks to: gcloud, curl and skopeo.

Installed as commands on PATH (tests/infra/workflow_runner.py), it keeps one small
world in a JSON file (services with their revisions, traffic and tags, the image
registry, the state bucket, who may act as which service account) and records every
call. It answers the commands and output formats the workflows and the runbook use,
and refuses, with gcloud's own messages, what the real one refuses: a run command
without --region, an ID token with --audiences for a user account, acting as an
account without the grant, a revision or image that does not exist, a flag it does
not know. Anything it does not model is an error, never a silent success.

Who may do what is the world's IAM: roles bound on the project, on each service, on
each service account and on each table (tests build it from Terraform's grants), the
members of groups, and the permissions of each role (gcp_roles.json, and the world's
custom roles). Each command checks the permission Google checks, on the resource
Google checks it on, as the comment beside each check cites; what a command needs
that is not checked here is said where it is answered.

Cloud Run jobs (`run jobs update | execute | executions list`) run the job's
command, when its image is one the registry holds (an image built from this
checkout), as a process of this checkout's `recordline` with the job's
environment; its stdout and stderr lines become the job's log entries (a JSON line
a `jsonPayload`, any other a `textPayload`, as Cloud Logging reads a container's
output), followed by Cloud Run's own `Container called exit(N).`, which
`logging read` returns.

Worker pools (`beta run worker-pools describe | deploy | update-instance-split`, the
exporter service): a deploy creates a revision, which is ready unless its digest is
marked broken; every instance goes to the newest ready revision unless a split pins
them elsewhere, which later deploys keep (as Cloud Run does) until `--to-latest`.

Secret Manager (`secrets versions list | describe | access | add | enable | disable |
destroy`): each version of the world's `secrets` is ENABLED, DISABLED or DESTROYED, and
what a revision or a job mounts is a version (its `volumes`: directory -> [secret,
version]). A revision whose mounted version is not enabled never starts: a deploy that
would make one fails, its service answers 503 for it, a worker pool's revision exports
nothing, a job's execution fails. The systems a revision serves or exports are those of
the file version it mounts. A wildcard `storage cat` lists the bucket, which a condition
on objects' names does not allow (see `storage_cat`).

Cloud Run's behaviour it keeps: `deploy` creates a revision that inherits the last
one's command, arguments, environment and mounts unless given; a service whose traffic
follows the latest revision sends the new one everything, while a pinned one sends it
nothing (unless --no-traffic, which pins first); tags route to their revision on a URL
of their own; a traffic change acts as the service's account, as a deploy does.
A revision's container answers as Recordline does (token audience and e-mail checked,
pushes stored, records read back), as the placeholder does (503, probes 200) while it
still has the placeholder's command, or with 500 when its digest is marked broken.
"""

from __future__ import annotations

import base64
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import parse_qsl, urlencode, urlsplit

WORLD = Path(os.environ["FAKE_CLOUD_WORLD"])
ROLES: dict[str, list[str]] = json.loads(Path(__file__).with_name("gcp_roles.json").read_text())[
    "roles"
]
LOG = WORLD.with_name("calls.jsonl")

# Flags that take a value (the rest are switches), by the command words they follow.
VALUE_FLAGS = {
    "--data-file",
    "--project",
    "--region",
    "--format",
    "--image",
    "--tag",
    "--command",
    "--args",
    "--to-revisions",
    "--to-tags",
    "--remove-tags",
    "--update-tags",
    "--service",
    "--sort-by",
    "--limit",
    "--audiences",
    "--impersonate-service-account",
    "--location",
    "--freshness",
    "--instance",
    "--sql",
    "--processing-units",
    "--job",
    "--order",
    "--update-env-vars",
    "--worker-pool",
    "--secret",
    "--update-secrets",
}
# Where a cell's revisions read their systems (cell.tf, exporter.tf).
SYSTEMS_SETTING = "@/etc/recordline/systems/systems.json"
SWITCHES = {"--quiet", "--no-traffic", "--to-latest", "--include-email", "--wait"}
RUN_FLAGS = {"--project", "--region", "--format", "--quiet", "--impersonate-service-account"}


class World:
    def __init__(self) -> None:
        self.data: dict[str, Any] = json.loads(WORLD.read_text())

    def save(self) -> None:
        WORLD.write_text(json.dumps(self.data, indent=1))

    def __getitem__(self, key: str) -> Any:
        return self.data[key]


def fail(message: str, code: int = 1) -> NoReturn:
    print(message, file=sys.stderr)
    sys.exit(code)


def log(tool: str, argv: list[str], **extra: Any) -> None:
    with LOG.open("a") as f:
        f.write(json.dumps({"tool": tool, "argv": argv, **extra}) + "\n")


def token(email: str | None, audience: str) -> str:
    claims = {"aud": audience, **({"email": email} if email else {})}
    return "fake." + base64.urlsafe_b64encode(json.dumps(claims).encode()).decode()


def claims(bearer: str | None) -> dict[str, Any]:
    if not bearer or not bearer.startswith("fake."):
        return {}
    return dict(json.loads(base64.urlsafe_b64decode(bearer.removeprefix("fake."))))


# --- gcloud --------------------------------------------------------------------------


def parse(args: list[str], command: str) -> tuple[list[str], dict[str, Any]]:
    positional: list[str] = []
    flags: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if name in SWITCHES and not eq:
                flags[name] = True
            elif name in VALUE_FLAGS:
                if not eq:
                    i += 1
                    if i == len(args):
                        fail(f"ERROR: (gcloud.{command}) argument {name}: expected one argument", 2)
                    value = args[i]
                flags[name] = value
            else:
                fail(f"ERROR: (gcloud.{command}) unrecognized arguments: {arg}", 2)
        else:
            positional.append(arg)
        i += 1
    return positional, flags


def allow(command: str, flags: dict[str, Any], allowed: set[str]) -> None:
    unknown = set(flags) - allowed
    if unknown:
        fail(f"ERROR: (gcloud.{command}) unrecognized arguments: {' '.join(sorted(unknown))}", 2)


def holds(world: World, principal: str, permission: str, *where: tuple[str, str]) -> bool:
    """Whether `principal` holds `permission` through a role bound on any of `where`
    ((kind, name): ("project", ""), ("services", NAME), ("service_accounts", EMAIL),
    ("tables", DATASET.TABLE)), directly or through a group it is a member of."""
    iam = world["iam"]
    who = {principal} | {
        group for group, members in world.data.get("groups", {}).items() if principal in members
    }
    custom = world.data.get("custom_roles", {})

    def permissions(role: str) -> list[str]:
        if role not in ROLES and role not in custom:
            fail(f"fake cloud: role {role} is not in gcp_roles.json nor a custom role", 3)
        return ROLES.get(role) or custom[role]

    for kind, name in where:
        bindings = iam.get(kind, {}) if kind == "project" else iam.get(kind, {}).get(name, {})
        for member, roles in bindings.items():
            if member in who and any(permission in permissions(r) for r in roles):
                return True
    return False


def denied(command: str, permission: str, principal: str, resource: str) -> NoReturn:
    fail(
        f"ERROR: (gcloud.{command}) PERMISSION_DENIED: Permission '{permission}' denied on "
        f"resource '{resource}' (or it may not exist). [{principal}]"
    )


PROJECT = ("project", "")


def acting(world: World, flags: dict[str, Any], command: str, *, id_token: bool = False) -> str:
    """The principal a command runs as: the credentials, or the account impersonated."""
    principal = str(world["principal"])
    # The flag, else gcloud's auth/impersonate_service_account (`gcloud config set`).
    account = flags.get("--impersonate-service-account") or world.data.get("impersonate")
    if account is None:
        return principal
    # Impersonation is a short-lived credential of the account, asked for by the caller:
    # an access token needs iam.serviceAccounts.getAccessToken on the account, an ID token
    # iam.serviceAccounts.getOpenIdToken, each granted by Service Account Token Creator
    # (https://cloud.google.com/iam/docs/service-account-impersonation,
    # https://cloud.google.com/iam/docs/create-short-lived-credentials-direct).
    permission = (
        "iam.serviceAccounts.getOpenIdToken" if id_token else "iam.serviceAccounts.getAccessToken"
    )
    if not holds(world, principal, permission, PROJECT, ("service_accounts", account)):
        denied(command, permission, principal, f"projects/-/serviceAccounts/{account}")
    return f"serviceAccount:{account}"


def scope(world: World, flags: dict[str, Any], command: str) -> None:
    if not flags.get("--project"):
        fail(f"ERROR: (gcloud.{command}) The required property [project] is not currently set.")
    if flags["--project"] != world["project"]:
        fail(f"ERROR: (gcloud.{command}) project {flags['--project']} not found or not yours")
    if command.startswith(("run.", "beta.run.")) and not flags.get("--region"):
        fail(
            f"ERROR: (gcloud.{command}) Missing required argument [--region]: You must specify "
            "a region. Either use the --region flag or set the run/region property."
        )
    if command.startswith(("run.", "beta.run.")) and flags["--region"] != world["region"]:
        fail(f"ERROR: (gcloud.{command}) no such service in region {flags['--region']}")


def service_of(world: World, name: str, command: str) -> dict[str, Any]:
    service = world["services"].get(name)
    if service is None:
        fail(f"ERROR: (gcloud.{command}) Cannot find service [{name}]")
    return dict(service)


def may(world: World, name: str, principal: str, permission: str, command: str) -> None:
    """A Cloud Run service permission, held on the service or inherited from the project
    (https://cloud.google.com/run/docs/securing/managing-access: roles granted on a
    service apply to it; on the project, to every service)."""
    if not holds(world, principal, permission, PROJECT, ("services", name)):
        denied(command, permission, principal, f"namespaces/{world['project']}/services/{name}")


def acts_as(world: World, principal: str, account: str, command: str) -> None:
    """iam.serviceAccounts.actAs on the account a service, pool or job runs as, held on
    the account or the project: what creating a revision or changing traffic checks."""
    if account and not holds(
        world, principal, "iam.serviceAccounts.actAs", PROJECT, ("service_accounts", account)
    ):
        denied(command, "iam.serviceAccounts.actAs", principal, account)


def latest(service: dict[str, Any]) -> str:
    """The newest ready revision: where traffic that follows the latest goes."""
    ready = [r for r in service["revisions"] if not r.get("failed")]
    return str((ready or service["revisions"])[-1]["name"])


def next_number(revisions: list[dict[str, Any]]) -> int:
    """A new revision's number: one more than the highest ever given, as Cloud Run
    numbers them (a deleted revision's number is not given again)."""
    numbers = [int(m.group(1)) for r in revisions if (m := re.search(r"-(\d{5})-", r["name"]))]
    return max(numbers, default=0) + 1


def created(revision: dict[str, Any]) -> str:
    """When a revision was created, in the order of its number (a minute apart)."""
    number = int(re.search(r"-(\d{5})-", revision["name"]).group(1))  # type: ignore[union-attr]
    return f"2026-11-{1 + number // 1440:02d}T{number // 60 % 24:02d}:{number % 60:02d}:00Z"


# --- Secret Manager: the versions a revision mounts --------------------------------------


def version_state(world: World, secret: str, version: str) -> str:
    """ENABLED, DISABLED or DESTROYED; NOT_FOUND for a version that never existed."""
    held = world.data.get("secrets", {}).get(secret, {}).get("versions", {}).get(str(version))
    return str(held["state"]) if held else "NOT_FOUND"


def unavailable(world: World, revision: dict[str, Any]) -> str | None:
    """Why a revision's instances cannot start, or None: a secret version it mounts (a
    volume) or reads into a variable (its `env_secrets`: name -> [secret, version]) that
    is not enabled. Cloud Run resolves a variable's version before an instance starts, and
    the instance does not start without it; a volume's is read when the file is, and
    Recordline reads RECORDLINE_SYSTEMS before it serves anything
    (https://cloud.google.com/run/docs/configuring/services/secrets#secrets-check,
    https://cloud.google.com/secret-manager/docs/disable-secret-version). Stricter than
    Cloud Run for a volume the code never reads: any mounted version counts."""
    mounted = [
        (f"mounted at {path}", secret, version)
        for path, (secret, version) in sorted((revision.get("volumes") or {}).items())
    ] + [
        (f"read into {name}", secret, version)
        for name, (secret, version) in sorted((revision.get("env_secrets") or {}).items())
    ]
    for where, secret, version in mounted:
        if version == "latest":
            held = world.data.get("secrets", {}).get(secret, {}).get("versions", {})
            version = max(held, key=int) if held else "latest"
        state = version_state(world, secret, version)
        if state != "ENABLED":
            return f"secret version {version} of {secret}, {where}, is {state}"
    return None


def settings_of(world: World, revision: dict[str, Any], setting: str) -> list[str] | None:
    """The systems the file a setting names (@DIRECTORY/systems.json) holds, as this
    revision mounts it; None where it mounts nothing there."""
    directory = setting.removeprefix("@").rpartition("/")[0]
    mounted = (revision.get("volumes") or {}).get(directory)
    if mounted is None:
        return None
    secret, version = mounted
    held = world.data.get("secrets", {}).get(secret, {}).get("versions", {}).get(str(version))
    if held is None or held["state"] != "ENABLED":
        return []
    return sorted(json.loads(held["data"]))


def serving(service: dict[str, Any]) -> list[tuple[str, int]]:
    """(revision, percent) of the entries that carry traffic."""
    return [
        (latest(service) if t.get("latest") else t["revision"], t["percent"])
        for t in service["traffic"]
        if t["percent"] > 0
    ]


def tag_url(world: World, name: str, tag: str) -> str:
    return f"https://{tag}---{name}-{world['hash']}.a.run.app"


def describe_status(world: World, name: str, service: dict[str, Any]) -> dict[str, Any]:
    traffic = []
    for t in service["traffic"]:
        entry: dict[str, Any] = {
            "revisionName": latest(service) if t.get("latest") else t["revision"],
            "percent": t["percent"],
        }
        if t.get("latest"):
            entry["latestRevision"] = True
        if t.get("tag"):
            entry["tag"] = t["tag"]
            entry["url"] = tag_url(world, name, t["tag"])
        traffic.append(entry)
    # spec.traffic as the service declares it (Knative's TrafficTarget:
    # https://cloud.google.com/run/docs/reference/rest/v1/namespaces.services#TrafficTarget).
    spec = []
    for t in service["traffic"]:
        target: dict[str, Any] = (
            {"latestRevision": True} if t.get("latest") else {"revisionName": t["revision"]}
        )
        target["percent"] = t["percent"]
        if t.get("tag"):
            target["tag"] = t["tag"]
        spec.append(target)
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": name},
        # The newest revision's container, as the service's template now says it.
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "image": service["revisions"][-1]["image"],
                            **(
                                {"command": service["revisions"][-1]["command"]}
                                if service["revisions"][-1]["command"]
                                else {}
                            ),
                        }
                    ]
                }
            },
            "traffic": spec,
        },
        "status": {
            "url": f"https://{name}-{world['hash']}.a.run.app",
            "latestReadyRevisionName": latest(service),
            "latestCreatedRevisionName": latest(service),
            "traffic": traffic,
        },
    }


def show(value: Any, fmt: str | None, command: str) -> None:
    if fmt == "json":
        print(json.dumps(value, indent=2))
        return
    match = re.fullmatch(r"(value|yaml)\((.+)\)", fmt or "")
    if not match:
        fail(f"fake gcloud: output format {fmt!r} of {command} is not modelled", 3)
    kind, paths = match.groups()
    for path in paths.split(","):
        found: Any = value
        for part in path.strip().split("."):
            key, _, index = part.partition("[")
            if not isinstance(found, dict) or key not in found:
                fail(f"fake gcloud: {path} is not in what {command} describes", 3)
            found = found[key]
            if index:  # name[N]: the Nth item of a list
                found = found[int(index.rstrip("]"))]
        print(
            json.dumps({path.strip(): found}, indent=2)
            if kind == "yaml" and "," in paths
            else json.dumps(found, indent=2)
            if kind == "yaml"
            else found
        )


def run_deploy(world: World, args: list[str]) -> None:
    command = "run.deploy"
    (name,), flags = parse(args, command)
    allow(command, flags, RUN_FLAGS | {"--image", "--no-traffic", "--tag", "--command", "--args"})
    scope(world, flags, command)
    service = service_of(world, name, command)
    principal = acting(world, flags, command)
    # Replacing the service (a new revision) is run.services.update on it
    # (https://cloud.google.com/run/docs/reference/rest/v1/namespaces.services/replaceService),
    # and a revision runs as the service's account: deploying one is acting as it,
    # iam.serviceAccounts.actAs (https://cloud.google.com/run/docs/securing/service-identity).
    may(world, name, principal, "run.services.update", command)
    acts_as(world, principal, service.get("runtime_account", ""), command)
    image = flags.get("--image")
    if not image:
        fail(f"ERROR: (gcloud.{command}) deploying needs --image here", 2)
    repository, _, digest = image.partition("@")
    if digest not in world["registry"].get(repository, {}).get("digests", []):
        fail(f"ERROR: (gcloud.{command}) Image '{image}' not found.")
    previous = service["revisions"][-1]
    number = next_number(service["revisions"])
    revision = {
        "name": f"{name}-{number:05d}-x{number}y",
        "image": image,
        "digest": digest,
        # Cloud Run keeps the last revision's command and arguments unless told;
        # an empty value resets them to the image's own.
        "command": previous["command"]
        if "--command" not in flags
        else (flags["--command"] or None),
        "args": previous["args"] if "--args" not in flags else (flags["--args"] or None),
        # and everything else of the template: its environment, the secret versions it
        # mounts.
        **({"env": previous["env"]} if previous.get("env") else {}),
        **({"volumes": previous["volumes"]} if previous.get("volumes") else {}),
        **({"env_secrets": previous["env_secrets"]} if previous.get("env_secrets") else {}),
    }
    why = unavailable(world, revision)
    if why:
        # Created, never ready: traffic that follows the latest stays where it was.
        service["revisions"].append({**revision, "failed": why})
        world["services"][name] = service
        world.save()
        fail(f"ERROR: (gcloud.{command}) Revision '{revision['name']}' is not ready: {why}.")
    follows_latest = any(t.get("latest") and t["percent"] == 100 for t in service["traffic"])
    if flags.get("--no-traffic") and follows_latest:
        # Pins what serves now, so the new revision gets nothing.
        for t in service["traffic"]:
            if t.get("latest"):
                t.pop("latest")
                t["revision"] = previous["name"]
    service["revisions"].append(revision)
    tag = flags.get("--tag")
    if tag:
        for t in service["traffic"]:
            if t.get("tag") == tag:
                t.pop("tag")
        service["traffic"].append({"revision": revision["name"], "percent": 0, "tag": tag})
    service["traffic"] = [t for t in service["traffic"] if t["percent"] > 0 or t.get("tag")]
    world["services"][name] = service
    world.save()
    print(f"Service [{name}] revision [{revision['name']}] has been deployed", file=sys.stderr)


def run_update_traffic(world: World, args: list[str]) -> None:
    command = "run.services.update-traffic"
    (name,), flags = parse(args, command)
    allow(
        command, flags, RUN_FLAGS | {"--to-revisions", "--to-latest", "--to-tags", "--remove-tags"}
    )
    scope(world, flags, command)
    service = service_of(world, name, command)
    # A traffic change replaces the service: run.services.update (as `deploy`), and
    # acting as the account it runs as: managing traffic takes Service Account User on
    # the service identity as a deploy does
    # (https://cloud.google.com/run/docs/rollouts-rollbacks-traffic-migration#required-roles).
    # So whoever may roll back may also deploy: IAM cannot tell them apart.
    principal = acting(world, flags, command)
    may(world, name, principal, "run.services.update", command)
    acts_as(world, principal, service.get("runtime_account", ""), command)
    names = {r["name"] for r in service["revisions"]}
    tags = [t for t in service["traffic"] if t.get("tag")]
    if flags.get("--to-latest"):
        service["traffic"] = [{"latest": True, "percent": 100}] + [
            {**t, "percent": 0} for t in tags
        ]
    elif "--to-revisions" in flags:
        split = []
        for part in flags["--to-revisions"].split(","):
            revision, _, percent = part.partition("=")
            if revision != "LATEST" and revision not in names:
                fail(f"ERROR: (gcloud.{command}) Revision '{revision}' not found.")
            if not percent.isdigit():
                fail(f"ERROR: (gcloud.{command}) Invalid --to-revisions value: {part}", 2)
            entry: dict[str, Any] = {"percent": int(percent)}
            entry.update({"latest": True} if revision == "LATEST" else {"revision": revision})
            split.append(entry)
        if sum(e["percent"] for e in split) != 100:
            fail(f"ERROR: (gcloud.{command}) traffic must add up to 100", 2)
        service["traffic"] = split + [{**t, "percent": 0} for t in tags]
    if "--remove-tags" in flags:
        gone = set(flags["--remove-tags"].split(","))
        for t in service["traffic"]:
            if t.get("tag") in gone:
                t.pop("tag")
    if not ({"--to-latest", "--to-revisions", "--remove-tags"} & set(flags)):
        fail(f"ERROR: (gcloud.{command}) nothing to change", 2)
    service["traffic"] = [t for t in service["traffic"] if t["percent"] > 0 or t.get("tag")]
    world["services"][name] = service
    world.save()


def pool_of(world: World, name: str, command: str) -> dict[str, Any]:
    pool = world.data.get("worker_pools", {}).get(name)
    if pool is None:
        fail(f"ERROR: (gcloud.{command}) Cannot find worker pool [{name}]")
    return dict(pool)


def may_pool(world: World, name: str, principal: str, permission: str, command: str) -> None:
    """A worker pool permission, on the pool or inherited from the project
    (https://cloud.google.com/run/docs/managing/workerpool-instance-splits-rollbacks:
    roles/run.developer on the worker pool)."""
    if not holds(world, principal, permission, PROJECT, ("worker_pools", name)):
        denied(command, permission, principal, f"workerPools/{name}")


def _split(pool: dict[str, Any]) -> list[tuple[str, int]]:
    """The pool's instance split: (revision, percent), "LATEST" for the newest ready."""
    split = pool["split"]
    if split == "latest":
        return [("LATEST", 100)]
    if isinstance(split, str):  # pinned whole to one revision
        return [(split, 100)]
    return [(str(revision), int(percent)) for revision, percent in split]


def _ready(world: World, pool: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        r
        for r in pool["revisions"]
        if r["digest"] not in world["broken_digests"] and not r.get("failed")
    ]


def pool_status(world: World, name: str, pool: dict[str, Any]) -> dict[str, Any]:
    """The worker pool as `describe --format=json` shows it (the v2 WorkerPool)."""
    path = f"projects/{world['project']}/locations/{world['region']}/workerPools/{name}"
    ready = _ready(world, pool)
    newest = pool["revisions"][-1]
    env = [{"name": k, "value": v} for k, v in sorted((newest.get("env") or {}).items())]
    return {
        "name": path,
        "template": {
            "containers": [
                {
                    "image": newest["image"],
                    "command": newest["command"],
                    "args": newest["args"],
                    "env": env,
                }
            ]
        },
        "latestCreatedRevision": f"{path}/revisions/{newest['name']}",
        "latestReadyRevision": f"{path}/revisions/{ready[-1]['name']}" if ready else "",
        "instanceSplits": [
            {"type": "INSTANCE_SPLIT_ALLOCATION_TYPE_LATEST", "percent": percent}
            if revision == "LATEST"
            else {
                "type": "INSTANCE_SPLIT_ALLOCATION_TYPE_REVISION",
                "revision": revision,
                "percent": percent,
            }
            for revision, percent in _split(pool)
        ],
    }


def running(world: World, pool: dict[str, Any]) -> list[dict[str, Any]]:
    """The revisions the pool's instances run: those the split gives instances, the
    newest ready one for LATEST."""
    ready = _ready(world, pool)
    names = []
    for revision, percent in _split(pool):
        if percent > 0:
            names.append(ready[-1]["name"] if revision == "LATEST" and ready else revision)
    return [r for r in pool["revisions"] if r["name"] in names]


def exports(world: World, pool: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Which running revision exports each of the pool's systems, and how: every
    revision claims the systems its file names (RECORDLINE_SYSTEMS: the pool's full
    file, or its canary systems'), and the newest code takes each lease
    (app/store/spanner/ledger.py ranks code versions), even when it then fails to
    export: a digest in the world's `stalled_digests` holds its leases and exports
    nothing. The placeholder exports nothing and claims nothing. Each system's export,
    as its metrics say it: job (the revision's OTEL_SERVICE_NAME), lag (s) and rows
    exported over a soak."""
    found: dict[str, dict[str, Any]] = {}
    for revision in running(world, pool):  # oldest first: the newest claims last
        # The placeholder claims nothing; nor does a revision whose instances cannot
        # start (a secret version it mounts is gone): it holds no lease.
        if revision["command"] == ["python3"] or unavailable(world, revision):
            continue
        env = revision.get("env") or {}
        setting = env.get("RECORDLINE_SYSTEMS", "")
        reads = settings_of(world, revision, setting)
        if reads is None:
            reads = pool.get("files", {}).get(setting, [])
        stalled_digest = revision["digest"] in world.data.get("stalled_digests", [])
        # The world's `stalled_exports`: digest -> the systems it holds and stops alone.
        alone = world.data.get("stalled_exports", {}).get(revision["digest"], [])
        for system in reads:
            stalled = stalled_digest or system in alone
            found[system] = {
                "revision": revision["name"],
                "job": env.get("OTEL_SERVICE_NAME", ""),
                "lag": 3600.0 if stalled else 2.0,
                "rows": 0.0 if stalled else 300.0,
            }
    return found


def worker_pools(world: World, verb: str, args: list[str]) -> None:
    command = f"beta.run.worker-pools.{verb}"
    (name,), flags = parse(args, command)
    extra = {
        "describe": set(),
        "deploy": {"--image", "--command", "--args", "--update-env-vars"},
        "update-instance-split": {"--to-latest", "--to-revisions"},
    }[verb]
    allow(command, flags, RUN_FLAGS | extra)
    scope(world, flags, command)
    pool = pool_of(world, name, command)
    principal = acting(world, flags, command)
    if verb == "describe":
        may_pool(world, name, principal, "run.workerpools.get", command)
        return show(pool_status(world, name, pool), flags.get("--format"), command)
    # A new revision or another split replaces the worker pool: run.workerpools.update
    # on it, and acting as the pool's account (as for a service's traffic).
    may_pool(world, name, principal, "run.workerpools.update", command)
    acts_as(world, principal, pool.get("account", ""), command)
    if verb == "update-instance-split":
        if flags.get("--to-latest"):
            pool["split"] = "latest"
        else:
            split = []
            names = {r["name"] for r in pool["revisions"]}
            for part in str(flags.get("--to-revisions", "")).split(","):
                revision, _, percent = part.partition("=")
                if revision not in names:
                    fail(f"ERROR: (gcloud.{command}) Revision '{revision}' not found.")
                if not percent.isdigit():
                    fail(f"ERROR: (gcloud.{command}) Invalid --to-revisions value: {part}", 2)
                split.append([revision, int(percent)])
            if sum(percent for _, percent in split) != 100:
                fail(f"ERROR: (gcloud.{command}) instance split must add up to 100", 2)
            pool["split"] = split[0][0] if len(split) == 1 else split
    else:
        image = str(flags.get("--image", ""))
        repository, _, digest = image.partition("@")
        if digest not in world["registry"].get(repository, {}).get("digests", []):
            fail(f"ERROR: (gcloud.{command}) Image '{image}' not found.")
        previous = pool["revisions"][-1]
        # The new revision is the pool's template with what the deploy changes: like a
        # service's, it keeps the last revision's command, arguments and environment.
        env = dict(previous.get("env") or {})
        if flags.get("--update-env-vars"):
            env.update(pair.split("=", 1) for pair in listed(flags["--update-env-vars"]))
        number = next_number(pool["revisions"])
        made = {
            "name": f"{name}-{number:05d}-w{number}p",
            "image": image,
            "digest": digest,
            "command": previous["command"]
            if "--command" not in flags
            else ([flags["--command"]] if flags["--command"] else None),
            "args": previous["args"]
            if "--args" not in flags
            else ([flags["--args"]] if flags["--args"] else None),
            "env": env,
            **({"volumes": previous["volumes"]} if previous.get("volumes") else {}),
            **({"env_secrets": previous["env_secrets"]} if previous.get("env_secrets") else {}),
        }
        why = unavailable(world, made)
        if why:
            made["failed"] = why
        pool["revisions"].append(made)
        if digest in world["broken_digests"] or why:
            world.data.setdefault("worker_pools", {})[name] = pool
            world.save()
            fail(
                f"ERROR: (gcloud.{command}) Revision {name}-{number:05d} is not ready"
                + (f": {why}." if why else ".")
            )
    world.data.setdefault("worker_pools", {})[name] = pool
    world.save()


def pool_revisions(world: World, verb: str, args: list[str]) -> None:
    """`gcloud beta run worker-pools revisions list --worker-pool=P`, `describe R`,
    `delete R`: run.revisions.list on the project (as for a service's), get and delete
    on the pool; a revision that instances run cannot be deleted."""
    command = f"beta.run.worker-pools.revisions.{verb}"
    positional, flags = parse(args, command)
    extra = {"list": {"--worker-pool", "--sort-by", "--limit"}}.get(verb, set())
    allow(command, flags, RUN_FLAGS | extra)
    scope(world, flags, command)
    principal = acting(world, flags, command)
    pools = world.data.get("worker_pools", {})
    if verb == "list":
        name = str(flags.get("--worker-pool", ""))
        pool = pool_of(world, name, command)
        if not holds(world, principal, "run.revisions.list", PROJECT):
            denied(command, "run.revisions.list", principal, f"namespaces/{world['project']}")
        if flags.get("--sort-by") not in (None, "~metadata.creationTimestamp"):
            fail(f"fake gcloud: --sort-by={flags['--sort-by']} is not modelled", 3)
        revisions = list(reversed(pool["revisions"]))[: int(flags.get("--limit", 10**6))]
        fmt = flags.get("--format")
        if fmt == "value(metadata.name)":
            print("\n".join(r["name"] for r in revisions))
        elif fmt == "json":
            print(json.dumps([pool_revision(world, name, r) for r in revisions], indent=1))
        elif fmt is None or fmt.startswith("table("):
            for r in revisions:
                print(f"{r['name']}  {r['image']}")
        else:
            fail(f"fake gcloud: output format {fmt!r} of {command} is not modelled", 3)
        return None
    (revision,) = positional
    for name, pool in pools.items():
        for r in pool["revisions"]:
            if r["name"] != revision:
                continue
            permission = "run.revisions.get" if verb == "describe" else "run.revisions.delete"
            may_pool(world, name, principal, permission, command)
            if verb == "describe":
                return show(pool_revision(world, name, r), flags.get("--format"), command)
            if r in running(world, pool):
                fail(f"ERROR: (gcloud.{command}) Revision {revision} has instances")
            pool["revisions"] = [x for x in pool["revisions"] if x is not r]
            world.save()
            return None
    fail(f"ERROR: (gcloud.{command}) Revision [{revision}] could not be found.")


def _mounts(revision: dict[str, Any], v2: bool) -> tuple[list[Any], list[Any]]:
    """A revision's secret volumes and their mounts, in the API's shape: v1 (Knative)
    names a secret version as an item's `key`, v2 as its `version`."""
    volumes, mounts = [], []
    for path, (secret, version) in sorted((revision.get("volumes") or {}).items()):
        name = path.rsplit("/", 1)[-1]
        item = {"version" if v2 else "key": str(version), "path": "systems.json"}
        source = {"secret": secret} if v2 else {"secretName": secret}
        volumes.append({"name": name, "secret": {**source, "items": [item]}})
        mounts.append({"name": name, "mountPath": path})
    return volumes, mounts


def _container(revision: dict[str, Any], mounts: list[Any], v2: bool) -> dict[str, Any]:
    env: list[dict[str, Any]] = [
        {"name": k, "value": v} for k, v in sorted((revision.get("env") or {}).items())
    ]
    # A variable from a secret's version: v1 names it valueFrom.secretKeyRef {name, key},
    # v2 valueSource.secretKeyRef {secret, version}.
    for name, (secret, version) in sorted((revision.get("env_secrets") or {}).items()):
        ref = {"secret": secret, "version": version} if v2 else {"name": secret, "key": version}
        env.append({"name": name, ("valueSource" if v2 else "valueFrom"): {"secretKeyRef": ref}})
    return {
        "image": revision["image"],
        **({"command": revision["command"]} if revision.get("command") else {}),
        **({"args": revision["args"]} if revision.get("args") else {}),
        "env": env,
        "volumeMounts": mounts,
    }


def service_revision(world: World, service: str, revision: dict[str, Any]) -> dict[str, Any]:
    """A service's revision as `gcloud run revisions describe|list --format=json` shows
    it (v1: https://cloud.google.com/run/docs/reference/rest/v1/namespaces.revisions)."""
    volumes, mounts = _mounts(revision, v2=False)
    repository = revision["image"].split("@")[0]
    ready = "False" if revision.get("failed") else "True"
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Revision",
        "metadata": {
            "name": revision["name"],
            "creationTimestamp": created(revision),
            "labels": {"serving.knative.dev/service": service},
        },
        "spec": {"containers": [_container(revision, mounts, v2=False)], "volumes": volumes},
        "status": {
            "imageDigest": f"{repository}@{revision['digest']}",
            "conditions": [{"type": "Ready", "status": ready}],
        },
    }


def pool_revision(world: World, pool: str, revision: dict[str, Any]) -> dict[str, Any]:
    """A worker pool's revision as `gcloud beta run worker-pools revisions describe|list
    --format=json` shows it (v2: https://cloud.google.com/run/docs/reference/rest/v2/projects.locations.services.revisions)."""
    volumes, mounts = _mounts(revision, v2=True)
    path = f"projects/{world['project']}/locations/{world['region']}/workerPools/{pool}"
    return {
        "name": f"{path}/revisions/{revision['name']}",
        "createTime": created(revision),
        "containers": [_container(revision, mounts, v2=True)],
        "volumes": volumes,
        "conditions": [
            {
                "type": "Ready",
                "state": "CONDITION_FAILED"
                if revision.get("failed") or revision["digest"] in world["broken_digests"]
                else "CONDITION_SUCCEEDED",
            }
        ],
    }


def secrets(world: World, verb: str, args: list[str]) -> None:
    """`gcloud secrets versions list SECRET | add SECRET --data-file=FILE | describe |
    access | enable | disable | destroy VERSION --secret=SECRET`: the world's `secrets`
    (secret -> versions, each its state and data). Each needs its permission on the
    secret or the project (https://cloud.google.com/secret-manager/docs/access-control):
    versions.list, .add, .get, .access, .enable, .disable, .destroy. Only an enabled
    version can be read; a destroyed one cannot be enabled again, nor destroyed twice
    (https://cloud.google.com/secret-manager/docs/destroy-secret-version)."""
    command = f"secrets.versions.{verb}"
    positional, flags = parse(args, command)
    allow(
        command,
        flags,
        {"--project", "--impersonate-service-account", "--format", "--secret", "--quiet"}
        | ({"--data-file"} if verb == "add" else set()),
    )
    scope(world, flags, command)
    principal = acting(world, flags, command)
    (name,) = positional
    secret = name if verb in ("list", "add") else str(flags.get("--secret", ""))
    if not secret:
        fail(f"ERROR: (gcloud.{command}) argument --secret: Must be specified.", 2)
    path = f"projects/{world['number']}/secrets/{secret}"
    permission = "secretmanager.versions." + {"describe": "get"}.get(verb, verb)
    if not holds(world, principal, permission, PROJECT, ("secrets", secret)):
        denied(command, permission, principal, path)
    held = world.data.get("secrets", {}).get(secret)
    if held is None:
        fail(f"ERROR: (gcloud.{command}) NOT_FOUND: Secret [{path}] not found or has no versions.")
    if verb == "add":
        # The new version's data, from --data-file (a path, or - for standard input).
        source = str(flags.get("--data-file", ""))
        if not source:
            fail(f"ERROR: (gcloud.{command}) argument --data-file: Must be specified.", 2)
        data = sys.stdin.read() if source == "-" else Path(source).read_text()
        number = str(max(map(int, held["versions"]), default=0) + 1)
        held["versions"][number] = {"state": "ENABLED", "data": data}
        world.save()
        print(f"Created version [{number}] of the secret [{secret}].", file=sys.stderr)
        return None
    if verb == "list":
        listed_versions = [
            {"name": f"{path}/versions/{number}", "state": version["state"]}
            for number, version in sorted(held["versions"].items(), key=lambda v: -int(v[0]))
        ]
        return show(listed_versions, flags.get("--format"), command)
    if name == "latest":  # the alias: the newest version, whatever its state
        name = max(held["versions"], key=int)
    version = held["versions"].get(name)
    if version is None:
        fail(f"ERROR: (gcloud.{command}) NOT_FOUND: Secret Version [{path}/versions/{name}]")
    state = version["state"]
    if verb == "describe":
        return show(
            {"name": f"{path}/versions/{name}", "state": state}, flags.get("--format"), command
        )
    if verb == "access":
        if state != "ENABLED":
            fail(
                f"ERROR: (gcloud.{command}) FAILED_PRECONDITION: Secret Version "
                f"[{path}/versions/{name}] is in {state} state."
            )
        sys.stdout.write(version["data"])
        return None
    if state == "DESTROYED":
        fail(
            f"ERROR: (gcloud.{command}) FAILED_PRECONDITION: Secret Version "
            f"[{path}/versions/{name}] is in DESTROYED state."
        )
    version["state"] = {"enable": "ENABLED", "disable": "DISABLED", "destroy": "DESTROYED"}[verb]
    if verb == "destroy":
        version["data"] = ""
    world.save()
    print(
        f"{version['state'].capitalize()} version [{name}] of the secret [{secret}].",
        file=sys.stderr,
    )
    return None


def run_command(world: World, words: list[str], args: list[str]) -> None:
    if words[:2] == ["secrets", "versions"]:
        return secrets(world, words[2], args)
    if words[:4] == ["beta", "run", "worker-pools", "revisions"]:
        return pool_revisions(world, words[4], args)
    if words[:3] == ["beta", "run", "worker-pools"]:
        return worker_pools(world, words[3], args)
    if words == ["run", "deploy"]:
        return run_deploy(world, args)
    if words == ["run", "services", "update-traffic"]:
        return run_update_traffic(world, args)
    if words == ["run", "services", "describe"]:
        command = "run.services.describe"
        (name,), flags = parse(args, command)
        allow(command, flags, RUN_FLAGS)
        scope(world, flags, command)
        service = service_of(world, name, command)
        # namespaces.services.get: run.services.get on the service
        # (https://cloud.google.com/run/docs/reference/rest/v1/namespaces.services/get).
        may(world, name, acting(world, flags, command), "run.services.get", command)
        return show(describe_status(world, name, service), flags.get("--format"), command)
    if words == ["run", "revisions", "list"]:
        command = "run.revisions.list"
        _, flags = parse(args, command)
        allow(command, flags, RUN_FLAGS | {"--service", "--sort-by", "--limit"})
        scope(world, flags, command)
        service = service_of(world, flags.get("--service", ""), command)
        principal = acting(world, flags, command)
        # gcloud lists revisions with namespaces.revisions.list, whose parent is the
        # namespace, the project, filtered by a label of the service: run.revisions.list
        # is checked on the project, and a role on the service alone does not grant it
        # (https://cloud.google.com/run/docs/reference/rest/v1/namespaces.revisions/list).
        if not holds(world, principal, "run.revisions.list", PROJECT):
            denied(command, "run.revisions.list", principal, f"namespaces/{world['project']}")
        revisions = list(reversed(service["revisions"]))  # newest first
        if flags.get("--sort-by") not in (None, "~metadata.creationTimestamp"):
            fail(f"fake gcloud: --sort-by={flags['--sort-by']} is not modelled", 3)
        revisions = revisions[: int(flags.get("--limit", len(revisions)))]
        fmt = flags.get("--format")
        if fmt == "value(metadata.name)":
            print("\n".join(r["name"] for r in revisions))
        elif fmt == "json":
            name = flags["--service"]
            print(json.dumps([service_revision(world, name, r) for r in revisions], indent=1))
        elif fmt is None or fmt.startswith("table("):
            for r in revisions:
                print(f"{r['name']}  {r['image']}")
        else:
            fail(f"fake gcloud: output format {fmt!r} of {command} is not modelled", 3)
        return None
    if words == ["run", "revisions", "delete"]:
        command = "run.revisions.delete"
        (name,), flags = parse(args, command)
        allow(command, flags, RUN_FLAGS)
        scope(world, flags, command)
        principal = acting(world, flags, command)
        for service_name, service in world["services"].items():
            for r in service["revisions"]:
                if r["name"] == name:
                    # namespaces.revisions.delete: run.revisions.delete, on the revision's
                    # service or the project; Cloud Run refuses to delete a revision that
                    # serves traffic or carries a tag
                    # (https://cloud.google.com/run/docs/managing/revisions#delete).
                    may(world, service_name, principal, "run.revisions.delete", command)
                    if any(t.get("revision") == name for t in service["traffic"]):
                        fail(f"ERROR: (gcloud.{command}) Revision {name} is in use")
                    service["revisions"] = [x for x in service["revisions"] if x is not r]
                    world["services"][service_name] = service
                    world.save()
                    return None
        fail(f"ERROR: (gcloud.{command}) Revision [{name}] could not be found.")
    if words == ["run", "revisions", "describe"]:
        command = "run.revisions.describe"
        (name,), flags = parse(args, command)
        allow(command, flags, RUN_FLAGS)
        scope(world, flags, command)
        principal = acting(world, flags, command)
        for service_name, service in world["services"].items():
            for r in service["revisions"]:
                if r["name"] == name:
                    # run.revisions.get, held on the revision's service or the project.
                    may(world, service_name, principal, "run.revisions.get", command)
                    described = service_revision(world, service_name, r)
                    return show(described, flags.get("--format"), command)
        fail(f"ERROR: (gcloud.{command}) Revision [{name}] could not be found.")
    if words == ["auth", "print-identity-token"]:
        command = "auth.print-identity-token"
        _, flags = parse(args, command)
        allow(command, flags, {"--audiences", "--include-email", "--impersonate-service-account"})
        principal = acting(world, flags, command, id_token=True)
        if "--audiences" in flags and principal.startswith("user:"):
            fail(
                f"ERROR: (gcloud.{command}) Invalid account type for `--audiences`. "
                "Requires valid service account."
            )
        email = principal.partition(":")[2] if flags.get("--include-email") else None
        print(token(email, flags.get("--audiences", "32555940559.apps.googleusercontent.com")))
        return None
    if words == ["auth", "print-access-token"]:
        command = "auth.print-access-token"
        _, flags = parse(args, command)
        allow(command, flags, {"--impersonate-service-account"})
        principal = acting(world, flags, command)
        print("access." + base64.urlsafe_b64encode(principal.encode()).decode())
        return None
    if words == ["scheduler", "jobs", "resume"] or words == ["scheduler", "jobs", "pause"]:
        command = f"scheduler.jobs.{words[2]}"
        (job,), flags = parse(args, command)
        allow(command, flags, {"--location", "--project", "--impersonate-service-account"})
        scope(world, flags, command)
        if flags.get("--location") != world["region"]:
            fail(f"ERROR: (gcloud.{command}) NOT_FOUND: Job not found in {flags.get('--location')}")
        principal = acting(world, flags, command)
        # projects.locations.jobs.resume needs cloudscheduler.jobs.enable, .pause
        # cloudscheduler.jobs.pause, on the project: jobs have no policy of their own
        # (https://cloud.google.com/scheduler/docs/reference/rest/v1/projects.locations.jobs/resume,
        # https://cloud.google.com/scheduler/docs/reference/rest/v1/projects.locations.jobs/pause).
        permission = "cloudscheduler.jobs." + ("enable" if words[2] == "resume" else "pause")
        if not holds(world, principal, permission, PROJECT):
            denied(command, permission, principal, f"projects/{world['project']}/jobs/{job}")
        if job not in world.data.get("scheduler_jobs", {}):
            fail(f"ERROR: (gcloud.{command}) NOT_FOUND: Job {job} not found")
        world.data["scheduler_jobs"][job] = "ENABLED" if words[2] == "resume" else "PAUSED"
        world.save()
        return None
    if words == ["logging", "read"]:
        command = "logging.read"
        (query,), flags = parse(args, command)
        allow(command, flags, {"--project", "--freshness", "--limit", "--format", "--order"})
        scope(world, flags, command)
        # entries.list needs logging.logEntries.list on the project
        # (https://cloud.google.com/logging/docs/reference/v2/rest/v2/entries/list).
        principal = str(world["principal"])
        if not holds(world, principal, "logging.logEntries.list", PROJECT):
            denied(command, "logging.logEntries.list", principal, f"projects/{world['project']}")
        found = [e for e in world.data.get("logs", []) if matches(e, query)]
        if flags.get("--order", "desc") == "desc":
            found.reverse()
        found = found[: int(flags.get("--limit", len(found)))]
        fmt = flags.get("--format")
        if fmt is None:
            print(json.dumps(found))
            return None
        wanted = re.fullmatch(r"value\((.+)\)", fmt)
        if not wanted:
            fail(f"fake gcloud: output format {fmt!r} of {command} is not modelled", 3)
        for entry in found:
            values = [field_of(entry, path.strip()) for path in wanted.group(1).split(",")]
            print("\t".join("" if v is None else str(v) for v in values))
        return None
    if words == ["auth", "application-default", "login"]:
        command = "auth.application-default.login"
        _, flags = parse(args, command)
        allow(command, flags, {"--impersonate-service-account"})
        world.data["adc"] = acting(world, flags, command)
        world.save()
        return None
    if words == ["artifacts", "docker", "images", "describe"]:
        command = "artifacts.docker.images.describe"
        (ref,), flags = parse(args, command)
        allow(command, flags, {"--format", "--project"})
        repository, at, digest = ref.partition("@")
        if flags.get("--format") == "value(tags)" and at:
            held = world["registry"].get(repository, {}).get("tags", {})
            print(",".join(tag for tag, d in held.items() if d == digest))
            return None
        if flags.get("--format") != "value(image_summary.digest)":
            fail(f"fake gcloud: output format {flags.get('--format')!r} is not modelled", 3)
        images = world["registry"].get(repository if at else ref.rpartition(":")[0], {})
        found = digest if at and digest in images.get("digests", []) else None
        if not at:
            found = images.get("tags", {}).get(ref.rpartition(":")[2])
        if found is None:
            fail(f"ERROR: (gcloud.{command}) NOT_FOUND: Requested entity was not found.")
        print(found)
        return None
    if words == ["storage", "cat"]:
        return storage_cat(world, args)
    if words == ["storage", "cp"]:
        return storage_cp(world, args)
    if words == ["projects", "describe"]:
        (project,), flags = parse(args, "projects.describe")
        allow("projects.describe", flags, {"--format", "--impersonate-service-account"})
        if project != world["project"] or flags.get("--format") != "value(projectNumber)":
            fail("fake gcloud: only value(projectNumber) of the world's project is modelled", 3)
        principal = acting(world, flags, "projects.describe")
        # projects.get: resourcemanager.projects.get on the project
        # (https://cloud.google.com/resource-manager/reference/rest/v1/projects/get).
        if not holds(world, principal, "resourcemanager.projects.get", PROJECT):
            denied("projects.describe", "resourcemanager.projects.get", principal, project)
        print(world["number"])
        return None
    if words == ["spanner", "databases", "execute-sql"]:
        return spanner_execute_sql(world, args)
    if words in (["spanner", "instances", "describe"], ["spanner", "instances", "update"]):
        return spanner_instance(world, words[2], args)
    if words == ["spanner", "instances", "list"]:
        command = "spanner.instances.list"
        _, flags = parse(args, command)
        allow(command, flags, {"--project", "--format", "--impersonate-service-account"})
        scope(world, flags, command)
        principal = acting(world, flags, command)
        # ListInstances: spanner.instances.list on the project
        # (https://cloud.google.com/spanner/docs/iam#instances).
        if not holds(world, principal, "spanner.instances.list", PROJECT):
            denied(command, "spanner.instances.list", principal, f"projects/{world['project']}")
        if flags.get("--format") != "json":
            fail(f"fake gcloud: output format {flags.get('--format')!r} is not modelled", 3)
        listed_instances = [
            {
                "name": f"projects/{world['project']}/instances/{name}",
                "processingUnits": held["processing_units"],
            }
            for name, held in sorted(world.data.get("spanner_instances", {}).items())
        ]
        print(json.dumps(listed_instances))
        return None
    if words[:2] == ["run", "jobs"]:
        return run_jobs(world, words, args)
    if words in (["config", "set"], ["config", "unset"]):
        positional, flags = parse(args, f"config.{words[1]}")
        allow(f"config.{words[1]}", flags, set())
        if positional[0] != "auth/impersonate_service_account":
            fail(f"fake gcloud: config property {positional[0]} is not modelled", 3)
        # gcloud and bq act as that account from then on (their credentials are
        # gcloud's); the grant is checked where it is used.
        world.data["impersonate"] = positional[1] if words[1] == "set" else None
        world.save()
        return None
    if words == ["config", "get-value"]:
        (prop,), flags = parse(args, "config.get-value")
        allow("config.get-value", flags, set())
        if prop != "account":
            fail(f"fake gcloud: config property {prop} is not modelled", 3)
        print(str(world["principal"]).partition(":")[2])
        return None
    fail(f"fake gcloud: `gcloud {' '.join(words)}` is not modelled", 3)


def storage_cp(world: World, args: list[str]) -> None:
    """`gcloud storage cp FILE gs://BUCKET/OBJECT`: the file's content as that object.
    Writing needs storage.objects.create, and storage.objects.delete as well where the
    object exists (https://cloud.google.com/storage/docs/access-control/iam-json:
    objects.insert overwriting), on the bucket or through a condition on the object's
    name."""
    command = "storage.cp"
    (source, url), flags = parse(args, command)
    allow(command, flags, {"--impersonate-service-account"})
    principal = acting(world, flags, command)
    if not url.startswith("gs://") or source.startswith("gs://"):
        fail(f"fake gcloud: storage cp {source} {url} is not modelled", 3)
    bucket, _, path = url.removeprefix("gs://").partition("/")
    needed = ["storage.objects.create"] + (
        ["storage.objects.delete"] if url in world["objects"] else []
    )
    for permission in needed:
        if not holds_object(world, principal, permission, bucket, path):
            denied(command, permission, principal, url)
    world["objects"][url] = Path(source).read_text()
    world.save()
    print(f"Copying file://{source} to {url}", file=sys.stderr)
    return None


def holds_object(world: World, principal: str, permission: str, bucket: str, path: str) -> bool:
    """A permission on one object: granted on its bucket, or under a condition on its
    name's prefix (the world's iam `objects`, keyed `BUCKET/` and `BUCKET/PREFIX/`)."""
    if "objects" not in world["iam"]:
        return True
    prefixes = [f"{bucket}/"] + [
        f"{bucket}/{path[: i + 1]}" for i, c in enumerate(path) if c == "/"
    ]
    return holds(world, principal, permission, PROJECT, *(("objects", p) for p in prefixes))


def storage_cat(world: World, args: list[str]) -> None:
    """`gcloud storage cat gs://BUCKET/OBJECT`, a wildcard matching several (their
    contents one after another, by name). Each object read needs storage.objects.get,
    on the bucket or, through an IAM condition on the objects' names, on those under a
    prefix: the world's iam `objects`, keyed `BUCKET/` and `BUCKET/PREFIX/`
    (https://cloud.google.com/storage/docs/access-control/iam-permissions). A wildcard is
    expanded by listing the bucket with the name's part before it as the prefix, which
    needs storage.objects.list on the bucket: a condition on objects' names never holds
    for a listing (its resource is the bucket), only one on the listing's prefix
    (`api.getAttribute("storage.googleapis.com/objectListPrefix", "")`: the world's iam
    `object_lists`, keyed `BUCKET/PREFIX`), or a grant without a condition
    (https://cloud.google.com/storage/docs/access-control/iam#conditions). `*` matches
    within a name's level, never across a `/` (`gcloud topic wildcards`)."""
    command = "storage.cat"
    (url,), flags = parse(args, command)
    allow(command, flags, {"--impersonate-service-account"})
    principal = acting(world, flags, command)
    wildcard = re.search(r"[*?\[]", url)
    if wildcard:
        bucket, _, listed_prefix = url[: wildcard.start()].removeprefix("gs://").partition("/")
        lists = [
            ("object_lists", key)
            for key in world["iam"].get("object_lists", {})
            if key.startswith(f"{bucket}/") and listed_prefix.startswith(key.partition("/")[2])
        ]
        if "objects" in world["iam"] and not holds(
            world, principal, "storage.objects.list", PROJECT, ("objects", f"{bucket}/"), *lists
        ):
            denied(command, "storage.objects.list", principal, f"gs://{bucket}")
        pattern = "".join(
            "[^/]*" if part == "*" else "[^/]" if part == "?" else re.escape(part)
            for part in re.split(r"([*?])", url)
        )
        found = sorted(u for u in world["objects"] if re.fullmatch(pattern, u))
    else:
        found = [url] if url in world["objects"] else []
    if not found:
        fail(f"ERROR: (gcloud.{command}) The following URLs matched no objects or files:\n{url}")
    for name in found:
        bucket, _, path = name.removeprefix("gs://").partition("/")
        if not holds_object(world, principal, "storage.objects.get", bucket, path):
            denied(command, "storage.objects.get", principal, name)
    for name in found:
        sys.stdout.write(world["objects"][name])
    return None


def spanner_instance(world: World, verb: str, args: list[str]) -> None:
    """`gcloud spanner instances describe I --format='value(processingUnits)'` and
    `gcloud spanner instances update I --processing-units=N`: the world's
    `spanner_instances` (name -> processing_units). GetInstance needs
    spanner.instances.get, UpdateInstance spanner.instances.update, on the instance or
    the project (https://cloud.google.com/spanner/docs/iam#instances); gcloud waits for
    the update's operation (spanner.instanceOperations.get). Spanner takes 100 to 900 in
    steps of 100, then whole nodes of 1000."""
    command = f"spanner.instances.{verb}"
    (name,), flags = parse(args, command)
    extra = {"--format"} if verb == "describe" else {"--processing-units"}
    allow(command, flags, {"--project", "--impersonate-service-account"} | extra)
    scope(world, flags, command)
    principal = acting(world, flags, command)
    path = f"projects/{world['project']}/instances/{name}"
    needed = (
        ["spanner.instances.get"]
        if verb == "describe"
        else [
            "spanner.instances.update",
            "spanner.instanceOperations.get",
        ]
    )
    for permission in needed:
        if not holds(world, principal, permission, PROJECT, ("instances", name)):
            denied(command, permission, principal, path)
    instances = world.data.get("spanner_instances", {})
    if name not in instances:
        fail(f"ERROR: (gcloud.{command}) NOT_FOUND: Instance not found: {path}")
    if verb == "describe":
        if flags.get("--format") != "value(processingUnits)":
            fail(f"fake gcloud: output format {flags.get('--format')!r} is not modelled", 3)
        print(instances[name]["processing_units"])
        return None
    units = int(flags["--processing-units"])
    if not ((100 <= units < 1000 and units % 100 == 0) or (units >= 1000 and units % 1000 == 0)):
        fail(f"ERROR: (gcloud.{command}) INVALID_ARGUMENT: processing units {units} not allowed")
    instances[name]["processing_units"] = units
    world.data["spanner_instances"] = instances
    world.save()
    print(f"Updated instance [{name}].")
    return None


def job_of(world: World, name: str, command: str) -> dict[str, Any]:
    job = world.data.get("jobs", {}).get(name)
    if job is None:
        fail(f"ERROR: (gcloud.{command}) Job [{name}] could not be found.")
    return dict(job)


def may_job(world: World, name: str, principal: str, permission: str, command: str) -> None:
    """A Cloud Run job permission, held on the job or inherited from the project
    (https://cloud.google.com/run/docs/securing/managing-access#jobs)."""
    if not holds(world, principal, permission, PROJECT, ("jobs", name)):
        denied(command, permission, principal, f"namespaces/{world['project']}/jobs/{name}")


def listed(value: str) -> list[str]:
    """A gcloud list flag's items: split at commas, or at the delimiter `^D^` names
    first (`gcloud topic escaping`)."""
    found = re.fullmatch(r"\^(.+?)\^(.*)", value, re.DOTALL)
    if found:
        return found.group(2).split(found.group(1))
    return value.split(",")


def run_jobs(world: World, words: list[str], args: list[str]) -> None:
    command = "run.jobs." + ".".join(words[2:])
    if words == ["run", "jobs", "update"]:
        (name,), flags = parse(args, command)
        allow(command, flags, RUN_FLAGS | {"--image", "--update-secrets"})
        scope(world, flags, command)
        job = job_of(world, name, command)
        principal = acting(world, flags, command)
        # jobs.replaceJob: run.jobs.update on the job, and acting as the account it
        # runs as (https://cloud.google.com/run/docs/reference/iam/roles#additional-configuration).
        may_job(world, name, principal, "run.jobs.update", command)
        runtime = job["service_account"]
        if not holds(
            world, principal, "iam.serviceAccounts.actAs", PROJECT, ("service_accounts", runtime)
        ):
            denied(command, "iam.serviceAccounts.actAs", principal, runtime)
        if "--image" in flags:
            image = flags["--image"]
            repository, _, digest = image.partition("@")
            if digest not in world["registry"].get(repository, {}).get("digests", []):
                fail(f"ERROR: (gcloud.{command}) Image '{image}' not found.")
            job["image"] = image
        # A file mounted from a secret's version: PATH=SECRET:VERSION, the file's
        # directory its mount (https://cloud.google.com/run/docs/configuring/jobs/secrets).
        # Cloud Run checks at the update that the version exists.
        mappings = listed(flags["--update-secrets"]) if "--update-secrets" in flags else []
        for mapping in mappings:
            path, _, reference = mapping.partition("=")
            secret, _, version = reference.partition(":")
            directory, _, file = path.rpartition("/")
            if not path.startswith("/") or file != "systems.json" or not secret or not version:
                fail(f"fake gcloud: --update-secrets={mapping} is not modelled", 3)
            if version_state(world, secret, version) == "NOT_FOUND":
                fail(
                    f"ERROR: (gcloud.{command}) Secret version "
                    f"[projects/{world['project']}/secrets/{secret}/versions/{version}] not found."
                )
            job["volumes"] = {**(job.get("volumes") or {}), directory: [secret, version]}
        world["jobs"][name] = job
        world.save()
        print(f"Job [{name}] has successfully been updated.", file=sys.stderr)
        return None
    if words == ["run", "jobs", "describe"]:
        (name,), flags = parse(args, command)
        allow(command, flags, RUN_FLAGS)
        scope(world, flags, command)
        job = job_of(world, name, command)
        # jobs.get: run.jobs.get on the job.
        may_job(world, name, acting(world, flags, command), "run.jobs.get", command)
        # The v1 Job (Knative's shape, as gcloud shows it).
        volumes, mounts = _mounts(job, v2=False)
        container = {
            "image": job["image"],
            "command": job["command"],
            "args": job["args"],
            "volumeMounts": mounts,
        }
        described = {
            "metadata": {"name": name},
            "spec": {
                "template": {
                    "spec": {
                        "template": {
                            "spec": {
                                "serviceAccountName": job["service_account"],
                                "containers": [container],
                                "volumes": volumes,
                            }
                        }
                    }
                }
            },
        }
        return show(described, flags.get("--format"), command)
    if words == ["run", "jobs", "execute"]:
        (name,), flags = parse(args, command)
        allow(command, flags, RUN_FLAGS | {"--args", "--update-env-vars", "--wait"})
        scope(world, flags, command)
        job = job_of(world, name, command)
        principal = acting(world, flags, command)
        # jobs.run: run.jobs.run, and run.jobs.runWithOverrides to change its
        # arguments or its environment (a container override's `args` and `env`:
        # https://cloud.google.com/run/docs/execute/jobs#override-job-configuration).
        overrides = "--args" in flags or "--update-env-vars" in flags
        may_job(world, name, principal, "run.jobs.run", command)
        if overrides:
            may_job(world, name, principal, "run.jobs.runWithOverrides", command)
        given = listed(flags.get("--update-env-vars") or "")
        env = dict(pair.split("=", 1) for pair in given if pair)
        args = listed(flags["--args"]) if "--args" in flags else job["args"]
        return execute(world, name, {**job, "env": {**job.get("env", {}), **env}}, args)
    if words == ["run", "jobs", "executions", "list"]:
        _, flags = parse(args, command)
        allow(command, flags, RUN_FLAGS | {"--job", "--limit", "--format"})
        scope(world, flags, command)
        name = flags.get("--job", "")
        job_of(world, name, command)
        may_job(world, name, acting(world, flags, command), "run.executions.list", command)
        if flags.get("--format") != "value(metadata.name)":
            fail(f"fake gcloud: output format {flags.get('--format')!r} is not modelled", 3)
        runs = [e for e in reversed(world.data.get("executions", [])) if e["job"] == name]
        for ran in runs[: int(flags.get("--limit", len(runs)))]:
            print(ran["name"])
        return None
    fail(f"fake gcloud: `gcloud {' '.join(words)}` is not modelled", 3)


# How a cell's job starts its script (infra/terraform/cell.tf's job_command), and the
# script's last line, which the recorder stands in for.
JOB_COMMAND = ["/opt/venv/bin/python3", "-I", "-u", "-c"]
RUNS_THE_COMMAND_LINE = 'runpy.run_module("app.cli", run_name="__main__", alter_sys=True)'


def execute(world: World, name: str, job: dict[str, Any], args: list[str]) -> None:
    """One execution of the job, waited for: its task runs the job's command in the
    job's image, which must be one the registry holds (built from this checkout)."""
    import subprocess  # here: only executions need it

    repository, _, digest = str(job["image"]).partition("@")
    if digest not in world["registry"].get(repository, {}).get("digests", []):
        fail(f"ERROR: (gcloud.run.jobs.execute) The execution failed: image {job['image']!r}")
    why = unavailable(world, job)
    if why:
        fail(f"ERROR: (gcloud.run.jobs.execute) The execution failed: the task cannot start: {why}")
    executions = world.data.setdefault("executions", [])
    execution = f"{name}-{len(executions) + 1:05d}"
    # A job's command (infra/terraform/job.py): Python, isolated, running the script
    # that leaves its settings alone in the environment and then the image's command line.
    script_at = len(JOB_COMMAND)
    if job["command"][:script_at] != JOB_COMMAND or "--" not in job["command"]:
        fail(f"fake cloud: a job running {job['command'][:script_at]} is not modelled", 3)
    script = job["command"][script_at]
    # The world's `job_cli`: "recorder", the commands a job would run are recorded
    # (tests/infra/job_recorder.py, in the directory the world is in) instead of run by
    # this checkout's command line.
    if world.data.get("job_cli") == "recorder":
        if RUNS_THE_COMMAND_LINE not in script:
            fail("fake cloud: the job's script no longer runs app.cli as this fake knows", 3)
        recorder = Path(__file__).with_name("job_recorder.py")
        recording = f"runpy.run_path({str(recorder)!r}, run_name='__main__')"
        script = script.replace(RUNS_THE_COMMAND_LINE, recording)
    environment = {
        # The image's (the fake's own: its code is this checkout's), then the job's and
        # an execution's overrides, then what Cloud Run sets for the task.
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        "FAKE_CLOUD_WORLD": str(WORLD),
        **job.get("env", {}),
        "CLOUD_RUN_JOB": name,
        "CLOUD_RUN_EXECUTION": execution,
        "CLOUD_RUN_TASK_INDEX": "0",
        "CLOUD_RUN_TASK_ATTEMPT": "0",
        "CLOUD_RUN_TASK_COUNT": "1",
    }
    done = subprocess.run(
        [sys.executable, *JOB_COMMAND[1:], script, *job["command"][script_at + 1 :], *args],
        env=environment,
        cwd=WORLD.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    resource = {"type": "cloud_run_job", "labels": {"job_name": name}}
    labels = {"run.googleapis.com/execution_name": execution}
    entries = world.data.setdefault("logs", [])
    for line in (done.stdout + done.stderr).splitlines():
        entry: dict[str, Any] = {"resource": resource, "labels": labels}
        try:
            payload = json.loads(line)
        except ValueError:
            payload = None
        if isinstance(payload, dict):
            entry.update(jsonPayload=payload, severity=payload.get("severity", "DEFAULT"))
        else:
            entry.update(textPayload=line, severity="DEFAULT")
        entries.append(entry)
    entries.append(
        {
            "resource": resource,
            "labels": labels,
            "severity": "INFO" if done.returncode == 0 else "ERROR",
            "textPayload": f"Container called exit({done.returncode}).",
        }
    )
    executions.append({"job": name, "name": execution, "args": args, "exit": done.returncode})
    world.save()
    if done.returncode != 0:
        fail("ERROR: (gcloud.run.jobs.execute) The execution failed.")
    print(f"Execution [{execution}] has successfully completed.", file=sys.stderr)


def spanner_execute_sql(world: World, args: list[str]) -> None:
    """`gcloud spanner databases execute-sql DATABASE --instance=I --sql=SQL`: a SELECT
    over the world's rows of that database (its tables, run by SQLite: plain SELECTs read
    the same). gcloud opens a session, then runs the query in it: CreateSession needs
    spanner.sessions.create and ExecuteSql spanner.databases.select, on the database or
    its instance or project (https://cloud.google.com/spanner/docs/iam#databases,
    https://cloud.google.com/spanner/docs/iam#sessions)."""
    import sqlite3  # here: only this command needs it

    command = "spanner.databases.execute-sql"
    (database,), flags = parse(args, command)
    allow(command, flags, {"--instance", "--sql", "--project", "--impersonate-service-account"})
    scope(world, flags, command)
    for required in ("--instance", "--sql"):
        if not flags.get(required):
            fail(f"ERROR: (gcloud.{command}) argument {required}: Must be specified.", 2)
    instance = flags["--instance"]
    principal = acting(world, flags, command)
    path = f"projects/{world['project']}/instances/{instance}/databases/{database}"
    where = (PROJECT, ("instances", instance), ("databases", f"{instance}/{database}"))
    for permission in ("spanner.sessions.create", "spanner.databases.select"):
        if not holds(world, principal, permission, *where):
            denied(command, permission, principal, path)
    tables = world.data.get("spanner", {}).get(f"{instance}/{database}")
    if tables is None:
        fail(f"ERROR: (gcloud.{command}) NOT_FOUND: Database not found: {path}")
    con = sqlite3.connect(":memory:")
    # The exporter's tables' columns (app/store/spanner/schema.py), for a table with no rows.
    columns = {
        "export_progress": [
            "table_name",
            "watermark",
            "pending_rows",
            "pending_message_id",
            "blocked",
            "updated",
        ],
        "export_lease": ["name", "holder", "expires"],
    }
    for table, rows in tables.items():
        names = sorted({name for row in rows for name in row} or set(columns.get(table, ["id"])))
        con.execute(f"CREATE TABLE {table} ({', '.join(names)})")
        con.executemany(
            f"INSERT INTO {table} VALUES ({', '.join('?' for _ in names)})",
            [[row.get(n) for n in names] for row in rows],
        )
    try:
        cursor = con.execute(flags["--sql"])
    except sqlite3.Error as exc:
        fail(f"ERROR: (gcloud.{command}) INVALID_ARGUMENT: {exc}")
    print("\t".join(d[0] for d in cursor.description or ()))
    for row in cursor.fetchall():
        print("\t".join("NULL" if v is None else str(v) for v in row))


# A term of a Logging query: a field (its parts plain or quoted), `=`, `:` (has) or
# `>=`, and a value, quoted or not (https://cloud.google.com/logging/docs/view/logging-query-language).
_TERM = re.compile(
    r'((?:[A-Za-z_]\w*|"[^"]+")(?:\.(?:[A-Za-z_]\w*|"[^"]+"))*)\s*(>=|=|:)\s*(?:"([^"]*)"|(\S+))'
)
_SEVERITIES = ["DEFAULT", "DEBUG", "INFO", "NOTICE", "WARNING", "ERROR", "CRITICAL"]


def field_of(entry: dict[str, Any], path: str) -> Any:
    found: Any = entry
    for quoted, plain in re.findall(r'"([^"]+)"|([A-Za-z_]\w*)', path):
        if not isinstance(found, dict):
            return None
        found = found.get(quoted or plain)
    return found


def matches(entry: dict[str, Any], query: str) -> bool:
    """Whether a log entry matches a query of terms joined by AND (space)."""
    for path, op, quoted, bare in _TERM.findall(query):
        value = quoted or bare
        found = field_of(entry, path)
        if op == ">=":
            held = _SEVERITIES.index(str(found or "DEFAULT")) >= _SEVERITIES.index(value)
        elif op == ":":
            # `field:*` is "the field is present" (Cloud Logging's query language).
            held = found is not None and (value == "*" or value in str(found))
        else:
            held = found == value
        if not held:
            return False
    return True


COMMANDS = (
    ("beta", "run", "worker-pools", "revisions", "list"),
    ("beta", "run", "worker-pools", "revisions", "describe"),
    ("beta", "run", "worker-pools", "revisions", "delete"),
    ("beta", "run", "worker-pools", "describe"),
    ("beta", "run", "worker-pools", "deploy"),
    ("beta", "run", "worker-pools", "update-instance-split"),
    ("run", "deploy"),
    ("run", "services", "describe"),
    ("run", "services", "update-traffic"),
    ("run", "revisions", "list"),
    ("run", "revisions", "describe"),
    ("run", "revisions", "delete"),
    ("auth", "print-identity-token"),
    ("auth", "print-access-token"),
    ("scheduler", "jobs", "resume"),
    ("scheduler", "jobs", "pause"),
    ("logging", "read"),
    ("auth", "application-default", "login"),
    ("artifacts", "docker", "images", "describe"),
    ("storage", "cat"),
    ("storage", "cp"),
    ("projects", "describe"),
    ("spanner", "databases", "execute-sql"),
    ("spanner", "instances", "describe"),
    ("spanner", "instances", "update"),
    ("spanner", "instances", "list"),
    ("run", "jobs", "update"),
    ("run", "jobs", "describe"),
    ("run", "jobs", "execute"),
    ("run", "jobs", "executions", "list"),
    ("secrets", "versions", "list"),
    ("secrets", "versions", "add"),
    ("secrets", "versions", "describe"),
    ("secrets", "versions", "access"),
    ("secrets", "versions", "enable"),
    ("secrets", "versions", "disable"),
    ("secrets", "versions", "destroy"),
    ("config", "get-value"),
    ("config", "set"),
    ("config", "unset"),
)


def gcloud(argv: list[str]) -> None:
    for words in COMMANDS:
        if tuple(argv[: len(words)]) == words:
            return run_command(World(), list(words), argv[len(words) :])
    fail(f"fake gcloud: `gcloud {' '.join(argv)}` is not modelled", 3)


# --- curl: what the services answer ---------------------------------------------------


def answer(
    world: World, method: str, url: str, headers: dict[str, str], body: str
) -> tuple[int, str]:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if host == "monitoring.googleapis.com":
        return prometheus(world, parts.path, headers, body)
    if host == "api.github.com":
        return github_api(world, parts.path)
    for name, service in world["services"].items():
        hosts = {
            f"{name}-{world['hash']}.a.run.app",
            f"{name}-{world['number']}.{world['region']}.run.app",
        }
        tagged = {
            f"{t['tag']}---{name}-{world['hash']}.a.run.app": t["revision"]
            for t in service["traffic"]
            if t.get("tag")
        }
        if host in tagged:
            revision_name = tagged[host]
        elif host in hosts:
            split = serving(service)
            if not split:
                return 503, "no revision serves"
            revision_name = max(split, key=lambda s: s[1])[0]
        else:
            continue
        (revision,) = [r for r in service["revisions"] if r["name"] == revision_name]
        # Cloud Run's own check before the container: a valid ID token of a principal
        # holding run.routes.invoke on the service (roles/run.invoker), else 401 or 403
        # (https://cloud.google.com/run/docs/authenticating/service-to-service).
        email = claims(headers.get("authorization", "").removeprefix("Bearer ")).get("email")
        if not email:
            return 401, "no ID token"
        caller = ("serviceAccount:" if email.endswith("gserviceaccount.com") else "user:") + email
        if not holds(world, caller, "run.routes.invoke", PROJECT, ("services", name)):
            return 403, f"{caller} may not invoke {name}"
        return container(world, name, service, revision, method, parts.path, headers, body)
    print(f"curl: (6) Could not resolve host: {host}", file=sys.stderr)
    sys.exit(6)


def container(
    world: World,
    name: str,
    service: dict[str, Any],
    revision: dict[str, Any],
    method: str,
    path: str,
    headers: dict[str, str],
    body: str,
) -> tuple[int, str]:
    why = unavailable(world, revision)
    if why:
        # No instance of it starts: Cloud Run answers for it.
        return 503, f"the instance failed to start: {why}"
    if revision["command"]:  # the placeholder
        probe = method == "GET" and path in ("/healthz", "/readyz")
        return (200, '{"status":"placeholder"}') if probe else (503, "not deployed yet")
    broken = world["broken_digests"] + world.data.get("broken_ingest", [])
    if revision["digest"] in broken:
        return 500, "internal error"
    bearer = headers.get("authorization", "").removeprefix("Bearer ")
    token_claims = claims(bearer)
    if "systems" in service:
        # A cell: each system under /systems/NAME, with its own audience, push
        # accounts and readers (its entry of RECORDLINE_SYSTEMS); reads take the
        # cell's read audience.
        routed = re.fullmatch(r"/systems/([a-z][a-z0-9-]*)(/.*)", path)
        if routed is None or routed.group(1) not in service["systems"]:
            return 404, "no such system"
        # The systems this revision serves are those of the file it mounts.
        named = settings_of(world, revision, SYSTEMS_SETTING)
        if named is not None and routed.group(1) not in named:
            return 404, "no such system"
        system = service["systems"][routed.group(1)]
        target = {
            **system,
            "read_audience": service["read_audience"],
        }
        status, text = _answer(world, name, target, method, routed.group(2), token_claims, body)
        service["systems"][routed.group(1)].update(
            {k: target[k] for k in ("messages", "records") if k in target}
        )
        world["services"][name] = service
        world.save()
        return status, text
    return _answer(world, name, service, method, path, token_claims, body)


def _answer(
    world: World,
    name: str,
    service: dict[str, Any],
    method: str,
    path: str,
    token_claims: dict[str, Any],
    body: str,
) -> tuple[int, str]:
    """What Recordline answers for one system: `service` holds its audiences, push
    accounts, readers, shape, and the messages and records it stored."""
    if path == "/pubsub/push" and method == "POST":
        if token_claims.get("aud") != service["push_audience"]:
            return 401, "wrong audience"
        if token_claims.get("email") not in service["push_accounts"]:
            return 403, "not a push account"
        return push(world, name, service, body)
    if path.startswith("/v1/") and method == "GET":
        audiences = {
            service["read_audience"],
            f"https://{name}-{world['number']}.{world['region']}.run.app",
        }
        if token_claims.get("aud") not in audiences:
            return 401, "wrong audience"
        if token_claims.get("email") not in service["readers"]:
            return 403, "not a reader"
        if path.startswith("/v1/records/"):
            record = service.get("records", {}).get(path.removeprefix("/v1/records/"))
            return (200, json.dumps(record)) if record else (404, '{"status":404}')
        if path.startswith("/v1/messages/"):
            message = service.get("messages", {}).get(path.removeprefix("/v1/messages/"))
            return (200, json.dumps(message)) if message else (404, '{"status":404}')
        return 200, '{"records":[],"next_page_token":null}'
    return 404, "no such route"


def push(world: World, name: str, service: dict[str, Any], body: str) -> tuple[int, str]:
    """A push as Recordline takes it: the envelope, then the payload read by the service's
    own code (app/ingest) with the system's shape (RECORDLINE_ID_FIELD, _TIME_FIELD) and,
    for a message naming a topic schema, that schema's newest revision from the world.
    A payload that does not fit is a rejection, acknowledged (204) like a stored record."""
    import asyncio  # here: most calls need no event loop, and importing it takes time

    from app.errors import BadEnvelope
    from app.ingest.envelope import decode_wrapped
    from app.ingest.payload import Payloads
    from app.ingest.schemas import SchemaNotFound, SchemaRevision, Schemas
    from app.ingest.shape import FieldPaths, Invalid

    class Registry:
        async def revision(self, schema: str, revision_id: str) -> SchemaRevision:
            found = world.data.get("schemas", {}).get(schema)
            if found is None or revision_id not in ("", found["revision_id"]):
                raise SchemaNotFound(schema)
            return SchemaRevision(name=schema, **found)

        async def close(self) -> None:
            pass

    try:
        message = decode_wrapped(body.encode())
    except BadEnvelope as exc:
        return 400, str(exc)
    shape = service.get("shape", {})
    payloads = Payloads(
        FieldPaths(
            id_field=shape.get("id_field") or "id",
            time_field=shape.get("time_field") or "timestamp",
        ),
        Schemas(Registry(), timeout=5),
    )

    async def read() -> tuple[str, str]:
        reader = await payloads.reader(message.attributes)
        assert message.data is not None, "not base64"
        found = reader.read(message.data)
        return found.id, found.data

    stored: dict[str, Any]
    try:
        record_id, data = asyncio.run(read())
        record = {"message_id": message.message_id, "id": record_id, "data": json.loads(data)}
        service.setdefault("records", {})[record_id] = record
        stored = {"message_id": message.message_id, "status": "stored", "record": record}
    except Invalid as exc:
        stored = {"message_id": message.message_id, "status": "rejected", "reason": str(exc)}
    service.setdefault("messages", {})[message.message_id] = stored
    if "systems" not in world["services"][name]:
        world["services"][name] = service
        world.save()
    return 204, ""


def prometheus(world: World, path: str, headers: dict[str, str], body: str) -> tuple[int, str]:
    """Cloud Monitoring's Prometheus HTTP API, as the pages' "which systems" command
    calls it (https://cloud.google.com/stackdriver/docs/managed-prometheus/query-api-ui):
    POST .../prometheus/api/v1/query with an access token; it needs
    monitoring.timeSeries.list on the project
    (https://cloud.google.com/monitoring/access-control). The world says which systems
    each query finds (`prometheus`: query -> systems). `query_range` (with start, end and
    step) answers the same series as a matrix, a point a step."""
    base = f"/v1/projects/{world['project']}/location/global/prometheus/api/v1/"
    if path not in (base + "query", base + "query_range"):
        return 404, "no such path"
    ranged = path.endswith("_range")
    bearer = headers.get("authorization", "").removeprefix("Bearer ")
    if not bearer.startswith("access."):
        return 401, "no access token"
    principal = base64.urlsafe_b64decode(bearer.removeprefix("access.")).decode()
    if not holds(world, principal, "monitoring.timeSeries.list", PROJECT):
        return 403, f"{principal}: monitoring.timeSeries.list denied"
    form = dict(parse_qsl(body))
    query = form.get("query", "")
    if ranged and not all(form.get(k, "").isdigit() for k in ("start", "end", "step")):
        return 400, "bad_data: start, end and step are required"
    export = re.fullmatch(
        r"(max|sum) by \(namespace\) \((max_over_time|increase)\("
        r"workload_googleapis_com:recordline_export_(lag|rows)"
        r'\{monitored_resource="generic_task",job="([a-z0-9-]+)",namespace=~"([a-z0-9|-]+)"\}'
        r"\[([0-9]+)s\]\)\)",
        query,
    )
    if export is not None:
        return export_series(world, export.group(3), export.group(4), export.group(5))
    found = world.data.get("prometheus", {}).get(query)
    if found is None:
        return 400, f"fake monitoring: no result modelled for {query[:80]!r}"
    if ranged:
        points = range(int(form["start"]), int(form["end"]) + 1, int(form["step"]))
        matrix = [{"metric": {"system": s}, "values": [[t, "1"] for t in points]} for s in found]
        return 200, json.dumps(
            {"status": "success", "data": {"resultType": "matrix", "result": matrix}}
        )
    # Each series a system's, or the labels the world gives it (a database's, an instance's).
    series = [
        {"metric": system if isinstance(system, dict) else {"system": system}, "value": [0, "1"]}
        for system in found
    ]
    return 200, json.dumps(
        {"status": "success", "data": {"resultType": "vector", "result": series}}
    )


def export_series(world: World, metric: str, job: str, systems: str) -> tuple[int, str]:
    """The export gate's queries: each system's export lag (its worst over the window)
    or rows exported (their increase), as written by the revisions whose metrics carry
    `job`, from what each worker pool's revisions export now (`exports`). A system that
    revision does not export has no series."""
    wanted = systems.split("|")
    series = []
    for pool in world.data.get("worker_pools", {}).values():
        for system, export in exports(world, pool).items():
            if system in wanted and export["job"] == job:
                value = export["lag"] if metric == "lag" else export["rows"]
                series.append({"metric": {"namespace": system}, "value": [0, str(value)]})
    return 200, json.dumps(
        {"status": "success", "data": {"resultType": "vector", "result": series}}
    )


def github_api(world: World, path: str) -> tuple[int, str]:
    """GitHub's REST API, the one call the workflows make: an environment and its
    protection rules (https://docs.github.com/en/rest/deployments/environments#get-an-environment).
    The world lists the environments that exist (`github_environments`: name -> the
    types of their protection rules); GitHub answers 404 for any other."""
    match = re.fullmatch(r"/repos/([^/]+/[^/]+)/environments/([^/]+)", path)
    if not match:
        return 404, '{"message":"Not Found"}'
    rules = world.data.get("github_environments", {}).get(match.group(2))
    if rules is None:
        return 404, '{"message":"Not Found"}'
    return 200, json.dumps(
        {"name": match.group(2), "protection_rules": [{"type": t} for t in rules]}
    )


def curl(argv: list[str]) -> None:
    world = World()
    method, output, write_out, body = "GET", None, "", ""
    fail_on_error = False
    headers: dict[str, str] = {}
    url = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        takes = {
            "-o",
            "-w",
            "-X",
            "-H",
            "--data",
            "--data-urlencode",
            "-A",
            "--retry",
            "--retry-delay",
        }
        if arg in takes:
            i += 1
            value = argv[i]
            if arg == "-o":
                output = value
            elif arg == "-w":
                write_out = value
            elif arg == "-X":
                method = value
            elif arg == "-H":
                key, _, header = value.partition(":")
                headers[key.strip().lower()] = header.strip()
            elif arg == "--data":
                body = value
                method = "POST" if method == "GET" else method
            elif arg == "--data-urlencode":
                key, _, text = value.partition("=")
                body = (body + "&" if body else "") + urlencode({key: text})
                method = "POST" if method == "GET" else method
            elif arg == "-A":
                headers["user-agent"] = value
        elif arg in ("-s", "-S", "-sS", "-f", "-fsS", "-fsSL", "-L"):
            fail_on_error = fail_on_error or "f" in arg
        elif arg.startswith("-"):
            fail(f"fake curl: option {arg} is not modelled", 3)
        else:
            url = arg
        i += 1
    if url is None:
        fail("curl: no URL specified", 2)
    status, text = answer(world, method, url, headers, body)
    log("curl-answer", [method, url], status=status)
    if fail_on_error and status >= 400:  # -f: no body, exit 22
        print(f"curl: (22) The requested URL returned error: {status}", file=sys.stderr)
        sys.exit(22)
    if output:
        Path(output).write_text(text)
    else:
        sys.stdout.write(text)
    sys.stdout.write(write_out.replace("%{http_code}", str(status)).replace("\\n", "\n"))


# --- skopeo: pushing the built archive --------------------------------------------------


def skopeo(argv: list[str]) -> None:
    world = World()
    if argv[:2] == ["copy", "--preserve-digests"] and len(argv) == 8:
        return skopeo_between_registries(world, argv[2:])
    if argv[:2] != ["copy", "--preserve-digests"] or len(argv) != 4:
        fail(f"fake skopeo: `skopeo {' '.join(argv)}` is not modelled", 3)
    source, target = argv[2], argv[3]
    if (
        not source.startswith("oci-archive:")
        or not Path(source.removeprefix("oci-archive:")).exists()
    ):
        fail(f"FATA[0000] Error initializing source {source}: no such file")
    repository, _, tag = target.removeprefix("docker://").rpartition(":")
    images = world["registry"].setdefault(repository, {"tags": {}, "digests": []})
    if tag in images["tags"]:
        fail(f"FATA[0000] tag {tag} is immutable and exists already")
    images["tags"][tag] = world["built_digest"]
    images["digests"].append(world["built_digest"])
    world.save()
    return None


def skopeo_between_registries(world: World, args: list[str]) -> None:
    """`skopeo copy --preserve-digests --src-registry-token T --dest-registry-token T
    docker://REPOSITORY@DIGEST docker://OTHER:TAG`: the image of that digest, held by the
    source registry, tagged in the other; an existing tag is immutable. The world's
    `registry_down`: registries that answer nothing (a region lost)."""
    flags, (source, target) = dict(zip(args[:4:2], args[1:4:2], strict=True)), args[4:]
    if set(flags) != {"--src-registry-token", "--dest-registry-token"} or not all(flags.values()):
        fail(f"fake skopeo: `skopeo copy {' '.join(args)}` is not modelled", 3)
    repository, at, digest = source.removeprefix("docker://").partition("@")
    other, _, tag = target.removeprefix("docker://").rpartition(":")
    for held in (repository, other):
        if held.split("/")[0] in world.data.get("registry_down", []):
            fail(f"FATA[0030] pinging container registry {held.split('/')[0]}: i/o timeout")
    if not at or digest not in world["registry"].get(repository, {}).get("digests", []):
        fail(f"FATA[0000] Error initializing source {source}: manifest unknown")
    images = world["registry"].setdefault(other, {"tags": {}, "digests": []})
    if tag in images["tags"]:
        fail(f"FATA[0000] tag {tag} is immutable and exists already")
    images["tags"][tag] = digest
    images["digests"].append(digest)
    world.save()


# --- gh: an image's provenance -------------------------------------------------------------


def gh(argv: list[str]) -> None:
    """`gh attestation verify oci://REPOSITORY@DIGEST --repo OWNER/REPO --signer-workflow
    OWNER/REPO/.github/workflows/FILE`: succeeds only when the registry holds that digest
    and GitHub holds a provenance attestation for it, signed by a workflow of that
    repository at that path (https://cli.github.com/manual/gh_attestation_verify). The
    world's `attestations`: digest -> the repository and workflow that attested it."""
    world = World()
    if argv[:2] in (["run", "list"], ["workflow", "run"]) or argv[:1] == ["issue"]:
        return gh_actions(world, argv)
    if argv[:2] != ["attestation", "verify"] or len(argv) != 7:
        fail(f"fake gh: `gh {' '.join(argv)}` is not modelled", 3)
    subject, flags = argv[2], dict(zip(argv[3::2], argv[4::2], strict=True))
    if set(flags) != {"--repo", "--signer-workflow"} or not subject.startswith("oci://"):
        fail(f"fake gh: `gh {' '.join(argv)}` is not modelled", 3)
    repository, _, digest = subject.removeprefix("oci://").partition("@")
    if digest not in world["registry"].get(repository, {}).get("digests", []):
        fail(f"Error: failed to fetch {subject}: MANIFEST_UNKNOWN")
    found = world.data.get("attestations", {}).get(digest)
    if found is None:
        fail(f"Error: no attestations found for {digest}")
    if found["repo"] != flags["--repo"] or found["workflow"] != flags["--signer-workflow"]:
        fail(f"Error: verifying with issuer: {digest} was attested by {found}")
    print(f"Loaded digest {digest} for {subject}\n✓ Verification succeeded!")
    return None


def gh_actions(world: World, argv: list[str]) -> None:
    """The runs, dispatches and issues drift.yml and terraform.yml use, on the world's
    `github_runs` (workflow file -> runs, each with the fields `gh run list --json`
    names: https://cli.github.com/manual/gh_run_list) and `issues` (number -> title,
    state, comments). `gh workflow run` records the dispatch as a new queued run."""
    import subprocess  # here: only the --jq forms need it

    words = argv[:2]
    # `gh issue comment N` and `gh workflow run FILE` have a third word before the flags.
    first = 3 if words in (["issue", "comment"], ["workflow", "run"]) else 2
    flags = dict(zip(argv[first::2], argv[first + 1 :: 2], strict=True))
    if flags.get("--repo") != "recordline/recordline":
        fail(f"fake gh: `gh {' '.join(argv)}` names no repository it knows", 3)
    runs: dict[str, list[dict[str, Any]]] = world.data.setdefault("github_runs", {})
    issues: dict[str, dict[str, Any]] = world.data.setdefault("issues", {})

    def printed(value: Any) -> None:
        text = json.dumps(value)
        if "--jq" in flags:
            text = subprocess.run(
                ["jq", "-r", flags["--jq"]], input=text, capture_output=True, text=True, check=True
            ).stdout
        print(text.rstrip("\n"))

    match words:
        case ["run", "list"]:
            allow(
                "gh run list",
                flags,
                {"--repo", "--workflow", "--branch", "--limit", "--json", "--jq"},
            )
            if flags.get("--branch") != "main":
                fail("fake gh: only runs on main are modelled", 3)
            fields = flags["--json"].split(",")
            found = sorted(runs.get(flags["--workflow"], []), key=lambda r: r["createdAt"])
            found = list(reversed(found))[: int(flags.get("--limit", 20))]
            printed([{k: r[k] for k in fields} for r in found])
        case ["workflow", "run"]:
            workflow = argv[2]
            allow("gh workflow run", flags, {"--repo", "--ref"})
            if flags.get("--ref") != "main":
                fail("fake gh: only dispatches on main are modelled", 3)
            newest = max(
                (r["createdAt"] for rs in runs.values() for r in rs), default="2026-01-01T00:00:00Z"
            )
            runs.setdefault(workflow, []).append(
                {
                    "databaseId": 900 + sum(len(r) for r in runs.values()),
                    "event": "workflow_dispatch",
                    "status": "queued",
                    "conclusion": "",
                    "headSha": world.data.get("main_sha", "f" * 40),
                    "createdAt": newest.replace("Z", "1Z"),
                    # A workflow without `run-name` is titled by its name.
                    "displayTitle": workflow.removesuffix(".yml"),
                }
            )
        case ["issue", "list"]:
            title = re.fullmatch(r'in:title "(.*)"', flags.get("--search", ""))
            wanted = title.group(1) if title else ""
            printed(
                [
                    {"number": int(n)}
                    for n, issue in issues.items()
                    if issue["state"] == flags.get("--state") and wanted in issue["title"]
                ]
            )
        case ["issue", "create"]:
            number = str(len(issues) + 1)
            issues[number] = {
                "title": flags["--title"],
                "state": "open",
                "comments": [flags["--body"]],
            }
        case ["issue", "comment"]:
            issues[argv[2]]["comments"].append(flags["--body"])
        case _:
            fail(f"fake gh: `gh {' '.join(argv)}` is not modelled", 3)
    world.save()
    return None


# --- bq: the dead-letter query ------------------------------------------------------------


def bq(argv: list[str]) -> None:
    """`bq query --project_id=P --use_legacy_sql=false SQL`, as the person logged in:
    a query job needs bigquery.jobs.create on the project
    (https://cloud.google.com/bigquery/docs/reference/rest/v2/jobs/query) and
    bigquery.tables.getData on each table it reads
    (https://cloud.google.com/bigquery/docs/access-control)."""
    world = World()
    flags = dict(a.partition("=")[::2] for a in argv[1:-1])
    if (
        argv[:1] != ["query"]
        or not set(flags) <= {"--project_id", "--location", "--use_legacy_sql"}
        or flags.get("--use_legacy_sql") != "false"
        or "--project_id" not in flags
    ):
        fail(f"fake bq: `bq {' '.join(argv)}` is not modelled", 3)
    argv = ["query", f"--project_id={flags['--project_id']}", "--use_legacy_sql=false", argv[-1]]
    project = argv[1].removeprefix("--project_id=")
    if project != world["project"]:
        fail(f"BigQuery error in query operation: Project {project} not found")
    principal = str(world["principal"])
    impersonated = world.data.get("impersonate")
    if impersonated:
        # gcloud's auth/impersonate_service_account: an access token of the account.
        if not holds(
            world,
            principal,
            "iam.serviceAccounts.getAccessToken",
            PROJECT,
            ("service_accounts", impersonated),
        ):
            fail(f"BigQuery error: cannot impersonate {impersonated} [{principal}]")
        principal = f"serviceAccount:{impersonated}"
    if not holds(world, principal, "bigquery.jobs.create", PROJECT):
        fail(
            f"BigQuery error in query operation: Access Denied: bigquery.jobs.create [{principal}]"
        )
    undrop = re.fullmatch(r"UNDROP SCHEMA `([\w-]+)\.(\w+)`", argv[3].strip())
    if undrop:
        # Undropping is creating the dataset: bigquery.datasets.create on the project
        # (https://cloud.google.com/bigquery/docs/reference/standard-sql/data-definition-language#undrop_schema_statement);
        # refused while a dataset of that name exists, or after the time-travel window.
        # The query names no table BigQuery could find it by: it runs in the job's
        # location (--location, else US) and finds only a dataset deleted there.
        dataset = undrop.group(2)
        if not holds(world, principal, "bigquery.datasets.create", PROJECT):
            fail(f"BigQuery error: Access Denied: bigquery.datasets.create [{principal}]")
        datasets = world.data.setdefault("datasets", {})
        held = datasets.get(dataset)
        state, location = (held, "US") if isinstance(held, str) or held is None else held
        if state == "live":
            fail(f"BigQuery error: Already Exists: Dataset {undrop.group(1)}:{dataset}")
        if state != "dropped" or location != flags.get("--location", "US"):
            fail(
                f"BigQuery error: Not found: Dataset {undrop.group(1)}:{dataset} was not found "
                f"in location {flags.get('--location', 'US')} in the time-travel window"
            )
        datasets[dataset] = "live" if isinstance(held, str) else ["live", location]
        world.save()
        print("[]")
        return
    for table in re.findall(r"`([\w-]+)\.(\w+\.\w+)`", argv[3]):
        if table[0] != world["project"] or not holds(
            world, principal, "bigquery.tables.getData", ("tables", table[1])
        ):
            fail(
                f"BigQuery error in query operation: Access Denied: Table {'.'.join(table)}: "
                f"bigquery.tables.getData [{principal}]"
            )
    print("[]")


def main() -> None:
    tool, argv = sys.argv[1], sys.argv[2:]
    log(tool, argv)
    {"gcloud": gcloud, "curl": curl, "skopeo": skopeo, "bq": bq, "gh": gh}[tool](argv)


if __name__ == "__main__":
    main()
