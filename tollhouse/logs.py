"""Process logging: plain text lines, or one JSON object per line that carries the trace ids.

A JSON line has `time` (RFC 3339, UTC, milliseconds), `level`, `logger`, `message`, and, when
a span is current in the logging task, `trace_id`/`span_id` (lowercase hex, as OTLP backends
show them), so a log line leads to its trace. Only the formatted message and the traceback
are written; the gateway never puts request bodies or headers in log messages, and this
formatter adds no record extras that could carry them.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

from tollhouse.tracing import current_ids

__all__ = ["TEXT_FORMAT", "JsonFormatter", "configure_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""The `text` log format."""


class JsonFormatter(logging.Formatter):
    """Formats each record as one JSON object on one line."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON object (no trailing newline)."""
        line: dict[str, Any] = {
            "time": _rfc3339(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        # Handlers format in the logging task, whose context holds the current span.
        trace_id, span_id = current_ids()
        if trace_id is not None:
            line["trace_id"] = trace_id
            line["span_id"] = span_id
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(line).decode()


def configure_logging(level: str, fmt: str) -> None:
    """Log to stderr at `level` in format `fmt` ("text" or "json"), like `logging.basicConfig`.

    As with basicConfig, a root logger that already has handlers is left alone.

    Raises:
        ValueError: `fmt` is neither "text" nor "json".
    """
    if fmt == "json":
        formatter: logging.Formatter = JsonFormatter()
    elif fmt == "text":
        formatter = logging.Formatter(TEXT_FORMAT)
    else:
        raise ValueError(f"unknown log format {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    logging.basicConfig(level=level.upper(), handlers=[handler])


def _rfc3339(created: float) -> str:
    moment = datetime.fromtimestamp(created, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
