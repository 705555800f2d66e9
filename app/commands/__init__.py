"""The operators' commands that ask a running service or a cell's systems
(`recordline replay`, and where `audit` and `export` find a cell's system): run from a
shell, or as a cell's Cloud Run job (docs/operations.md#running-commands-as-a-cells-job).
"""
