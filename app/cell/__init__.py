"""A cell: one service for many systems, each with its own store, identity and bounds.

`create_cell` (app.py) builds each system's app with the `create_app` a deployment
of one system runs, from that system's settings (`app.settings.system_settings`),
and serves it under `/systems/{system}/`. The telemetry, the token keys, one
Spanner client per project and the process's stop are the cell's; each system
starts, fails and starts again on its own (`systems.py`); `/healthz`, `/readyz`,
`/metrics` and `/docs` are the cell's (`root.py`).

Design: docs/cells.md
"""
