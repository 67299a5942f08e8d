"""Metering: one usage event (a CloudEvent 1.0) per logical call, priced and budgeted.

`UsageStage` sits right after ResolveStage, so every outcome of a resolved tools/call is
recorded: it mints the event id (a UUIDv7: time-ordered, and the one id the event keeps
through internal retries and redeliveries), times the call, classifies its outcome and puts
a `UsageMeter` in `ctx.meter` for inner stages. `BudgetStage`, the last check before the
upstream, prices the call, reserves its estimate on the budgets it counts against, times the
upstream, reads reported tokens and settles the actual cost. resources/read and prompts/get
are metered by `Metering.metered` (one event each; not priced, not budgeted).

Events leave through `UsageWriter`: a task that group-commits them, with one outbox row per
sink, in batches. The call's response does not wait for that commit (usage, unlike the audit
trail, need not be durable before the answer; a crash loses at most the uncommitted batch).
When the database stalls, the in-memory queue is bounded: the oldest events are dropped and
counted, so calls never block on metering. usage_shipping.py delivers the outbox.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.abc
import orjson
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from tollhouse.auth.principal import Principal
from tollhouse.gateway.errors import (
    INVALID_PARAMS,
    BudgetExhausted,
    ConcurrencyLimited,
    GatewayError,
    GuardrailBlocked,
    InsufficientScope,
    InvalidArguments,
    MeteringUnavailable,
    PendingApproval,
    ToolNotCallable,
    UnknownTool,
)
from tollhouse.gateway.pipeline import CallContext, Next
from tollhouse.policies.budgets import BudgetRefused, Budgets, Hold, LedgerUnavailable, Payer
from tollhouse.policies.pricing import PriceBook, UsageFacts, tokens_of
from tollhouse.registry.models import JSONObject
from tollhouse.registry.usage_store import SqlUsageStore, UsageRow
from tollhouse.telemetry import Telemetry

__all__ = [
    "EVENT_TYPE",
    "OUTCOMES",
    "BudgetStage",
    "Metering",
    "UsageMeter",
    "UsageStage",
    "UsageWriter",
    "classify",
    "new_event_id",
]

logger = logging.getLogger("tollhouse.metering")

EVENT_TYPE = "io.tollhouse.usage.v1"
OUTCOMES = ("ok", "tool_error", "denied", "rate_limited", "invalid", "upstream_error", "cancelled")
# Outcomes a price applies to: the tool ran (and maybe failed); refusals and failures are free.
BILLABLE = frozenset({"ok", "tool_error"})
_FORMAT = JSONFormat()


def new_event_id(now_ms: int | None = None) -> str:
    """A UUIDv7 (RFC 9562): 48-bit Unix milliseconds, version 7, 74 random bits."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    value = (ms & ((1 << 48) - 1)) << 80 | int.from_bytes(os.urandom(10), "big")
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # variant
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


@dataclass
class UsageMeter:
    """What one call measured so far; stages fill it in as the call goes."""

    event_id: str
    method: str
    time: datetime
    started: float
    request_bytes: int = 0
    response_bytes: int | None = None
    upstream_ms: int | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost_micro: int = 0
    currency: str | None = None
    error_code: int | None = None
    flags: list[str] = field(default_factory=list)
    # Requests sent to the upstream for this one call (UpstreamStage; > 1 after a safe retry).
    attempts: int | None = None
    skip: bool = False  # an input_required round: the logical call is not over


def classify(exc: BaseException) -> str:
    """The outcome of a call that raised `exc` (after its tool was resolved)."""
    if isinstance(exc, anyio.get_cancelled_exc_class()):
        return "cancelled"
    if isinstance(exc, BudgetExhausted | MeteringUnavailable | ConcurrencyLimited):
        return "rate_limited"  # an upstream_busy refusal is a 503, still a limit
    if isinstance(exc, GatewayError) and exc.status == 429:
        return "rate_limited"  # rate, concurrency and loop limits
    if isinstance(exc, UnknownTool | InsufficientScope | PendingApproval | GuardrailBlocked):
        return "denied"  # UnknownTool after resolve is a policy denial that looks unknown
    if isinstance(exc, GatewayError) and type(exc).__name__ == "KillSwitchEngaged":
        return "denied"
    if isinstance(exc, InvalidArguments | ToolNotCallable) or (
        type(exc) is GatewayError and exc.code == INVALID_PARAMS
    ):
        return "invalid"
    return "upstream_error"


