"""The exporter service: every serving system's export to BigQuery, apart from ingest.

`recordline exporter` runs it (`service.py`): one process exports each system of
RECORDLINE_SYSTEMS with a serving tier, two or more side by side (a cell's Cloud Run
worker pool, infra/terraform/exporter.tf), each about its share of the leases. Each
system's lease is in its own Spanner database (`app.store.tiered.exporter`): one
instance exports a system at a time, another takes it over within a lease when that
one dies. Ingest services then scale with their own traffic, to zero at rest.
"""
