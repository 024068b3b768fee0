"""Run an expectation suite on a PostgreSQL relation with Great Expectations 1.x.

GX works through a SQL data source, so every expectation is pushed down to SQL: nothing is loaded
into memory, whatever the table's size. The connection string reaches GX only as the environment
substitution ``${CUTOVER_GX_DB_URL}`` (set in this process, never written to a file), so GX's
config, logs and errors show the placeholder, not the password; it is in the environment only
while a run needs it, and removed afterwards.

GX is imported on first use: it costs seconds, and commands that do not validate must not pay for
it. ``warm_up`` starts that import (and the context) in a background thread, so that a validation
can overlap it with staging the CSV. The two modules GX imports only for expectations that cutover's
suites never hold, scipy.stats and altair, are imported if and when first used (``deferred_import``):
~80 MB and ~2 s less. One ephemeral GX context per process, with progress bars off; runs are
serialized (one at a time, from any thread).

Each suite runs first without example rows (``partial_unexpected_count`` 0: GX then asks for them
with ``LIMIT 0``, which PostgreSQL answers without scanning); only the expectations that failed are
run again to fetch their examples. A passing expectation has no examples, so the results are the
same as one run with examples, without a full scan per expectation that finds nothing.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from dataclasses import asdict, dataclass, field

from psycopg.conninfo import conninfo_to_dict

from cutover import deferred_import

URL_ENV = "CUTOVER_GX_DB_URL"
MAX_EXAMPLES = 5
_lock = threading.Lock()  # one GX run at a time
_context_lock = threading.Lock()  # one import and context build
_context = None
_warming: threading.Thread | None = None  # warm_up's thread


@dataclass(frozen=True)
class CheckResult:
    """One expectation's outcome, in a form reports and artifacts can show."""

    expectation: str
    rule: str
    column: str | None
    success: bool
    unexpected_count: int | None = None
    element_count: int | None = None
    observed: str | None = None
    examples: list[str] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def sqlalchemy_url(conninfo: str) -> str:
    """A ``postgresql+psycopg://`` URL for any libpq conninfo. GX refuses socket-only URLs, so a
    socket directory travels as the ``host`` query parameter behind a nominal ``localhost``."""
    from sqlalchemy.engine import URL

    params = conninfo_to_dict(conninfo)
    host = params.pop("host", None) or "localhost"
    query = {}
    if host.startswith("/"):
        query["host"], host = host, "localhost"
    for key in ("sslmode", "sslrootcert", "options", "application_name", "connect_timeout"):
        if key in params:
            query[key] = str(params.pop(key))
    port = params.pop("port", None)
    return URL.create("postgresql+psycopg", username=params.pop("user", None), password=params.pop("password", None),
                      host=host, port=int(port) if port else None, database=params.pop("dbname", None),
                      query=query).render_as_string(hide_password=False)


def _gx_context():
    global _context
    with _context_lock:
        if _context is None:
            _context = _build_context()
        return _context


def warm_up() -> None:
    """Import GX and build its context in a background thread (no-op once done): the import is
    seconds of CPU that a caller can overlap with I/O. A failure here is raised again by the run."""
    global _warming
    if _context is not None:
        return

    def build():
        try:
            _gx_context()
        except Exception:  # the run that needs the context raises it with its own traceback
            logging.getLogger("cutover.gx").debug("GX warm-up failed", exc_info=True)

    _warming = threading.Thread(target=build, name="cutover-gx-warmup", daemon=True)
    _warming.start()


def wait_warm() -> None:
    """Return once a ``warm_up`` begun has ended (whether or not it succeeded): the import holds
    Python's lock for seconds, so Python-driven work started alongside it crawls."""
    if _warming is not None:
        _warming.join()


# imported by GX as it loads, used only by expectations cutover's suites do not hold (``deferred_import``)
UNUSED_ON_IMPORT = ("scipy.stats", "altair")


def _build_context():
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    deferred_import.defer(*UNUSED_ON_IMPORT)
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    for name in list(logging.root.manager.loggerDict):  # GX sets some of its loggers to INFO on import
        if name.startswith("great_expectations"):
            logging.getLogger(name).setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    return context


