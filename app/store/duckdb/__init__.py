"""The embedded DuckDB store: `store.DuckDBStore`, composed of one class a module (its
database, journal frames, applier, inserts, reads, early tail, producers' ledger,
retention, typed columns), its commit journal and that journal's writer process.

Nothing is imported here: the journal's writer process starts as
`python -m app.store.duckdb.journal_process` and needs neither DuckDB nor Arrow.
"""
