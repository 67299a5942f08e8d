"""JSON log lines: one object per line, with the trace ids of the current span."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tollhouse.gateway.settings import TelemetrySettings
from tollhouse.logs import JsonFormatter, configure_logging
from tollhouse.tracing import Tracing, current_ids

RFC3339_UTC_MS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A private logger writing JSON lines into a buffer (the root logger is left alone)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tests.logs.json")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)
    logger.propagate = True


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    """Each written line, parsed: every line must be one JSON object."""
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_outside_any_span_has_no_trace_ids(logged: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = logged
    logger.warning("upstream %s: down", "crm")

    (line,) = lines(stream)
    assert set(line) == {"time", "level", "logger", "message"}
    assert RFC3339_UTC_MS.fullmatch(line["time"])
    assert (line["level"], line["logger"], line["message"]) == (
        "WARNING",
        "tests.logs.json",
        "upstream crm: down",
    )


def test_a_line_inside_a_span_carries_its_trace_and_span_ids(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = logged
    tracing = Tracing(TelemetrySettings(), node="n", version="0", exporter=InMemorySpanExporter())
    try:
        with tracing.server_span("tools/call", {}, {}, target="t"):
            trace_id, span_id = current_ids()
            logger.info("calling")
    finally:
        tracing.shutdown()

    (line,) = lines(stream)
    assert trace_id is not None and span_id is not None
    assert (line["trace_id"], line["span_id"]) == (trace_id, span_id)


def test_an_exception_is_one_line_with_its_traceback(logged: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = logged
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("unexpected\nsecond line")

    (line,) = lines(stream)
    assert line["message"] == "unexpected\nsecond line"
    assert "Traceback" in line["exc"] and "RuntimeError: boom" in line["exc"]


def test_an_unknown_log_format_is_refused() -> None:
    with pytest.raises(ValueError, match="xml"):
        configure_logging("info", "xml")
