"""Parking: held upstream calls, for 2026-07-28 clients of session-era upstreams.

A session-era upstream asks mid-call (elicitation/create, sampling/createMessage, roots/list on
the call's stream). A 2026-07-28 client has no back-channel, so the gateway keeps the upstream
call running, answers the client `input_required` with sealed state naming the held call,
and resumes it when the client retries with `inputResponses` (PROTOCOLS.md §1.10 relay (c)).

A held call lives in this process: a retry that reaches another replica gets a clear error
(docs/compatibility.md). Calls nobody resumes are cancelled after `ttl_seconds`.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskGroup

from tollhouse.gateway.errors import GatewayError, InvalidArguments, UpstreamRpcError
from tollhouse.gateway.relay import Ask
from tollhouse.gateway.upstream import NotificationCallback, ProgressCallback
from tollhouse.registry.models import JSONObject

__all__ = ["INPUT_KEY", "HeldCallGone", "Parking", "Step"]

INPUT_KEY = "tollhouse-input"
# call(ask, on_progress, notify): the callbacks reach whichever client request waits on it now
Call = Callable[[Ask, ProgressCallback, NotificationCallback], Awaitable[JSONObject]]


class HeldCallGone(GatewayError):
    """The held call expired, finished, or lives on another replica."""

    code = -32602
    default_message = "The pending call is no longer held: call the tool again"


@dataclass
class Step:
    """Where a held call stands: finished with `result`, or waiting for an answer to `ask`."""

    call_id: str
    result: JSONObject | None = None
    ask: tuple[str, JSONObject] | None = None


@dataclass
class _Held:
    id: str
    principal: str
    tool: str
    expires: float
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    wake: anyio.Event = field(default_factory=anyio.Event)
    question: tuple[str, JSONObject] | None = None
    answered: anyio.Event = field(default_factory=anyio.Event)
    answer: Any = None
    result: JSONObject | None = None
    error: BaseException | None = None
    finished: bool = False
    # the waiting client request's relays; None between rounds (its response is complete)
    on_progress: ProgressCallback | None = None
    notify: NotificationCallback | None = None


class Parking:
    """Holds upstream calls across a client's MRTR rounds."""

    def __init__(self, *, ttl_seconds: float = 300.0) -> None:
        self._ttl = ttl_seconds
        self._held: dict[str, _Held] = {}
        self._tg: TaskGroup | None = None

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Own the held calls; cancel expired ones until cancelled."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            try:
                while True:
                    await anyio.sleep(min(self._ttl / 4, 15.0))
                    now = anyio.current_time()
                    for held in list(self._held.values()):
                        if held.expires < now:
                            held.scope.cancel()
                            self._held.pop(held.id, None)
            finally:
                tg.cancel_scope.cancel()

    async def start(
        self,
        call: Call,
        *,
        principal: str,
        tool: str,
        on_progress: ProgressCallback | None = None,
        notify: NotificationCallback | None = None,
    ) -> Step:
        """Run `call` held; returns when it finishes or first asks the client something."""
        if self._tg is None:
            raise RuntimeError("Parking.run() is not running")
        held = _Held(secrets.token_urlsafe(16), principal, tool, anyio.current_time() + self._ttl)
        held.on_progress, held.notify = on_progress, notify
        self._held[held.id] = held
        self._tg.start_soon(self._run_call, held, call)
        return await self._next(held)

    async def resume(
        self,
        call_id: str,
        answers: JSONObject,
        *,
        principal: str,
        tool: str,
        on_progress: ProgressCallback | None = None,
        notify: NotificationCallback | None = None,
    ) -> Step:
        """Give the held call the client's answer and wait for its next step.

        Raises:
            HeldCallGone: no such call here (expired, finished or another replica).
            InvalidArguments: the answer is missing, or the call belongs to someone else.
        """
        held = self._held.get(call_id)
        if held is None or held.question is None:
            raise HeldCallGone
        if held.principal != principal or held.tool != tool:
            raise InvalidArguments("Invalid requestState")
        if INPUT_KEY not in answers:
            raise InvalidArguments(f"inputResponses must answer '{INPUT_KEY}'")
        held.answer = answers[INPUT_KEY]
        held.on_progress, held.notify = on_progress, notify
        held.question = None
        held.expires = anyio.current_time() + self._ttl
        held.answered.set()
        return await self._next(held)

    async def _next(self, held: _Held) -> Step:
        try:
            await held.wake.wait()
        finally:
            held.on_progress = held.notify = None  # this request's response ends here
        held.wake = anyio.Event()
        if held.finished:
            self._held.pop(held.id, None)
            if held.error is not None:
                raise held.error
            assert held.result is not None
            return Step(held.id, result=held.result)
        assert held.question is not None
        return Step(held.id, ask=held.question)

    async def _run_call(self, held: _Held, call: Call) -> None:
        async def ask(method: str, params: JSONObject) -> JSONObject:
            held.question = (method, params)
            held.answered = anyio.Event()
            held.wake.set()
            await held.answered.wait()
            answer = held.answer
            if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
                error = answer["error"]
                code = error.get("code")
                code = code if isinstance(code, int) else -32603
                raise UpstreamRpcError(code, str(error.get("message")), error.get("data"))
            return answer if isinstance(answer, dict) else {}

        async def progress(value: float, total: float | None, message: str | None) -> None:
            if held.on_progress is not None:
                await held.on_progress(value, total, message)

        async def notify(method: str, params: JSONObject) -> None:
            if held.notify is not None:
                await held.notify(method, params)

        with held.scope:
            try:
                held.result = await call(ask, progress, notify)
            except Exception as exc:  # GatewayErrors reach the client as such; others as -32603
                held.error = exc
            finally:
                if held.result is None and held.error is None:
                    held.error = HeldCallGone()  # expired: cancelled by the reaper
                held.finished = True
                held.wake.set()
