"""A Server-Sent Events reader (the WHATWG ``text/event-stream`` format) over lines of text.

Only what a client of ``GET /v1/events/stream`` needs: ``event:``, ``data:`` (several lines are
joined with newlines), ``id:``, ``retry:``; comment lines (``:keep-alive``) are skipped; an event
is dispatched at a blank line, and one without data is dropped, as the standard says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator


@dataclass
class Event:
    event: str = "message"
    data: str = ""
    id: str | None = None
    retry_ms: int | None = None


def parse_events(lines: Iterable[str]) -> Iterator[Event]:
    """Events from decoded lines (without their line endings, as ``httpx.Response.iter_lines`` gives)."""
    name, data, last_id, retry = "", [], None, None
    for line in lines:
        if line == "":
            if data:
                yield Event(name or "message", "\n".join(data), last_id, retry)
            name, data = "", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
        elif field == "id" and "\x00" not in value:
            last_id = value
        elif field == "retry" and value.isdigit():
            retry = int(value)
