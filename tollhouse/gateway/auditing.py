"""Auditor: turns requests, refused authentications and admin actions into audit records.

The MCP endpoint calls `before` (a tools/call is refused up front when the trail fails closed
and cannot commit) and `after` (once the handler has an answer, before it is sent). A
tools/call's record is committed before its answer leaves; other methods' records are queued
and committed with the next batch. Refused authentications are rate-limited per (reason,
source address): the next record says how many were left out, so a flood of bad tokens cannot
flood the trail. Admin actions are recorded by the admin API (state changes, refusals, exports).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import anyio
from sqlalchemy.engine import Engine

from tollhouse.audit.records import AuditNotes, args_digest, new_record, who_of
from tollhouse.audit.writer import AuditTrail
from tollhouse.audit.writer import AuditUnavailable as NotCommitted
from tollhouse.auth.failures import AuthFailure
from tollhouse.auth.principal import Principal
from tollhouse.gateway.errors import AuditUnavailable, GatewayError
from tollhouse.gateway.front_door import FrontDoor
from tollhouse.gateway.metering import classify, outcome_of
from tollhouse.gateway.settings import AuditSettings, Settings
from tollhouse.registry.audit_store import SqlAuditStore
from tollhouse.registry.models import JSONObject
from tollhouse.registry.pins import pin_sha256

__all__ = ["DURABLE_METHODS", "Auditor", "build_auditor", "outcome_for"]

logger = logging.getLogger("tollhouse.audit")

# Methods whose answer waits for their record (A3): the ones that act on an upstream's behalf.
# A tools/call's record, and an A2A message's (the A2A method names cannot clash with MCP's),
# is committed before its answer leaves.
DURABLE_METHODS = frozenset({"tools/call", "SendMessage"})
# Named targets, for the record's `what.target` (the tool of a tools/call goes in `what.tool`).
_TARGET_PARAM = {"prompts/get": "name", "resources/read": "uri", "resources/subscribe": "uri"}

TraceIds = Callable[[], tuple[str | None, str | None]]


def outcome_for(result: JSONObject | None, failure: BaseException | None) -> tuple[str, int | None]:
    """(outcome, JSON-RPC error code) of an answered request."""
    if failure is None:
        return (outcome_of(result) if result is not None else "ok"), None
    code = failure.code if isinstance(failure, GatewayError) else None
    if isinstance(failure, AuditUnavailable):
        return "gateway_error", code
    if isinstance(failure, GatewayError | anyio.get_cancelled_exc_class()):
        return classify(failure), code
    return "gateway_error", -32603


class Auditor:
    """Builds records and hands them to the trail."""

    def __init__(
        self,
        trail: AuditTrail,
        settings: AuditSettings,
        *,
        trace_ids: TraceIds | None = None,
        snapshot_version: Callable[[], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._snapshot_version = snapshot_version
        self.trail = trail
        self.settings = settings
        self._trace_ids = trace_ids
        self._clock = clock
        self._pins: dict[str, str] = {}
        self._pins_version: int | None = None
        self._auth_last: dict[tuple[str, str | None], float] = {}
        self._auth_skipped: dict[tuple[str, str | None], int] = {}
        self.auth_suppressed = 0

    # -- MCP (and, later, A2A) requests --------------------------------------------------------

    def before(self, method: str, notes: AuditNotes) -> None:
        """Note the snapshot the request starts under; refuse a durable call the trail cannot record.

        Raises:
            AuditUnavailable: the trail fails closed and its store is failing.
        """
        if self._snapshot_version is not None:
            notes.snapshot = self._snapshot_version()  # ResolveStage repeats it for the one it used
        if method in DURABLE_METHODS and self.settings.fail_closed and not self.trail.healthy:
            raise AuditUnavailable()

    def rejected(
        self,
        principal: Principal,
        source_ip: str | None,
        status: int,
        code: int,
        message: str,
        request_id: Any,
    ) -> None:
        """An authenticated request refused before any method ran (malformed, wrong headers, no session)."""
        self.trail.submit(
            new_record(
                "mcp",
                "mcp.rejected",
                who=who_of(principal, source_ip),
                outcome={"result": "invalid", "code": code, "reason": message[:200], "http_status": status},
                correlation={"jsonrpc_id": request_id, "trace_id": self._trace()},
            )
        )

    async def after(self, method: str, body: dict[str, Any], failure: BaseException | None) -> None:
        """Record one answered request (`request_record`); a durable method's is committed first.

        Raises:
            AuditUnavailable: the record of a durable method was not committed and the trail
                fails closed (the endpoint answers with this error instead of the result).
        """
        if (
            method not in DURABLE_METHODS
            or not self.settings.durable
            or isinstance(failure, anyio.get_cancelled_exc_class())
        ):
            self.trail.submit(body)
            return
        try:
            await self.trail.commit(body)
        except NotCommitted:
            if self.settings.fail_closed:
                raise AuditUnavailable() from None
            # Fail open: answered anyway; the record stays queued and is retried.

    def request_record(
        self,
        method: str,
        params: JSONObject,
        *,
        principal: Principal,
        source_ip: str | None,
        notes: AuditNotes,
        request_id: Any,
        session_id: str | None,
        result: JSONObject | None,
        failure: BaseException | None,
        kind: str = "mcp",
    ) -> dict[str, Any]:
        """The record of one request (not queued)."""
        outcome, code = outcome_for(result, failure)
        what: dict[str, Any] = {"method": method}
        item = notes.item
        if method == "tools/call":
            arguments = params.get("arguments") if notes.via is None else notes.inner_arguments
            if notes.via is not None:
                what["via"] = notes.via
            what["args_sha256"] = args_digest(arguments if arguments is not None else {})
            if item is not None:
                what["server"], what["tool"] = item.server, item.name
                what["pin"] = self._pin(item, notes.snapshot)
            else:
                name = params.get("name") if notes.via is None else notes.inner_name
                what["tool"] = name if isinstance(name, str) else None
            if self.settings.record_arguments:
                what["args"] = notes.args if notes.args is not None else arguments
        else:
            field = _TARGET_PARAM.get(method)
            target = params.get(field) if field else None
            what["target"] = target if isinstance(target, str) else None
        trace_id, span_id = self._trace_ids() if self._trace_ids is not None else (None, None)
        reason = _reason(failure)
        return new_record(
            kind,
            method,
            who=who_of(principal, source_ip),
            what=what,
            where={"snapshot": notes.snapshot, "policy_version": notes.policy_version},
            outcome={"result": outcome, "code": code, "reason": reason, "policies": list(notes.policies)},
            correlation={
                "jsonrpc_id": request_id,
                "trace_id": trace_id,
                "span_id": span_id,
                "session_id": session_id,
                "usage_event": notes.usage_event,
                "task_id": notes.task_id,
            },
        )

    def a2a_record(
        self,
        method: str,
        *,
        principal: Principal,
        source_ip: str | None,
        agent: str,
        skill: str | None,
        binding: str,
        version: str,
        outcome: str,
        failure: GatewayError | None,
        a2a_error: str | None,
        notes: AuditNotes,
        request_id: Any,
        task_id: str | None,
        context_id: str | None,
        usage_event: str | None,
    ) -> dict[str, Any]:
        """The record of one A2A request through `/a2a/{agent}` (not queued)."""
        trace_id, span_id = self._trace_ids() if self._trace_ids is not None else (None, None)
        code: Any = failure.code if failure is not None else a2a_error
        return new_record(
            "a2a",
            method,
            who=who_of(principal, source_ip),
            what={
                "method": method,
                "server": agent,
                "tool": f"{agent}__{skill}" if skill else None,
                "binding": binding,
                "a2a_version": version,
            },
            where={"snapshot": notes.snapshot, "policy_version": notes.policy_version},
            outcome={
                "result": outcome,
                "code": code,
                "reason": failure.message[:200] if failure is not None else None,
                "policies": list(notes.policies),
            },
            correlation={
                "jsonrpc_id": request_id,
                "trace_id": trace_id,
                "span_id": span_id,
                "usage_event": usage_event,
                "task_id": task_id,
                "context_id": context_id,
            },
        )

    def session_started(
        self, principal: Principal, source_ip: str | None, session_id: str, protocol_version: str
    ) -> None:
        """A session-era `initialize` that opened a session."""
        self.trail.submit(
            new_record(
                "mcp",
                "initialize",
                who=who_of(principal, source_ip),
                what={"method": "initialize", "protocol_version": protocol_version},
                outcome={"result": "ok"},
                correlation={"session_id": session_id, "trace_id": self._trace()},
            )
        )

    def _pin(self, item: Any, version: int | None) -> str:
        if version != self._pins_version:
            self._pins, self._pins_version = {}, version
        digest = self._pins.get(item.exposed)
        if digest is None:
            digest = self._pins[item.exposed] = pin_sha256(item.upstream_definition)
        return digest

    def _trace(self) -> str | None:
        return self._trace_ids()[0] if self._trace_ids is not None else None

    # -- the front door -----------------------------------------------------------------------

    def auth_failure(self, failure: AuthFailure) -> None:
        """Record a refused authentication, at most one per (reason, source) per interval."""
        key = (failure.reason, failure.source)
        now = self._clock()
        interval = self.settings.auth_failure_interval_seconds
        if now - self._auth_last.get(key, -interval - 1.0) < interval:
            self._auth_skipped[key] = self._auth_skipped.get(key, 0) + 1
            self.auth_suppressed += 1
            return
        if len(self._auth_last) > 10_000:
            self._auth_last.clear()
        self._auth_last[key] = now
        skipped = self._auth_skipped.pop(key, 0)
        self.trail.submit(
            new_record(
                "auth",
                "auth.refused",
                who={"source_ip": failure.source, "token_fingerprint": failure.token_fingerprint},
                what={"target": failure.path},
                outcome={
                    "result": "unauthenticated",
                    "code": failure.status,
                    "reason": failure.reason,
                    "suppressed_before": skipped,
                },
                correlation={"trace_id": self._trace()},
            )
        )

    # -- the admin API ------------------------------------------------------------------------

    def admin_action(
        self,
        method: str,
        path: str,
        status: int,
        *,
        principal: Principal | None,
        subject: str | None,
        source_ip: str | None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Record one admin API request (a change, a refusal or an export)."""
        who = who_of(principal, source_ip)
        if principal is None and subject:
            who["subject"] = subject
        if status < 400:
            result = "ok"
        elif status in (401, 403):
            result = "denied"
        elif status < 500:
            result = "invalid"
        else:
            result = "gateway_error"
        self.trail.submit(
            new_record(
                "admin",
                f"{method} {path}",
                who=who,
                what={"method": method, "target": path, **(details or {})},
                outcome={"result": result, "code": status},
                correlation={"trace_id": self._trace()},
            )
        )

    def system(self, action: str, details: Mapping[str, Any], outcome: str = "ok") -> None:
        """Record something the gateway did on its own (retention, start-up)."""
        self.trail.submit(
            new_record(
                "system",
                action,
                who={"subject": "tollhouse", "kind": "system"},
                what=dict(details),
                outcome={"result": outcome},
            )
        )


