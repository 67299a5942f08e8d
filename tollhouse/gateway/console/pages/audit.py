"""Audit trail: filtered search, one record with its place in the chain, verification, export.

Every filter is one the admin API serves from an index (`GET /audit/records`). The filter lives
in the URL, so a search can be shared, works without JavaScript (a plain GET form), and htmx
only swaps the results in place. `since`/`until` come from datetime-local inputs, read as UTC.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from tollhouse.audit.records import rfc3339_ms
from tollhouse.gateway.console.api import ApiError
from tollhouse.gateway.console.core import Console, View
from tollhouse.gateway.metering import OUTCOMES as CALL_OUTCOMES
from tollhouse.registry.models import SEPARATOR

__all__ = ["FIELDS", "KINDS", "OUTCOMES", "routes"]

# The search form's fields, in order; each is an indexed column of audit_records.
FIELDS = ("since", "until", "subject", "team", "client_id", "server", "tool", "outcome", "trace_id", "kind")
# Calls' outcomes, plus those of failed gateways (auditing.outcome_for, admin actions) and
# refused authentications.
OUTCOMES = (*CALL_OUTCOMES, "gateway_error", "unauthenticated")
KINDS = ("mcp", "a2a", "auth", "admin", "system")
PAGE_SIZE = 50
# Longer values are never copied into the indexed columns (audit_store._MAX_COLUMN).
MAX_VALUE = 256
OUTCOME_BADGES = {
    "ok": "good",
    "tool_error": "warn",
    "invalid": "warn",
    "rate_limited": "warn",
    "denied": "bad",
    "unauthenticated": "bad",
    "upstream_error": "bad",
    "gateway_error": "bad",
}
_SECTIONS = ("who", "what", "where", "outcome", "correlation")
_CHAIN = ("node", "seq", "prev", "hash")


@dataclass
class Search:
    """A search as the URL carries it (`values`) and as the admin API takes it (`params`)."""

    values: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    def query(self, **extra: str) -> str:
        """The URL query of this search (empty fields left out), plus `extra`."""
        return urlencode({**{k: v for k, v in self.values.items() if v}, **extra})


def _utc(name: str, text: str) -> datetime:
    """A datetime-local value (no zone: UTC) or an RFC 3339 time.

    Raises:
        ValueError: neither.
    """
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"'{name}' is not a date and time (YYYY-MM-DDTHH:MM, UTC)") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _local(moment: datetime) -> str:
    """A UTC time as a datetime-local input shows it."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S" if moment.second or moment.microsecond else "%Y-%m-%dT%H:%M")


def search_of(query: Mapping[str, str]) -> Search:
    """The search a URL's query asks for; `error` says what is wrong with it."""
    found = Search()
    for name in FIELDS:
        value = query.get(name, "").strip()
        if not value:
            continue
        if len(value) > MAX_VALUE:
            found.error = f"'{name}' is longer than {MAX_VALUE} characters"
            continue
        found.values[name] = value
        found.params[name] = value
    times: dict[str, datetime] = {}
    for name in ("since", "until"):
        if name in found.values:
            try:
                times[name] = _utc(name, found.values[name])
            except ValueError as error:
                found.error = str(error)
                continue
            found.params[name] = rfc3339_ms(times[name])
            found.values[name] = _local(times[name])
    if "since" in times and "until" in times and times["until"] <= times["since"]:
        found.error = "'until' must be later than 'since'"
    return found


def _partial(view: View) -> bool:
    return view.is_htmx and view.request.headers.get("hx-target") is not None


def _team(who: Mapping[str, Any]) -> str | None:
    teams = who.get("teams")
    return ", ".join(str(t) for t in teams) if isinstance(teams, list) and teams else None


