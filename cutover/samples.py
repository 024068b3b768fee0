"""Deterministic, realistic sample CSVs of any size for the RE Engine's tables.

Contract: ``generate(table, rows, out, seed=...)`` writes the same bytes for the same arguments on
any machine (numpy's PCG64 streams are stable across versions; polars only formats). Rows are built
vectorised, ``CHUNK_ROWS`` at a time, and streamed through ``atomic_write``, so memory stays bounded
and a reader never sees a half-written file.

Keys are a pure function of ``(seed, index)`` (splitmix64), so ``approvals`` can refer to the leads
of a file generated with the same seed without reading it. Every generated row passes the loader:
the samples load with 0 rejects. The data is deliberately awkward where real CSV stores are: names
in many scripts, notes and drafts with commas, doubled quotes and line breaks, timestamps with and
without fractions and in several offsets, optional fields left empty.

``generate_with_bad_rows`` writes the same leads file with a share of rows spoiled at seeded random
positions, one fault each, of every kind the loader must reject, and returns exactly which lines the
loader must reject, naming which column and why: the oracle for tests of huge, hostile files.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from cutover.atomic import atomic_write

CHUNK_ROWS = 50_000
_LEADS_SALT, _APPROVALS_SALT, _AGENTS_SALT = 0x1EAD, 0xA99, 0xA6E
AGENTS = 24
_EPOCH_2023 = 1_672_531_200_000_000  # 2023-01-01T00:00:00Z in microseconds
_SPAN_US = 1_400 * 86_400_000_000  # ~3.8 years
_DAY_US = 86_400_000_000

FIRST = ["Ana", "José", "Zoë", "Liam", "Olivia", "Mateo", "Chloé", "Søren", "Aiyana", "Wei", "Priya",
         "Nguyễn", "Fatima", "Jürgen", "Siobhán", "Kwame", "Yuki", "Ólafur", "Łukasz", "Amélie", "Noah",
         "Emma", "Ethan", "Sofía", "Dmitri", "Aroha", "Mei-Ling", "Björn", "Chiara", "D'Andre"]
FIRST_ASCII = ["ana", "jose", "zoe", "liam", "olivia", "mateo", "chloe", "soren", "aiyana", "wei", "priya",
               "nguyen", "fatima", "jurgen", "siobhan", "kwame", "yuki", "olafur", "lukasz", "amelie", "noah",
               "emma", "ethan", "sofia", "dmitri", "aroha", "meiling", "bjorn", "chiara", "dandre"]
LAST = ["Silva", "García", "O'Brien", "Müller", "Smith", "Johnson", "Kowalski", "Nakamura", "Okafor", "Chen",
        "Patel", "Dubois", "Rossi", "Andersson", "Van der Berg", "MacLeod", "Nguyen", "Hernández", "Kim",
        "Ivanova", "Brown", "Williams", "Jones", "de la Cruz", "李", "Øvergaard", "Şahin", "Papadopoulos"]
LAST_ASCII = ["silva", "garcia", "obrien", "muller", "smith", "johnson", "kowalski", "nakamura", "okafor", "chen",
              "patel", "dubois", "rossi", "andersson", "vanderberg", "macleod", "nguyen", "hernandez", "kim",
              "ivanova", "brown", "williams", "jones", "delacruz", "li", "overgaard", "sahin", "papadopoulos"]
DOMAINS = ["gmail.com", "yahoo.com", "outlook.com", "icloud.com", "proton.me", "example.org", "fastmail.com"]
PLACES = [("Austin", "TX", "787"), ("Dallas", "TX", "752"), ("Miami", "FL", "331"), ("Orlando", "FL", "328"),
          ("Denver", "CO", "802"), ("Seattle", "WA", "981"), ("Portland", "OR", "972"), ("Phoenix", "AZ", "850"),
          ("Atlanta", "GA", "303"), ("Boston", "MA", "021"), ("Chicago", "IL", "606"), ("Nashville", "TN", "372"),
          ("San José", "CA", "951"), ("Coeur d'Alene", "ID", "838"), ("Santa Fe", "NM", "875"),
          ("Brooklyn", "NY", "112"), ("Raleigh", "NC", "276"), ("Boise", "ID", "837")]
STREETS = ["Elm St", "Oak Ave", "Maple Dr", "Cedar Ln", "Pine St", "Main St", "Lakeview Blvd", "Sunset Rd",
           "Calle Real", "Rue Saint-Denis", "Hillcrest Ct", "Willow Way", "Magnolia Pl", "Harbor View Rd"]
UNITS = ["", "", "", "", ", Apt 4B", ", Unit 12", " #305", ", Suite 200"]
SOURCES = ["zillow", "realtor.com", "referral", "open house", "website", "facebook", "redfin", "walk-in"]
LEAD_STATUS = (["new", "contacted", "qualified", "won", "lost"], [0.30, 0.28, 0.20, 0.08, 0.14])
NOTES = [
    "Prefers a call after 5pm, not before.",
    'Said "just looking" but asked about schools twice.',
    "Pre-approved, lender: First National; wants 3 bed, 2 bath.",
    "Relocating from Berlin — needs a place by March.\nSpouse works remotely.",
    "Budget flexible, ~10% over if the yard is big enough.",
    "Call back: voicemail full.\r\nTry email instead.",
    'Asked for "move-in ready", no fixer-uppers; allergic to cats.',
    "Met at open house, 123 Pine St. Very interested 👍",
    "Investor; owns 4 rentals, looking for a duplex, cash offer.",
    "Spanish-speaking, prefers WhatsApp: «hablar con Sofía».",
    "Don't call on weekends.",
    "Needs wheelchair access,\nground floor or elevator.",
]
CHANNELS = (["email", "sms", "call"], [0.55, 0.30, 0.15])
APPROVAL_STATUS = (["pending", "approved", "rejected", "sent"], [0.35, 0.20, 0.10, 0.35])
REVIEWERS = ["maria.lopez", "j.okafor", "sam", "Renée Dubois", "ops-bot", "Kenji Watanabe"]
DRAFTS = [
    "Hi {name}, thanks for reaching out! Are you free for a viewing this week?",
    "Hi {name},\n\nA new listing just came up that matches your budget. Want the details?\n\n— The team",
    'Hello {name} — following up on "the blue house" you liked. Still interested?',
    "{name}, quick one: is {city} still your first choice, or should we widen the search?",
    "Hey {name}! Price drop on a 3-bed you saved, now within budget 🎉",
    "Hi {name}, reminder: open house Sat 10–12, 45 Oak Ave. Reply STOP to opt out.",
]

LEADS_HEADER = ("id", "created_at", "updated_at", "first_name", "last_name", "email", "phone", "street", "city",
                "state", "zip", "budget", "status", "source", "notes", "agent_id")
APPROVALS_HEADER = ("id", "lead_id", "channel", "draft", "status", "reviewer", "decided_at", "created_at",
                    "updated_at")


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _uuids(seed: int, salt: int, index: np.ndarray) -> pl.Series:
    """Random-looking version-4 UUIDs that are a pure function of (seed, salt, index)."""
    base = np.uint64((seed * 0x10001 + salt) & 0xFFFFFFFFFFFFFFFF)
    with np.errstate(over="ignore"):
        i = index.astype(np.uint64) * np.uint64(2) + base * np.uint64(0x100000001B3)
    hi, lo = _splitmix64(i), _splitmix64(i + np.uint64(1))
    hi = (hi & np.uint64(0xFFFFFFFFFFFF0FFF)) | np.uint64(0x4000)  # version 4
    lo = (lo & np.uint64(0x3FFFFFFFFFFFFFFF)) | np.uint64(0x8000000000000000)  # RFC 4122 variant
    raw = np.empty((len(index), 16), dtype=np.uint8)
    raw[:, :8] = hi.astype(">u8").view(np.uint8).reshape(-1, 8)
    raw[:, 8:] = lo.astype(">u8").view(np.uint8).reshape(-1, 8)
    digits = np.empty((len(index), 32), dtype=np.uint8)
    digits[:, 0::2], digits[:, 1::2] = _HEX[raw >> 4], _HEX[raw & 15]
    text = np.full((len(index), 36), ord("-"), dtype=np.uint8)
    text[:, _UUID_DIGIT_POS] = digits
    # every byte is ASCII and never NUL, so the fixed-width view is lossless
    return pl.Series(text.view("S36").ravel(), dtype=pl.Binary).cast(pl.String)


_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_UUID_DIGIT_POS = np.array([i for i in range(36) if i not in (8, 13, 18, 23)])


def lead_ids(seed: int, start: int, stop: int) -> pl.Series:
    """The ids of rows ``start..stop`` of the leads file generated with ``seed``."""
    return _uuids(seed, _LEADS_SALT, np.arange(start, stop, dtype=np.uint64))


def agent_ids(seed: int) -> list[str]:
    """The agents leads are assigned to (their ``auth.uid()`` once they log in)."""
    return _uuids(seed, _AGENTS_SALT, np.arange(AGENTS, dtype=np.uint64)).to_list()


def _pick(rng: np.random.Generator, n: int, values: list[str], p: list[float] | None = None) -> pl.Series:
    return pl.Series(values, dtype=pl.String).gather(rng.choice(len(values), size=n, p=p))


def _null_where(s: pl.Series, mask: np.ndarray) -> pl.Series:
    return pl.select(pl.when(pl.Series(mask)).then(None).otherwise(s)).to_series()


def _timestamps(rng: np.random.Generator, micros: np.ndarray) -> pl.Series:
    """ISO 8601 text in the mix of forms real exports have: Z with microseconds (most), whole seconds,
    milliseconds, an explicit UTC offset, and local time with a numeric offset."""
    n = len(micros)
    form = rng.choice(5, size=n, p=[0.55, 0.20, 0.10, 0.10, 0.05])
    micros = np.where(form == 1, micros - micros % 1_000_000, micros)
    micros = np.where(form == 2, micros - micros % 1_000, micros)
    utc = pl.Series(micros, dtype=pl.Int64).cast(pl.Datetime("us", "UTC"))
    local = utc.dt.convert_time_zone("America/New_York")
    return pl.select(
        pl.when(pl.Series(form) == 0).then(utc.dt.strftime("%Y-%m-%dT%H:%M:%S%.6fZ"))
        .when(pl.Series(form) == 1).then(utc.dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
        .when(pl.Series(form) == 2).then(utc.dt.strftime("%Y-%m-%d %H:%M:%S%.3f+00:00"))
        .when(pl.Series(form) == 3).then(utc.dt.strftime("%Y-%m-%dT%H:%M:%S%.6f+00:00"))
        .otherwise(local.dt.strftime("%Y-%m-%dT%H:%M:%S%.6f%:z"))).to_series()


def _leads_chunk(seed: int, start: int, n: int) -> pl.DataFrame:
    rng = np.random.default_rng([seed, _LEADS_SALT, start])
    created = _EPOCH_2023 + rng.integers(0, _SPAN_US, n)
    updated = created + rng.integers(1_000_000, 120 * _DAY_US, n)  # ≥ 1 s: survives truncation
    fi, li = rng.integers(0, len(FIRST), n), rng.integers(0, len(LAST), n)
    place = rng.integers(0, len(PLACES), n)
    idx = pl.Series(np.arange(start, start + n), dtype=pl.Int64)
    email = pl.select(pl.concat_str(
        pl.Series(FIRST_ASCII).gather(fi), pl.lit("."), pl.Series(LAST_ASCII).gather(li), idx.cast(pl.String),
        pl.lit("@"), _pick(rng, n, DOMAINS))).to_series()
    phone = pl.select(pl.format("+1-{}-{}-{}", pl.Series(rng.integers(201, 990, n)),
                                pl.Series(rng.integers(200, 999, n)),
                                pl.Series(rng.integers(0, 10_000, n)).cast(pl.String).str.zfill(4))).to_series()
    street = pl.select(pl.concat_str(pl.Series(rng.integers(1, 9_999, n)).cast(pl.String), pl.lit(" "),
                                     _pick(rng, n, STREETS), _pick(rng, n, UNITS))).to_series()
    zip_code = pl.select(pl.concat_str(pl.Series([p[2] for p in PLACES]).gather(place),
                                       pl.Series(rng.integers(0, 100, n)).cast(pl.String).str.zfill(2))).to_series()
    cents = rng.integers(5_000_000, 250_000_000, n)
    budget = pl.select(pl.format("{}.{}", pl.Series(cents // 100),
                                 pl.Series(cents % 100).cast(pl.String).str.zfill(2))).to_series()
    agents = pl.Series(agent_ids(seed)).gather(rng.integers(0, AGENTS, n))
    return pl.DataFrame({
        "id": lead_ids(seed, start, start + n),
        "created_at": _timestamps(rng, created),
        "updated_at": _timestamps(rng, updated),
        "first_name": pl.Series(FIRST).gather(fi),
        "last_name": pl.Series(LAST).gather(li),
        "email": email,
        "phone": _null_where(phone, rng.random(n) < 0.12),
        "street": _null_where(street, rng.random(n) < 0.15),
        "city": pl.Series([p[0] for p in PLACES]).gather(place),
        "state": pl.Series([p[1] for p in PLACES]).gather(place),
        "zip": _null_where(zip_code, rng.random(n) < 0.05),
        "budget": _null_where(budget, rng.random(n) < 0.08),
        "status": _pick(rng, n, *LEAD_STATUS),
        "source": _null_where(_pick(rng, n, SOURCES), rng.random(n) < 0.05),
        "notes": _null_where(_pick(rng, n, NOTES), rng.random(n) >= 0.40),
        "agent_id": _null_where(agents, rng.random(n) < 0.05),
    })


def _approvals_chunk(seed: int, start: int, n: int, leads_rows: int) -> pl.DataFrame:
    rng = np.random.default_rng([seed, _APPROVALS_SALT, start])
    lead_index = rng.integers(0, leads_rows, n).astype(np.uint64)
    created = _EPOCH_2023 + rng.integers(0, _SPAN_US, n)
    decided = created + rng.integers(60_000_000, 14 * _DAY_US, n)
    updated = decided + rng.integers(1_000_000, 3 * _DAY_US, n)
    status = _pick(rng, n, *APPROVAL_STATUS)
    undecided = (status == "pending").to_numpy()
    draft = pl.select(
        pl.Series(DRAFTS).gather(rng.integers(0, len(DRAFTS), n))
        .str.replace_all("{name}", pl.Series(FIRST).gather(rng.integers(0, len(FIRST), n)), literal=True)
        .str.replace_all("{city}", pl.Series([p[0] for p in PLACES]).gather(rng.integers(0, len(PLACES), n)),
                         literal=True)).to_series()
    return pl.DataFrame({
        "id": _uuids(seed, _APPROVALS_SALT, np.arange(start, start + n, dtype=np.uint64)),
        "lead_id": _uuids(seed, _LEADS_SALT, lead_index),
        "channel": _null_where(_pick(rng, n, *CHANNELS), rng.random(n) < 0.02),
        "draft": _null_where(draft, rng.random(n) < 0.03),
        "status": status,
        "reviewer": _null_where(_pick(rng, n, REVIEWERS), undecided),
        "decided_at": _null_where(_timestamps(rng, decided), undecided),
        "created_at": _timestamps(rng, created),
        # a pending draft was last touched when it was written or edited, never "decided"
        "updated_at": _timestamps(rng, np.where(undecided, created + (updated - decided), updated)),
    })


def _chunk_maker(table: str, rows: int, seed: int,
                 leads_rows: int | None) -> tuple[tuple[str, ...], Callable[[int, int], pl.DataFrame]]:
    if table == "leads":
        return LEADS_HEADER, lambda s, n: _leads_chunk(seed, s, n)
    if table == "approvals":
        parents = leads_rows if leads_rows is not None else rows
        if parents < 1 and rows:
            raise ValueError("approvals need at least one lead to refer to (leads_rows >= 1)")
        return APPROVALS_HEADER, lambda s, n: _approvals_chunk(seed, s, n, parents)
    raise ValueError(f"no sample generator for table {table!r} (have: leads, approvals)")


def chunk(table: str, rows: int, index: int, *, seed: int = 7,
          leads_rows: int | None = None) -> tuple[int, pl.DataFrame]:
    """The rows of the generated chunk that holds row ``index`` of a file of ``rows`` rows, as
    ``(index of its first row, frame)``: any part of a huge file, without writing the file."""
    if not 0 <= index < rows:
        raise IndexError(f"row {index} of a {rows}-row file")
    start = index - index % CHUNK_ROWS
    return start, _chunk_maker(table, rows, seed, leads_rows)[1](start, min(CHUNK_ROWS, rows - start))


def _write(f, frame: pl.DataFrame) -> None:
    frame.write_csv(f, include_header=False, quote_style="necessary", line_terminator="\n")


def generate(table: str, rows: int, out: Path, *, seed: int = 7, leads_rows: int | None = None) -> int:
    """Write ``rows`` rows of ``table`` to ``out`` (atomically); returns the number written.

    ``approvals`` refer to the first ``leads_rows`` leads of the leads file with the same seed
    (default: as many leads as approvals)."""
    header, make = _chunk_maker(table, rows, seed, leads_rows)
    with atomic_write(Path(out)) as f:
        f.write((",".join(header) + "\n").encode())
        for start in range(0, rows, CHUNK_ROWS):
            _write(f, make(start, min(CHUNK_ROWS, rows - start)))
    return rows


# --- hostile files: bad rows sprinkled over a huge file, and the exact rejects they must cause ----------

BAD_KINDS = ("uuid", "timestamp", "scale", "enum", "nul", "ragged", "duplicate", "not_null")
_BAD_SALT = 0xBAD
_IMPOSSIBLE = ["2024-02-30T10:00:00Z", "2023-02-29 12:00:00+00:00", "2023-13-01T00:00:00Z",
               "2023-06-15T24:30:00Z", "2023-06-15T23:60:00.000001Z", "2023-04-31T08:15:00-05:00"]
_NOT_A_STATUS = ["pending", "New", "won ", "closed", "LOST", "qualifed"]
_REQUIRED = ("id", "created_at", "updated_at", "first_name", "last_name", "email", "status")
_TEXT = ("first_name", "last_name", "email", "street", "notes")


@dataclass(frozen=True)
class BadRow:
    """A row the loader must reject: ``line`` is where its record starts (the header is line 1),
    ``column`` the column it must name (``None`` for a record with the wrong number of fields)."""

    row: int  # 0-based index among the data rows
    line: int
    column: str | None
    kind: str  # one of BAD_KINDS


def _spoil(kind: str, v: int, row: dict, seed: int, source: int) -> tuple[str | None, object]:
    """(column, spoiled value) for one bad row; ``v`` is the row's random draw."""
    if kind == "uuid":
        col = ("id", "agent_id")[v % 2]
        base = row[col] or row["id"]
        return col, [base[:-1], base.replace("-", ""), base[:10] + "z" + base[11:], "not-a-uuid"][v // 2 % 4]
    if kind == "timestamp":
        return ("created_at", "updated_at")[v % 2], _IMPOSSIBLE[v // 2 % len(_IMPOSSIBLE)]
    if kind == "scale":  # a third decimal that is not zero: it would be rounded
        return "budget", f"{v % 2_000_000 + 1_000}.{v // 7 % 100:02d}{v // 11 % 9 + 1}"
    if kind == "enum":
        return "status", _NOT_A_STATUS[v % len(_NOT_A_STATUS)]
    if kind == "nul":
        col = _TEXT[v % len(_TEXT)]
        base = row[col] or "Ana"
        at = v // 7 % (len(base) + 1)
        return col, base[:at] + "\x00" + base[at:]
    if kind == "not_null":
        return _REQUIRED[v % len(_REQUIRED)], None
    if kind == "duplicate":
        return "id", lead_ids(seed, source, source + 1)[0]
    raise ValueError(kind)


def _ragged(frame: pl.DataFrame, extra: bool) -> bytes:
    """One row written with one field too many or too few (``agent_id``, the last field, has no comma)."""
    buf = io.BytesIO()
    _write(buf, frame)
    text = buf.getvalue().removesuffix(b"\n")
    return (text + b",surplus" if extra else text.rsplit(b",", 1)[0]) + b"\n"


def generate_with_bad_rows(rows: int, out: Path, *, seed: int = 7, share: float = 0.001) -> list[BadRow]:
    """Write the leads file ``generate("leads", rows, out, seed=seed)`` would, except that about
    ``share`` of its rows (at least one of each kind of ``BAD_KINDS`` when there is room) are spoiled
    at seeded random positions, one fault each: a bad UUID, an impossible timestamp, a budget beyond
    its scale, a status outside its enum, a NUL in text, a record with one field too many or too
    few, a key copied from another row, an empty required value. Streamed chunk by chunk, like
    ``generate``: memory stays bounded at any size.

    Returns every row the loader must reject, ordered by line: a copied key makes both rows
    ambiguous, so each ``duplicate`` comes with the row it copied (also of kind ``duplicate``)."""
    rng = np.random.default_rng([seed, _BAD_SALT, rows])
    n_bad = min(max(round(rows * share), len(BAD_KINDS)), rows // 2)
    kinds = np.resize(np.arange(len(BAD_KINDS)), n_bad)
    rng.shuffle(kinds)
    n_dup = int((kinds == BAD_KINDS.index("duplicate")).sum())
    picked = rng.choice(rows, size=n_bad + n_dup, replace=False) if n_bad else np.empty(0, dtype=np.int64)
    draws = rng.integers(0, 1 << 40, n_bad)
    sources = iter(picked[n_bad:].tolist())
    bad = {}  # row -> (kind, draw, source row of a duplicate)
    for row, kind, v in zip(picked[:n_bad].tolist(), kinds.tolist(), draws.tolist()):
        dup = BAD_KINDS[kind] == "duplicate"
        bad[row] = (BAD_KINDS[kind], v, next(sources) if dup else -1)
    copied = {src for _, _, src in bad.values() if src >= 0}
    found: list[BadRow] = []
    line = 2
    with atomic_write(Path(out)) as f:
        f.write((",".join(LEADS_HEADER) + "\n").encode())
        for start in range(0, rows, CHUNK_ROWS):
            n = min(CHUNK_ROWS, rows - start)
            frame = _leads_chunk(seed, start, n)
            here = sorted(r for r in bad if start <= r < start + n)
            spoiled: dict[str, tuple[list[int], list]] = {}
            named: dict[int, tuple[str, str | None]] = {c: ("duplicate", "id") for c in copied
                                                        if start <= c < start + n}
            for r in here:
                kind, v, src = bad[r]
                col = None
                if kind != "ragged":
                    col, value = _spoil(kind, v, frame.row(r - start, named=True), seed, src)
                    spoiled.setdefault(col, ([], []))
                    spoiled[col][0].append(r - start)
                    spoiled[col][1].append(value)
                named[r] = (kind, col)
            for col, (at, values) in spoiled.items():
                s = frame.get_column(col).clone()
                s.scatter(at, values)
                frame = frame.with_columns(s)
            breaks = frame.select(pl.sum_horizontal(
                pl.col(pl.String).str.count_matches("\n", literal=True).fill_null(0))).to_series().to_numpy()
            before = np.concatenate(([0], np.cumsum(breaks)[:-1]))
            for r, (kind, col) in sorted(named.items()):
                found.append(BadRow(r, int(line + r - start + before[r - start]), col, kind))
            at = start
            for r in (r for r in here if bad[r][0] == "ragged"):
                _write(f, frame.slice(at - start, r - at))
                f.write(_ragged(frame.slice(r - start, 1), extra=bool(bad[r][1] % 2)))
                at = r + 1
            _write(f, frame.slice(at - start, start + n - at))
            line += n + int(breaks.sum())
    return found
