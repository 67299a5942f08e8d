"""Admin API for metering: usage reports, the chargeback CSV, the outbox; prices and budgets.

Reading (reports, outbox, prices, budgets and their status) needs any admin role, so FinOps
and auditors can chart usage without write access; changing prices, budgets or credits
needs `admin`. Each write replaces one whole list (prices, or budgets with their credits),
validated before anything is stored.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tollhouse.gateway.admin_http import Problem, json_response, read_body
from tollhouse.gateway.usage_service import UsageConfigError, UsageService

if TYPE_CHECKING:
    from tollhouse.gateway.admin import AdminState

__all__ = ["usage_routes"]

Endpoint = Callable[[Request], Awaitable[Response]]
Guard = Callable[..., Endpoint]


def usage_routes(state: AdminState, guarded: Guard) -> list[Route]:
    """The /usage, /prices and /budgets routes."""

    def service() -> UsageService:
        if state.usage is None:
            raise Problem(503, "Unavailable", "metering is not configured")
        return state.usage

    def period_of(request: Request) -> str:
        period = request.query_params.get("period") or datetime.now(UTC).strftime("%Y-%m")
        return period

    async def report(request: Request) -> Response:
        by = [d for d in request.query_params.get("by", "team").split(",") if d]
        bucket = request.query_params.get("bucket") or None
        if bucket not in (None, "hour", "day"):
            raise Problem(400, "Bad Request", "bucket must be hour or day")
        try:
            return json_response(await service().report(by, period_of(request), bucket))  # type: ignore[arg-type]
        except ValueError as exc:
            raise Problem(400, "Bad Request", str(exc)) from None

    async def chargeback(request: Request) -> Response:
        period = period_of(request)
        try:
            text = await service().chargeback_csv(period)
        except ValueError as exc:
            raise Problem(400, "Bad Request", str(exc)) from None
        return Response(
            text,
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="chargeback-{period}.csv"'},
        )

    async def outbox(request: Request) -> Response:
        return json_response(await service().outbox())

    async def list_prices(request: Request) -> Response:
        return json_response({"items": service().export()[0]})

    async def put_prices(request: Request) -> Response:
        items = (await read_body(request)).get("items")
        if not isinstance(items, list):
            raise Problem(400, "Bad Request", "'items' must be a list of price rules")
        try:
            await service().set_prices(items)
        except UsageConfigError as exc:
            raise Problem(400, "Invalid price", str(exc)) from None
        return json_response({"items": service().export()[0]})

    async def list_budgets(request: Request) -> Response:
        return json_response({"items": service().export()[1]})

    async def put_budgets(request: Request) -> Response:
        items = (await read_body(request)).get("items")
        if not isinstance(items, list):
            raise Problem(400, "Bad Request", "'items' must be a list of budgets")
        return await _replace_budgets(items)

    async def put_budget(request: Request) -> Response:
        budget_id = request.path_params["id"]
        body = {**(await read_body(request)), "id": budget_id}
        current = [b for b in service().export()[1] if b["id"] != budget_id]
        existed = len(current) != len(service().export()[1])
        response = await _replace_budgets([*current, body])
        return response if existed else json_response(_one(budget_id), 201)

    async def delete_budget(request: Request) -> Response:
        budget_id = request.path_params["id"]
        current = service().export()[1]
        kept = [b for b in current if b["id"] != budget_id]
        if len(kept) == len(current):
            raise Problem(404, "Not Found", f"no budget '{budget_id}'")
        await _replace_budgets(kept)
        return Response(status_code=204)

    async def grant_credit(request: Request) -> Response:
        budget_id = request.path_params["id"]
        grant = await read_body(request)
        grant.setdefault("granted_at", datetime.now(UTC).isoformat())
        current = service().export()[1]
        target = next((b for b in current if b["id"] == budget_id), None)
        if target is None:
            raise Problem(404, "Not Found", f"no budget '{budget_id}'")
        target["credits"] = [*target.get("credits", []), grant]
        await _replace_budgets(current)
        return json_response(_one(budget_id), 201)

    async def budget_status(request: Request) -> Response:
        name = request.query_params.get("name")
        if not name:
            raise Problem(400, "Bad Request", "give ?name= (the team, client or user)")
        status = await service().budget_status(request.path_params["id"], name)
        if status is None:
            raise Problem(404, "Not Found", f"no budget '{request.path_params['id']}'")
        return json_response(status)

    async def _replace_budgets(items: list[Any]) -> Response:
        try:
            await service().set_budgets(items)
        except UsageConfigError as exc:
            raise Problem(400, "Invalid budget", str(exc)) from None
        return json_response({"items": service().export()[1]})

    def _one(budget_id: str) -> dict[str, Any]:
        return next(b for b in service().export()[1] if b["id"] == budget_id)

    return [
        Route("/usage/report", guarded(report), methods=["GET"]),
        Route("/usage/chargeback.csv", guarded(chargeback), methods=["GET"]),
        Route("/usage/outbox", guarded(outbox), methods=["GET"]),
        Route("/prices", guarded(list_prices), methods=["GET"]),
        Route("/prices", guarded(put_prices), methods=["PUT"]),
        Route("/budgets", guarded(list_budgets), methods=["GET"]),
        Route("/budgets", guarded(put_budgets), methods=["PUT"]),
        Route("/budgets/{id}", guarded(put_budget), methods=["PUT"]),
        Route("/budgets/{id}", guarded(delete_budget), methods=["DELETE"]),
        Route("/budgets/{id}/credits", guarded(grant_credit), methods=["POST"]),
        Route("/budgets/{id}/status", guarded(budget_status), methods=["GET"]),
    ]
