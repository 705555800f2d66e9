"""A stand-in for the Google Cloud a rollout or a runbook talks to: gcloud, curl and skopeo.

Installed as commands on PATH (tests/infra/workflow_runner.py), it keeps one small
world in a JSON file (services with their revisions, traffic and tags, the image
registry, the state bucket, who may act as which service account) and records every
call. It answers the commands and output formats the workflows and the runbook use,
and refuses, with gcloud's own messages, what the real one refuses: a run command
without --region, an ID token with --audiences for a user account, acting as an
account without the grant, a revision or image that does not exist, a flag it does
not know. Anything it does not model is an error, never a silent success.

Cloud Run's behaviour it keeps: `deploy` creates a revision that inherits the last
one's command and arguments unless given; a service whose traffic follows the latest
revision sends the new one everything, while a pinned one sends it nothing (unless
--no-traffic, which pins first); tags route to their revision on a URL of their own.
A revision's container answers as Recordline does (token audience and e-mail checked,
pushes stored, records read back), as the placeholder does (503, probes 200) while it
still has the placeholder's command, or with 500 when its digest is marked broken.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

WORLD = Path(os.environ["FAKE_CLOUD_WORLD"])
LOG = WORLD.with_name("calls.jsonl")

# Flags that take a value (the rest are switches), by the command words they follow.
VALUE_FLAGS = {
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
}
SWITCHES = {"--quiet", "--no-traffic", "--to-latest", "--include-email"}
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


def acting(world: World, flags: dict[str, Any], command: str) -> str:
    """The principal a command runs as: the credentials, or the account impersonated."""
    principal = str(world["principal"])
    account = flags.get("--impersonate-service-account")
    if account is None:
        return principal
    if principal not in world["can_impersonate"].get(account, []):
        fail(
            f"ERROR: (gcloud.{command}) PERMISSION_DENIED: Permission "
            f"'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist). "
            f"[{principal} may not act as {account}]"
        )
    return f"serviceAccount:{account}"


def scope(world: World, flags: dict[str, Any], command: str) -> None:
    if not flags.get("--project"):
        fail(f"ERROR: (gcloud.{command}) The required property [project] is not currently set.")
    if flags["--project"] != world["project"]:
        fail(f"ERROR: (gcloud.{command}) project {flags['--project']} not found or not yours")
    if command.startswith("run.") and not flags.get("--region"):
        fail(
            f"ERROR: (gcloud.{command}) Missing required argument [--region]: You must specify "
            "a region. Either use the --region flag or set the run/region property."
        )
    if command.startswith("run.") and flags["--region"] != world["region"]:
        fail(f"ERROR: (gcloud.{command}) no such service in region {flags['--region']}")


def service_of(world: World, name: str, command: str) -> dict[str, Any]:
    service = world["services"].get(name)
    if service is None:
        fail(f"ERROR: (gcloud.{command}) Cannot find service [{name}]")
    return dict(service)


def may(world: World, service: dict[str, Any], principal: str, verb: str, command: str) -> None:
    if principal not in service["developers"]:
        fail(
            f"ERROR: (gcloud.{command}) PERMISSION_DENIED: Permission 'run.services.{verb}' "
            f"denied on resource [{principal}]"
        )


def latest(service: dict[str, Any]) -> str:
    return str(service["revisions"][-1]["name"])


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
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": name},
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
    kind, path = match.groups()
    found: Any = value
    for part in path.split("."):
        if not isinstance(found, dict) or part not in found:
            fail(f"fake gcloud: {path} is not in what {command} describes", 3)
        found = found[part]
    print(json.dumps(found, indent=2) if kind == "yaml" else found)


def run_deploy(world: World, args: list[str]) -> None:
    command = "run.deploy"
    (name,), flags = parse(args, command)
    allow(command, flags, RUN_FLAGS | {"--image", "--no-traffic", "--tag", "--command", "--args"})
    scope(world, flags, command)
    service = service_of(world, name, command)
    principal = acting(world, flags, command)
    may(world, service, principal, "update", command)
    image = flags.get("--image")
    if not image:
        fail(f"ERROR: (gcloud.{command}) deploying needs --image here", 2)
    repository, _, digest = image.partition("@")
    if digest not in world["registry"].get(repository, {}).get("digests", []):
        fail(f"ERROR: (gcloud.{command}) Image '{image}' not found.")
    previous = service["revisions"][-1]
    number = len(service["revisions"]) + 1
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
    }
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
    may(world, service, acting(world, flags, command), "update", command)
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


def run_command(world: World, words: list[str], args: list[str]) -> None:
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
        principal = acting(world, flags, command)
        if principal not in service["developers"] + service.get("viewers", []):
            fail(f"ERROR: (gcloud.{command}) PERMISSION_DENIED: run.services.get [{principal}]")
        return show(describe_status(world, name, service), flags.get("--format"), command)
    if words == ["run", "revisions", "list"]:
        command = "run.revisions.list"
        _, flags = parse(args, command)
        allow(command, flags, RUN_FLAGS | {"--service", "--sort-by", "--limit"})
        scope(world, flags, command)
        service = service_of(world, flags.get("--service", ""), command)
        acting(world, flags, command)
        revisions = list(reversed(service["revisions"]))  # newest first
        if flags.get("--sort-by") not in (None, "~metadata.creationTimestamp"):
            fail(f"fake gcloud: --sort-by={flags['--sort-by']} is not modelled", 3)
        revisions = revisions[: int(flags.get("--limit", len(revisions)))]
        fmt = flags.get("--format")
        if fmt == "value(metadata.name)":
            print("\n".join(r["name"] for r in revisions))
        elif fmt is None or fmt.startswith("table("):
            for r in revisions:
                print(f"{r['name']}  {r['image']}")
        else:
            fail(f"fake gcloud: output format {fmt!r} of {command} is not modelled", 3)
        return None
    if words == ["run", "revisions", "describe"]:
        command = "run.revisions.describe"
        (name,), flags = parse(args, command)
        allow(command, flags, RUN_FLAGS)
        scope(world, flags, command)
        acting(world, flags, command)
        for service in world["services"].values():
            for r in service["revisions"]:
                if r["name"] == name:
                    repository = r["image"].split("@")[0]
                    status = {"status": {"imageDigest": f"{repository}@{r['digest']}"}}
                    return show(status, flags.get("--format"), command)
        fail(f"ERROR: (gcloud.{command}) Revision [{name}] could not be found.")
    if words == ["auth", "print-identity-token"]:
        command = "auth.print-identity-token"
        _, flags = parse(args, command)
        allow(command, flags, {"--audiences", "--include-email", "--impersonate-service-account"})
        principal = acting(world, flags, command)
        if "--audiences" in flags and principal.startswith("user:"):
            fail(
                f"ERROR: (gcloud.{command}) Invalid account type for `--audiences`. "
                "Requires valid service account."
            )
        email = principal.partition(":")[2] if flags.get("--include-email") else None
        print(token(email, flags.get("--audiences", "32555940559.apps.googleusercontent.com")))
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
        if flags.get("--format") != "value(image_summary.digest)":
            fail(f"fake gcloud: output format {flags.get('--format')!r} is not modelled", 3)
        repository, at, digest = ref.partition("@")
        images = world["registry"].get(repository if at else ref.rpartition(":")[0], {})
        found = digest if at and digest in images.get("digests", []) else None
        if not at:
            found = images.get("tags", {}).get(ref.rpartition(":")[2])
        if found is None:
            fail(f"ERROR: (gcloud.{command}) NOT_FOUND: Requested entity was not found.")
        print(found)
        return None
    if words == ["storage", "cat"]:
        (url,), flags = parse(args, "storage.cat")
        allow("storage.cat", flags, set())
        if url not in world["objects"]:
            fail(f"ERROR: (gcloud.storage.cat) The following URLs matched no objects: {url}")
        sys.stdout.write(world["objects"][url])
        return None
    if words == ["projects", "describe"]:
        (project,), flags = parse(args, "projects.describe")
        allow("projects.describe", flags, {"--format"})
        if project != world["project"] or flags.get("--format") != "value(projectNumber)":
            fail("fake gcloud: only value(projectNumber) of the world's project is modelled", 3)
        print(world["number"])
        return None
    fail(f"fake gcloud: `gcloud {' '.join(words)}` is not modelled", 3)


COMMANDS = (
    ("run", "deploy"),
    ("run", "services", "describe"),
    ("run", "services", "update-traffic"),
    ("run", "revisions", "list"),
    ("run", "revisions", "describe"),
    ("auth", "print-identity-token"),
    ("auth", "application-default", "login"),
    ("artifacts", "docker", "images", "describe"),
    ("storage", "cat"),
    ("projects", "describe"),
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
    if revision["command"]:  # the placeholder
        probe = method == "GET" and path in ("/healthz", "/readyz")
        return (200, '{"status":"placeholder"}') if probe else (503, "not deployed yet")
    if revision["digest"] in world["broken_digests"]:
        return 500, "internal error"
    bearer = headers.get("authorization", "").removeprefix("Bearer ")
    token_claims = claims(bearer)
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
    from app.errors import BadEnvelope
    from app.ingest.envelope import decode_wrapped
    from app.ingest.payload import Payloads
    from app.ingest.schemas import SchemaNotFound, SchemaRevision, Schemas
    from app.ingest.shape import Invalid, Shape

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
        Shape(
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
    world["services"][name] = service
    world.save()
    return 204, ""


def curl(argv: list[str]) -> None:
    world = World()
    method, output, write_out, body = "GET", None, "", ""
    headers: dict[str, str] = {}
    url = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        takes = {"-o", "-w", "-X", "-H", "--data", "-A", "--retry", "--retry-delay"}
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
            elif arg == "-A":
                headers["user-agent"] = value
        elif arg in ("-s", "-S", "-sS", "-f", "-fsS"):
            pass
        elif arg.startswith("-"):
            fail(f"fake curl: option {arg} is not modelled", 3)
        else:
            url = arg
        i += 1
    if url is None:
        fail("curl: no URL specified", 2)
    status, text = answer(world, method, url, headers, body)
    log("curl-answer", [method, url], status=status)
    if output:
        Path(output).write_text(text)
    else:
        sys.stdout.write(text)
    sys.stdout.write(write_out.replace("%{http_code}", str(status)).replace("\\n", "\n"))


# --- skopeo: pushing the built archive --------------------------------------------------


def skopeo(argv: list[str]) -> None:
    world = World()
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


def main() -> None:
    tool, argv = sys.argv[1], sys.argv[2:]
    log(tool, argv)
    {"gcloud": gcloud, "curl": curl, "skopeo": skopeo}[tool](argv)


if __name__ == "__main__":
    main()