def _reason(failure: BaseException | None) -> str | None:
    if failure is None:
        return None
    if isinstance(failure, GatewayError):
        data = failure.data if isinstance(failure.data, dict) else {}
        reason = data.get("reason")
        if isinstance(reason, str):
            return reason
        return type(failure).__name__
    if isinstance(failure, anyio.get_cancelled_exc_class()):
        return "cancelled"
    return "internal_error"


def build_auditor(
    settings: Settings,
    engine: Engine,
    door: FrontDoor,
    *,
    trace_ids: TraceIds | None = None,
    snapshot_version: Callable[[], int] | None = None,
) -> Auditor:
    """The app's trail (this node's chain in the registry database) and its recorder."""
    audit = settings.audit
    trail = AuditTrail(
        SqlAuditStore(engine),
        settings.node_name,
        lambda: door.ring,  # follows `keys rotate`: new checkpoints are signed with the new key
        write_batch=audit.write_batch,
        queue_limit=audit.queue_limit,
        checkpoint_seconds=audit.checkpoint_seconds,
        checkpoint_records=audit.checkpoint_records,
        checkpoint_file=audit.checkpoint_file,
        linger_seconds=audit.commit_linger_ms / 1000,
    )
    auditor = Auditor(trail, audit, trace_ids=trace_ids, snapshot_version=snapshot_version)
    door.failures.subscribe(auditor.auth_failure)
    return auditor
