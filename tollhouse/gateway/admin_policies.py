"""Admin API for authorization policies: list, set, remove; validate, test and explain.

Changing policies needs the `admin` role; validating, testing and explaining change nothing
and are open to every admin role, so an auditor can ask "could X do Y?" without write access.
A write is checked as part of the whole resulting policy set: nothing is stored unless every
policy compiles against the schema.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tollhouse.gateway.admin_http import Problem, iso, json_response, read_body
from tollhouse.gateway.authorization import PolicyProblem
from tollhouse.registry.config import ConfigError, policy_from_dict, policy_to_dict
from tollhouse.registry.models import PolicyEntry

if TYPE_CHECKING:
    from tollhouse.gateway.admin import AdminState

__all__ = ["policy_routes"]

Endpoint = Callable[[Request], Awaitable[Response]]
Guard = Callable[..., Endpoint]


def policy_routes(state: AdminState, guarded: Guard) -> list[Route]:
    """The /policies routes."""

    def service() -> Any:
        if state.policies is None:
            raise Problem(503, "Unavailable", "policies are not configured")
        return state.policies

    async def list_policies(request: Request) -> Response:
        policies = service()
        return json_response({"version": policies.version, "items": [_out(e) for e in policies.entries()]})

    async def show_policy(request: Request) -> Response:
        entry = service().entry(request.path_params["id"])
        if entry is None:
            raise Problem(404, "Not Found", f"no policy '{request.path_params['id']}'")
        return json_response(_out(entry))

    async def put_policy(request: Request) -> Response:
        policy_id = request.path_params["id"]
        body = await read_body(request)
        if "id" in body and body["id"] != policy_id:
            raise Problem(400, "Invalid policy", f"the body names '{body['id']}' but the path '{policy_id}'")
        entry = _parse({**body, "id": policy_id}, "")
        policies = service()
        existed = policies.entry(policy_id) is not None
        try:
            stored = await policies.put([entry], by=request.state.subject)
        except PolicyProblem as exc:
            raise Problem(400, "Invalid policy", "; ".join(exc.errors)) from None
        return json_response(_out(stored[0]), 200 if existed else 201)

    async def delete_policy(request: Request) -> Response:
        policy_id = request.path_params["id"]
        if not await service().delete(policy_id):
            raise Problem(404, "Not Found", f"no policy '{policy_id}'")
        return Response(status_code=204)

    async def validate(request: Request) -> Response:
        body = await read_body(request)
        entries = _entries(body.get("policies"))
        errors = service().validate(entries)
        return json_response({"valid": not errors, "errors": errors})

    async def test(request: Request) -> Response:
        body = await read_body(request)
        cases = body.get("cases")
        if not isinstance(cases, list):
            raise Problem(400, "Bad Request", "'cases' must be a list of test cases")
        proposed = _entries(body["policies"]) if body.get("policies") is not None else None
        try:
            results = service().test(cases, proposed)
        except PolicyProblem as exc:
            raise Problem(400, "Invalid policy", "; ".join(exc.errors)) from None
        except ValueError as exc:
            raise Problem(400, "Invalid test case", str(exc)) from None
        failed = sum(1 for r in results if not r["passed"])
        return json_response({"passed": len(results) - failed, "failed": failed, "results": results})

    async def explain(request: Request) -> Response:
        body = await read_body(request)
        try:
            return json_response(service().explain(body))
        except ValueError as exc:
            raise Problem(400, "Bad Request", str(exc)) from None

    async def decisions(request: Request) -> Response:
        try:
            limit = min(max(int(request.query_params.get("limit", "100")), 1), 1000)
        except ValueError:
            raise Problem(400, "Bad Request", "'limit' must be an integer") from None
        log = service().decisions
        return json_response(
            {
                "items": [d.to_json() for d in log.recent(limit)],
                "guardrails": log.recent_findings(limit),
                "counts": dict(log.counts),
            }
        )

    return [
        Route("/decisions", guarded(decisions, "audit"), methods=["GET"]),
        Route("/policies", guarded(list_policies), methods=["GET"]),
        Route("/policies/validate", guarded(validate, "read"), methods=["POST"]),
        Route("/policies/test", guarded(test, "read"), methods=["POST"]),
        Route("/policies/explain", guarded(explain, "read"), methods=["POST"]),
        Route("/policies/{id}", guarded(show_policy), methods=["GET"]),
        Route("/policies/{id}", guarded(put_policy), methods=["PUT"]),
        Route("/policies/{id}", guarded(delete_policy), methods=["DELETE"]),
    ]


def _parse(value: Any, path: str) -> PolicyEntry:
    try:
        return policy_from_dict(value, path=path)
    except ConfigError as exc:
        raise Problem(400, "Invalid policy", str(exc)) from None


def _entries(value: Any) -> list[PolicyEntry]:
    if not isinstance(value, list):
        raise Problem(400, "Bad Request", "'policies' must be a list of policies")
    return [_parse(item, f"policies[{i}]") for i, item in enumerate(value)]


def _out(entry: PolicyEntry) -> dict[str, Any]:
    return {
        **policy_to_dict(entry),
        "cedar": entry.cedar,
        "updated_by": entry.updated_by,
        "created_at": iso(entry.created_at),
        "updated_at": iso(entry.updated_at),
    }
