"""Typed columns from a topic's schema: the mapping, its evolution, and the projection.

Pure functions over schema definitions and stored payloads, with no store or
web framework: each store turns their results into its own columns.
"""
