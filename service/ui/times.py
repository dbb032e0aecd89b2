"""Times on the pages, in the zone the hospital configured (``PRESCREEN_TIME_ZONE``, an IANA
name; UTC by default). The database keeps naive UTC; only what a page shows is converted."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from zoneinfo import ZoneInfo


def shown_time(value: datetime | None, zone: ZoneInfo) -> str:
    """``2026-06-15 14:05 CEST``; a naive value is UTC. Empty for no time."""
    if value is None:
        return ""
    stamp = value if value.tzinfo else value.replace(tzinfo=UTC)
    local = stamp.astimezone(zone)
    return f"{local:%Y-%m-%d %H:%M} {local.tzname() or zone.key}"


def formatter(zone: ZoneInfo) -> Callable[[datetime | None], str]:
    return lambda value: shown_time(value, zone)
