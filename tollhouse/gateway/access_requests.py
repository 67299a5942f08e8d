"""Access requests: a caller asks for a tool or an agent it may not use; an approver decides.

A request is filed by the caller itself (the `tollhouse__request_access` meta-tool, the console)
and recorded whatever it names: whether a tool the caller cannot see exists is not revealed, so
the request is kept either way and the approver sees whether its target exists. A grant is an
ordinary policy (`access-<request id>`), written in the policy sugar and scoped to the requester
(its user or client) or to its team, and, when time-limited, ending at `until`: after that
instant the engine denies again without anyone removing it. Declines, grants and withdrawals
are kept on the request (who, when, why); admin-API decisions are also in the audit trail.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Literal

from tollhouse.auth.principal import Principal
from tollhouse.gateway.authorization import PolicyService
from tollhouse.gateway.pool import UpstreamPool
from tollhouse.registry.access_store import SqlAccessRequestStore
from tollhouse.registry.models import (
    MAX_EXPOSED_NAME,
    SEPARATOR,
    AccessKind,
    AccessRequest,
    PolicyEntry,
    valid_upstream_name,
)

__all__ = [
    "MAX_DURATION_SECONDS",
    "MAX_PENDING",
    "AccessRequestConflict",
    "AccessRequestError",
    "AccessRequests",
]

MAX_PENDING = 20
MAX_REASON = 2000
MAX_NOTE = 2000
MIN_DURATION_SECONDS = 60
MAX_DURATION_SECONDS = 90 * 86400

Scope = Literal["principal", "team"]


class AccessRequestError(ValueError):
    """A request or decision that cannot be made as asked; the message says why."""


class AccessRequestConflict(AccessRequestError):
    """The request is already decided (or withdrawn)."""


class AccessRequests:
    """Files, lists and decides access requests; a grant is a policy in `policies`."""

    def __init__(
        self,
        store: SqlAccessRequestStore,
        policies: PolicyService,
        pool: UpstreamPool,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._policies = policies
        self._pool = pool
        self._clock = clock

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    async def open(
        self, principal: Principal, target: str, *, reason: str | None, duration_seconds: int | None
    ) -> AccessRequest:
        """File a request by `principal` for `target` (a tool `server__tool` or an agent name).

        An identical pending request of the same principal is returned instead of a second one.

        Raises:
            AccessRequestError: a malformed target, reason or duration, or too many pending requests.
        """
        kind = _kind_of(target)
        if reason is not None and len(reason) > MAX_REASON:
            raise AccessRequestError(f"the reason is at most {MAX_REASON} characters")
        _check_duration(duration_seconds)
        pending = await self._store.list(
            status=("pending",), principal_key=principal.key, limit=MAX_PENDING + 1
        )
        for request in pending:
            if request.target == target:
                return request
        if len(pending) >= MAX_PENDING:
            raise AccessRequestError(
                f"at most {MAX_PENDING} pending requests per caller; wait for a decision"
            )
        request = AccessRequest(
            id="ar_" + secrets.token_hex(8),
            created_at=self._now(),
            principal_key=principal.key,
            subject=principal.subject,
            target=target,
            kind=kind,
            client_id=principal.client_id,
            team=principal.teams[0] if principal.teams else None,
            user=principal.subject if principal.kind == "user" else None,
            reason=reason,
            duration_seconds=duration_seconds,
        )
        return await self._store.add(request)

    async def list(self, *, status: tuple[str, ...] = (), limit: int = 100) -> list[AccessRequest]:
        """Requests, newest first."""
        return await self._store.list(status=status, limit=limit)

    async def get(self, request_id: str) -> AccessRequest | None:
        """One request, or None."""
        return await self._store.get(request_id)

    def exists(self, request: AccessRequest) -> bool:
        """Whether the requested tool or agent is registered now."""
        if request.kind == "agent":
            upstream = self._pool.upstream(request.target)
            return upstream is not None and upstream.is_agent
        snapshot = self._pool.snapshot
        return snapshot.tool(request.target) is not None or snapshot.held_tool(request.target) is not None

    async def grant(
        self,
        request_id: str,
        *,
        by: str,
        duration_seconds: int | None = None,
        scope: Scope = "principal",
        note: str | None = None,
    ) -> AccessRequest:
        """Grant a pending request: a policy for the requester (or its team), until now + duration.

        `duration_seconds` defaults to what was asked for (None: no end).

        Raises:
            LookupError: no such request.
            AccessRequestConflict: it is no longer pending.
            AccessRequestError: its target does not exist, a team grant for a caller without a team,
                or a bad duration or note.
        """
        request = await self._pending(request_id)
        duration = duration_seconds if duration_seconds is not None else request.duration_seconds
        _check_duration(duration)
        _check_note(note)
        rule: dict[str, object] = _principal_rule(request, scope)
        if not self.exists(request):
            raise AccessRequestError(
                f"{request.target!r} is not a registered {request.kind}; decline instead"
            )
        now = self._now()
        expires = now + timedelta(seconds=duration) if duration is not None else None
        rule["agents" if request.kind == "agent" else "tools"] = [request.target]
        if expires is not None:
            rule["until"] = int(expires.timestamp())
        policy_id = f"access-{request.id}"
        who = request.team if scope == "team" else request.subject
        description = f"access request {request.id}: {request.target} for {who}, granted by {by}"
        decided = replace(
            request,
            status="granted",
            decided_at=now,
            decided_by=by,
            note=note,
            policy_id=policy_id,
            expires_at=expires,
        )
        # The policy first: a grant on record always has its policy (a failed write leaves it pending).
        await self._policies.put(
            [PolicyEntry(id=policy_id, cedar="", sugar={"allow": rule}, description=description)], by=by
        )
        stored = await self._store.decide(request.id, decided)
        if stored is None:  # decided elsewhere meanwhile: take the policy back
            await self._policies.delete(policy_id)
            raise AccessRequestConflict(f"access request {request.id} is already decided")
        return stored

    async def decline(self, request_id: str, *, by: str, note: str | None = None) -> AccessRequest:
        """Decline a pending request.

        Raises:
            LookupError: no such request.
            AccessRequestConflict: it is no longer pending.
        """
        _check_note(note)
        request = await self._pending(request_id)
        decided = replace(request, status="declined", decided_at=self._now(), decided_by=by, note=note)
        return await self._decided(request.id, decided)

    async def withdraw(self, request_id: str, principal: Principal) -> AccessRequest:
        """The requester takes back its own pending request.

        Raises:
            LookupError: no such request of this principal.
            AccessRequestConflict: it is no longer pending.
        """
        request = await self._store.get(request_id)
        if request is None or request.principal_key != principal.key:
            raise LookupError(request_id)
        if request.status != "pending":
            raise AccessRequestConflict(f"access request {request_id} is already {request.status}")
        decided = replace(request, status="withdrawn", decided_at=self._now(), decided_by=principal.subject)
        return await self._decided(request.id, decided)

    def expired(self, request: AccessRequest) -> bool:
        """A grant whose time is up."""
        return request.expires_at is not None and request.expires_at <= self._now()

    async def _pending(self, request_id: str) -> AccessRequest:
        request = await self._store.get(request_id)
        if request is None:
            raise LookupError(request_id)
        if request.status != "pending":
            raise AccessRequestConflict(f"access request {request_id} is already {request.status}")
        return request

    async def _decided(self, request_id: str, decided: AccessRequest) -> AccessRequest:
        stored = await self._store.decide(request_id, decided)
        if stored is None:
            raise AccessRequestConflict(f"access request {request_id} is already decided")
        return stored


def _kind_of(target: str) -> AccessKind:
    if not isinstance(target, str) or not target or len(target) > MAX_EXPOSED_NAME:
        raise AccessRequestError(
            f"name a tool (server__tool) or an agent, at most {MAX_EXPOSED_NAME} characters"
        )
    server, sep, tool = target.partition(SEPARATOR)
    if sep:
        if not valid_upstream_name(server) or not tool or not tool.isprintable() or " " in tool:
            raise AccessRequestError(f"{target!r} is not a tool name (server__tool)")
        return "tool"
    if not valid_upstream_name(target):
        raise AccessRequestError(f"{target!r} is not a tool (server__tool) or agent name")
    return "agent"


def _check_duration(duration: int | None) -> None:
    if duration is None:
        return
    if isinstance(duration, bool) or not isinstance(duration, int):
        raise AccessRequestError("the duration is a whole number of seconds")
    if not MIN_DURATION_SECONDS <= duration <= MAX_DURATION_SECONDS:
        raise AccessRequestError(
            f"the duration is from {MIN_DURATION_SECONDS} seconds to {MAX_DURATION_SECONDS // 86400} days"
        )


def _check_note(note: str | None) -> None:
    if note is not None and (not isinstance(note, str) or len(note) > MAX_NOTE):
        raise AccessRequestError(f"the note is a string of at most {MAX_NOTE} characters")


def _principal_rule(request: AccessRequest, scope: Scope) -> dict[str, object]:
    if scope == "team":
        if request.team is None:
            raise AccessRequestError("the requester belongs to no team; grant it to the requester instead")
        return {"team": request.team}
    if scope != "principal":
        raise AccessRequestError("the scope is 'principal' or 'team'")
    if request.user is not None:
        return {"user": request.user}
    # A client acting for itself is `Client::"<client id>"` to policy (its subject when it has none).
    return {"client": request.client_id or request.subject}
