"""The admit stage: kill switches, the loop breaker, rate limits and concurrency limits.

It runs after validation and guardrails (DESIGN.md, "The life of one tools/call") so a call
that would be refused anyway costs no quota. The decision is made from in-memory state —
rules and kill switches are reloaded by a poll of one version row, never read per call — and
the counters (tollhouse.policies.quotas), which live in Redis when it is configured.

A refusal is a JSON-RPC error whose `data` (retry_after_seconds, violated_policies) and
headers (429, Retry-After, RateLimit-Policy, RateLimit) come from the same limiter answer; an
admitted call carries RateLimit-Policy and RateLimit for the rules that counted it. Refusals,
and decisions taken while Redis was unreachable, are kept in a bounded log for the admin API.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import anyio
import anyio.abc
from limits import RateLimitItemPerSecond

from tollhouse.gateway.errors import ConcurrencyLimited, KillSwitchEngaged, LoopBlocked, RateLimited
from tollhouse.gateway.pipeline import CallContext, Next
from tollhouse.gateway.settings import QuotaSettings
from tollhouse.policies.budgets import Hold
from tollhouse.policies.quotas import (
    Caller,
    Counters,
    Quotas,
    Rule,
    Slot,
    Verdict,
    arguments_digest,
    policy_field,
    ratelimit_field,
)
from tollhouse.records import RecentRecords
from tollhouse.registry.limits import KillSwitch, LimitSpec, LimitsState, SqlLimitStore
from tollhouse.registry.models import JSONObject

__all__ = ["AdmissionLog", "AdmissionService", "AdmitStage", "BudgetReserver"]

logger = logging.getLogger("tollhouse.admission")
ClientIdOf = Callable[[str], Awaitable[str | None]]


class AdmissionLog:
    """Recent refusals (bounded), with counts by kind; what `GET /limits/recent` shows."""

    def __init__(self, capacity: int = 1000) -> None:
        self._records: RecentRecords[dict[str, Any]] = RecentRecords(capacity)
        self.counts = self._records.counts

    def record(self, kind: str, caller: Caller, *, policies: Sequence[str] = (), reason: str = "") -> None:
        """Keep one refusal: who, what, which limits, why (never the arguments)."""
        self._records.add(
            {
                "at": time.time(),
                "kind": kind,
                "subject": caller.subject,
                "client_id": caller.client,
                "tool": caller.tool,
                "violated_policies": list(policies),
                "reason": reason,
            },
            kind,
        )

    def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest refusals, newest first."""
        return self._records.recent(limit)