def _part(record: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = record.get(name)
    return value if isinstance(value, Mapping) else {}


def _exposed(server: Any, tool: Any) -> str | None:
    """The tool as clients call it: `server__tool` (an A2A record's tool already is `agent__skill`)."""
    if not isinstance(tool, str) or not tool:
        return None
    if not isinstance(server, str) or tool.startswith(server + SEPARATOR):
        return tool
    return f"{server}{SEPARATOR}{tool}"


def record_href(view: View, record: Mapping[str, Any]) -> str:
    return view.url(f"/audit/{quote(str(record.get('node', '')), safe='')}/{record.get('seq', '')}")


def trace_href(view: View, trace_id: str) -> str:
    return view.url("/audit") + "?" + urlencode({"trace_id": trace_id})


def row_of(view: View, record: Mapping[str, Any]) -> dict[str, Any]:
    """What one result row shows (all of it text from the record)."""
    who, what = _part(record, "who"), _part(record, "what")
    outcome = _part(record, "outcome").get("result")
    trace_id = _part(record, "correlation").get("trace_id")
    return {
        "time": record.get("time"),
        "kind": record.get("kind"),
        "action": record.get("action"),
        "subject": who.get("subject"),
        "team": _team(who),
        "client_id": who.get("client_id"),
        "server": what.get("server"),
        "tool": _exposed(what.get("server"), what.get("tool")) or what.get("target"),
        "outcome": outcome,
        "badge": OUTCOME_BADGES.get(str(outcome), ""),
        "trace_id": trace_id,
        "trace_href": trace_href(view, str(trace_id)) if trace_id else None,
        "href": record_href(view, record),
        "place": f"{record.get('node')}#{record.get('seq')}",
        "unreadable": bool(record.get("unreadable")),
    }


async def resolve_tool(view: View, search: Search) -> None:
    """A tool given by the name clients call (`server__tool`, no server field): search that pair.

    An MCP call's record names the upstream's tool and its server apart (an A2A message's tool
    is already `agent__skill`), so the exposed name is split when its prefix is a server.
    """
    tool = search.params.get("tool")
    if tool is None or "server" in search.params or SEPARATOR not in tool:
        return
    server, _, name = tool.partition(SEPARATOR)
    if name and server in {s["name"] for s in (await view.api.get("/servers"))["items"]}:
        search.params["server"], search.params["tool"] = server, name


async def _results(view: View, search: Search) -> dict[str, Any]:
    """One page of records for `search` (or its error)."""
    context: dict[str, Any] = {"rows": [], "next_href": None, "error": search.error, "first_href": None}
    cursor = view.request.query_params.get("cursor") or None
    if search.error is not None:
        return context
    await resolve_tool(view, search)
    try:
        page = await view.api.get("/audit/records", **search.params, limit=PAGE_SIZE, cursor=cursor)
    except ApiError as error:
        if error.status != 400:
            raise
        context["error"] = error.detail
        return context
    context["rows"] = [row_of(view, r) for r in page["items"]]
    if page.get("next_cursor"):
        context["next_href"] = view.url("/audit") + "?" + search.query(cursor=page["next_cursor"])
    if cursor is not None:
        context["first_href"] = view.url("/audit") + ("?" + search.query() if search.values else "")
    return context


def _canonical(view: View, search: Search) -> str:
    """This search's URL without empty fields (what a plain GET form also submits)."""
    cursor = view.request.query_params.get("cursor")
    query = search.query(**({"cursor": cursor} if cursor else {}))
    return view.url("/audit") + ("?" + query if query else "")


async def audit_trail(view: View) -> Response:
    search = search_of(view.request.query_params)
    blank = any(not v.strip() for v in view.request.query_params.values())
    if blank and search.error is None and not view.is_htmx:
        return RedirectResponse(_canonical(view, search), status_code=303)
    context: dict[str, Any] = {
        "title": "Audit trail",
        "search": search.values,
        "outcomes": OUTCOMES,
        "kinds": KINDS,
        "export_href": view.url("/audit/export") + ("?" + search.query() if search.values else ""),
        **await _results(view, search),
    }
    status = 400 if context["error"] is not None else 200
    if _partial(view):
        response = view.render("audit/_results.html", context, status=status)
        # htmx pushes the form's every field, empty or not; the address bar gets the short form.
        response.headers["HX-Push-Url"] = _canonical(view, search)
        return response
    context["chain"] = await view.api.get("/audit/status")
    context["chain_nodes"] = chain_nodes(context["chain"])
    return view.render("audit/index.html", context, status=status)


def chain_nodes(status: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per node: its head and its newest checkpoint, side by side."""
    heads = {h["node"]: h for h in status.get("heads", [])}
    checkpoints = {c["node"]: c for c in status.get("last_checkpoints", [])}
    return [
        {"node": node, "head": heads.get(node), "checkpoint": checkpoints.get(node)}
        for node in sorted({*heads, *checkpoints})
    ]


async def verify(view: View) -> Response:
    result = await view.api.get("/audit/verify")
    context = {"title": "Audit trail verification", "result": result}
    if _partial(view):
        return view.render("audit/_verify.html", context)
    return view.render("audit/verify.html", context)


async def export(view: View) -> Response:
    search = search_of(view.request.query_params)
    if search.error is not None:
        return view.error_page(400, "Cannot export", search.error)
    await resolve_tool(view, search)
    return view.api.download("/audit/records.jsonl", search.params)


def _facts(part: Mapping[str, Any], skip: tuple[str, ...] = ()) -> list[tuple[str, Any]]:
    """A record part's fields as (name, value) pairs, for a definition list."""
    return [(k, v) for k, v in sorted(part.items()) if k not in skip]


async def record(view: View) -> Response:
    node, seq = view.request.path_params["node"], view.request.path_params["seq"]
    answer = await view.api.get(f"/audit/records/{node}/{seq}")
    found: dict[str, Any] = answer["record"]
    what = _part(found, "what")
    correlation = _part(found, "correlation")
    trace_id = correlation.get("trace_id")
    sections = [(name, _facts(_part(found, name), ("args",) if name == "what" else ())) for name in _SECTIONS]
    known = {*_SECTIONS, *_CHAIN, "v", "time", "kind", "action"}
    context = {
        "title": f"Audit record {node}#{seq}",
        "record": found,
        "summary": _facts({k: found.get(k) for k in ("time", "kind", "action", "v") if k in found}),
        "sections": sections,
        "other": _facts({k: v for k, v in found.items() if k not in known}),
        "has_args": "args" in what,
        "args": what.get("args"),
        "policies": _part(found, "outcome").get("policies") or [],
        "tool": _exposed(what.get("server"), what.get("tool")),
        "pin": what.get("pin"),
        "snapshot": _part(found, "where").get("snapshot"),
        "usage_event": correlation.get("usage_event"),
        "trace_id": trace_id,
        "trace_href": trace_href(view, str(trace_id)) if trace_id else None,
        "chain": [(k, found.get(k)) for k in _CHAIN],
        "checkpoint": answer.get("checkpoint"),
        "outcome": _part(found, "outcome").get("result"),
        "badge_kind": OUTCOME_BADGES.get(str(_part(found, "outcome").get("result")), ""),
    }
    return view.render("audit/record.html", context)


def routes(console: Console) -> list[BaseRoute]:
    return [
        Route("/audit", console.page(audit_trail, need="audit"), methods=["GET"]),
        Route("/audit/verify", console.page(verify, need="audit"), methods=["GET"]),
        Route("/audit/export", console.page(export, need="audit"), methods=["GET"]),
        Route("/audit/{node}/{seq:int}", console.page(record, need="audit"), methods=["GET"]),
    ]
