"""Per-token rate limit: a token bucket refilled at ``rate`` per second up to ``burst``.
The guide treats more than 5 queries a second from one caller as abnormal. One gateway
keeps its buckets in memory; replicas on one PostgreSQL database share them in a table,
so that a token spread over N replicas is not allowed N times the rate."""

from __future__ import annotations

import threading
import time

from sqlalchemy import Engine, func, select, update
from sqlalchemy.dialects.postgresql import insert

from sandbox.errors import RateLimited
from sandbox.gateway.store import rate_buckets


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


class SharedRateLimiter:
    """The same bucket rule, the buckets rows of ``rate_buckets`` (PostgreSQL), each taken
    under a row lock so concurrent replicas spend from one bucket."""

    def __init__(self, db: Engine, rate: float, burst: int) -> None:
        self.db, self.rate, self.burst = db, rate, burst

    def take(self, key: str) -> None:
        if self.rate <= 0:
            return
        with self.db.begin() as conn:
            conn.execute(insert(rate_buckets).values(key=key, tokens=float(self.burst),
                                                     at=0.0).on_conflict_do_nothing())
            row = conn.execute(select(rate_buckets).where(rate_buckets.c.key == key)
                               .with_for_update()).one()
            # The database's clock, read under the row's lock: one clock for every replica
            # (a replica whose own clock runs ahead would refill the bucket each time it
            # follows another), and never older than the time the last taker wrote.
            now = float(conn.execute(select(func.extract(
                "epoch", func.clock_timestamp()))).scalar_one())
            tokens = min(self.burst, row.tokens + max(0.0, now - row.at) * self.rate)
            allowed = tokens >= 1
            conn.execute(update(rate_buckets).where(rate_buckets.c.key == key)
                         .values(tokens=tokens - 1 if allowed else tokens, at=now))
        if not allowed:
            raise RateLimited(f"more than {self.rate:g} requests per second; slow down")


def limiter_for(db: Engine, rate: float, burst: int) -> RateLimiter | SharedRateLimiter:
    """Shared buckets on PostgreSQL (where replicas may share the database), else memory."""
    if db.dialect.name == "postgresql":
        return SharedRateLimiter(db, rate, burst)
    return RateLimiter(rate, burst)
