"""Export requests: automated checks (and, next, review and release)."""
