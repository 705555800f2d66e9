"""The BigQuery tables' schemas, derived from the row definition (`app/records.py`).

`recordline schema --write` keeps the JSON files Terraform reads equal to them.
"""

from __future__ import annotations

from typing import Any

from app.records import Record, Row, columns


def bigquery_schema(row_type: type[Row]) -> list[dict[str, str]]:
    """The BigQuery table schema, in the JSON form `bq` and Terraform take."""
    return [
        {
            "name": c.name,
            "type": c.kind.value,
            "mode": "NULLABLE" if c.nullable else "REQUIRED",
            "description": c.description,
        }
        for c in columns(row_type)
    ]


def created_schema(row_type: type[Row]) -> list[dict[str, Any]]:
    """The schema a table is created with (its schema file, which Terraform reads):
    its row's columns, and for `records` the typed columns it starts with."""
    # Here, not at the top: the typed columns' module loads the Google clients
    # (most of a second), which `recordline --help` and DuckDB never need.
    from app.store.bigquery.typed import created_columns

    own: list[dict[str, Any]] = list(bigquery_schema(row_type))
    return own + created_columns() if row_type is Record else own
