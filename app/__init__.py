"""Recordline: Pub/Sub push into a queryable record store with an HTTP API."""
