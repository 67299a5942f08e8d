"""Progressive disclosure: an endpoint that lists a few catalog meta-tools instead of every tool.

`/mcp?disclosure=search` (or a toolset with `disclosure: search`) shows

- `tollhouse__find_tools(query, limit?)`: BM25 search over the tools this caller may see here;
- `tollhouse__describe_tool(name)`: one tool's full definition;
- `tollhouse__call_tool(name, arguments)`: the call, through the same pipeline as a direct one
  (policy, pinning, limits, budgets, metering and audit see the inner tool);
- `tollhouse__request_access(name, reason, duration_seconds?)`: ask an approver for a tool this
  caller cannot use (gateway/access_requests.py), when access requests are available.

An agent then pays for four definitions per prompt instead of hundreds. What find and describe
return is exactly what the wrapped view would list (same names, same policy list phase), so a
tool the caller may not see is as unknown here as anywhere. Prompts and resources are unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import orjson

from tollhouse.gateway.errors import InvalidArguments, UnknownTool
from tollhouse.gateway.snapshot import ExposedItem, Snapshot
from tollhouse.gateway.views import Keep, Page, ServerView, ToolsetView, View, toolset_members
from tollhouse.registry.models import JSONObject

if TYPE_CHECKING:
    from tollhouse.gateway.catalog_search import CatalogSearch
    from tollhouse.gateway.handlers import RequestContext

__all__ = [
    "CALL_TOOL",
    "DESCRIBE_TOOL",
    "DISCLOSURE_MODES",
    "FIND_TOOLS",
    "REQUEST_ACCESS",
    "DisclosureView",
    "MetaTools",
    "query_disclosure",
    "shown_names",
]

FIND_TOOLS = "tollhouse__find_tools"
DESCRIBE_TOOL = "tollhouse__describe_tool"
CALL_TOOL = "tollhouse__call_tool"
REQUEST_ACCESS = "tollhouse__request_access"
DISCLOSURE_MODES = ("full", "search")
MAX_QUERY = 500
MAX_FOUND = 25
DEFAULT_FOUND = 8

_NAME = {"type": "string", "minLength": 1, "maxLength": 256}
_FOUND_SCHEMA: JSONObject = {
    "type": "object",
    "properties": {
        "tools": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "title": {"type": ["string", "null"]},
                    "description": {"type": ["string", "null"]},
                    "score": {"type": "number"},
                },
                "required": ["name", "score"],
            },
        }
    },
    "required": ["tools"],
}
META_TOOLS: Mapping[str, JSONObject] = {
    FIND_TOOLS: {
        "name": FIND_TOOLS,
        "title": "Find tools",
        "description": (
            "Search the tools available to you by what they do. Returns the best matches with their "
            "names and descriptions; use tollhouse__describe_tool for a tool's input schema, then "
            "tollhouse__call_tool to run it."
        ),
        "inputSchema": {
            "type": "object",
            "properties": {
                "query": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_QUERY,
                    "description": "What you want to do, in a few words",
                },
                "limit": {"type": "integer", "minimum": 1, "maximum": MAX_FOUND, "default": DEFAULT_FOUND},
            },
            "required": ["query"],
            "additionalProperties": False,
        },
        "outputSchema": _FOUND_SCHEMA,
        "annotations": {"readOnlyHint": True, "idempotentHint": True, "openWorldHint": False},
    },
    DESCRIBE_TOOL: {
        "name": DESCRIBE_TOOL,
        "title": "Describe a tool",
        "description": "The full definition of one tool found with tollhouse__find_tools: its input schema.",
        "inputSchema": {
            "type": "object",
            "properties": {"name": {**_NAME, "description": "The tool's name as find_tools gave it"}},
            "required": ["name"],
            "additionalProperties": False,
        },
        "annotations": {"readOnlyHint": True, "idempotentHint": True, "openWorldHint": False},
    },
    CALL_TOOL: {
        "name": CALL_TOOL,
        "title": "Call a tool",
        "description": (
            "Run a tool found with tollhouse__find_tools, with arguments matching the input schema "
            "tollhouse__describe_tool gave. Returns the tool's own result."
        ),
        "inputSchema": {
            "type": "object",
            "properties": {
                "name": {**_NAME, "description": "The tool's name as find_tools gave it"},
                "arguments": {"type": "object", "description": "The tool's arguments"},
            },
            "required": ["name"],
            "additionalProperties": False,
        },
    },
    REQUEST_ACCESS: {
        "name": REQUEST_ACCESS,
        "title": "Request access to a tool",
        "description": (
            "Ask an approver for access to a tool (server__tool) or an agent you may not use yet. "
            "Say why you need it; an approver grants or declines the request."
        ),
        "inputSchema": {
            "type": "object",
            "properties": {
                "name": {**_NAME, "description": "The tool (server__tool) or agent name"},
                "reason": {"type": "string", "minLength": 1, "maxLength": 2000},
                "duration_seconds": {
                    "type": "integer",
                    "minimum": 60,
                    "description": "How long you need it (omit for no limit; the approver decides)",
                },
            },
            "required": ["name", "reason"],
            "additionalProperties": False,
        },
        "annotations": {"readOnlyHint": False, "destructiveHint": False, "idempotentHint": True},
    },
}


def query_disclosure(scope: Mapping[str, Any]) -> str | None:
    """The `disclosure` query parameter of an MCP endpoint request (None when absent).

    Raises:
        InvalidArguments: a value other than `full` or `search`, or the parameter given twice.
    """
    query: bytes = scope.get("query_string", b"")
    values = parse_qs(query.decode("latin-1")).get("disclosure")
    if values is None:
        return None
    if len(values) != 1 or values[0] not in DISCLOSURE_MODES:
        raise InvalidArguments("'disclosure' is 'full' (every tool) or 'search' (the catalog meta-tools)")
    return values[0]


def shown_names(view: View, snapshot: Snapshot) -> dict[str, str] | None:
    """{exposed name: the name `view` shows} for the tools it holds; None: every tool, as exposed."""
    if isinstance(view, ToolsetView):
        toolset = snapshot.toolsets.get(view.name)
        members = toolset_members(toolset, snapshot) if toolset is not None else []
        return {tool.exposed: shown for shown, tool in members}
    if isinstance(view, ServerView):
        own = snapshot.servers.get(view.server)
        return {tool.exposed: tool.name for tool in own.tools} if own is not None else {}
    return None


@dataclass(frozen=True)
class DisclosureView:
    """`inner`, with its tools replaced by the meta-tools; everything else is `inner`'s."""

    inner: View
    access_requests: bool = False

    @property
    def key(self) -> str:
        """A session made here stays in search mode."""
        return f"{self.inner.key}+search"

    @property
    def meta_names(self) -> tuple[str, ...]:
        """The meta-tools this endpoint lists, in order."""
        names = (FIND_TOOLS, DESCRIBE_TOOL, CALL_TOOL)
        return (*names, REQUEST_ACCESS) if self.access_requests else names

    def tools(self, snapshot: Snapshot, after: str | None, limit: int, keep: Keep | None = None) -> Page:
        if after is not None:
            return [], None
        return [dict(META_TOOLS[name]) for name in self.meta_names], None

    def tool_name(self, snapshot: Snapshot, name: str) -> str:
        return self.inner.tool_name(snapshot, name)

    def prompts(self, snapshot: Snapshot, after: str | None, limit: int, keep: Keep | None = None) -> Page:
        return self.inner.prompts(snapshot, after, limit, keep)

    def prompt(self, snapshot: Snapshot, name: str) -> ExposedItem | None:
        return self.inner.prompt(snapshot, name)

    def resources(self, snapshot: Snapshot) -> tuple[JSONObject, ...]:
        return self.inner.resources(snapshot)

    def resource_templates(self, snapshot: Snapshot) -> tuple[JSONObject, ...]:
        return self.inner.resource_templates(snapshot)

    def route_uri(self, snapshot: Snapshot, uri: str) -> tuple[str, str] | None:
        return self.inner.route_uri(snapshot, uri)

    def show_uri(self, server: str, uri: str) -> str:
        return self.inner.show_uri(server, uri)

    def resource_server(self, uri: str) -> str | None:
        return self.inner.resource_server(uri)


