"""Federated datasets: rows stay at their sites; only encrypted aggregates travel, and only
their noisy sum is ever decrypted (docs/federated.md)."""
