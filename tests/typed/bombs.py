"""Schema revisions that name far more fields than they take bytes to write, and a
count of the work a call does."""

from __future__ import annotations

import sys
from typing import Any


def avro_bomb(levels: int, width: int) -> dict[str, Any]:
    """R0 is one field; R(k) has `width` fields of R(k-1), each null or one (so a
    datum can be small): a schema of a few hundred bytes that names
    width**levels records."""
    rk: Any = {"type": "record", "name": "R0", "fields": [{"name": "v", "type": "long"}]}
    for k in range(1, levels + 1):
        first = {"name": "f0", "type": ["null", rk], "default": None}
        rest = [
            {"name": f"f{i}", "type": ["null", f"R{k - 1}"], "default": None}
            for i in range(1, width)
        ]
        rk = {"type": "record", "name": f"R{k}", "fields": [first, *rest]}
    return dict(rk)


def proto_bomb(levels: int, width: int) -> str:
    """The same in a .proto: M(k) has `width` fields of M(k-1)."""
    messages = ["message M0 { int64 a = 1; int64 b = 2; int64 c = 3; }"]
    for k in range(1, levels + 1):
        body = " ".join(f"M{k - 1} f{i} = {i + 1};" for i in range(width))
        messages.append(f"message M{k} {{ {body} }}")
    return "\n".join(['syntax = "proto3";', messages[-1], *messages[:-1]])


def python_calls(work: Any) -> int:
    """How many Python functions `work()` called: a count of the work done that,
    unlike a time, does not depend on the machine."""
    calls = 0

    def profile(_frame: Any, event: str, _arg: Any) -> None:
        nonlocal calls
        if event == "call":
            calls += 1

    sys.setprofile(profile)
    try:
        work()
    finally:
        sys.setprofile(None)
    return calls
