"""The exporter service: every serving system's export to BigQuery, apart from ingest.

`recordline exporter` runs it (`service.py`): one process exports each system
RECORDLINE_EXPORT_SYSTEMS names, and two or more of them run side by side (a
Cloud Run worker pool, infra/terraform/exporter.tf). Each system's export
holds a lease in that system's own Spanner database
(`app.store.tiered.exporter`): one instance exports a system at a time, and
another takes it over within a lease when that one dies. Ingest services then
scale with their own traffic, to zero at rest: nothing they run must outlive a
request.
"""