def outcome_of(result: JSONObject) -> str:
    """ok, or tool_error for a result the upstream marked `isError`."""
    return "tool_error" if result.get("isError") is True else "ok"


def json_size(value: Any) -> int:
    """Bytes of `value` as compact JSON."""
    try:
        return len(orjson.dumps(value))
    except TypeError:
        return 0


class UsageWriter:
    """Group-commits events (and their outbox rows) from a bounded in-memory queue."""

    def __init__(
        self,
        store: SqlUsageStore,
        sinks: Sequence[str],
        *,
        batch_size: int = 500,
        queue_limit: int = 100_000,
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._sinks = tuple(sinks)
        self._batch = batch_size
        self._limit = queue_limit
        self._queue: deque[UsageRow] = deque()
        self._in_flight = 0
        self._wake: anyio.Event | None = None
        self._idle: list[anyio.Event] = []
        self._on_commit = on_commit
        # The audit writer, when it carries this writer's events in its own transactions.
        self._carrier: Callable[[], None] | None = None
        self.dropped = 0
        self.written = 0
        self.failures = 0

    @property
    def queued(self) -> int:
        """Events accepted but not yet committed."""
        return len(self._queue) + self._in_flight

    def submit(self, row: UsageRow) -> None:
        """Queue one event; never blocks (a full queue drops its oldest event, counted)."""
        if len(self._queue) >= self._limit:
            self._queue.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.error("usage queue full: %d events dropped so far (database too slow?)", self.dropped)
        self._queue.append(row)
        self._poke()

    def _poke(self) -> None:
        if self._carrier is not None:
            self._carrier()
        elif self._wake is not None:
            self._wake.set()

    async def flush(self) -> None:
        """Wait until every event submitted so far is committed (or the writer gave up on it)."""
        if self.queued == 0 or (self._wake is None and self._carrier is None):
            return
        idle = anyio.Event()
        self._idle.append(idle)
        self._poke()
        await idle.wait()

    # -- riding in the audit writer's transactions (SECURITY_GOALS M4) ------------------------

    @property
    def sinks(self) -> tuple[str, ...]:
        """The sinks each event gets an outbox row for."""
        return self._sinks

    def carried_by(self, wake: Callable[[], None] | None) -> None:
        """Let the audit writer commit this writer's events (`wake` tells it some wait); None: stop."""
        self._carrier = wake
        if wake is None and self._wake is not None:
            self._wake.set()  # commit whatever the carrier left behind
        elif wake is not None and self._queue:
            wake()

    @property
    def waiting(self) -> int:
        """Events queued and not yet taken by a commit."""
        return len(self._queue)

    def take(self) -> list[UsageRow]:
        """Hand the carrier the queued events (up to a batch); `landed` or `returned` must follow."""
        batch = [self._queue.popleft() for _ in range(min(self._batch, len(self._queue)))]
        self._in_flight += len(batch)
        return batch

    def landed(self, batch: Sequence[UsageRow]) -> None:
        """The carrier committed `batch`."""
        self._in_flight -= len(batch)
        self.written += len(batch)
        if batch and self._on_commit is not None:
            self._on_commit()
        self._maybe_idle()

    def returned(self, batch: Sequence[UsageRow]) -> None:
        """The carrier's transaction failed: `batch` goes back to the front of the queue."""
        self._in_flight -= len(batch)
        self.failures += 1
        room = self._limit - len(self._queue)
        keep = list(batch[-room:]) if room > 0 else []
        self.dropped += len(batch) - len(keep)
        self._queue.extendleft(reversed(keep))

    def _maybe_idle(self) -> None:
        if not self._queue and not self._in_flight:
            for waiter in self._idle:
                waiter.set()
            self._idle.clear()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Commit batches until cancelled; on the way out, commit what is left (bounded by 5 s)."""
        self._wake = anyio.Event()
        task_status.started()
        backoff = 0.05
        try:
            while True:
                if not self._queue or self._carrier is not None:
                    if not self._queue:
                        self._maybe_idle()
                    await self._wake.wait()
                    self._wake = anyio.Event()
                    continue
                if await self._commit_one():
                    backoff = 0.05
                else:
                    await anyio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
        finally:
            with anyio.CancelScope(shield=True) as scope:
                scope.deadline = anyio.current_time() + 5
                while self._queue and await self._commit_one():
                    pass
            for waiter in self._idle:
                waiter.set()

    async def _commit_one(self) -> bool:
        batch = self.take()
        try:
            await self._store.insert(batch, self._sinks, datetime.now(UTC))
        except Exception:
            logger.exception("usage events not committed (%d); retrying", len(batch))
            self.returned(batch)
            return False
        self.landed(batch)
        return True


class Metering:
    """Prices, budgets and the event writer, as the stages and handlers use them."""

    def __init__(
        self,
        writer: UsageWriter,
        budgets: Budgets,
        *,
        source: str,
        prices: PriceBook | None = None,
        settle_linger_seconds: float = 0.002,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.writer = writer
        self._telemetry = telemetry
        self.budgets = budgets
        self.prices = prices or PriceBook()
        self._source = source
        self._settle_linger = settle_linger_seconds
        self._to_settle: list[tuple[Hold, int, str | None]] = []
        self._settling = 0
        self._settle_wake: anyio.Event | None = None
        self._settled_waiters: list[anyio.Event] = []

    @property
    def settlements_pending(self) -> int:
        """Settlements queued or in flight."""
        return len(self._to_settle) + self._settling

    @property
    def concurrent(self) -> bool:
        """True when a reservation is a network round trip (AdmitStage then overlaps it with its own)."""
        return self.budgets.ledger.remote and bool(self.budgets.rules)

    async def reserve(self, ctx: CallContext) -> Hold:
        """Reserve the call's estimated price on every budget it counts against (maybe none).

        Raises:
            BudgetExhausted: a hard budget has too little left.
            MeteringUnavailable: the ledger is unreachable and a budget fails closed.
        """
        tool = ctx.tool
        assert tool is not None, "ResolveStage runs first"
        estimate, currency = self.prices.estimate(tool.server, tool.name)
        if currency is None or not self.budgets.rules:
            return Hold(reservation="", currency=currency)
        principal = ctx.principal
        payer = Payer(principal.subject, principal.client_id, principal.teams)
        try:
            return await self.budgets.reserve(payer, estimate, currency)
        except BudgetRefused as exc:
            raise BudgetExhausted(exc.budget, exc.name, exc.period, exc.retry_after_seconds) from None
        except LedgerUnavailable as exc:
            raise MeteringUnavailable(exc.budget) from None

    async def release(self, hold: Hold) -> None:
        """Drop a reservation the call will not use (it was refused before reaching the upstream)."""
        if hold.accounts:
            with anyio.CancelScope(shield=True):
                await self.budgets.release(hold)

    async def settle(self, hold: Hold, cost: int, currency: str | None) -> None:
        """Book the call's cost on its budgets: in the background when the ledger is remote.

        The response need not wait: until the settlement lands, the reservation (the estimate)
        keeps counting against the budget, so enforcement is as strict as settling inline.
        Background settlements go out in batches (one pipelined round trip each), gathered for
        at most `settle_linger_seconds`.
        """
        if self._settle_wake is None or not self.budgets.ledger.remote:
            with anyio.CancelScope(shield=True):
                await self.budgets.settle(hold, cost, currency)
            return
        self._to_settle.append((hold, cost, currency))
        self._settle_wake.set()

    async def settled(self) -> None:
        """Wait for the settlements queued so far (a status read after a call sees its cost)."""
        if self._settle_wake is None or (not self._to_settle and not self._settling):
            return
        done = anyio.Event()
        self._settled_waiters.append(done)
        await done.wait()

    async def run_settlements(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Settle queued calls in batches until cancelled; then settle what is left (shielded)."""
        self._settle_wake = anyio.Event()
        task_status.started()
        try:
            while True:
                if not self._to_settle:
                    for waiter in self._settled_waiters:
                        waiter.set()
                    self._settled_waiters.clear()
                    await self._settle_wake.wait()
                    self._settle_wake = anyio.Event()
                    await anyio.sleep(self._settle_linger)
                await self._settle_batch()
        finally:
            self._settle_wake = None
            deadline = anyio.current_time() + 5  # each batch is shielded: bound the whole drain
            while self._to_settle and anyio.current_time() < deadline:
                await self._settle_batch()
            if self._to_settle:
                logger.warning("%d settlements not booked at shutdown; they expire", len(self._to_settle))
                self._to_settle.clear()
            for waiter in self._settled_waiters:
                waiter.set()
            self._settled_waiters.clear()

    async def _settle_batch(self) -> None:
        batch, self._to_settle = self._to_settle[:512], self._to_settle[512:]
        self._settling = len(batch)
        try:
            with anyio.CancelScope(shield=True):
                await self.budgets.finish_all(batch)
        finally:
            self._settling = 0

    def begin(self, method: str, request: Any) -> UsageMeter:
        """A meter for a call that starts now."""
        now = time.time()
        return UsageMeter(
            event_id=new_event_id(int(now * 1000)),
            method=method,
            time=datetime.fromtimestamp(now, UTC),
            started=time.perf_counter(),
            request_bytes=json_size(request),
        )

    def record(
        self,
        meter: UsageMeter,
        principal: Principal,
        server: str,
        tool: str,
        outcome: str,
        result: JSONObject | None,
        snapshot_version: int,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Build the call's event and queue it (synchronous: safe in `finally` under cancellation).

        `extra` adds fields to the event's data (an A2A call's protocol, task and context ids).
        """
        if meter.skip:
            return
        if meter.response_bytes is None:
            meter.response_bytes = json_size(result) if result is not None else 0
        elapsed = time.perf_counter() - meter.started
        duration_ms = round(elapsed * 1000)
        if self._telemetry is not None:
            labels = {"mcp.method.name": meter.method, "server": server, "outcome": outcome}
            self._telemetry.calls.add(1, labels)
            timing = {"mcp.method.name": meter.method, "server": server}
            if outcome != "ok":
                timing["error.type"] = outcome
            self._telemetry.operation_duration.record(elapsed, timing)
        team = principal.teams[0] if principal.teams else None
        data: dict[str, Any] = {
            "team": team,
            "client_id": principal.client_id,
            "server": server,
            "tool": tool,
            "method": meter.method,
            "outcome": outcome,
            "duration_ms": duration_ms,
            "upstream_ms": meter.upstream_ms,
            "request_bytes": meter.request_bytes,
            "response_bytes": meter.response_bytes,
            "cost_micro": meter.cost_micro,
            "currency": meter.currency,
            "snapshot_version": snapshot_version,
        }
        if meter.tokens_in is not None:
            data["tokens_in"] = meter.tokens_in
        if meter.tokens_out is not None:
            data["tokens_out"] = meter.tokens_out
        if meter.error_code is not None:
            data["error_code"] = meter.error_code
        if meter.flags:
            data["flags"] = list(meter.flags)
        if meter.attempts is not None:
            data["attempts"] = meter.attempts
        if extra:
            data.update({k: v for k, v in extra.items() if v is not None})
        event = CloudEvent(
            {
                "id": meter.event_id,
                "source": self._source,
                "type": EVENT_TYPE,
                "subject": principal.subject,
                "time": meter.time,
                "datacontenttype": "application/json",
            },
            data,
        )
        self.writer.submit(
            UsageRow(
                id=meter.event_id,
                time=meter.time,
                subject=principal.subject,
                team=team,
                client_id=principal.client_id,
                server=server,
                tool=tool,
                method=meter.method,
                outcome=outcome,
                duration_ms=duration_ms,
                upstream_ms=meter.upstream_ms,
                request_bytes=meter.request_bytes,
                response_bytes=meter.response_bytes,
                tokens_in=meter.tokens_in,
                tokens_out=meter.tokens_out,
                cost_micro=meter.cost_micro,
                currency=meter.currency,
                snapshot_version=snapshot_version,
                event=_FORMAT.write(event).decode(),
            )
        )

    async def metered(
        self,
        method: str,
        principal: Principal,
        server: str,
        name: str,
        request: Any,
        snapshot_version: int,
        call: Callable[[], Awaitable[JSONObject]],
    ) -> JSONObject:
        """Run `call` (a resources/read or prompts/get) and record its event."""
        meter = self.begin(method, request)
        outcome, result = "upstream_error", None
        started = time.perf_counter()
        try:
            result = await call()
            outcome = "ok"
            return result
        except BaseException as exc:
            outcome = classify(exc)
            meter.error_code = exc.code if isinstance(exc, GatewayError) else None
            raise
        finally:
            meter.upstream_ms = round((time.perf_counter() - started) * 1000)
            self.record(meter, principal, server, name, outcome, result, snapshot_version)


class UsageStage:
    """Records one usage event per resolved tools/call, whatever its outcome (place after resolve)."""

    def __init__(self, metering: Metering) -> None:
        self._metering = metering

    async def __call__(self, ctx: CallContext, call_next: Next) -> JSONObject:
        tool = ctx.tool
        assert tool is not None, "ResolveStage runs first"
        meter = self._metering.begin("tools/call", ctx.arguments)
        if ctx.audit is not None:
            ctx.audit.usage_event = meter.event_id
        outcome, result = "upstream_error", None
        try:
            result = await call_next(ctx.replace(meter=meter))
            outcome = outcome_of(result)
            if result.get("resultType") == "input_required":
                meter.skip = True  # the client's retry carries the call on; its last round is metered
            return result
        except BaseException as exc:
            outcome = classify(exc)
            meter.error_code = exc.code if isinstance(exc, GatewayError) else None
            raise
        finally:
            self._metering.record(
                meter, ctx.principal, tool.server, tool.name, outcome, result, ctx.snapshot_version
            )


class BudgetStage:
    """Prices the call, reserves on its budgets, times the upstream, settles (last check before upstream).

    When AdmitStage already reserved (with Redis it overlaps the reservation with the rate-limit
    round trip), the call's `budget_hold` is used as is.
    """

    def __init__(self, metering: Metering) -> None:
        self._metering = metering

    async def __call__(self, ctx: CallContext, call_next: Next) -> JSONObject:
        tool = ctx.tool
        assert tool is not None, "ResolveStage runs first"
        metering = self._metering
        meter: UsageMeter = ctx.meter or metering.begin("tools/call", ctx.arguments)
        hold: Hold = ctx.budget_hold if ctx.budget_hold is not None else await metering.reserve(ctx)
        meter.flags.extend(hold.flags)
        started = time.perf_counter()
        result: JSONObject | None = None
        cost = 0
        try:
            result = await call_next(ctx)
            return result
        finally:
            meter.upstream_ms = round((time.perf_counter() - started) * 1000)
            if result is not None and result.get("resultType") != "input_required":
                meter.tokens_in, meter.tokens_out = tokens_of(result)
                meter.response_bytes = json_size(result)
                if outcome_of(result) in BILLABLE:
                    facts = UsageFacts(
                        upstream_ms=meter.upstream_ms,
                        request_bytes=meter.request_bytes,
                        response_bytes=meter.response_bytes,
                        tokens=(meter.tokens_in or 0) + (meter.tokens_out or 0),
                    )
                    cost, priced_in = metering.prices.price(tool.server, tool.name, facts)
                    meter.cost_micro, meter.currency = cost, priced_in
            if hold.accounts:
                await metering.settle(hold, cost, meter.currency)
