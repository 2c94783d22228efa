"""Limits the portal and the gateway both enforce, kept in one place so neither imports
the other: a committee cannot grant more than the gateway accepts, and the gateway refuses
a grant no committee could have approved (a forged or mistaken service call)."""

from __future__ import annotations

# The largest total ε one project may be granted (basic composition over all its queries).
MAX_EPSILON = 10.0
