"""The call pipeline: a chain of stages over a CallContext, composed once per app.

A stage is `async def __call__(ctx, call_next) -> result` (the shape of the SDK's
ServerMiddleware). Stages read ctx or pass a replaced copy on; they never mutate it.
Order (DESIGN.md, "The life of one tools/call"): resolve -> [authorize -> validate -> guard ->
admit, added by later issues] -> upstream. Audit and metering wrap the chain.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tollhouse.auth.principal import Principal
from tollhouse.gateway.errors import (
    InsufficientScope,
    UnknownTool,
    UpstreamProtocolError,
    UpstreamUnavailable,
)
from tollhouse.gateway.inflight import InFlight, InFlightStage
from tollhouse.gateway.parking import INPUT_KEY, Parking, Step
from tollhouse.gateway.pinning import PinStage
from tollhouse.gateway.pool import UpstreamPool
from tollhouse.gateway.relay import (
    MAX_INPUT_ROUNDS,
    Ask,
    answer_input_requests,
    open_request_state,
    require_capability,
    seal_request_state,
)
from tollhouse.gateway.retries import Retries
from tollhouse.gateway.sealing import Sealer
from tollhouse.gateway.snapshot import ExposedItem
from tollhouse.gateway.upstream import NotificationCallback, ProgressCallback
from tollhouse.registry.models import JSONObject
from tollhouse.tracing import Tracing, error_type_of

__all__ = [
    "CallContext",
    "Pipeline",
    "ResolveStage",
    "Stage",
    "TracedStage",
    "UpstreamStage",
    "build_pipeline",
]

Next = Callable[["CallContext"], Awaitable[JSONObject]]


@dataclass(frozen=True, slots=True)
class CallContext:
    """Everything the stages know about one tools/call."""

    principal: Principal
    name: str
    arguments: JSONObject
    protocol_version: str
    request_id: Any = None
    session_key: str | None = None
    on_progress: ProgressCallback | None = None
    modern: bool = True
    client_capabilities: JSONObject | None = None
    ask: Ask | None = None
    notify: NotificationCallback | None = None
    log_level: str | None = None
    input_responses: JSONObject | None = None
    task: JSONObject | None = None
    request_state: Any = None
    tool: ExposedItem | None = None
    snapshot_version: int = 0
    source_ip: str | None = None
    # Set by AuthorizeStage: the decision, and the guardrails its permitting policies chose.
    decision: Any = None
    guardrails: Any = None
    # Response headers stages may add (rate-limit state); the stream's own list.
    response_headers: list[tuple[bytes, bytes]] = dataclasses.field(default_factory=list)
    # Filled in by the metering stage as the call goes (cost, upstream time, tokens, bytes).
    meter: Any = None
    # The budget reservation, when AdmitStage took it alongside the rate limits (one round trip).
    budget_hold: Any = None
    # What the stages learn for the call's audit record (audit/records.py AuditNotes), shared.
    audit: Any = None

    def replace(self, **changes: Any) -> CallContext:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


class Stage(Protocol):
    """One step of the pipeline."""

    async def __call__(self, ctx: CallContext, call_next: Next) -> JSONObject:
        """Run this step and (usually) the rest of the chain."""
        ...


class ResolveStage:
    """Exposed name -> (upstream, tool) from the current snapshot.

    A tool pinning holds back resolves too (its `pin` says why): PinStage refuses it after
    authorization has had its say, so a denied tool looks unknown whatever its pin state.
    """

    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool

    async def __call__(self, ctx: CallContext, call_next: Next) -> JSONObject:
        snapshot = self._pool.snapshot
        tool = snapshot.tool(ctx.name) or snapshot.held_tool(ctx.name)
        if tool is None:
            if self._pool.known_but_down(ctx.name):
                # A registered upstream that is down: say so rather than "unknown tool".
                raise UpstreamUnavailable(ctx.name.partition("__")[0])
            raise UnknownTool(ctx.name)
        if ctx.audit is not None:
            ctx.audit.item, ctx.audit.snapshot = tool, snapshot.version
        return await call_next(ctx.replace(tool=tool, snapshot_version=snapshot.version))


class ScopeStage:
    """Step-up: a tool an admin marked as needing scopes is called only with a token holding them."""

    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool

    async def __call__(self, ctx: CallContext, call_next: Next) -> JSONObject:
        tool = ctx.tool
        assert tool is not None, "ResolveStage runs first"
        upstream = self._pool.upstream(tool.server)
        if upstream is not None and upstream.scopes:
            held = ctx.principal.scopes
            missing = tuple(s for s in upstream.scopes_for(tool.name) if s not in held)
            if missing:
                raise InsufficientScope(missing)
        return await call_next(ctx)


class UpstreamStage:
    """The terminal stage: call the tool on its upstream, relaying input requests (relay.py).

    With `retries`, a failed exchange that is safe to repeat (retries.py) is sent again. The
    breaker hears one outcome per exchange: its final failure, or the success of a retry.
    """

    def __init__(
        self, pool: UpstreamPool, sealer: Sealer, parking: Parking, retries: Retries | None = None
    ) -> None:
        self._pool = pool
        self._sealer = sealer
        self._parking = parking
        self._retries = retries

    async def __call__(self, ctx: CallContext, call_next: Next) -> JSONObject:
        tool = ctx.tool
        assert tool is not None, "ResolveStage runs first"
        params: JSONObject = {"name": tool.name, "arguments": ctx.arguments}
        if ctx.task is not None:
            params["task"] = ctx.task  # 2025-11-25 task-augmented call: the upstream runs it as a task
        if ctx.request_state is not None or ctx.input_responses is not None:
            # A 2026-07-28 retry: only our own sealed state, for this principal and tool, goes on.
            if ctx.request_state is not None:
                upstream_state, held = open_request_state(
                    self._sealer, ctx.request_state, principal=ctx.principal.key, tool=tool.exposed
                )
                if held is not None:
                    step = await self._parking.resume(
                        held,
                        ctx.input_responses or {},
                        principal=ctx.principal.key,
                        tool=tool.exposed,
                        on_progress=ctx.on_progress,
                        notify=ctx.notify,
                    )
                    return self._step_result(ctx, tool, step)
                if upstream_state is not None:
                    params["requestState"] = upstream_state
            if ctx.input_responses is not None:
                params["inputResponses"] = ctx.input_responses
        elif ctx.modern and self._session_era(tool.server):
            # A session-era upstream may ask mid-call; a 2026-07-28 client can only be asked by
            # answering input_required, so the call is held between the client's rounds.
            async def held_call(
                ask: Ask, progress: ProgressCallback, notify: NotificationCallback
            ) -> JSONObject:
                asking = ctx.replace(
                    ask=_requiring(ctx.client_capabilities, ask), on_progress=progress, notify=notify
                )
                return await self._call(asking, tool, params)

            step = await self._parking.start(
                held_call,
                principal=ctx.principal.key,
                tool=tool.exposed,
                on_progress=ctx.on_progress,
                notify=ctx.notify,
            )
            return self._step_result(ctx, tool, step)
        for round_number in range(1, MAX_INPUT_ROUNDS + 1):
            result = await self._call(ctx, tool, params)
            if result.get("resultType") != "input_required":
                return result
            if ctx.modern:
                if "requestState" in result or "inputRequests" in result:
                    sealed = seal_request_state(
                        self._sealer,
                        principal=ctx.principal.key,
                        tool=tool.exposed,
                        upstream_state=result.get("requestState"),
                    )
                    result = {**result, "requestState": sealed}
                return result
            if ctx.ask is None or round_number == MAX_INPUT_ROUNDS:
                break  # nobody to ask, or an upstream that never stops asking
            answers = await answer_input_requests(result, ctx.ask, tool.server)
            params = {"name": tool.name, "arguments": ctx.arguments, "inputResponses": answers}
            if "requestState" in result:
                params["requestState"] = result["requestState"]
        raise UpstreamProtocolError(tool.server)

    def _session_era(self, server: str) -> bool:
        description = self._pool.description(server)
        return description is not None and description.era == "legacy"

    def _step_result(self, ctx: CallContext, tool: ExposedItem, step: Step) -> JSONObject:
        if step.result is not None:
            return step.result
        assert step.ask is not None
        method, params = step.ask
        sealed = seal_request_state(
            self._sealer, principal=ctx.principal.key, tool=tool.exposed, held=step.call_id
        )
        return {
            "resultType": "input_required",
            "inputRequests": {INPUT_KEY: {"method": method, "params": params}},
            "requestState": sealed,
        }

    async def _call(self, ctx: CallContext, tool: ExposedItem, params: JSONObject) -> JSONObject:
        retries = self._retries
        attempt, budgeted = 0, False
        try:
            while True:
                connector = self._pool.connector(tool.server)  # down (or went down): nothing is sent
                attempt += 1
                try:
                    result = await connector.request(
                        "tools/call",
                        params,
                        session_key=ctx.session_key,
                        on_progress=ctx.on_progress,
                        on_request=ctx.ask,
                        client_capabilities=ctx.client_capabilities,
                        on_notification=ctx.notify,
                        log_level=ctx.log_level,
                        principal_key=ctx.principal.key,
                    )
                except (UpstreamUnavailable, UpstreamProtocolError) as exc:
                    if (
                        retries is not None
                        and retries.allowed(exc, self._pool.upstream(tool.server), tool, attempt)
                        and (budgeted or retries.take(tool.server))
                    ):
                        budgeted = True
                        await retries.pause(tool.server, tool.name, attempt, exc)
                        continue
                    await self._pool.report_failure(tool.server, exc)
                    raise
                self._pool.report_success(tool.server)
                return result
        finally:
            if budgeted:
                assert retries is not None
                retries.give_back(tool.server)
            if ctx.meter is not None and attempt:
                # 1 + the retries of every exchange of this call (input rounds are not retries).
                ctx.meter.attempts = (ctx.meter.attempts or 1) + attempt - 1


class Pipeline:
    """A fixed chain of stages, composed once."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        self._stages = tuple(stages)

    async def __call__(self, ctx: CallContext) -> JSONObject:
        """Run ctx through every stage."""
        return await self._run(0, ctx)

    async def _run(self, index: int, ctx: CallContext) -> JSONObject:
        stage = self._stages[index]
        if index + 1 == len(self._stages):
            return await stage(ctx, _end)
        return await stage(ctx, lambda c: self._run(index + 1, c))


