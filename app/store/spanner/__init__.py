"""The serving tier: recent rows in Spanner, beside the BigQuery store (`app.store.tiered`).

`schema.py` derives its tables from `app/records.py`; `serving.py` writes a
group commit in one read-write transaction and reads pages at exact
timestamps; `tail.py` keeps each instance's newest rows in memory for the
followers it serves.
"""
