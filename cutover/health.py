"""``cutover health``: is the database answering, how fast, and how loaded is our pool."""

from __future__ import annotations

import statistics
import time

from cutover.db import Database


def check(db: Database, probes: int = 5) -> dict:
    latencies = []
    for _ in range(probes):
        start = time.perf_counter()
        db.run(lambda conn: conn.execute("select 1").fetchone(), what="health probe")
        latencies.append((time.perf_counter() - start) * 1000)
    limits = db.limits
    return {
        "ok": True,
        "database": db.display,
        "server_version": limits.version,
        "latency_ms": {"median": round(statistics.median(latencies), 2), "max": round(max(latencies), 2)},
        "pool": {**db.stats(), "mode": db.settings.pool_mode},
        "connections": {"server_max": limits.max_connections, "allowed_for_role": limits.allowed,
                        "pool_max_default": limits.default_pool_max},
        "circuit_breaker": "open" if db.breaker.opened_at is not None else "closed",
    }
