"""Publishing run results as Prefect artifacts under stable keys, so the Artifacts page shows each
key's history across runs. Artifacts are built only from counts and names: never a DSN or a value."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

COUNT_COLUMNS = ("table", "read", "loaded", "rejected", "inserted", "updated", "deleted", "duration_s",
                 "rejects_file", "note")


@task(cache_policy=NO_CACHE)
def publish_counts(key: str, results: dict[str, dict], skipped: dict[str, str]) -> str:
    """One table artifact: a row per table synced (its counts) or skipped (why)."""
    rows = [{c: results[t].get(c) for c in COUNT_COLUMNS} | {"note": "ok"} for t in results]
    rows += [{c: None for c in COUNT_COLUMNS} | {"table": t, "note": why} for t, why in skipped.items()]
    total_rejected = sum(r["rejected"] for r in results.values())
    description = (f"{len(results)} table(s) synced, {len(skipped)} skipped, {total_rejected} row(s) rejected"
                   " (see each rejects_file)")
    artifact_id = create_table_artifact(table=rows, key=key, description=description)
    return str(artifact_id)
