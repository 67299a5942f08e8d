"""Shipping usage events from the outbox to sinks: at least once, with backoff, bounded.

One loop per sink claims a batch of due outbox rows (a lease, so replicas do not deliver the
same rows at once), delivers it, and deletes the rows once the sink acknowledged them; a
failure reschedules them with exponential backoff. A sink may therefore see an event twice
(a lost acknowledgement, a lease that ran out): event ids are stable, so it deduplicates by
id (OpenMeter does, with its dedupe enabled). A sink's backlog is bounded: past
`max_backlog` the oldest undelivered rows are given up on for that sink and counted (the
events stay in the database for reports), so a dead sink never fills the disk or blocks calls.

Sinks: `jsonl` (append one event per line, fsync per batch), `webhook` (POST a JSON array of
structured CloudEvents) and `openmeter` (POST `application/cloudevents-batch+json`, as
OpenMeter's `/api/v1/events` ingest takes). Any 2xx acknowledges the whole batch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import anyio
import anyio.abc
import anyio.to_thread
import httpx2

from tollhouse.gateway.settings import UsageSettings, UsageSinkSettings
from tollhouse.registry.usage_store import SqlUsageStore

__all__ = ["HttpSink", "JsonlSink", "Sink", "SinkError", "SinkState", "UsageShipper", "build_sink"]

logger = logging.getLogger("tollhouse.metering")
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"


class SinkError(Exception):
    """A delivery the sink did not acknowledge."""


class Sink(Protocol):
    """Somewhere usage events go."""

    name: str
    kind: str

    async def deliver(self, events: Sequence[str]) -> None:
        """Deliver serialized CloudEvents; return only once the sink acknowledged all of them."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


class JsonlSink:
    """Appends one event per line to a file, fsynced per batch."""

    kind = "jsonl"

    def __init__(self, name: str, path: str) -> None:
        self.name = name
        self._path = Path(path)

    async def deliver(self, events: Sequence[str]) -> None:
        text = "".join(e + "\n" for e in events)

        def append() -> None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            with self._path.open("a", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())

        await anyio.to_thread.run_sync(append)

    async def aclose(self) -> None:
        return None