class AdmissionService:
    """Rules, kill switches and counters of one gateway process; kept current by `run`."""

    def __init__(
        self,
        settings: QuotaSettings,
        *,
        redis_url: str | None = None,
        store: SqlLimitStore | None = None,
        client_id_of: ClientIdOf | None = None,
    ) -> None:
        self.settings = settings
        self.counters = Counters(
            redis_url,
            prefix=settings.redis_prefix,
            timeout_seconds=settings.redis_timeout_seconds,
            retry_seconds=settings.redis_retry_seconds,
            lease_seconds=settings.concurrency_lease_seconds,
        )
        self.quotas = Quotas(self.counters)
        self.log = AdmissionLog()
        self.store = store
        self.version = -1
        self.specs: tuple[LimitSpec, ...] = ()
        self.kills: tuple[KillSwitch, ...] = ()
        self._killed: frozenset[tuple[str, str]] = frozenset()
        self._client_id_of = client_id_of
        # client id -> the name a rule or kill switch used for it (rules may name clients either way).
        self._names: dict[str, str] = {}
        self._unresolved: frozenset[str] = frozenset()
        self._loop_item = (
            RateLimitItemPerSecond(settings.loop_threshold, settings.loop_window_seconds, namespace="loop")
            if settings.loop_threshold > 0
            else None
        )

    def caller(self, ctx: CallContext) -> Caller:
        """The rule-matching view of a call."""
        tool = ctx.tool
        assert tool is not None, "ResolveStage runs first"
        principal = ctx.principal
        client = principal.client_id
        return Caller(
            subject=principal.subject,
            client=client,
            teams=principal.teams,
            server=tool.server,
            tool=tool.exposed,
            client_name=self._names.get(client) if client is not None else None,
        )

    def killed(self, caller: Caller) -> tuple[str, str] | None:
        """The kill switch that stops this call, if any."""
        if not self._killed:
            return None
        for kind, value in (
            ("server", caller.server),
            ("subject", caller.subject),
            ("client", caller.client),
            ("client", caller.client_name),
        ):
            if value is not None and (kind, value) in self._killed:
                return kind, value
        return None

    def apply(self, state: LimitsState) -> None:
        """Swap in a consistent read of the stored rules and kill switches."""
        self.quotas.set_rules(state.limits)
        self.specs, self.kills, self.version = state.limits, state.kills, state.version
        self._killed = frozenset((k.kind, k.value) for k in state.kills)
        names = {v for s in state.limits for k, v in s.match.items() if k == "client"}
        names |= {k.value for k in state.kills if k.kind == "client"}
        self._names = {i: n for i, n in self._names.items() if n in names}
        self._unresolved = frozenset(names - set(self._names.values()))

    async def reload(self) -> None:
        """Read the store now (after a write through this replica, or when the version moved)."""
        if self.store is None:
            return
        self.apply(await self.store.load())
        await self._resolve_names()

    async def _resolve_names(self) -> None:
        if self._client_id_of is None or not self._unresolved:
            return
        found = {}
        for name in self._unresolved:
            client_id = await self._client_id_of(name)
            if client_id is not None and client_id != name:
                found[client_id] = name
        self._names = {**self._names, **found}
        self._unresolved = frozenset(self._unresolved - set(found.values()))

    async def refresh_if_changed(self) -> None:
        """One version read; a full reload only when another replica changed something."""
        if self.store is None:
            return
        if await self.store.version() != self.version:
            await self.reload()
        else:
            await self._resolve_names()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Load, then poll for changes every `poll_seconds` (kill switches reach every replica in time)."""
        last_error = -math.inf
        try:
            try:
                await self.reload()
            except Exception:  # a database hiccup at start: the poll below retries
                logger.exception("loading limits failed")
            task_status.started()
            while True:
                await anyio.sleep(self.settings.poll_seconds)
                try:
                    await self.refresh_if_changed()
                except Exception:
                    if time.monotonic() - last_error > 60:
                        last_error = time.monotonic()
                        logger.exception("refreshing limits failed")
        finally:
            with anyio.CancelScope(shield=True):
                await self.counters.aclose()

    async def hit(self, ctx: CallContext, caller: Caller, rules: Sequence[Rule]) -> list[Verdict]:
        """Count the call: the loop breaker and the rate limits (one Redis round trip for fixed windows).

        Raises:
            LoopBlocked: the (K+1)th identical call within the loop breaker's window.
        """
        loop = None
        if self._loop_item is not None:
            bucket = f"{ctx.principal.key}|{caller.tool}|{arguments_digest(ctx.arguments)}"
            loop = (self._loop_item, bucket)
        looped, verdicts = await self.quotas.hit(rules, caller, loop)
        if looped is not None and not looped[0]:
            self.log.record(
                "loop_blocked", caller, policies=["loop-breaker"], reason="repeated identical call"
            )
            logger.warning(
                "loop breaker: %s called %s repeatedly with the same arguments", caller.subject, caller.tool
            )
            raise LoopBlocked(
                caller.tool,
                retry_after=max(1, math.ceil(looped[1])),
                threshold=self.settings.loop_threshold,
                window_seconds=self.settings.loop_window_seconds,
            )
        return verdicts


class BudgetReserver(Protocol):
    """The budget side of admission (tollhouse.gateway.metering.Metering)."""

    @property
    def concurrent(self) -> bool:
        """True when reserving is a network round trip worth overlapping with the rate limits."""
        ...

    async def reserve(self, ctx: CallContext) -> Hold:
        """Reserve the call's estimate (raises BudgetExhausted or MeteringUnavailable)."""
        ...

    async def release(self, hold: Hold) -> None:
        """Drop a reservation the call will not use."""
        ...


