"""Snapshot: the immutable, versioned view of every live upstream's catalog.

Requests are served from the current snapshot only (no database reads on the request
path). A change anywhere builds a new snapshot and swaps it in atomically.

Names: tools and prompts are exposed as `{server}__{name}`; resource URIs as
`tollhouse://{server}/{original uri}` (reversible: server names contain no `/`).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from tollhouse.registry.models import MAX_EXPOSED_NAME, SEPARATOR, JSONObject, Toolset, UpstreamCatalog

__all__ = [
    "RESOURCE_SCHEME",
    "ExposedItem",
    "PinView",
    "ServerSlice",
    "Snapshot",
    "build_snapshot",
    "expose_uri",
    "keyset_page",
    "split_exposed_name",
    "split_exposed_uri",
]

RESOURCE_SCHEME = "tollhouse://"


def split_exposed_name(exposed: str) -> tuple[str, str] | None:
    """`server__tool` -> (server, tool); the first `__` splits, since server names have no `_`."""
    server, sep, name = exposed.partition(SEPARATOR)
    if not sep or not server or not name:
        return None
    return server, name


def expose_uri(server: str, uri: str) -> str:
    """The gateway's URI for an upstream resource URI (or URI template)."""
    return f"{RESOURCE_SCHEME}{server}/{uri}"


def split_exposed_uri(uri: str) -> tuple[str, str] | None:
    """Reverse of `expose_uri`: (server, upstream uri), or None if it is not ours."""
    if not uri.startswith(RESOURCE_SCHEME):
        return None
    server, sep, original = uri[len(RESOURCE_SCHEME) :].partition("/")
    if not sep or not server or not original:
        return None
    return server, original


@dataclass(frozen=True, slots=True)
class ExposedItem:
    """A tool or prompt as the gateway exposes it, with where it comes from."""

    exposed: str
    server: str
    name: str
    definition: JSONObject  # the downstream view (name rewritten)
    upstream_definition: JSONObject
    # Pinning (gateway/pinning.py): approved, or why it is held back: pending, changed,
    # rejected, or held (the server's instructions await approval).
    pin: str = "approved"


@dataclass(frozen=True)
class PinView:
    """What pinning lets through, per server: each current tool's pin status, and held servers.

    A tool is served only when its status is "approved" and its server is not held; a tool a
    server lists but `tools` does not mention is treated as pending (fail closed).
    """

    tools: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    held: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ServerSlice:
    """One live upstream's items under their original names, ordered by name (per-server endpoint)."""

    tools: tuple[ExposedItem, ...] = ()
    prompts: tuple[ExposedItem, ...] = ()
    resources: tuple[JSONObject, ...] = ()
    resource_templates: tuple[JSONObject, ...] = ()
    tool_names: tuple[str, ...] = ()
    prompt_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Snapshot:
    """One consistent view of the live catalog; never mutated after construction."""

    version: int
    live: frozenset[str]
    tools: tuple[ExposedItem, ...] = ()
    prompts: tuple[ExposedItem, ...] = ()
    resources: tuple[JSONObject, ...] = ()
    resource_templates: tuple[JSONObject, ...] = ()
    capabilities: Mapping[str, JSONObject] = field(default_factory=dict)
    servers: Mapping[str, ServerSlice] = field(default_factory=dict)
    toolsets: Mapping[str, Toolset] = field(default_factory=dict)
    _tool_index: Mapping[str, ExposedItem] = field(default_factory=dict)
    _held_index: Mapping[str, ExposedItem] = field(default_factory=dict)
    _prompt_index: Mapping[str, ExposedItem] = field(default_factory=dict)
    _tool_names: tuple[str, ...] = ()
    _prompt_names: tuple[str, ...] = ()

    def tool(self, exposed: str) -> ExposedItem | None:
        """The live tool with this exposed name, or None."""
        return self._tool_index.get(exposed)

    def held_tool(self, exposed: str) -> ExposedItem | None:
        """A tool of a live upstream that pinning holds back (never listed), or None."""
        return self._held_index.get(exposed)

    def prompt(self, exposed: str) -> ExposedItem | None:
        """The live prompt with this exposed name, or None."""
        return self._prompt_index.get(exposed)

    def tools_after(
        self, after: str | None, limit: int, keep: Callable[[ExposedItem], bool] | None = None
    ) -> tuple[tuple[ExposedItem, ...], str | None]:
        """A page of tools ordered by exposed name, after the name `after` (keyset paging)."""
        return keyset_page(self.tools, self._tool_names, after, limit, keep)

    def prompts_after(
        self, after: str | None, limit: int, keep: Callable[[ExposedItem], bool] | None = None
    ) -> tuple[tuple[ExposedItem, ...], str | None]:
        """A page of prompts ordered by exposed name."""
        return keyset_page(self.prompts, self._prompt_names, after, limit, keep)

    def tool_fingerprint(self) -> frozenset[tuple[str, str]]:
        """(name, definition identity) pairs: equal fingerprints mean an unchanged tool list."""
        return frozenset((t.exposed, repr(sorted(t.definition.items()))) for t in self.tools)


