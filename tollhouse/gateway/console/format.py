"""Jinja filters for the console: times, money, numbers and JSON, all returned as plain text."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

__all__ = ["FILTERS", "money", "pretty_json", "when"]


def when(value: Any) -> str:
    """An ISO time or epoch seconds as `2026-11-23 14:05:09 UTC`; other values as text."""
    if value is None or value == "":
        return "—"
    moment: datetime | None = None
    if isinstance(value, int | float):
        moment = datetime.fromtimestamp(value, tz=UTC)
    elif isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    if moment is None:
        return str(value)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def money(micro: Any, currency: str | None = None) -> str:
    """Micro-units (1e-6) as `12.345678 USD`, trailing zeros trimmed to two decimals."""
    if not isinstance(micro, int | float):
        return "—"
    text = f"{micro / 1_000_000:,.6f}".rstrip("0")
    whole, _, fraction = text.partition(".")
    text = f"{whole}.{fraction.ljust(2, '0')}"
    return f"{text} {currency}" if currency else text


def number(value: Any) -> str:
    """Thousands separators for ints, two decimals for floats."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "—" if value is None else str(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:,.2f}"


def percent(value: Any) -> str:
    if not isinstance(value, int | float):
        return "—"
    return f"{value * 100:.1f}%"


def pretty_json(value: Any) -> str:
    """Indented JSON (keys sorted), for showing records and definitions as text."""
    try:
        return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        return str(value)


FILTERS: dict[str, Callable[..., str]] = {
    "when": when,
    "money": money,
    "number": number,
    "percent": percent,
    "pretty_json": pretty_json,
}
