"""What the application builds to reach its data: repositories acting as an agent, never with
the service-role key.

``repositories(settings, subject)`` opens the application's pool (``CUTOVER_APP_DB_URL``; by
default the migration connection, as in the embedded demo) and returns the table repositories for
that agent. ``supabase_client(settings)`` builds a Supabase client for the application with the
anon key (user JWTs on top make it ``authenticated``); it refuses the service-role key, which
bypasses RLS and has no place on this path.
"""

from __future__ import annotations

from dataclasses import dataclass

from cutover.csvstore import CsvStore
from cutover.db import Database, connect
from cutover.errors import CutoverError
from cutover.outbox import Outbox
from cutover.repository import ApprovalsRepository, LeadsRepository
from cutover.settings import Settings
from cutover.spec import TableSpec, load_specs


class ServiceRoleRefused(CutoverError):
    exit_code = 1


@dataclass
class AppData:
    db: Database
    leads: LeadsRepository
    approvals: ApprovalsRepository

    def close(self) -> None:
        self.db.close()


def app_database(settings: Settings) -> Database:
    if settings.app_db_url is None:
        return connect(settings)
    return connect(settings.model_copy(update={"db_url": settings.app_db_url}))


def repositories(settings: Settings, subject: str, *, specs: dict[str, TableSpec] | None = None,
                 db: Database | None = None, shadow_reads: bool = False) -> AppData:
    specs = specs or load_specs(settings.spec_dir)
    db = db or app_database(settings)
    stores = {name: CsvStore(settings.csv_path(name), spec) for name, spec in specs.items()}
    outbox = Outbox(settings.home / "outbox.sqlite3")
    common = dict(specs=specs, db=db, outbox=outbox, subject=subject, parent_stores=stores,
                  shadow_reads=shadow_reads)
    return AppData(db, LeadsRepository(store=stores["leads"], **common),
                   ApprovalsRepository(store=stores["approvals"], **common))


def _is_secret_key(key: str) -> bool:
    """A key that bypasses RLS by itself: a JWT whose ``role`` claim is ``service_role`` (legacy
    keys), or a new-style secret key (``sb_secret_…``). Decoded only, never verified."""
    if key.startswith("sb_secret_"):
        return True
    parts = key.split(".")
    if len(parts) != 3:
        return False
    import base64
    import json

    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except Exception:  # not a JWT after all
        return False
    return isinstance(claims, dict) and claims.get("role") == "service_role"


def supabase_client(settings: Settings):
    """The application's Supabase client: anon key only."""
    # Compared stripped: a key pasted with a stray space or newline is still the same key.
    anon = settings.supabase_anon_key.get_secret_value().strip() if settings.supabase_anon_key else None
    service = (settings.supabase_service_role_key.get_secret_value().strip()
               if settings.supabase_service_role_key else None)
    if not anon or (service and anon == service) or _is_secret_key(anon):
        raise ServiceRoleRefused(
            "the application path uses the anon key (plus the user's JWT) and never the service-role key:"
            " set SUPABASE_ANON_KEY" + (" to the project's anon key, not the service-role key" if anon else ""))
    if not settings.supabase_url:
        raise CutoverError("SUPABASE_URL is not set")
    from supabase import create_client

    return create_client(settings.supabase_url, anon)
