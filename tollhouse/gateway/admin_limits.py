"""Admin API for limits and kill switches: list, set, remove; recent refusals; counter status.

Limits persist in the database (registry/limits.py), so a limit set through one replica, or by
`tollhouse apply`, is enforced by all of them after their next poll; this replica reloads at once.
Changing anything needs the `admin` role; reading the recent refusals needs `audit`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tollhouse.gateway.admin_http import Problem, iso, json_response, read_body
from tollhouse.gateway.admission import AdmissionService
from tollhouse.policies.quotas import Caller
from tollhouse.registry.config import ConfigError, limit_from_dict, limit_to_dict
from tollhouse.registry.limits import KILL_KINDS, KillSwitch, LimitSpec

if TYPE_CHECKING:
    from tollhouse.gateway.admin import AdminState

__all__ = ["apply_limits", "limit_routes"]

Endpoint = Callable[[Request], Awaitable[Response]]
Guard = Callable[..., Endpoint]


def _service(state: AdminState) -> AdmissionService:
    service = getattr(state, "admission", None)
    if not isinstance(service, AdmissionService) or service.store is None:
        raise Problem(503, "Unavailable", "limits are not configured")
    return service


async def apply_limits(
    state: AdminState, specs: Sequence[LimitSpec], *, prune: bool, by: str | None
) -> dict[str, list[str]]:
    """Upsert a config's limits (and with `prune` delete the others): created/updated/unchanged/deleted."""
    out: dict[str, list[str]] = {"created": [], "updated": [], "unchanged": [], "deleted": []}
    if not specs and not prune:
        return out
    service = _service(state)
    assert service.store is not None
    known = {s.id for s in service.specs}
    changed = await service.store.put_limits(
        [dataclasses.replace(s, updated_by=by) for s in specs], prune=prune
    )
    for item in changed:
        if item.startswith("-"):
            out["deleted"].append(f"limit/{item[1:]}")
        else:
            out["updated" if item in known else "created"].append(f"limit/{item}")
    out["unchanged"] = [f"limit/{s.id}" for s in specs if s.id not in changed]
    await service.reload()
    return out


