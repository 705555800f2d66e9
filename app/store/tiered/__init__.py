"""The serving tier: Spanner in front of BigQuery, composed here and nowhere else.

`store.py` is the Store (writes to Spanner, reads from Spanner or BigQuery by
age); `exporter.py` feeds BigQuery from Spanner, each row exactly once, by
one instance at a time (its lease and progress are kept in Spanner through
the Spanner backend's own methods); `app.store.supervisor` runs their
background loops. The backends (`app.store.spanner`, `app.store.bigquery`) never import
each other, nor this package: `tests/test_layering.py` refuses it.
"""
