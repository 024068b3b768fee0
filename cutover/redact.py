"""Keep secrets out of everything cutover prints, logs, stores or raises.

Two layers: DSNs are only ever *displayed* through ``display_dsn`` (password dropped), and every
outgoing text can be passed through ``scrub``, which replaces any known secret value. The
``ScrubFilter`` applies ``scrub`` to log records, so a library that formats a DSN into a message
cannot leak it either.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from psycopg.conninfo import conninfo_to_dict, make_conninfo

MASK = "***"


def dsn_secrets(dsn: str) -> list[str]:
    """The secret parts of a DSN (its password), however the DSN is spelled."""
    try:
        params = conninfo_to_dict(dsn)
    except Exception:
        return [dsn]  # unparseable: treat the whole string as secret
    password = params.get("password")
    return [str(password)] if password else []


def display_dsn(dsn: str) -> str:
    """A DSN fit for humans and logs: host, port, database and user; never a password."""
    try:
        params = conninfo_to_dict(dsn)
    except Exception:
        return "<unparseable DSN>"
    params.pop("password", None)
    keep = {k: v for k, v in params.items() if k in ("host", "hostaddr", "port", "dbname", "user")}
    return make_conninfo("", **keep)


def scrub(text: str, secrets: Iterable[str]) -> str:
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


class ScrubFilter(logging.Filter):
    """Rewrites log records so that no known secret reaches a handler."""

    def __init__(self, secrets: Iterable[str]):
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            clean = scrub(message, self.secrets)
            if clean != message or record.args:
                record.msg, record.args = clean, None
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                if scrub(str(exc), self.secrets) != str(exc):
                    record.exc_info = None  # the traceback would print the secret
                    record.msg = f"{clean} [{type(exc).__name__}: {scrub(str(exc), self.secrets)}]"
        return True


def install_log_scrubber(secrets: Iterable[str], loggers: Iterable[str] = (
        "", "prefect", "prefect.flow_runs", "prefect.task_runs", "cutover")) -> None:
    """Attach one ScrubFilter to the named loggers and to every handler already configured on them
    (Prefect's API log handler sits on its run loggers: records reach it without passing the parent
    logger's filters)."""
    flt = ScrubFilter(secrets)
    if not flt.secrets:
        return
    for name in loggers:
        logger = logging.getLogger(name)
        for target in (logger, *logger.handlers):
            # idempotent: tasks call this on every run, and filters must not pile up
            if not any(isinstance(f, ScrubFilter) and f.secrets == flt.secrets for f in target.filters):
                target.addFilter(flt)