def limit_routes(state: AdminState, guarded: Guard) -> list[Route]:
    """The /limits and /kill-switches routes."""

    async def list_limits(request: Request) -> Response:
        service = _service(state)
        counters = service.counters
        return json_response(
            {
                "version": service.version,
                "items": [_out(s) for s in service.specs],
                "storage": {
                    "backend": "redis" if counters.shared else "memory",
                    "available": counters.available if counters.shared else True,
                    "stats": dict(counters.stats),
                },
                "loop_breaker": {
                    "threshold": service.settings.loop_threshold,
                    "window_seconds": service.settings.loop_window_seconds,
                },
            }
        )

    async def show_limit(request: Request) -> Response:
        return json_response(_out(_known(_service(state), request.path_params["id"])))

    async def put_limit(request: Request) -> Response:
        limit_id = request.path_params["id"]
        body = await read_body(request)
        if "id" in body and body["id"] != limit_id:
            raise Problem(400, "Invalid limit", f"the body names '{body['id']}' but the path '{limit_id}'")
        try:
            spec = limit_from_dict({**body, "id": limit_id})
        except ConfigError as exc:
            raise Problem(400, "Invalid limit", str(exc)) from None
        service = _service(state)
        assert service.store is not None
        existed = any(s.id == limit_id for s in service.specs)
        await service.store.put_limits([dataclasses.replace(spec, updated_by=request.state.subject)])
        await service.reload()
        return json_response(_out(_known(service, limit_id)), 200 if existed else 201)

    async def delete_limit(request: Request) -> Response:
        limit_id = request.path_params["id"]
        service = _service(state)
        assert service.store is not None
        if not await service.store.put_limits([], delete=[limit_id]):
            raise Problem(404, "Not Found", f"no limit '{limit_id}'")
        await service.reload()
        return Response(status_code=204)

    async def recent(request: Request) -> Response:
        try:
            limit = min(max(int(request.query_params.get("limit", "100")), 1), 1000)
        except ValueError:
            raise Problem(400, "Bad Request", "'limit' must be an integer") from None
        service = _service(state)
        return json_response({"items": service.log.recent(limit), "counts": dict(service.log.counts)})

    async def status(request: Request) -> Response:
        """The counters a caller would hit: ?subject=&client=&team=&server=&tool= (the exposed name)."""
        service = _service(state)
        q = request.query_params
        tool = q.get("tool", "")
        caller = Caller(
            subject=q.get("subject", ""),
            client=q.get("client"),
            teams=tuple(q.getlist("team")),
            server=q.get("server") or tool.partition("__")[0],
            tool=tool,
        )
        items = []
        for rule in service.quotas.applicable(caller):
            item: dict[str, Any] = {"id": rule.id, "bucket": rule.bucket(caller)}
            if rule.quota is not None:
                remaining, reset = await service.counters.stats_for(rule, rule.bucket(caller))
                item.update(
                    quota=rule.quota,
                    window_seconds=rule.window_seconds,
                    remaining=remaining,
                    reset_seconds=reset,
                )
            if rule.concurrency is not None:
                item["concurrency"] = rule.concurrency
            items.append(item)
        return json_response({"items": items})

    async def list_kills(request: Request) -> Response:
        service = _service(state)
        return json_response({"items": [_kill_out(k) for k in service.kills]})

    async def engage(request: Request) -> Response:
        body = await read_body(request)
        kind, value, reason = body.get("kind"), body.get("value"), body.get("reason")
        if kind not in KILL_KINDS:
            raise Problem(400, "Invalid kill switch", f"'kind' must be one of {', '.join(KILL_KINDS)}")
        if not isinstance(value, str) or not value or len(value) > 256:
            raise Problem(400, "Invalid kill switch", "'value' must be a non-empty string")
        if reason is not None and not isinstance(reason, str):
            raise Problem(400, "Invalid kill switch", "'reason' must be a string")
        service = _service(state)
        assert service.store is not None
        await service.store.set_kill(
            KillSwitch(kind=kind, value=value, reason=reason, created_by=request.state.subject)
        )
        await service.reload()
        engaged = next(k for k in service.kills if (k.kind, k.value) == (kind, value))
        return json_response(_kill_out(engaged), 201)

    async def release(request: Request) -> Response:
        service = _service(state)
        assert service.store is not None
        kind, value = request.path_params["kind"], request.path_params["value"]
        if not await service.store.clear_kill(kind, value):
            raise Problem(404, "Not Found", f"no {kind} kill switch for '{value}'")
        await service.reload()
        return Response(status_code=204)

    return [
        Route("/limits", guarded(list_limits), methods=["GET"]),
        Route("/limits/recent", guarded(recent, "audit"), methods=["GET"]),
        Route("/limits/status", guarded(status), methods=["GET"]),
        Route("/limits/{id}", guarded(show_limit), methods=["GET"]),
        Route("/limits/{id}", guarded(put_limit), methods=["PUT"]),
        Route("/limits/{id}", guarded(delete_limit), methods=["DELETE"]),
        Route("/kill-switches", guarded(list_kills), methods=["GET"]),
        Route("/kill-switches", guarded(engage), methods=["POST"]),
        Route("/kill-switches/{kind}/{value}", guarded(release), methods=["DELETE"]),
    ]


def _known(service: AdmissionService, limit_id: str) -> LimitSpec:
    spec = next((s for s in service.specs if s.id == limit_id), None)
    if spec is None:
        raise Problem(404, "Not Found", f"no limit '{limit_id}'")
    return spec


def _out(spec: LimitSpec) -> dict[str, Any]:
    return {
        **limit_to_dict(spec),
        "window": spec.window,
        "failure_mode": spec.failure_mode,
        "updated_by": spec.updated_by,
        "updated_at": iso(spec.updated_at),
    }


def _kill_out(kill: KillSwitch) -> dict[str, Any]:
    return {
        "kind": kill.kind,
        "value": kill.value,
        "reason": kill.reason,
        "created_by": kill.created_by,
        "created_at": iso(kill.created_at),
    }
