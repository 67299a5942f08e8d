"""Admin API for access requests: list and show (any admin role), grant and decline (admin or approver).

A grant writes a policy (`access-<id>`), so it is announced to other replicas as a policy change.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tollhouse.gateway.access_requests import AccessRequestConflict, AccessRequestError, AccessRequests
from tollhouse.gateway.admin_http import Problem, iso, json_response, read_body
from tollhouse.gateway.authorization import PolicyProblem
from tollhouse.registry.models import AccessRequest

if TYPE_CHECKING:
    from tollhouse.gateway.admin import AdminState

__all__ = ["access_routes", "request_out"]

Endpoint = Callable[[Request], Awaitable[Response]]
Guard = Callable[..., Endpoint]
_STATUSES = ("pending", "granted", "declined", "withdrawn")


def access_routes(state: AdminState, guarded: Guard) -> list[Route]:
    """The /access-requests routes."""

    def service() -> AccessRequests:
        if state.access is None:
            raise Problem(503, "Unavailable", "access requests are not configured")
        return state.access

    async def list_requests(request: Request) -> Response:
        raw = request.query_params.get("status") or ""
        statuses = tuple(s for s in raw.split(",") if s)
        if not set(statuses) <= set(_STATUSES):
            raise Problem(400, "Bad Request", f"'status' takes {', '.join(_STATUSES)} (comma-separated)")
        try:
            limit = min(max(int(request.query_params.get("limit", "100")), 1), 1000)
        except ValueError:
            raise Problem(400, "Bad Request", "'limit' must be a whole number") from None
        access = service()
        items = await access.list(status=statuses, limit=limit)
        return json_response({"items": [request_out(access, r) for r in items]})

    async def show_request(request: Request) -> Response:
        access = service()
        found = await access.get(request.path_params["id"])
        if found is None:
            raise Problem(404, "Not Found", f"no access request '{request.path_params['id']}'")
        return json_response(request_out(access, found))

    async def grant(request: Request) -> Response:
        body = await read_body(request)
        _only(body, {"duration_seconds", "scope", "note"})
        access = service()
        try:
            granted = await access.grant(
                request.path_params["id"],
                by=request.state.subject,
                duration_seconds=body.get("duration_seconds"),
                scope=body.get("scope", "principal"),
                note=body.get("note"),
            )
        except PolicyProblem as exc:
            raise Problem(400, "Invalid grant", "; ".join(exc.errors)) from None
        except (LookupError, AccessRequestError) as exc:
            raise _problem(request, exc) from None
        return json_response(request_out(access, granted))

    async def decline(request: Request) -> Response:
        body = await read_body(request)
        _only(body, {"note"})
        access = service()
        try:
            declined = await access.decline(
                request.path_params["id"], by=request.state.subject, note=body.get("note")
            )
        except (LookupError, AccessRequestError) as exc:
            raise _problem(request, exc) from None
        return json_response(request_out(access, declined))

    return [
        Route("/access-requests", guarded(list_requests), methods=["GET"]),
        Route("/access-requests/{id}", guarded(show_request), methods=["GET"]),
        Route("/access-requests/{id}/grant", guarded(grant, "approve"), methods=["POST"]),
        Route("/access-requests/{id}/decline", guarded(decline, "approve"), methods=["POST"]),
    ]


def request_out(access: AccessRequests, r: AccessRequest) -> dict[str, Any]:
    """An access request as the API shows it; `state` says whether a grant has run out."""
    return {
        "id": r.id,
        "status": r.status,
        "state": "expired" if r.status == "granted" and access.expired(r) else r.status,
        "target": r.target,
        "kind": r.kind,
        "target_exists": access.exists(r),
        "subject": r.subject,
        "client_id": r.client_id,
        "team": r.team,
        "user": r.user,
        "reason": r.reason,
        "duration_seconds": r.duration_seconds,
        "created_at": iso(r.created_at),
        "decided_at": iso(r.decided_at),
        "decided_by": r.decided_by,
        "note": r.note,
        "policy_id": r.policy_id,
        "expires_at": iso(r.expires_at),
    }


def _only(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise Problem(400, "Bad Request", f"unknown field(s): {', '.join(unknown)}")


def _problem(request: Request, exc: Exception) -> Problem:
    if isinstance(exc, LookupError):
        return Problem(404, "Not Found", f"no access request '{request.path_params['id']}'")
    if isinstance(exc, AccessRequestConflict):
        return Problem(409, "Conflict", str(exc))
    return Problem(400, "Invalid decision", str(exc))