def keyset_page(
    items: tuple[ExposedItem, ...],
    names: tuple[str, ...],
    after: str | None,
    limit: int,
    keep: Callable[[ExposedItem], bool] | None = None,
) -> tuple[tuple[ExposedItem, ...], str | None]:
    """Items after the name `after` (names sorted, parallel to items), and the last name if more follow.

    With `keep`, only the items it accepts count (a caller's visible tools): pages stay full and
    the cursor names the last item shown, so filtering never skips or repeats an item.
    """
    start = bisect.bisect_right(names, after) if after is not None else 0
    if keep is None:
        page = items[start : start + limit]
        more = start + limit < len(items)
        return page, (page[-1].exposed if more and page else None)
    shown: list[ExposedItem] = []
    position = start
    while position < len(items) and len(shown) < limit:
        if keep(items[position]):
            shown.append(items[position])
        position += 1
    more = any(keep(item) for item in items[position:])
    return tuple(shown), (shown[-1].exposed if more and shown else None)


def _exposed(server: str, definition: JSONObject, key: str, value: Any) -> JSONObject:
    out = dict(definition)
    out[key] = value
    return out


def build_snapshot(
    version: int,
    catalogs: Mapping[str, UpstreamCatalog],
    live: Iterable[str],
    toolsets: Iterable[Toolset] = (),
    pins: PinView | None = None,
) -> Snapshot:
    """Merge the catalogs of the live upstreams into one snapshot with exposed names.

    With `pins`, only approved tools are served; the others go to the held index (a call gets
    "pending approval"), and a held server contributes nothing else (it is not `live`).
    """
    held_servers = frozenset(pins.held) & frozenset(live) if pins is not None else frozenset()
    held: list[ExposedItem] = []
    for server in sorted(held_servers):
        catalog = catalogs.get(server)
        for tool in catalog.tools if catalog is not None else ():
            exposed = f"{server}{SEPARATOR}{tool['name']}"
            if len(exposed) <= MAX_EXPOSED_NAME:
                held.append(
                    ExposedItem(
                        exposed, server, tool["name"], _exposed(server, tool, "name", exposed), tool, "held"
                    )
                )
    live_set = frozenset(live) - held_servers
    tools: list[ExposedItem] = []
    prompts: list[ExposedItem] = []
    resources: list[JSONObject] = []
    templates: list[JSONObject] = []
    capabilities: dict[str, JSONObject] = {}
    for server in sorted(live_set):
        catalog = catalogs.get(server)
        if catalog is None:
            continue
        capabilities[server] = catalog.capabilities
        for tool in catalog.tools:
            exposed = f"{server}{SEPARATOR}{tool['name']}"
            if len(exposed) > MAX_EXPOSED_NAME:
                continue  # model APIs refuse longer function names; the pool logs it at sync
            status = "approved" if pins is None else pins.tools.get(server, {}).get(tool["name"], "pending")
            item = ExposedItem(
                exposed, server, tool["name"], _exposed(server, tool, "name", exposed), tool, status
            )
            (tools if status == "approved" else held).append(item)
        for prompt in catalog.prompts:
            exposed = f"{server}{SEPARATOR}{prompt['name']}"
            prompts.append(
                ExposedItem(
                    exposed, server, prompt["name"], _exposed(server, prompt, "name", exposed), prompt
                )
            )
        resources.extend(_exposed(server, r, "uri", expose_uri(server, r["uri"])) for r in catalog.resources)
        templates.extend(
            _exposed(server, t, "uriTemplate", expose_uri(server, t["uriTemplate"]))
            for t in catalog.resource_templates
        )
    tools.sort(key=lambda t: t.exposed)
    prompts.sort(key=lambda p: p.exposed)
    servers: dict[str, ServerSlice] = {}
    for server in sorted(live_set):
        catalog = catalogs.get(server)
        if catalog is None:
            continue
        own_tools = tuple(sorted((t for t in tools if t.server == server), key=lambda t: t.name))
        own_prompts = tuple(sorted((p for p in prompts if p.server == server), key=lambda p: p.name))
        servers[server] = ServerSlice(
            tools=own_tools,
            prompts=own_prompts,
            resources=tuple(catalog.resources),
            resource_templates=tuple(catalog.resource_templates),
            tool_names=tuple(t.name for t in own_tools),
            prompt_names=tuple(p.name for p in own_prompts),
        )
    return Snapshot(
        version=version,
        live=live_set,
        tools=tuple(tools),
        prompts=tuple(prompts),
        resources=tuple(resources),
        resource_templates=tuple(templates),
        capabilities=MappingProxyType(capabilities),
        servers=MappingProxyType(servers),
        toolsets=MappingProxyType({t.name: t for t in toolsets}),
        _tool_index=MappingProxyType({t.exposed: t for t in tools}),
        _held_index=MappingProxyType({t.exposed: t for t in held}),
        _prompt_index=MappingProxyType({p.exposed: p for p in prompts}),
        _tool_names=tuple(t.exposed for t in tools),
        _prompt_names=tuple(p.exposed for p in prompts),
    )
