"""Recordline's own checkov policies, loaded with --external-checks-dir infra/checkov."""