def _result(raw: dict) -> CheckResult:
    config = raw["expectation_config"]
    kwargs, meta = config.get("kwargs", {}), config.get("meta") or {}
    result = raw.get("result") or {}
    exc = raw.get("exception_info") or {}
    if "raised_exception" not in exc:  # a metric failed: GX keys its exception by metric id
        exc = next((v for v in exc.values() if isinstance(v, dict)), {})
        exc.setdefault("raised_exception", bool(exc))
    error = exc.get("exception_message") if exc.get("raised_exception") else None
    observed = result.get("observed_value")
    examples = result.get("partial_unexpected_list") or []
    return CheckResult(
        expectation=config["type"],
        rule=meta.get("rule") or config.get("description") or config["type"],
        column=kwargs.get("column") or kwargs.get("column_A"),
        success=bool(raw.get("success")),
        unexpected_count=result.get("unexpected_count", observed if config["type"] == "unexpected_rows_expectation"
                                    else None),
        element_count=result.get("element_count"),
        observed=None if observed is None else str(observed)[:300],
        examples=[str(e)[:200] for e in examples[:MAX_EXAMPLES]],
        error=error[:500] if error else None,
    )


INDEX = "cutover_index"  # meta key: an expectation's position in the suite, across the two passes


def _index(raw: dict) -> int:
    return raw["expectation_config"]["meta"][INDEX]


def _needs_examples(raw: dict) -> bool:
    """A failed expectation whose examples the first pass (without examples) left out."""
    result = raw.get("result") or {}
    return not raw.get("success") and "partial_unexpected_list" in result and bool(result.get("unexpected_count"))


def _validate(ctx, batch, name: str, expectations: list[dict], meta: dict | None, examples: int) -> list[dict]:
    from great_expectations import ValidationDefinition
    from great_expectations.core.expectation_suite import ExpectationSuite

    try:
        gx_suite = ctx.suites.add(ExpectationSuite(name=name, expectations=expectations, meta=meta))
        definition = ctx.validation_definitions.add(ValidationDefinition(name=name, data=batch, suite=gx_suite))
        outcome = definition.run(result_format={"result_format": "SUMMARY", "partial_unexpected_count": examples})
        return outcome.to_json_dict()["results"]
    finally:
        for remove in (lambda: ctx.validation_definitions.delete(name), lambda: ctx.suites.delete(name)):
            try:
                remove()
            except Exception:  # cleanup of an in-memory context: nothing to recover
                pass


def run_suite(conninfo: str, suite: dict, schema: str, table: str) -> list[CheckResult]:
    """Validate the table or view ``schema.table`` against ``suite`` (GX's JSON form); one result
    per expectation."""
    with _lock:
        ctx = _gx_context()
        name = f"cutover-{uuid.uuid4().hex[:12]}"
        os.environ[URL_ENV] = sqlalchemy_url(conninfo)
        try:
            source = ctx.data_sources.add_postgres(name, connection_string="${" + URL_ENV + "}")
            try:
                batch = source.add_table_asset(table, table_name=table, schema_name=schema) \
                    .add_batch_definition_whole_table("all")
                # Expectation ids are assigned by GX; the file's own are not needed to run. Each
                # carries its position, which its result keeps (GX may reorder results).
                expectations = [{**{k: v for k, v in e.items() if k != "id"},
                                 "meta": {**(e.get("meta") or {}), INDEX: i}}
                                for i, e in enumerate(suite["expectations"])]
                results = _validate(ctx, batch, name, expectations, suite.get("meta"), 0)
                failed = {_index(r) for r in results if _needs_examples(r)}
                if failed:  # again, with examples, only what failed
                    again = {_index(r): r for r in _validate(ctx, batch, name, [expectations[i] for i in sorted(failed)],
                                                              suite.get("meta"), MAX_EXAMPLES)}
                    results = [again.get(_index(r), r) for r in results]
                return [_result(r) for r in results]
            finally:
                try:
                    ctx.data_sources.delete(name)
                except Exception:  # cleanup of an in-memory context: nothing to recover
                    pass
        finally:
            os.environ.pop(URL_ENV, None)  # a secret: in the environment only while GX needs it
