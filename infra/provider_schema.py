"""Check Terraform configurations against the google providers' published schemas, offline.

`terraform validate` needs the provider binary, which the offline checks cannot
download. The provider's schema is also published on PyPI, inside the prebuilt CDK
bindings (cdktf-cdktf-provider-google 16.12.1 = hashicorp/google 6.50.0, and
cdktf-cdktf-provider-google-beta 16.12.1 = hashicorp/google-beta 6.50.0): each jsii
manifest lists every resource and data source with each argument, whether it is
required, and which arguments are nested blocks. This script reads both manifests
and every `google_*` resource and data source in the given directories, each against
the provider it names (`provider = google-beta`, else google), and reports

- arguments and blocks the resource (or block) does not have: misspellings, and
  arguments of another resource or provider version;
- a block written as an argument (`x = {...}`) or an argument written as a block;
- required arguments and blocks that are missing.

It checks names and nesting, not values (those are expressions, often known only
at plan time). Run it in its own environment, as infra/check.sh does:

    uv run --no-project --with cdktf-cdktf-provider-google==16.12.1 \
      --with cdktf-cdktf-provider-google-beta==16.12.1 \
      --with python-hcl2==8.1.4 python infra/provider_schema.py infra/terraform
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hcl2

# Terraform's provider name -> the distribution holding its schema.
DISTRIBUTIONS = {
    "google": "cdktf-cdktf-provider-google",
    "google-beta": "cdktf-cdktf-provider-google-beta",
}

# Terraform's own arguments, valid on every resource and data source.
META_ARGUMENTS = frozenset(
    {"count", "depends_on", "for_each", "lifecycle", "provider", "provisioner", "connection"}
)

# Class summaries: "Represents a {@link .../docs/resources/bigquery_table google_bigquery_table}"
REPRESENTS = re.compile(r"/docs/(resources|data-sources)/\w+ (google_\w+)\}")
# Every argument's remarks link its own anchor, which is its Terraform name.
ANCHOR = re.compile(r"#(\w+) \w+#\w+\}")


@dataclass
class Argument:
    required: bool
    block: str | None  # fqn of the nested block's struct, None for a plain argument


@dataclass
class Struct:
    arguments: dict[str, Argument] = field(default_factory=dict)


class Schema:
    """Resources, data sources and their nested blocks, by Terraform name."""

    def __init__(self, manifest: dict[str, Any]) -> None:
        self._types: dict[str, Any] = manifest["types"]
        self._structs: dict[str, Struct] = {}
        self.resources: dict[str, str] = {}
        self.data_sources: dict[str, str] = {}
        for spec in self._types.values():
            if spec["kind"] != "class":
                continue
            match = REPRESENTS.search(spec.get("docs", {}).get("summary", ""))
            if not match:
                continue
            config = self._config_of(spec)
            if config is None:
                continue
            kind, name = match.groups()
            (self.resources if kind == "resources" else self.data_sources)[name] = config

    @classmethod
    def from_distribution(cls, distribution: str) -> Schema:
        files = importlib.metadata.files(distribution) or []
        archives = [f for f in files if f.name.endswith(".jsii.tgz")]
        if len(archives) != 1:
            raise SystemExit(f"{distribution} holds {len(archives)} jsii archives, expected 1")
        with tarfile.open(str(archives[0].locate())) as archive:
            member = archive.extractfile("package/.jsii")
            if member is None:
                raise SystemExit(f"{archives[0]} has no package/.jsii")
            return cls(json.load(member))

    def _config_of(self, spec: dict[str, Any]) -> str | None:
        for parameter in spec.get("initializer", {}).get("parameters", []):
            if parameter["name"] == "config":
                fqn = parameter["type"].get("fqn")
                return fqn if isinstance(fqn, str) else None
        return None

    def struct(self, fqn: str) -> Struct:
        if fqn not in self._structs:
            struct = Struct()
            spec = self._types[fqn]
            for parent in spec.get("interfaces", []):
                if parent in self._types:
                    struct.arguments.update(self.struct(parent).arguments)
            for prop in spec.get("properties", []):
                anchor = ANCHOR.search(prop.get("docs", {}).get("remarks", ""))
                name = anchor.group(1) if anchor else _snake(prop["name"])
                struct.arguments[name] = Argument(
                    required=not prop.get("optional", False),
                    block=self._block_fqn(prop["type"]),
                )
            self._structs[fqn] = struct
        return self._structs[fqn]

    def _block_fqn(self, ref: dict[str, Any]) -> str | None:
        """The struct a property's type refers to, if it is a nested block."""
        fqn = ref.get("fqn")
        if isinstance(fqn, str):
            spec = self._types.get(fqn)
            is_struct = spec is not None and spec["kind"] == "interface" and spec.get("datatype")
            return fqn if is_struct else None
        if "collection" in ref and ref["collection"]["kind"] == "array":
            return self._block_fqn(ref["collection"]["elementtype"])
        for member in ref.get("union", {}).get("types", []):
            found = self._block_fqn(member)
            if found:
                return found
        return None


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _blocks(value: Any) -> list[dict[str, Any]]:
    items = value if isinstance(value, list) else [value]
    return [b for b in items if isinstance(b, dict) and b.get("__is_block__")]


