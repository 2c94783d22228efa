"""Pure domain of the approval workflow (no web imports)."""
