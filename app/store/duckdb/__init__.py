"""The embedded DuckDB store: `store.DuckDBStore`, its commit journal and its writer process.

Nothing is imported here: the journal's writer process starts as
`python -m app.store.duckdb.journal_process` and needs neither DuckDB nor Arrow.
"""
