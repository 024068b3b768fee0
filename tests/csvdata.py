"""Building CSV files for tests with exact control over quoting (``None`` is an empty field,
``""`` a quoted empty string) — which the csv module cannot express."""

from __future__ import annotations

import uuid
from pathlib import Path

LEAD_COLUMNS = ("id", "created_at", "updated_at", "first_name", "last_name", "email", "phone", "street",
                "city", "state", "zip", "budget", "status", "source", "notes", "agent_id")
APPROVAL_COLUMNS = ("id", "lead_id", "channel", "draft", "status", "reviewer", "decided_at", "created_at",
                    "updated_at")
AGENT = "f36fe7c9-2fbd-5864-8d0c-fb8144441882"
OTHER_AGENT = "b43724e7-2545-5ace-a9c1-ad299fcb15d9"


def field(value: str | None) -> str:
    if value is None:
        return ""
    return '"' + value.replace('"', '""') + '"'


def lead(i: int, **overrides: str | None) -> dict[str, str | None]:
    row = {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"lead-{i}")),
        "created_at": "2025-03-01T10:00:00Z",
        "updated_at": "2025-03-02T11:30:00+00:00",
        "first_name": f"Ana{i}", "last_name": "Silva", "email": f"ana{i}@example.com",
        "phone": "+1-555-0100", "street": "12 Elm St", "city": "Austin", "state": "TX", "zip": "78701",
        "budget": "450000.00", "status": "new", "source": "zillow", "notes": None, "agent_id": AGENT,
    }
    row.update(overrides)
    return row


def approval(i: int, lead_id: str, **overrides: str | None) -> dict[str, str | None]:
    row = {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"approval-{i}")), "lead_id": lead_id, "channel": "email",
           "draft": f"Hi {i}, ...", "status": "pending", "reviewer": None, "decided_at": None,
           "created_at": "2025-03-03T09:00:00Z", "updated_at": "2025-03-03T09:00:00Z"}
    row.update(overrides)
    return row


def write_csv(path: Path, rows: list[dict[str, str | None]], columns=LEAD_COLUMNS, newline: str = "\n") -> Path:
    lines = [",".join(columns)] + [",".join(field(r[c]) for c in columns) for r in rows]
    Path(path).write_bytes((newline.join(lines) + newline).encode("utf-8"))
    return Path(path)
