"""Time in the job store: every timestamp the service writes or serves is an aware UTC datetime."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import overload


def utcnow() -> datetime:
    """Now, as an aware UTC datetime (what every column default and status change records)."""
    return datetime.now(timezone.utc)


@overload
def as_utc(ts: datetime) -> datetime: ...
@overload
def as_utc(ts: None) -> None: ...
def as_utc(ts: datetime | None) -> datetime | None:
    """A stored timestamp as aware UTC. SQLite gives naive datetimes back (they were stored as UTC),
    PostgreSQL aware ones in the session's time zone; ``None`` stays ``None``."""
    if ts is None:
        return None
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)
