"""The BigQuery tables' schemas, derived from the row definition (`app/records.py`).

`recordline schema --write` keeps the JSON files Terraform reads equal to them.
"""

from __future__ import annotations

from app.records import Row, columns


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
