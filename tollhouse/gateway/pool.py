"""UpstreamPool: the live connectors, their catalogs and health, and the current snapshot.

It owns one connector per registered upstream, syncs catalogs (on registration, at start,
on an upstream's list_changed, and periodically), tracks health, reconnects with backoff
when an upstream goes down, and swaps in a new Snapshot whenever the live view changes.
Every background task lives in the pool's task group, opened by `run()`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import anyio
from anyio.abc import TaskGroup

from tollhouse.gateway.errors import GatewayError, UpstreamRpcError, UpstreamUnavailable
from tollhouse.gateway.pinning import Pinning
from tollhouse.gateway.settings import UpstreamDefaults
from tollhouse.gateway.snapshot import Snapshot, build_snapshot
from tollhouse.gateway.upstream import Redescribing, ServerDescription, UpstreamConnector
from tollhouse.registry.models import (
    MAX_EXPOSED_NAME,
    SEPARATOR,
    Health,
    JSONObject,
    Toolset,
    Upstream,
    UpstreamCatalog,
)
from tollhouse.registry.pin_store import Decision, MemoryPinStore, PinStore
from tollhouse.registry.pins import Pin, PinKind
from tollhouse.registry.store import RegistryStore

__all__ = ["ConnectorFactory", "ResourceListener", "SyncResult", "UpstreamPool"]

logger = logging.getLogger("tollhouse.upstreams")

ConnectorFactory = Callable[[Upstream], UpstreamConnector]
SnapshotListener = Callable[[Snapshot, Snapshot], Awaitable[None]]
# (server, upstream uri) of a notifications/resources/updated
ResourceListener = Callable[[str, str], Awaitable[None]]

_LIST_METHODS: tuple[tuple[str, str, str, str], ...] = (
    # (capability, method, result key, catalog field)
    ("tools", "tools/list", "tools", "tools"),
    ("resources", "resources/list", "resources", "resources"),
    ("resources", "resources/templates/list", "resourceTemplates", "resource_templates"),
    ("prompts", "prompts/list", "prompts", "prompts"),
)
_LIST_CHANGED = {
    "notifications/tools/list_changed",
    "notifications/prompts/list_changed",
    "notifications/resources/list_changed",
}


@dataclass(frozen=True)
class SyncResult:
    """Counts after a catalog sync, and the snapshot version it went live in."""

    server: str
    snapshot_version: int
    tools: int
    resources: int
    resource_templates: int
    prompts: int


class UpstreamPool:
    """Live upstream connectors and the snapshot built from their catalogs."""

    def __init__(
        self,
        store: RegistryStore,
        connector_factory: ConnectorFactory,
        defaults: UpstreamDefaults,
        pins: PinStore | None = None,
    ) -> None:
        self._store = store
        # Without a pin store pins live in memory: still enforced, forgotten at exit.
        self._pinning = Pinning(pins if pins is not None else MemoryPinStore())
        self._factory = connector_factory
        self._defaults = defaults
        self._upstreams: dict[str, Upstream] = {}
        self._connectors: dict[str, UpstreamConnector] = {}
        self._descriptions: dict[str, ServerDescription] = {}
        self._catalogs: dict[str, UpstreamCatalog] = {}
        self._health: dict[str, Health] = {}
        self._live: set[str] = set()
        self._scopes: dict[str, anyio.CancelScope] = {}
        self._reconnecting: set[str] = set()
        self._toolsets: dict[str, Toolset] = {}
        self._failures: dict[str, int] = {}
        self._resource_subs: dict[str, dict[str, int]] = {}
        self._resource_listeners: list[ResourceListener] = []
        self._probing: set[str] = set()
        self._fail_closed: set[str] = set()  # registered upstreams with failure_mode "closed"
        self._version = 0
        self._snapshot = build_snapshot(0, {}, ())
        self._listeners: list[SnapshotListener] = []
        self._tg: TaskGroup | None = None
        self._lock = anyio.Lock()

    # -- reading ---------------------------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot:
        """The current snapshot (replaced, never mutated)."""
        return self._snapshot

    def connector(self, server: str) -> UpstreamConnector:
        """The connector of a live upstream.

        Raises:
            UpstreamUnavailable: the upstream is unknown or down.
        """
        connector = self._connectors.get(server)
        if connector is None or server not in self._live:
            raise UpstreamUnavailable(server)
        return connector

    def upstreams(self) -> list[Upstream]:
        """Registered upstreams, by name."""
        return [self._upstreams[n] for n in sorted(self._upstreams)]

    def upstream(self, name: str) -> Upstream | None:
        """One registered upstream."""
        return self._upstreams.get(name)

    def down_fail_closed(self) -> list[str]:
        """Enabled fail-closed upstreams that are not live, by name: each one blocks aggregate lists.

        O(number of fail-closed upstreams), so nothing is done when every upstream fails open.
        """
        if not self._fail_closed:
            return []
        return sorted(n for n in self._fail_closed if n not in self._live and self._upstreams[n].enabled)

    def health(self, name: str) -> Health:
        """Last observed health of an upstream."""
        return self._health.get(name, Health())

    def breaker(self, name: str) -> tuple[str, int]:
        """The circuit breaker of an upstream: ("open" while it is down, else "closed"), failures in a row.

        While open, the reconnect loop is the half-open probe: its first success closes it.
        """
        state = "open" if self.health(name).status == "down" else "closed"
        return state, self._failures.get(name, 0)

    def description(self, name: str) -> ServerDescription | None:
        """What the upstream said about itself at its last handshake."""
        return self._descriptions.get(name)

    def catalog(self, name: str) -> UpstreamCatalog | None:
        """The last synced catalog of an upstream."""
        return self._catalogs.get(name)

    def on_resource_updated(self, listener: ResourceListener) -> None:
        """Call `listener(server, uri)` for each `notifications/resources/updated` an upstream sends."""
        self._resource_listeners.append(listener)

    async def subscribe_resource(self, server: str, uri: str) -> None:
        """Count one more subscriber of `uri` on `server`; the first one subscribes upstream.

        Raises:
            UpstreamUnavailable: the upstream is not live.
        """
        self.connector(server)  # live, or raise
        counts = self._resource_subs.setdefault(server, {})
        counts[uri] = counts.get(uri, 0) + 1
        if counts[uri] == 1:
            await self._apply_resources(server)

    async def unsubscribe_resource(self, server: str, uri: str) -> None:
        """Count one subscriber less; the last one unsubscribes upstream."""
        counts = self._resource_subs.get(server, {})
        if uri not in counts:
            return
        counts[uri] -= 1
        if counts[uri] <= 0:
            del counts[uri]
            await self._apply_resources(server)

    async def _apply_resources(self, server: str) -> None:
        connector = self._connectors.get(server)
        if connector is None or server not in self._live:
            return  # applied again when it reconnects
        try:
            await connector.set_resource_subscriptions(sorted(self._resource_subs.get(server, {})))
        except GatewayError as exc:
            logger.warning("upstream %s: resource subscriptions not applied: %s", server, exc.message)

    def known_but_down(self, exposed: str) -> bool:
        """True when `exposed` names a tool of a registered upstream that is not live now."""
        server, _, tool = exposed.partition("__")
        catalog = self._catalogs.get(server)
        if server in self._live or server not in self._upstreams or catalog is None:
            return False
        return any(t.get("name") == tool for t in catalog.tools)

    def subscribe(self, listener: SnapshotListener) -> None:
        """Call `listener(old, new)` after every snapshot swap."""
        self._listeners.append(listener)

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Load the registry, connect every enabled upstream, then keep them in sync until cancelled."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            self._catalogs.update(await self._store.load_catalogs())
            await self._pinning.load()
            upstreams = await self._store.list_upstreams()
            async with anyio.create_task_group() as start_tg:
                for upstream in upstreams:
                    self._register(upstream)
                    if upstream.enabled:
                        start_tg.start_soon(self._connect_and_sync, upstream.name)
            await self._rebuild()
            tg.start_soon(self._periodic_sync)
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    for name in list(self._connectors):
                        await self._close_connector(name)

    async def add(self, upstream: Upstream) -> SyncResult | None:
        """Register (or replace) an upstream and bring it live; None if it is disabled or down."""
        await self._close_connector(upstream.name)
        self._register(upstream)
        if not upstream.enabled:
            await self._rebuild()
            return None
        ok = await self._connect_and_sync(upstream.name)
        await self._rebuild()
        return self._result(upstream.name) if ok else None

    async def remove(self, name: str, *, stored: bool = True) -> None:
        """Forget an upstream: close its connector and drop it from the snapshot.

        `stored=False`: another replica removed it; only this replica's state goes.
        """
        await self._close_connector(name)
        self._upstreams.pop(name, None)
        self._fail_closed.discard(name)
        self._catalogs.pop(name, None)
        self._health.pop(name, None)
        self._descriptions.pop(name, None)
        await self._pinning.forget(name, stored=stored)
        await self._rebuild()

    async def follow(self) -> None:
        """Catch up with registry changes another replica made: upstreams, pins, toolsets.

        The database is the truth: upstreams gone from it are dropped here, new or changed
        ones are (re)connected and synced, and pins and toolsets are re-read. Ends with one
        snapshot swap that shows all of it.
        """
        stored = {u.name: u for u in await self._store.list_upstreams()}
        # Decisions (approve/reject) and first-use pins made elsewhere, before any sync here.
        await self._pinning.load()
        for name in [n for n in self._upstreams if n not in stored]:
            await self.remove(name, stored=False)
        changed = [
            upstream
            for name, upstream in stored.items()
            # updated_at included: a changed credential (stored apart) still marks the upstream changed
            if name not in self._upstreams or self._upstreams[name] != upstream
        ]
        async with anyio.create_task_group() as tg:
            for upstream in changed:
                tg.start_soon(self._follow_one, upstream)
        self._toolsets = {t.name: t for t in await self._store.list_toolsets()}
        await self._rebuild()

    async def _follow_one(self, upstream: Upstream) -> None:
        await self._close_connector(upstream.name)
        self._register(upstream)
        if upstream.enabled:
            await self._connect_and_sync(upstream.name)

    async def refresh(self, name: str) -> SyncResult:
        """Sync one upstream now; returns after the new catalog is live.

        Raises:
            UpstreamUnavailable: it cannot be reached.
        """
        if name not in self._upstreams:
            raise UpstreamUnavailable(name)
        if name in self._connectors and name in self._live:
            try:
                await self._sync(name)
            except GatewayError as exc:
                await self.mark_down(name, exc)
                raise UpstreamUnavailable(name) from exc
        else:
            await self._close_connector(name)
            if not await self._connect_and_sync(name):
                raise UpstreamUnavailable(name)
        await self._rebuild()
        return self._result(name)

    async def set_toolsets(self, toolsets: Iterable[Toolset]) -> None:
        """Replace the toolsets served at /mcp/{toolset}."""
        self._toolsets = {t.name: t for t in toolsets}
        await self._rebuild()

    def report_success(self, name: str) -> None:
        """A call to `name` worked: close the breaker's count and clear a degraded state."""
        if name in self._failures:
            del self._failures[name]
            if self._health.get(name, Health()).status == "degraded" and self._tg is not None:
                # Off the request path: the call returns now, the state is recorded after.
                self._tg.start_soon(self._set_health, name, "healthy", None)

    async def report_failure(self, name: str, error: GatewayError) -> None:
        """A call to `name` failed at the transport: probe it, and take it down if the probe fails.

        One broken stream is not an outage: when the probe answers, the upstream stays live
        as "degraded". After `breaker_threshold` consecutive failures the breaker opens
        (down) whatever the probe says; the reconnect loop is its half-open probe.
        """
        if name not in self._live or name in self._probing:
            return
        count = self._failures.get(name, 0) + 1
        self._failures[name] = count
        if count >= self._defaults.breaker_threshold:
            await self.mark_down(name, error)
            return
        self._probing.add(name)
        try:
            connector = self._connectors.get(name)
            description = self._descriptions.get(name)
            if connector is None or description is None:
                return
            method = next(
                (m for cap, m, _, _ in _LIST_METHODS if cap in description.capabilities), "tools/list"
            )
            upstream = self._upstreams[name]
            try:
                with anyio.fail_after(upstream.connect_timeout_seconds):
                    await connector.request(method, {}, timeout_seconds=upstream.connect_timeout_seconds)
            except (GatewayError, TimeoutError) as probe_error:
                if not isinstance(probe_error, UpstreamRpcError):  # an answer, even an error, is alive
                    await self.mark_down(name, error)
                    return
            await self._set_health(name, "degraded", error.message)
        finally:
            self._probing.discard(name)

    async def mark_down(self, name: str, error: BaseException | str) -> None:
        """Take an upstream out of the snapshot and start reconnecting in the background."""
        if name not in self._live:
            return
        self._live.discard(name)
        self._failures.pop(name, None)
        # The snapshot first: a request must never see "down" and the old tool list together.
        await self._rebuild()
        await self._set_health(name, "down", _describe(error))
        if self._tg is not None and name in self._upstreams:
            self._tg.start_soon(self._reconnect, name)

    async def end_session(self, session_key: str) -> None:
        """Close the upstream sessions bound to a downstream session, on every upstream."""
        for connector in list(self._connectors.values()):
            with anyio.move_on_after(2):
                await connector.end_session(session_key)

    # -- internals -------------------------------------------------------------------------

    def _result(self, name: str) -> SyncResult:
        cat = self._catalogs.get(name, UpstreamCatalog(server=name))
        return SyncResult(
            name,
            self._snapshot.version,
            len(cat.tools),
            len(cat.resources),
            len(cat.resource_templates),
            len(cat.prompts),
        )

    async def _connect_and_sync(self, name: str, *, retry: bool = True) -> bool:
        upstream = self._upstreams[name]
        connector = self._factory(upstream)
        try:
            with anyio.fail_after(upstream.connect_timeout_seconds + upstream.call_timeout_seconds):
                self._descriptions[name] = await connector.start()
                self._connectors[name] = connector
                await self._sync(name, rebuild=False, redescribe=False)
        except (GatewayError, TimeoutError, OSError) as exc:
            with anyio.CancelScope(shield=True):
                await connector.aclose()
            self._connectors.pop(name, None)
            self._live.discard(name)
            await self._set_health(name, "down", _describe(exc))
            if retry:
                logger.warning("upstream %s is down: %s", name, _describe(exc))
                if self._tg is not None:
                    self._tg.start_soon(self._reconnect, name)
            return False
        self._live.add(name)
        await self._set_health(name, "healthy", None)
        self._start_watch(name, connector)
        if self._resource_subs.get(name):
            await self._apply_resources(name)
        return True

    async def _sync(self, name: str, *, rebuild: bool = True, redescribe: bool = True) -> None:
        connector = self._connectors[name]
        # Just connected, the description is fresh; later syncs learn a changed card.
        if redescribe and isinstance(connector, Redescribing):
            self._descriptions[name] = await connector.describe()
        description = self._descriptions[name]
        lists: dict[str, tuple[JSONObject, ...]] = {}
        for capability, method, key, field_name in _LIST_METHODS:
            if capability in description.capabilities:
                lists[field_name] = tuple(await connector.list_all(method, key))
        catalog = UpstreamCatalog(
            server=name,
            capabilities=description.capabilities,
            server_info=description.server_info,
            instructions=description.instructions,
            protocol_version=description.protocol_version,
            synced_at=datetime.now(UTC),
            card=description.card,
            **lists,
        )
        upstream = self._upstreams.get(name)
        if upstream is None:
            return  # removed while its lists were read
        previous = self._catalogs.get(name)
        others = [
            f"{server}{SEPARATOR}{tool.get('name')}"
            for server, other in self._catalogs.items()
            if server != name
            for tool in other.tools
        ]
        await self._pinning.sync(
            upstream,
            catalog,
            (str(t.get("name")) for t in previous.tools) if previous else (),
            others,
        )
        # No await since the pins were folded: a snapshot never pairs this catalog with older pins.
        self._catalogs[name] = catalog
        for tool in catalog.tools:
            if len(name) + len(SEPARATOR) + len(str(tool.get("name"))) > MAX_EXPOSED_NAME:
                logger.warning(
                    "upstream %s: tool %r is not exposed: its name is too long", name, tool.get("name")
                )
        await self._store.save_catalog(catalog)
        if rebuild:
            await self._rebuild()

    def _start_watch(self, name: str, connector: UpstreamConnector) -> None:
        if self._tg is None:
            return
        scope = anyio.CancelScope()
        self._scopes[name] = scope
        self._tg.start_soon(self._watch_loop, name, connector, scope)

    async def _watch_loop(self, name: str, connector: UpstreamConnector, scope: anyio.CancelScope) -> None:
        """Keep a notification stream open; when it ends or breaks, probe, then reopen with backoff."""
        failures = 0
        with scope:
            while True:
                opened = anyio.current_time()
                try:
                    await connector.watch(lambda method, params: self._on_notification(name, method, params))
                except GatewayError:
                    pass  # decided by the probe below
                except Exception:  # a broken stream must not take the pool down
                    logger.exception("watch of %s failed", name)
                if anyio.current_time() - opened > 30:
                    failures = 0
                # A stream that ends may mean the upstream went away: a list call decides.
                try:
                    await self._sync(name)
                except GatewayError as exc:
                    await self.mark_down(name, exc)
                    return
                failures += 1
                await anyio.sleep(
                    min(self._defaults.retry_min_seconds * 2**failures, self._defaults.retry_max_seconds)
                )

    async def _on_notification(self, name: str, method: str, params: JSONObject) -> None:
        if method == "notifications/resources/updated" and isinstance(params.get("uri"), str):
            for listener in list(self._resource_listeners):
                await listener(name, params["uri"])
            return
        if method in _LIST_CHANGED and name in self._live:
            try:
                await self._sync(name)
            except GatewayError as exc:
                await self.mark_down(name, exc)

    async def _probe(self, name: str) -> None:
        if name not in self._live:
            return
        try:
            await self._sync(name)
        except GatewayError as exc:
            await self.mark_down(name, exc)

    async def _reconnect(self, name: str) -> None:
        if name in self._reconnecting:
            return
        self._reconnecting.add(name)
        try:
            await self._reconnect_loop(name)
        finally:
            self._reconnecting.discard(name)

    async def _reconnect_loop(self, name: str) -> None:
        delay = self._defaults.retry_min_seconds
        while name in self._upstreams and name not in self._live:
            await anyio.sleep(delay)
            if name not in self._upstreams or name in self._live:
                return
            await self._close_connector(name, keep_health=True)
            upstream = self._upstreams.get(name)
            if upstream is None or not upstream.enabled:
                return
            if await self._connect_and_sync(name, retry=False):
                await self._rebuild()
                logger.info(
                    "upstream %s is back (%s)",
                    name,
                    self._upstreams[name].url or self._upstreams[name].command,
                )
                return
            delay = min(delay * 2, self._defaults.retry_max_seconds)

    async def _periodic_sync(self) -> None:
        while True:
            await anyio.sleep(self._defaults.sync_interval_seconds)
            for name in sorted(self._live):
                await self._probe(name)

    async def _close_connector(self, name: str, *, keep_health: bool = False) -> None:
        scope = self._scopes.pop(name, None)
        if scope is not None:
            scope.cancel()
        connector = self._connectors.pop(name, None)
        self._live.discard(name)
        if connector is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await connector.aclose()

    async def _set_health(self, name: str, status: str, error: str | None) -> None:
        if self._health.get(name, Health()).status != status:
            logger.info("upstream %s is %s%s", name, status, f": {error}" if error else "")
        health = Health(status=status, last_error=error, checked_at=datetime.now(UTC))  # type: ignore[arg-type]
        self._health[name] = health
        if name in self._upstreams:
            with anyio.CancelScope(shield=True):
                await self._store.set_health(name, health)

    async def _rebuild(self) -> None:
        async with self._lock:
            old = self._snapshot
            live = {n for n in self._live if n in self._upstreams and self._upstreams[n].enabled}
            self._version += 1
            new = build_snapshot(
                self._version, self._catalogs, live, self._toolsets.values(), self._pinning.view()
            )
            self._snapshot = new
        for listener in list(self._listeners):
            await listener(old, new)

    # -- pins ------------------------------------------------------------------------------

    @property
    def pinning(self) -> Pinning:
        """The pins of every server (read them here; decide through `decide`)."""
        return self._pinning

    async def decide(
        self, server: str, kind: PinKind, name: str, decision: Decision, by: str, sha256: str | None = None
    ) -> Pin | None:
        """Approve or reject a pin as `by`; returns after a snapshot with the decision is live.

        Raises:
            PinConflictError: `sha256` is given and is not the pin's latest definition.
        """
        pin = await self._pinning.decide(server, kind, name, decision, by, sha256)
        if pin is not None:
            await self._rebuild()
        return pin

    def replace_upstream(self, upstream: Upstream) -> None:
        """Update the stored definition of a registered upstream without reconnecting."""
        if upstream.name in self._upstreams:
            self._register(replace(upstream))

    def _register(self, upstream: Upstream) -> None:
        self._upstreams[upstream.name] = upstream
        if upstream.failure_mode == "closed":
            self._fail_closed.add(upstream.name)
        else:
            self._fail_closed.discard(upstream.name)


def _describe(error: BaseException | str) -> str:
    if isinstance(error, str):
        return error
    if isinstance(error, UpstreamUnavailable) and error.reason:
        return error.reason
    if isinstance(error, GatewayError):
        return error.message
    if isinstance(error, TimeoutError):
        return "timed out"
    return type(error).__name__