async def _end(ctx: CallContext) -> JSONObject:
    raise RuntimeError("the last stage must not call call_next")


class TracedStage:
    """A stage with an INTERNAL span covering its own work (not the stages after it).

    The span is a sibling of the upstream's CLIENT span under the request's SERVER span: it
    ends when the stage hands over to the next one, or fails with the stage's exception.
    """

    def __init__(self, stage: Stage, name: str, tracing: Tracing) -> None:
        self._stage = stage
        self._name = name
        self._tracing = tracing

    async def __call__(self, ctx: CallContext, call_next: Next) -> JSONObject:
        span = self._tracing.tracer.start_span(self._name)
        ended = False

        async def handed_over(next_ctx: CallContext) -> JSONObject:
            nonlocal ended
            if not ended:
                ended = True
                span.end()
            return await call_next(next_ctx)

        try:
            return await self._stage(ctx, handed_over)
        except BaseException as exc:
            if not ended:
                self._tracing.fail(span, error_type_of(exc))
            raise
        finally:
            if not ended:
                span.end()


def build_pipeline(
    pool: UpstreamPool,
    sealer: Sealer,
    parking: Parking,
    *,
    authorize: Stage | None = None,
    checks: Sequence[Stage] = (),
    outer: Sequence[Stage] = (),
    tracing: Tracing | None = None,
    inflight: InFlight | None = None,
) -> Pipeline:
    """The chain for tools/call: resolve, authorize, pin, scope, `checks` (validate, guard), upstream.

    Authorization comes before the pin check so that a tool the caller may not call answers
    like an unknown tool whatever its pin state (DESIGN.md, Contract details). With `inflight`,
    the in-flight caps come last before the upstream, and safe retries (its settings) are on.
    """

    # `outer` (metering) runs right after resolve, so it sees every outcome of a resolved call.
    def traced(stage: Stage) -> Stage:
        if tracing is None or not tracing.recording:
            return stage
        name = type(stage).__name__.removesuffix("Stage").lower()
        return TracedStage(stage, f"tollhouse.{name}", tracing)

    stages: list[Stage] = [ResolveStage(pool), *outer]
    if authorize is not None:
        stages.append(traced(authorize))
    stages += [PinStage(), ScopeStage(pool), *map(traced, checks)]
    if inflight is None:
        stages.append(UpstreamStage(pool, sealer, parking))
    else:
        retries = Retries(inflight.settings, inflight.count)
        stages += [InFlightStage(inflight), UpstreamStage(pool, sealer, parking, retries)]
    return Pipeline(stages)


def _requiring(capabilities: JSONObject | None, ask: Ask) -> Ask:
    """`ask`, refusing what the client did not declare it can answer."""

    async def checked(method: str, params: JSONObject) -> JSONObject:
        require_capability(method, capabilities)
        return await ask(method, params)

    return checked
