"""Cohort definitions (spec), checked against a dataset's catalogue (checks) and built into
one row per patient (frame) — by the gateway over restricted tables, by the client over
dummy ones."""
