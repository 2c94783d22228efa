"""Per-token rate limit: a token bucket refilled at ``rate`` per second up to ``burst``.
The guide treats more than 5 queries a second from one caller as abnormal."""

from __future__ import annotations

import threading
import time

from sandbox.errors import RateLimited


class RateLimiter:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> None:
        """Spend one request for ``key`` or raise RateLimited."""
        if self.rate <= 0:
            return
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens < 1:
                self._buckets[key] = (tokens, now)
                raise RateLimited(f"more than {self.rate:g} requests per second; slow down")
            self._buckets[key] = (tokens - 1, now)