# (request, snapshot) -> the list phase of policy for that caller: may it see this tool?
Visible = Callable[["RequestContext", Snapshot], Callable[[ExposedItem], bool]]
InnerCall = Callable[[JSONObject, "RequestContext"], Awaitable[JSONObject]]
OpenRequest = Callable[..., Awaitable[Any]]


class MetaTools:
    """Answers the meta-tools of a DisclosureView."""

    def __init__(
        self,
        search: CatalogSearch,
        snapshot: Callable[[], Snapshot],
        visible: Visible,
        request_access: OpenRequest | None = None,
    ) -> None:
        self._search = search
        self._snapshot = snapshot
        self._visible = visible
        self._request_access = request_access

    @property
    def access_requests(self) -> bool:
        """True when `tollhouse__request_access` is offered."""
        return self._request_access is not None

    def handles(self, view: View, name: str) -> bool:
        """True for a meta-tool `view` lists."""
        return isinstance(view, DisclosureView) and name in view.meta_names

    async def call(
        self, name: str, arguments: JSONObject, params: JSONObject, rc: RequestContext, inner_call: InnerCall
    ) -> JSONObject:
        """Run meta-tool `name`; `inner_call` runs a tools/call on the wrapped view."""
        view = rc.view
        assert isinstance(view, DisclosureView)
        if name == FIND_TOOLS:
            return self._find(arguments, rc, view.inner)
        if name == DESCRIBE_TOOL:
            return self._describe(arguments, rc, view.inner)
        if name == CALL_TOOL:
            target, inner_arguments = _call_arguments(arguments)
            rc.audit.via, rc.audit.inner_name, rc.audit.inner_arguments = CALL_TOOL, target, inner_arguments
            inner_params = {**params, "name": target, "arguments": inner_arguments}
            return await inner_call(inner_params, dataclasses.replace(rc, view=view.inner))
        return await self._ask(arguments, rc)

    def _find(self, arguments: JSONObject, rc: RequestContext, inner: View) -> JSONObject:
        _only(arguments, {"query", "limit"})
        query = arguments.get("query")
        if not isinstance(query, str) or not query.strip():
            raise InvalidArguments(f"{FIND_TOOLS} needs a non-empty string 'query'")
        if len(query) > MAX_QUERY:
            raise InvalidArguments(f"'query' is at most {MAX_QUERY} characters")
        limit = arguments.get("limit", DEFAULT_FOUND)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_FOUND:
            raise InvalidArguments(f"'limit' is a whole number from 1 to {MAX_FOUND}")
        snapshot = self._snapshot()
        shown = shown_names(inner, snapshot)
        visible = self._visible(rc, snapshot)

        def keep(tool: ExposedItem) -> bool:
            return (shown is None or tool.exposed in shown) and visible(tool)

        hits = self._search.search(query, limit=limit, kinds=("tool",), keep_tool=keep)
        found = [
            {
                "name": shown[hit.name] if shown is not None else hit.name,
                "title": hit.title,
                "description": hit.description,
                "score": round(hit.score, 4),
            }
            for hit in hits
        ]
        return _structured({"tools": found})

    def _describe(self, arguments: JSONObject, rc: RequestContext, inner: View) -> JSONObject:
        _only(arguments, {"name"})
        name = arguments.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidArguments(f"{DESCRIBE_TOOL} needs a string 'name'")
        snapshot = self._snapshot()
        tool = snapshot.tool(inner.tool_name(snapshot, name))
        shown = shown_names(inner, snapshot)
        if (
            tool is None
            or (shown is not None and tool.exposed not in shown)
            or not self._visible(rc, snapshot)(tool)
        ):
            raise UnknownTool(name)
        definition = tool.upstream_definition if isinstance(inner, ServerView) else tool.definition
        return _structured({**definition, "name": name})

    async def _ask(self, arguments: JSONObject, rc: RequestContext) -> JSONObject:
        _only(arguments, {"name", "reason", "duration_seconds"})
        assert self._request_access is not None
        name, reason, duration = (
            arguments.get("name"),
            arguments.get("reason"),
            arguments.get("duration_seconds"),
        )
        if not isinstance(name, str) or not name:
            raise InvalidArguments(f"{REQUEST_ACCESS} needs a string 'name'")
        if not isinstance(reason, str) or not reason.strip():
            raise InvalidArguments(f"{REQUEST_ACCESS} needs a 'reason' saying why")
        if duration is not None and (isinstance(duration, bool) or not isinstance(duration, int)):
            raise InvalidArguments("'duration_seconds' is a whole number of seconds")
        snapshot = self._snapshot()
        target = rc.view.tool_name(snapshot, name) if rc.view is not None else name
        if target.startswith("__"):
            target = name  # a toolset's unknown name: record what was asked for
        try:
            request = await self._request_access(
                rc.principal, target, reason=reason, duration_seconds=duration
            )
        except ValueError as exc:  # the service's AccessRequestError: says what is wrong with the request
            raise InvalidArguments(str(exc)) from None
        return _structured(
            {
                "request": request.id,
                "status": request.status,
                "target": request.target,
                "message": (
                    "Your request is recorded; an approver will grant or decline it. "
                    "Once granted, the tool appears in tollhouse__find_tools."
                    if request.status == "pending"
                    else f"This request is {request.status}."
                ),
            }
        )


def _structured(value: JSONObject) -> JSONObject:
    """A tool result carrying `value` as structured content and, for older clients, as JSON text."""
    return {
        "content": [{"type": "text", "text": orjson.dumps(value).decode()}],
        "structuredContent": value,
        "isError": False,
    }


def _only(arguments: JSONObject, allowed: set[str]) -> None:
    unknown = sorted(set(arguments) - allowed)
    if unknown:
        raise InvalidArguments(f"Unknown argument(s): {', '.join(unknown)}", {"allowed": sorted(allowed)})


def _call_arguments(arguments: JSONObject) -> tuple[str, JSONObject]:
    _only(arguments, {"name", "arguments"})
    name, inner = arguments.get("name"), arguments.get("arguments", {})
    if not isinstance(name, str) or not name:
        raise InvalidArguments(f"{CALL_TOOL} needs a string 'name'")
    if not isinstance(inner, dict):
        raise InvalidArguments(f"{CALL_TOOL} 'arguments' must be an object")
    return name, inner
