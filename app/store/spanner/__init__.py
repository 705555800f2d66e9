"""The serving tier's Spanner backend: recent rows, read at exact times.

`schema.py` derives its tables from `app/records.py`; `calls.py` runs every
call on the client's threads within a deadline; `serving.py` writes a
group commit in one read-write transaction and reads pages at exact
timestamps, every call within a deadline; `ledger.py` reads and writes the
export's lease and progress rows; `tail.py` keeps each instance's newest rows
in memory for the followers it serves. The composition with BigQuery is
`app.store.tiered`'s.
"""
