"""Views: which part of the snapshot an MCP endpoint shows, and under which names.

- `AggregateView` (`/mcp`): every live upstream, names `{server}__{name}`, URIs
  `tollhouse://{server}/{uri}`.
- `ServerView` (`/servers/{server}/mcp`): one upstream under its original names and URIs.
- `ToolsetView` (`/mcp/{toolset}`): a curated subset of the exposed tools, optionally renamed
  by aliases; it shows tools only.

Whatever the view, a call is resolved to the exposed name `{server}__{tool}`, so policy,
limits and audit see one name per tool. Views are pure: no I/O.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from tollhouse.gateway.snapshot import (
    ExposedItem,
    Snapshot,
    expose_uri,
    keyset_page,
    split_exposed_uri,
)
from tollhouse.registry.models import SEPARATOR, JSONObject, Toolset

__all__ = ["AggregateView", "ServerView", "ToolsetView", "View", "toolset_members"]

Page = tuple[list[JSONObject], str | None]
Keep = Callable[[ExposedItem], bool]


class View(Protocol):
    """What one endpoint shows of a snapshot."""

    @property
    def key(self) -> str:
        """Identifies the endpoint; sessions are bound to it."""
        ...

    def tools(self, snapshot: Snapshot, after: str | None, limit: int, keep: Keep | None = None) -> Page:
        """A page of tool definitions as this view names them (only those `keep` accepts), and the cursor."""
        ...

    def tool_name(self, snapshot: Snapshot, name: str) -> str:
        """The exposed name (`server__tool`) a call to `name` is for; unknown names pass unchanged."""
        ...

    def prompts(self, snapshot: Snapshot, after: str | None, limit: int, keep: Keep | None = None) -> Page:
        """A page of prompt definitions (only those `keep` accepts)."""
        ...

    def prompt(self, snapshot: Snapshot, name: str) -> ExposedItem | None:
        """The prompt called `name` in this view."""
        ...

    def resources(self, snapshot: Snapshot) -> tuple[JSONObject, ...]:
        """Resource definitions, with URIs as this view shows them."""
        ...

    def resource_templates(self, snapshot: Snapshot) -> tuple[JSONObject, ...]:
        """Resource templates, with URI templates as this view shows them."""
        ...

    def route_uri(self, snapshot: Snapshot, uri: str) -> tuple[str, str] | None:
        """(server, upstream URI) for a URI of this view, or None."""
        ...

    def show_uri(self, server: str, uri: str) -> str:
        """The URI this view shows for an upstream URI."""
        ...

    def resource_server(self, uri: str) -> str | None:
        """The upstream a resource (or template) URI of this view belongs to."""
        ...


class AggregateView:
    """Every live upstream, namespaced."""

    key = "aggregate"

    def tools(self, snapshot: Snapshot, after: str | None, limit: int, keep: Keep | None = None) -> Page:
        page, last = snapshot.tools_after(after, limit, keep)
        return [t.definition for t in page], last

    def tool_name(self, snapshot: Snapshot, name: str) -> str:
        return name

    def prompts(self, snapshot: Snapshot, after: str | None, limit: int, keep: Keep | None = None) -> Page:
        page, last = snapshot.prompts_after(after, limit, keep)
        return [p.definition for p in page], last

    def prompt(self, snapshot: Snapshot, name: str) -> ExposedItem | None:
        return snapshot.prompt(name)

    def resources(self, snapshot: Snapshot) -> tuple[JSONObject, ...]:
        return snapshot.resources

    def resource_templates(self, snapshot: Snapshot) -> tuple[JSONObject, ...]:
        return snapshot.resource_templates

    def route_uri(self, snapshot: Snapshot, uri: str) -> tuple[str, str] | None:
        target = split_exposed_uri(uri)
        return target if target is not None and target[0] in snapshot.live else None

    def show_uri(self, server: str, uri: str) -> str:
        return expose_uri(server, uri)

    def resource_server(self, uri: str) -> str | None:
        target = split_exposed_uri(uri)
        return target[0] if target is not None else None


@dataclass(frozen=True)
class ServerView:
    """One upstream under its own names: a drop-in replacement for connecting to it directly."""

    server: str

    @property
    def key(self) -> str:
        """Sessions are bound to the view they were created on."""
        return f"server:{self.server}"

    def tools(self, snapshot: Snapshot, after: str | None, limit: int, keep: Keep | None = None) -> Page:
        own = snapshot.servers.get(self.server)
        if own is None:
            return [], None
        page, last = keyset_page(own.tools, own.tool_names, after, limit, keep)
        return [t.upstream_definition for t in page], (page[-1].name if last is not None and page else None)

    def tool_name(self, snapshot: Snapshot, name: str) -> str:
        return f"{self.server}{SEPARATOR}{name}"

    def prompts(self, snapshot: Snapshot, after: str | None, limit: int, keep: Keep | None = None) -> Page:
        own = snapshot.servers.get(self.server)
        if own is None:
            return [], None
        page, last = keyset_page(own.prompts, own.prompt_names, after, limit, keep)
        return [p.upstream_definition for p in page], (page[-1].name if last is not None and page else None)

    def prompt(self, snapshot: Snapshot, name: str) -> ExposedItem | None:
        return snapshot.prompt(f"{self.server}{SEPARATOR}{name}")

    def resources(self, snapshot: Snapshot) -> tuple[JSONObject, ...]:
        own = snapshot.servers.get(self.server)
        return own.resources if own is not None else ()

    def resource_templates(self, snapshot: Snapshot) -> tuple[JSONObject, ...]:
        own = snapshot.servers.get(self.server)
        return own.resource_templates if own is not None else ()

    def route_uri(self, snapshot: Snapshot, uri: str) -> tuple[str, str] | None:
        return (self.server, uri) if self.server in snapshot.live else None

    def show_uri(self, server: str, uri: str) -> str:
        return uri

    def resource_server(self, uri: str) -> str | None:
        return self.server


def toolset_members(toolset: Toolset, snapshot: Snapshot) -> list[tuple[str, ExposedItem]]:
    """(shown name, tool) for every live tool in the toolset, ordered by shown name."""
    shown_for = {exposed: alias for alias, exposed in toolset.aliases.items()}
    members: dict[str, ExposedItem] = {}
    for tool in snapshot.tools:
        if tool.exposed in shown_for or any(fnmatch.fnmatchcase(tool.exposed, p) for p in toolset.tools):
            members[shown_for.get(tool.exposed, tool.exposed)] = tool
    return sorted(members.items())


@dataclass(frozen=True)
class ToolsetView:
    """A curated subset of tools; prompts and resources are not part of a toolset."""

    name: str

    @property
    def key(self) -> str:
        """Sessions are bound to the view they were created on."""
        return f"toolset:{self.name}"

    def _members(self, snapshot: Snapshot) -> list[tuple[str, ExposedItem]]:
        toolset = snapshot.toolsets.get(self.name)
        return toolset_members(toolset, snapshot) if toolset is not None else []

    def tools(self, snapshot: Snapshot, after: str | None, limit: int, keep: Keep | None = None) -> Page:
        members = [
            (shown, tool)
            for shown, tool in self._members(snapshot)
            if (after is None or shown > after) and (keep is None or keep(tool))
        ]
        page = members[:limit]
        last = page[-1][0] if len(members) > limit and page else None
        return [{**tool.definition, "name": shown} for shown, tool in page], last

    def tool_name(self, snapshot: Snapshot, name: str) -> str:
        for shown, tool in self._members(snapshot):
            if shown == name:
                return tool.exposed
        # A member that pinning holds back is not listed, but a call to it says why (-31020).
        toolset = snapshot.toolsets.get(self.name)
        if toolset is not None:
            exposed = toolset.aliases.get(name, name)
            aliased = name in toolset.aliases or exposed in toolset.aliases.values()
            matched = name in toolset.aliases or (
                not aliased and any(fnmatch.fnmatchcase(exposed, p) for p in toolset.tools)
            )
            if matched and snapshot.held_tool(exposed) is not None:
                return exposed
        return f"{SEPARATOR}{name}"  # never an exposed name: resolves as unknown

    def prompts(self, snapshot: Snapshot, after: str | None, limit: int, keep: Keep | None = None) -> Page:
        return [], None

    def prompt(self, snapshot: Snapshot, name: str) -> ExposedItem | None:
        return None

    def resources(self, snapshot: Snapshot) -> tuple[JSONObject, ...]:
        return ()

    def resource_templates(self, snapshot: Snapshot) -> tuple[JSONObject, ...]:
        return ()

    def route_uri(self, snapshot: Snapshot, uri: str) -> tuple[str, str] | None:
        return None

    def show_uri(self, server: str, uri: str) -> str:
        return uri

    def resource_server(self, uri: str) -> str | None:
        return None