def check_body(schema: Schema, fqn: str, body: dict[str, Any], where: str) -> list[str]:
    struct = schema.struct(fqn)
    errors: list[str] = []
    present: set[str] = set()
    for key, value in body.items():
        if key == "__is_block__":
            continue
        if key == "dynamic":
            # dynamic "x" {...} parses as [{"x": {...}}], the outer mapping unmarked.
            for dyn in value if isinstance(value, list) else [value]:
                for name, spec in dyn.items():
                    if name == "__is_block__":
                        continue
                    present.add(name)
                    arg = struct.arguments.get(name)
                    if arg is None or arg.block is None:
                        errors.append(f'{where}: dynamic "{name}": no such block')
                        continue
                    for content in _blocks(spec.get("content", [])):
                        errors += check_body(schema, arg.block, content, f"{where}.{name}")
            continue
        present.add(key)
        arg = struct.arguments.get(key)
        if arg is None:
            errors.append(f'{where}: unsupported argument or block "{key}"')
            continue
        blocks = _blocks(value)
        if blocks and arg.block is None:
            errors.append(f'{where}: "{key}" is an argument, not a block (write {key} = ...)')
        elif not blocks and arg.block is not None and isinstance(value, (dict, list)):
            errors.append(f'{where}: "{key}" is a block, not an argument (write {key} {{...}})')
        for i, block in enumerate(blocks):
            if arg.block is not None:
                errors += check_body(schema, arg.block, block, f"{where}.{key}[{i}]")
    missing = sorted(n for n, a in struct.arguments.items() if a.required and n not in present)
    errors += [f'{where}: missing required argument or block "{n}"' for n in missing]
    return errors


def provider_of(body: dict[str, Any]) -> str:
    """The provider a resource names (`provider = google-beta.alias` -> google-beta)."""
    named = str(body.get("provider", "google")).removeprefix("${").removesuffix("}")
    return named.split(".", 1)[0]


def check_directory(schemas: dict[str, Schema], directory: Path) -> tuple[int, list[str]]:
    options = hcl2.SerializationOptions(
        with_comments=False,
        explicit_blocks=True,
        preserve_heredocs=False,
        strip_string_quotes=True,
    )
    checked, errors = 0, []
    for path in sorted(directory.rglob("*.tf")):
        with path.open() as f:
            parsed = hcl2.load(f, serialization_options=options)
        for section, label in (("resource", "resource"), ("data", "data")):
            for block in parsed.get(section, []):
                for rtype, named in block.items():
                    if not rtype.startswith("google_"):
                        continue  # other providers (random, time) are not in these schemas
                    for name, body in named.items():
                        where = f"{path.name}: {label} {rtype}.{name}"
                        checked += 1
                        provider = provider_of(body)
                        schema = schemas.get(provider)
                        if schema is None:
                            errors.append(f"{where}: no schema for provider {provider}")
                            continue
                        table = schema.resources if section == "resource" else schema.data_sources
                        if rtype not in table:
                            errors.append(f"{where}: the {provider} provider has no such {label}")
                            continue
                        body = {k: v for k, v in body.items() if k not in META_ARGUMENTS}
                        errors += check_body(schema, table[rtype], body, where)
    return checked, errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directories", nargs="+", type=Path)
    args = parser.parse_args()
    schemas = {name: Schema.from_distribution(d) for name, d in DISTRIBUTIONS.items()}
    versions = ", ".join(f"{d} {importlib.metadata.version(d)}" for d in DISTRIBUTIONS.values())
    failed = False
    for directory in args.directories:
        checked, errors = check_directory(schemas, directory)
        for error in errors:
            print(f"{directory}/{error}")
        failed = failed or bool(errors)
        print(
            f"{directory}: {checked} google resources and data sources checked against "
            f"{versions}: {len(errors)} problems",
            file=sys.stderr,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