class AdmitStage:
    """The pipeline's admit step.

    With Redis, the loop breaker and the fixed-window rate limits are one script call, and
    (given `budgets` on a remote ledger) the budget reservation overlaps it (one gather) instead
    of adding a round trip. A call one of them refuses may still have taken a unit of another,
    as a refused call does with a later limit; a reservation taken for a refused call is
    released at once. BudgetStage uses the reservation carried in `ctx.budget_hold`.
    """

    def __init__(self, service: AdmissionService, *, budgets: BudgetReserver | None = None) -> None:
        self._service = service
        self._budgets = budgets

    async def __call__(self, ctx: CallContext, call_next: Next) -> JSONObject:
        service = self._service
        caller = service.caller(ctx)
        kill = service.killed(caller)
        if kill is not None:
            service.log.record("killed", caller, reason=f"{kill[0]} kill switch")
            raise KillSwitchEngaged(*kill)
        rules = service.quotas.applicable(caller)
        budgets = self._budgets if self._budgets is not None and self._budgets.concurrent else None
        hold: Hold | None = None
        slots: list[Slot] = []
        try:
            if budgets is not None:
                verdicts, hold = await self._together(ctx, caller, rules, budgets)
            else:
                verdicts = await service.hit(ctx, caller, rules)
                if verdicts:
                    _refuse_if_over(service, caller, verdicts)
            for rule in rules:
                if rule.concurrency is not None:
                    slots.append(await _acquire(service, rule, caller))
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._give_back(slots, hold)
            raise
        try:
            if verdicts:
                ctx.response_headers.extend(_fields(verdicts))
            return await call_next(ctx if hold is None else ctx.replace(budget_hold=hold))
        finally:
            if slots:
                with anyio.CancelScope(shield=True):
                    await self._give_back(slots, None)

    async def _together(
        self, ctx: CallContext, caller: Caller, rules: Sequence[Rule], budgets: BudgetReserver
    ) -> tuple[list[Verdict], Hold | None]:
        service = self._service
        counted, reserved = await asyncio.gather(
            service.hit(ctx, caller, rules), budgets.reserve(ctx), return_exceptions=True
        )
        hold = reserved if isinstance(reserved, Hold) else None
        try:
            # The order of a sequential admission: the loop breaker, the rate limits, the budget.
            if isinstance(counted, BaseException):
                raise counted
            if counted:
                _refuse_if_over(service, caller, counted)
            if isinstance(reserved, BaseException):
                raise reserved
        except BaseException:
            if hold is not None:
                with anyio.CancelScope(shield=True):
                    await budgets.release(hold)
            raise
        return counted, hold

    async def _give_back(self, slots: Sequence[Slot], hold: Hold | None) -> None:
        for slot in slots:
            await self._service.counters.release(slot)
        if hold is not None and self._budgets is not None:
            await self._budgets.release(hold)


def _fields(verdicts: Sequence[Verdict]) -> tuple[tuple[bytes, bytes], ...]:
    return ((b"ratelimit-policy", policy_field(verdicts)), (b"ratelimit", ratelimit_field(verdicts)))


def _refuse_if_over(service: AdmissionService, caller: Caller, verdicts: Sequence[Verdict]) -> None:
    last = verdicts[-1]
    if any(v.fallback for v in verdicts):
        service.log.counts["fallback_decisions"] += 1
    if last.allowed:
        return
    rule_id = last.rule.id
    if last.unavailable:
        service.log.record("rate_unavailable", caller, policies=[rule_id], reason="storage_unavailable")
        raise RateLimited(
            f"limit {rule_id} unavailable: rate-limit storage unreachable",
            retry_after=last.retry_after,
            violated=[rule_id],
            reason="storage_unavailable",
        )
    service.log.record("rate_limited", caller, policies=[rule_id], reason="quota_exceeded")
    raise RateLimited(
        f"Rate limit exceeded: {rule_id}",
        retry_after=last.retry_after,
        violated=[rule_id],
        headers=_fields(verdicts),
    )


async def _acquire(service: AdmissionService, rule: Rule, caller: Caller) -> Slot:
    slot = await service.counters.acquire(rule, rule.bucket(caller))
    if isinstance(slot, Slot):
        return slot
    if slot == "unavailable":
        service.log.record(
            "concurrency_unavailable", caller, policies=[rule.id], reason="storage_unavailable"
        )
        raise ConcurrencyLimited(
            f"limit {rule.id} unavailable: rate-limit storage unreachable",
            violated=[rule.id],
            reason="storage_unavailable",
        )
    service.log.record("concurrency_limited", caller, policies=[rule.id], reason="concurrency_exceeded")
    raise ConcurrencyLimited(f"Concurrency limit reached: {rule.id}", violated=[rule.id])