class HttpSink:
    """POSTs each batch as a JSON array: a webhook, or OpenMeter's CloudEvents batch ingest."""

    def __init__(
        self, name: str, kind: str, url: str, *, token: str | None = None, timeout_seconds: float = 10.0
    ) -> None:
        self.name = name
        self.kind = kind
        self._url = url
        headers = {"Content-Type": BATCH_CONTENT_TYPE if kind == "openmeter" else "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._client = httpx2.AsyncClient(headers=headers, timeout=timeout_seconds, trust_env=False)

    async def deliver(self, events: Sequence[str]) -> None:
        body = ("[" + ",".join(events) + "]").encode()
        try:
            response = await self._client.post(self._url, content=body)
        except httpx2.HTTPError as exc:
            raise SinkError(f"{type(exc).__name__}") from None
        if not 200 <= response.status_code < 300:
            raise SinkError(f"HTTP {response.status_code}")

    async def aclose(self) -> None:
        await self._client.aclose()


def build_sink(spec: UsageSinkSettings) -> Sink:
    """The sink a setting describes."""
    if spec.type == "jsonl":
        assert spec.path is not None
        return JsonlSink(spec.name, spec.path)
    assert spec.url is not None
    token = spec.token.get_secret_value() if spec.token is not None else None
    return HttpSink(spec.name, spec.type, spec.url, token=token, timeout_seconds=spec.timeout_seconds)


@dataclass
class SinkState:
    """What this replica knows of one sink's deliveries."""

    kind: str
    delivered: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    dropped: int = 0
    last_error: str | None = None
    last_success_at: datetime | None = None
    retry_at: datetime | None = None


class UsageShipper:
    """Delivers the outbox to every sink, one loop each."""

    def __init__(self, store: SqlUsageStore, sinks: Sequence[Sink], settings: UsageSettings) -> None:
        self._store = store
        self.sinks = tuple(sinks)
        self._settings = settings
        self.states = {s.name: SinkState(kind=s.kind) for s in self.sinks}
        self._wakes: dict[str, anyio.Event] = {}

    def wake(self) -> None:
        """New rows were committed: idle loops look now rather than at their next poll."""
        for event in self._wakes.values():
            event.set()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Ship until cancelled."""
        try:
            async with anyio.create_task_group() as tg:
                for sink in self.sinks:
                    self._wakes[sink.name] = anyio.Event()
                    tg.start_soon(self._loop, sink)
                task_status.started()
        finally:
            with anyio.CancelScope(shield=True):
                for sink in self.sinks:
                    await sink.aclose()

    async def _loop(self, sink: Sink) -> None:
        settings = self._settings
        state = self.states[sink.name]
        delay = settings.retry_min_seconds
        while True:
            try:
                dropped = await self._store.trim(sink.name, settings.max_backlog)
                if dropped:
                    state.dropped += dropped
                    logger.error(
                        "usage sink %s: backlog full, gave up on %d oldest events", sink.name, dropped
                    )
                batch = await self._store.claim(
                    sink.name, settings.ship_batch, datetime.now(UTC), settings.lease_seconds
                )
            except Exception:
                logger.exception("usage sink %s: reading the outbox failed", sink.name)
                await anyio.sleep(delay)
                delay = min(delay * 2, settings.retry_max_seconds)
                continue
            if not batch:
                with anyio.move_on_after(settings.poll_seconds):
                    await self._wakes[sink.name].wait()
                self._wakes[sink.name] = anyio.Event()
                continue
            seqs = [c.seq for c in batch]
            try:
                await sink.deliver([c.event for c in batch])
            except Exception as exc:
                state.failures += 1
                state.consecutive_failures += 1
                state.last_error = str(exc)[:200] or type(exc).__name__
                state.retry_at = datetime.now(UTC) + timedelta(seconds=delay)
                logger.warning(
                    "usage sink %s: delivery failed (%s); retry in %.1fs", sink.name, state.last_error, delay
                )
                try:
                    await self._store.retry_at(seqs, state.retry_at)
                except Exception:
                    logger.exception("usage sink %s: rescheduling failed (the lease will expire)", sink.name)
                await anyio.sleep(delay)
                delay = min(delay * 2, settings.retry_max_seconds)
                continue
            # Counted when the sink acknowledged, before the rows leave the outbox: whoever sees
            # the backlog empty sees these counted too.
            state.delivered += len(batch)
            try:
                await self._store.delivered(seqs)
            except Exception:
                # Delivered but not marked: redelivered later, and deduplicated by id downstream.
                logger.exception("usage sink %s: marking delivered failed", sink.name)
            state.consecutive_failures = 0
            state.last_success_at = datetime.now(UTC)
            state.retry_at = None
            delay = settings.retry_min_seconds

    async def backlog(self) -> dict[str, dict[str, Any]]:
        """Per sink: undelivered rows, the oldest one's event time, the most attempts any row had."""
        return await self._store.backlog()

    async def outbox(self, writer: Any) -> dict[str, Any]:
        """The outbox as the admin API shows it: the writer's queue and each sink's backlog and state."""
        backlog = await self.backlog()
        now = datetime.now(UTC)
        sinks: list[dict[str, Any]] = []
        for sink in self.sinks:
            state = self.states[sink.name]
            pending = backlog.get(sink.name, {})
            oldest = pending.get("oldest")
            sinks.append(
                {
                    "name": sink.name,
                    "type": state.kind,
                    "pending": pending.get("pending", 0),
                    "oldest_age_seconds": round((now - oldest).total_seconds(), 3) if oldest else None,
                    "max_attempts": pending.get("max_attempts", 0),
                    "delivered": state.delivered,
                    "failures": state.failures,
                    "consecutive_failures": state.consecutive_failures,
                    "dropped": state.dropped,
                    "last_error": state.last_error,
                    "last_success_at": state.last_success_at.isoformat() if state.last_success_at else None,
                    "retry_at": state.retry_at.isoformat() if state.retry_at else None,
                    "max_backlog": self._settings.max_backlog,
                }
            )
        return {
            "writer": {"queued": writer.queued, "written": writer.written, "dropped": writer.dropped},
            "pending": sum(s["pending"] for s in sinks),
            "sinks": sinks,
        }
