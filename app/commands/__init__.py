"""The operators' commands, run from a shell or as a cell's Cloud Run job
(docs/operations.md#running-commands-as-a-cells-job): those that ask a running service
(`recordline audit`, `replay`, `tail`), those that work on a system's stores themselves
(`recordline export`, `restore`), and where each finds a cell's system (`target.py`).
"""
