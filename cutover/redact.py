"""Keep secrets out of everything cutover prints, logs, stores or raises.

Two layers: DSNs are only ever *displayed* through ``display_dsn`` (password dropped), and every
outgoing text can be passed through ``scrub``, which replaces any known secret value. The
``ScrubFilter`` applies ``scrub`` to log records, so a library that formats a DSN into a message
cannot leak it either.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus, unquote

from psycopg.conninfo import conninfo_to_dict, make_conninfo

MASK = "***"


_URL_SCHEME = re.compile(r"^\s*[A-Za-z][A-Za-z0-9+.-]*://")
_URL_DELIMITERS = re.compile(r"[/?#@:\[\]&=]")
_KEYWORD_PASSWORD = re.compile(r"(?:^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'?|\S+)")
_QUERY_PASSWORD = re.compile(r"[?&]password=([^&#]*)")
MIN_GUESSED_SECRET = 3  # shorter guesses would mask ordinary text everywhere


def _spellings(secret: str) -> list[str]:
    """A secret as it may appear in a URL too (percent-encoded as urllib, or as SQLAlchemy renders it)."""
    return [secret, quote(secret, safe=""), quote(secret, safe=" +"), quote_plus(secret)]


def _written_passwords(dsn: str) -> list[str]:
    """The password as *written* in ``dsn``, found without parsing it: libpq echoes a malformed token
    (``invalid percent-encoded token: "..."``), and an unencoded ``/`` or ``@`` in a URL's password
    makes libpq read pieces of it as port, host or database — so every piece is a secret too."""
    found: list[str] = []
    scheme = _URL_SCHEME.match(dsn)
    if scheme:
        rest = dsn[scheme.end():]
        ats = [i for i, c in enumerate(rest) if c == "@"]
        for at in sorted({ats[0], ats[-1]}) if ats else ():
            user_info = rest[:at]
            if ":" in user_info:
                written = user_info.split(":", 1)[1]
                found += [written, unquote(written), *_URL_DELIMITERS.split(written)]
        for m in _QUERY_PASSWORD.finditer(rest):
            found += [m.group(1), unquote(m.group(1))]
    for m in _KEYWORD_PASSWORD.finditer(dsn):
        value = m.group(1)
        if value.startswith("'"):
            value = re.sub(r"\\(.)", r"\1", value[1:-1] if len(value) > 1 and value.endswith("'") else value[1:])
        found.append(value)
    return [s for s in found if len(s) >= MIN_GUESSED_SECRET]


def dsn_secrets(dsn: str) -> list[str]:
    """The secret parts of a DSN (its password), however the DSN is spelled — and however it is
    misspelled: an unparseable DSN is secret as a whole, and the password as written in it too."""
    found: list[str] = []
    try:
        params = conninfo_to_dict(dsn)
    except Exception:
        params = {}
        found.append(dsn)  # unparseable: treat the whole string as secret
    password = params.get("password")
    if password:
        found += _spellings(str(password))
    for written in _written_passwords(dsn):
        found += _spellings(written)
    return list(dict.fromkeys(s for s in found if s))


def display_dsn(dsn: str) -> str:
    """A DSN fit for humans and logs: host, port, database and user; never a password (not even one
    that a malformed URL made libpq read as a host, port or database name)."""
    try:
        params = conninfo_to_dict(dsn)
    except Exception:
        return "<unparseable DSN>"
    params.pop("password", None)
    keep = {k: v for k, v in params.items() if k in ("host", "hostaddr", "port", "dbname", "user")}
    return scrub(make_conninfo("", **keep), dsn_secrets(dsn))


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
