"""The serving tier's Spanner backend: recent rows, read at exact times.

`schema.py` derives its tables from `app/records.py` and `rows.py` a row's
values; `calls.py` runs every call on the client's threads within a deadline;
`serving.py` writes a group commit in one transaction and reads pages at exact
timestamps; `export_ledger.py` keeps the export's lease and progress (the rows:
`ledger.py`), `producers.py` the producers' sequences; `tail.py` keeps each
instance's newest rows in memory for its followers. The composition with
BigQuery is `app.store.tiered`'s.
"""
