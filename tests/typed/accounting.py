"""Where each value of a payload went: its typed field, or a projection error."""

from __future__ import annotations

from typing import Any

from app.typed.projection import Projection, ProjectionError


def unaccounted(payload: Any, projection: Projection) -> list[str]:
    """The paths of the payload's values that are neither typed nor in an error (silent drops)."""
    errors = [e.field for e in projection.errors]
    if payload is None or _covered("$", errors):
        return []
    if not isinstance(payload, dict):
        return ["$"]
    return _missing(payload, projection.values, "", errors, root=True)


def _covered(path: str, errors: list[str]) -> bool:
    return any(
        e == "$" or path == e or path.startswith(f"{e}.") or path.startswith(f"{e}[")
        for e in errors
    )


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _missing(value: Any, typed: Any, path: str, errors: list[str], root: bool = False) -> list[str]:
    # The payload itself is `$`; a key of it may be "" (a path of "" too).
    if value is None or (not root and _covered(path, errors)):
        return []
    if isinstance(typed, str) and isinstance(value, dict | list):
        return []  # a JSON field holds the value whole
    if isinstance(value, dict):
        if isinstance(typed, list):  # a map's entries
            typed = {
                str(e["key"]).lower() if isinstance(e["key"], bool) else str(e["key"]): e["value"]
                for e in typed
            }
        if not isinstance(typed, dict):
            return [path or "$"]
        found: list[str] = []
        for key, item in value.items():
            found += _missing(item, typed.get(key), _join(path, str(key)), errors)
        return found
    if isinstance(value, list):
        if not isinstance(typed, list):
            return [path]
        found, j = [], 0
        for i, item in enumerate(value):
            where = f"{path}[{i}]"
            if item is None or _covered(where, errors):
                continue
            found += _missing(item, typed[j] if j < len(typed) else None, where, errors)
            j += 1
        return found
    return [path] if typed is None else []


def unaccounted_row(payload: Any, fields: Any, errors: Any) -> list[str]:
    """`unaccounted` of a stored row as a query reads it: its `fields` (a dict, or
    None) and its `projection_errors` (dicts of `field`, `reason`, `revision`)."""
    projection = Projection(
        values=fields or {},
        errors=[
            ProjectionError(field=e["field"], reason=e["reason"], revision=e.get("revision"))
            for e in errors or []
        ],
    )
    return unaccounted(payload, projection)
