"""Catalog search over HTTP: the admin API's `GET /catalog/search` and the callers' `GET /catalog/v1/search`.

The admin sees every live tool and agent, or, with `client=<client id>`, what that client would
see (policy applied as that client). A caller with a gateway token sees only what policy lets it
list: the same list phase as `tools/list` and `GET /a2a`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tollhouse.auth.middleware import client_address, principal_of
from tollhouse.auth.principal import Principal
from tollhouse.auth.verifiers import client_principal
from tollhouse.gateway.admin_http import Problem, json_response
from tollhouse.gateway.authorization import PolicyService
from tollhouse.gateway.catalog_search import CatalogSearch, Hit, SearchError
from tollhouse.gateway.snapshot import ExposedItem

if TYPE_CHECKING:
    from tollhouse.gateway.admin import AdminState

__all__ = ["CallerSearch", "CatalogQuery", "catalog_routes", "parse_query"]

Endpoint = Callable[[Request], Awaitable[Response]]
Guard = Callable[..., Endpoint]
AgentUsable = Callable[[str, Principal, str | None], object | None]
CatalogQuery = tuple[str, int, tuple[str, ...]]


def parse_query(params: Mapping[str, str], allowed: set[str]) -> CatalogQuery:
    """(query, limit, kinds) from a request's query parameters.

    Raises:
        SearchError: a missing query, an unknown parameter, a bad limit or kind.
    """
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise SearchError(f"unknown parameter(s): {', '.join(unknown)}")
    query = params.get("q", "")
    try:
        limit = int(params.get("limit", "10"))
    except ValueError:
        raise SearchError("the limit is a whole number from 1 to 100") from None
    kind = params.get("kind")
    if kind is not None and kind not in ("tool", "agent"):
        raise SearchError("kind is 'tool' or 'agent'")
    return query, limit, (kind,) if kind else ("tool", "agent")


class CallerSearch:
    """`GET /catalog/v1/search` for an authenticated caller: only what it may list."""

    def __init__(self, search: CatalogSearch, policies: PolicyService, agent_usable: AgentUsable) -> None:
        self._search = search
        self._policies = policies
        self._agent_usable = agent_usable

    def run(self, principal: Principal, source_ip: str | None, query: CatalogQuery) -> list[Hit]:
        """The caller's results.

        Raises:
            SearchError: a bad query.
        """
        text, limit, kinds = query
        snapshot = self._search.snapshot
        facts = self._policies.facts(principal, source_ip=source_ip, protocol_version="catalog")

        def keep_tool(tool: ExposedItem) -> bool:
            return self._policies.visible_tool(principal, snapshot, tool, facts)

        def keep_agent(name: str) -> bool:
            return self._agent_usable(name, principal, source_ip) is not None

        return self._search.search(text, limit=limit, kinds=kinds, keep_tool=keep_tool, keep_agent=keep_agent)

    def everything(self, query: CatalogQuery) -> list[Hit]:
        """Results over the whole live catalog (the admin's view).

        Raises:
            SearchError: a bad query.
        """
        text, limit, kinds = query
        return self._search.search(text, limit=limit, kinds=kinds)

    async def endpoint(self, request: Request) -> Response:
        """The route's handler (behind the bearer middleware, which set the principal)."""
        try:
            query = parse_query(request.query_params, {"q", "limit", "kind"})
            hits = self.run(principal_of(request.scope), client_address(request.scope), query)
        except SearchError as exc:
            return JSONResponse({"error": "invalid_request", "error_description": str(exc)}, status_code=400)
        return JSONResponse({"results": [h.to_json() for h in hits]})


def catalog_routes(state: AdminState, guarded: Guard) -> list[Route]:
    """The admin API's /catalog/search route."""

    async def search(request: Request) -> Response:
        caller = state.catalog
        if caller is None:
            raise Problem(503, "Unavailable", "catalog search is not configured")
        try:
            query = parse_query(request.query_params, {"q", "limit", "kind", "client"})
        except SearchError as exc:
            raise Problem(400, "Invalid search", str(exc)) from None
        client_id = request.query_params.get("client")
        try:
            if client_id is None:
                hits = caller.everything(query)
            else:
                client = await state.store.get_client(client_id) or await state.store.get_client_by_name(
                    client_id
                )
                if client is None or client.revoked_at is not None:
                    raise Problem(404, "Not Found", f"no active client '{client_id}'")
                hits = caller.run(client_principal(client), None, query)
        except SearchError as exc:
            raise Problem(400, "Invalid search", str(exc)) from None
        return json_response({"results": [h.to_json() for h in hits]})

    return [Route("/catalog/search", guarded(search), methods=["GET"])]
