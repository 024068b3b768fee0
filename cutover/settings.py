"""Configuration, read from the environment (and ``.env``) with pydantic-settings.

Secrets are ``SecretStr``: they print as ``**********`` in reprs, logs and tracebacks; code that
needs the value calls ``get_secret_value()`` at the last moment.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cutover.spec import PROJECT_SPEC_DIR


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CUTOVER_", env_file=".env", extra="ignore", frozen=True)

    # Supabase Postgres DSN (direct connection, or the session/transaction pooler). Unset: embedded PG.
    db_url: SecretStr | None = Field(default=None, validation_alias=AliasChoices("SUPABASE_DB_URL"))
    # The application's connection (a role that can only SET ROLE authenticated, e.g. Supabase's
    # authenticator). Unset: the migration connection, which is fine for the embedded database.
    app_db_url: SecretStr | None = Field(default=None, validation_alias=AliasChoices("CUTOVER_APP_DB_URL"))
    supabase_url: str | None = Field(default=None, validation_alias=AliasChoices("SUPABASE_URL"))
    supabase_anon_key: SecretStr | None = Field(default=None, validation_alias=AliasChoices("SUPABASE_ANON_KEY"))
    supabase_service_role_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("SUPABASE_SERVICE_ROLE_KEY"))

    home: Path = Path(".cutover")  # embedded database, rejects files, reports
    data_dir: Path = Path("data")  # the CSV store: <table>.csv
    spec_dir: Path = PROJECT_SPEC_DIR
    expectations_dir: Path = PROJECT_SPEC_DIR.parent.parent / "expectations"  # GX suites, one JSON per table

    # session: direct connection or Supavisor session mode (port 5432).
    # transaction: Supavisor transaction mode (port 6543): no prepared statements, no session state.
    pool_mode: Literal["session", "transaction"] = "session"
    pool_max: int | None = Field(default=None, ge=1)  # default: 80% of what the server allows this role
    connect_timeout_s: float = Field(default=10.0, gt=0)
    statement_timeout_s: float = Field(default=1800.0, ge=0)  # 0 = none; a 10M-row merge takes minutes
    lock_timeout_s: float = Field(default=30.0, ge=0)

    mass_delete_threshold: float = Field(default=0.10, ge=0, le=1)
    # ~15k leads rows: a batch in flight costs ~10x its size in memory, and a few are in flight at once
    # (300 MB peak RSS at any file size); flows on big workers may raise it to map fewer tasks
    batch_bytes: int = Field(default=4 * 1024 * 1024, ge=64 * 1024)
    # Memory the diff sync may spend matching the new file's records with the last merged file's, shared
    # by the workers: the records are spilled to disk and matched in as many parts as this needs
    # (cutover.record_match), so memory does not grow with the file. 0: never diff.
    diff_index_mb: int = Field(default=64, ge=0)
    # Keep the CSV's side of a digest comparison (parity, validate) for its exact bytes, so that the
    # same file compared again is not re-read (cutover.digest_memo). The table is always read.
    keep_csv_digests: bool = True
    workers: int = Field(default_factory=lambda: max(1, min(4, os.cpu_count() or 1)), ge=1)
    retry_attempts: int = Field(default=5, ge=1)
    # A Dask scheduler (tcp://host:8786): the flows then map batch tasks over its workers.
    dask_address: str | None = None

    @field_validator("home", "data_dir", "spec_dir", "expectations_dir")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @cached_property
    def secrets(self) -> tuple[str, ...]:
        """Every secret value this process knows, for scrubbing output (see ``cutover.redact``)."""
        from cutover.redact import dsn_secrets

        found: list[str] = []
        for dsn in (self.db_url, self.app_db_url):
            if dsn is not None:
                found += dsn_secrets(dsn.get_secret_value())
        for key in (self.supabase_anon_key, self.supabase_service_role_key):
            if key is not None and key.get_secret_value():
                found.append(key.get_secret_value())
        return tuple(s for s in found if s)

    def csv_path(self, table: str) -> Path:
        return self.data_dir / f"{table}.csv"

    @property
    def rejects_dir(self) -> Path:
        return self.home / "rejects"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def embedded(self) -> bool:
        return self.db_url is None
