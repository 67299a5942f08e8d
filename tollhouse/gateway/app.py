"""create_app(settings, deps): the one composition root.

Nothing here is module-level state: two apps in one process share nothing. The lifespan
migrates the database, loads the registry, starts the upstream pool and the session
reaper in one task group, and closes everything on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

import anyio
from opentelemetry.sdk.trace.export import SpanExporter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route, Router, request_response
from starlette.types import ASGIApp, Scope

from tollhouse import __version__
from tollhouse.audit.retention import run_retention
from tollhouse.auth.external import start_all
from tollhouse.auth.middleware import BearerAuthMiddleware
from tollhouse.auth.server import authorization_server_routes, is_dev_loopback
from tollhouse.auth.ssrf import UrlPolicy
from tollhouse.auth.verifiers import TokenVerifier, hash_secret
from tollhouse.gateway.a2a_connector import A2AConnector, TaskRecorder
from tollhouse.gateway.a2a_proxy import A2AProxy
from tollhouse.gateway.access_requests import AccessRequests
from tollhouse.gateway.admin import AdminState, admin_app, apply_loaded
from tollhouse.gateway.admin_catalog import CallerSearch
from tollhouse.gateway.admission import AdmissionService, AdmitStage
from tollhouse.gateway.auditing import build_auditor
from tollhouse.gateway.authorization import AuthorizeStage, PolicyService
from tollhouse.gateway.catalog_search import CatalogSearch
from tollhouse.gateway.changes import (
    AnnounceChanges,
    ChangeFeed,
    Doorbell,
    PostgresDoorbell,
    RedisDoorbell,
    instance_id,
)
from tollhouse.gateway.console import build_console
from tollhouse.gateway.console.signin import CONSOLE_SCOPE, console_client
from tollhouse.gateway.cors import DiscoveryCors
from tollhouse.gateway.credential_wiring import bearer_identify, build_credential_services
from tollhouse.gateway.disclosure import DisclosureView, MetaTools, query_disclosure
from tollhouse.gateway.errors import UpstreamUnavailable
from tollhouse.gateway.front_door import build_front_door, poll_revocations, protected_resource_routes
from tollhouse.gateway.guard_stages import GuardStage, ValidateStage
from tollhouse.gateway.guards import OriginGuard
from tollhouse.gateway.handlers import McpHandlers, RequestContext
from tollhouse.gateway.inflight import InFlight
from tollhouse.gateway.lifecycle import Lifecycle
from tollhouse.gateway.mcp_endpoint import McpEndpoint
from tollhouse.gateway.metering import BudgetStage, UsageStage
from tollhouse.gateway.metrics import register_gateway_metrics
from tollhouse.gateway.parking import Parking
from tollhouse.gateway.pipeline import build_pipeline
from tollhouse.gateway.pool import ConnectorFactory, UpstreamPool
from tollhouse.gateway.sealing import Sealer
from tollhouse.gateway.sessions import SESSION_PURPOSE, DownstreamSession, SessionManager
from tollhouse.gateway.settings import Settings
from tollhouse.gateway.snapshot import ExposedItem, Snapshot
from tollhouse.gateway.sse_upstream import SseUpstream
from tollhouse.gateway.stdio import StdioUpstream
from tollhouse.gateway.streamable_http import HttpUpstream
from tollhouse.gateway.upstream import UpstreamConnector
from tollhouse.gateway.upstream_credentials import UpstreamCredentials
from tollhouse.gateway.usage_service import build_usage
from tollhouse.gateway.views import AggregateView, ServerView, ToolsetView, View
from tollhouse.registry.a2a_task_store import SqlTaskOwners
from tollhouse.registry.access_store import SqlAccessRequestStore
from tollhouse.registry.change_log import ChangeNotice, SqlChangeLog
from tollhouse.registry.config import LoadedConfig
from tollhouse.registry.identity_store import SqlIdentityStore
from tollhouse.registry.limits import SqlLimitStore
from tollhouse.registry.migrate import create_engine_for, database_url_for, upgrade
from tollhouse.registry.models import Upstream
from tollhouse.registry.pin_store import SqlPinStore
from tollhouse.registry.policy_store import SqlPolicyStore
from tollhouse.registry.store import RegistryStore, SqlRegistryStore
from tollhouse.telemetry import CONTENT_TYPE, Telemetry
from tollhouse.tracing import Tracing, current_ids

__all__ = ["ADMIN_TOKEN_SETTING", "Deps", "create_app"]

logger = logging.getLogger("tollhouse")
_REFRESH = re.compile(r"/(servers|agents)/([a-z0-9][a-z0-9-]{0,31})/refresh")
ADMIN_TOKEN_SETTING = "admin_token_sha256"  # noqa: S105 - a settings key, not a secret


@dataclass(frozen=True)
class Deps:
    """The seams; None means "build the real one"."""

    store: RegistryStore | None = None
    connector_factory: ConnectorFactory | None = None
    verifier: TokenVerifier | None = None
    span_exporter: SpanExporter | None = None
    # Shared with the server that runs the app (serve.py): SIGTERM starts the drain.
    lifecycle: Lifecycle | None = None
    # Wall-clock seconds for policy (`context.time`, time-limited grants) and access requests.
    clock: Callable[[], float] | None = None


def _default_connector_factory(
    settings: Settings,
    credentials: UpstreamCredentials | None = None,
    tracing: Tracing | None = None,
    on_task: TaskRecorder | None = None,
) -> ConnectorFactory:
    limit = settings.upstreams.max_response_bytes
    a2a = settings.a2a
    interface_policy = UrlPolicy(
        allow_loopback_http=a2a.interface_allow_loopback_http, allow_private=a2a.interface_allow_private
    )

    def factory(upstream: Upstream) -> UpstreamConnector:
        if upstream.transport == "a2a":
            return A2AConnector(
                upstream,
                credentials=None if credentials is None else credentials.provider(upstream),
                max_response_bytes=limit,
                card_max_bytes=a2a.card_max_bytes,
                interface_policy=interface_policy,
                on_task=on_task,
            )
        if upstream.transport == "stdio":
            return StdioUpstream(upstream, max_message_bytes=limit, tracing=tracing)
        provider = None if credentials is None else credentials.provider(upstream)
        if upstream.transport == "sse":
            return SseUpstream(upstream, max_response_bytes=limit, credentials=provider, tracing=tracing)
        # As many connections as calls may be in flight to it: the cap refuses, a pool would queue.
        cap = (
            upstream.max_in_flight if upstream.max_in_flight is not None else settings.upstreams.max_in_flight
        )
        return HttpUpstream(
            upstream,
            max_response_bytes=limit,
            credentials=provider,
            tracing=tracing,
            # plus a few: a listen stream holds one for as long as it is open
            max_connections=cap + 8 if cap > 0 else 1000,
        )

    return factory


def create_app(
    settings: Settings, deps: Deps | None = None, *, apply_config: LoadedConfig | None = None
) -> ASGIApp:
    """Build the tollhouse ASGI app; `apply_config` is applied at start, as `tollhouse apply` would."""
    deps = deps or Deps()
    lifecycle = deps.lifecycle or Lifecycle()
    database_url = database_url_for(settings.database_url, settings.data_dir)
    engine = create_engine_for(database_url)
    changes = ChangeFeed(
        SqlChangeLog(engine),
        instance_id(settings.node_name),
        doorbell=_doorbell(settings, engine),
        poll_seconds=settings.cluster.change_poll_seconds,
    )
    store = deps.store or SqlRegistryStore(engine)
    identity = SqlIdentityStore(engine)
    door = build_front_door(settings)
    # Upstream credentials: the sealed store (keys from the door's ring), each connector's provider.
    creds = build_credential_services(
        settings, engine, keyring=door.ring, subject_token_for=door.subject_token
    )
    keys = door.api_keys
    verifier = deps.verifier or door.verifier
    # Built before the pool: the connectors open the CLIENT spans.
    tracing = Tracing(
        settings.telemetry, node=settings.node_name, version=__version__, exporter=deps.span_exporter
    )
    owners = SqlTaskOwners(engine)

    async def record_task(agent: str, task_id: str, context_id: str | None, owner: str) -> None:
        await owners.record(agent, task_id, context_id, owner)

    pool = UpstreamPool(
        store,
        deps.connector_factory
        or _default_connector_factory(settings, creds.credentials, tracing, record_task),
        settings.upstreams,
        pins=SqlPinStore(engine),
    )

    async def on_session_close(session: DownstreamSession) -> None:
        for server, uri in list(session.subscriptions):
            await pool.unsubscribe_resource(server, uri)
        await pool.end_session(session.id)

    async def on_resource_updated(server: str, uri: str) -> None:
        sessions.resource_updated(server, uri)

    pool.on_resource_updated(on_resource_updated)

    async def on_session_end(digest: str) -> None:
        await changes.announce("session.ended", digest)

    # Keys from the shared ring: any replica opens what another sealed (sessions, request state).
    sessions = SessionManager(
        idle_seconds=settings.limits.session_idle_seconds,
        max_sessions=settings.limits.max_sessions,
        on_close=on_session_close,
        sealer=Sealer(list(door.ring.derive_all("mcp-session").values()), purpose=SESSION_PURPOSE),
        max_age_seconds=settings.limits.session_max_age_seconds,
        on_end=on_session_end,
    )
    sealer = Sealer(list(door.ring.derive_all("request-state").values()))
    parking = Parking()
    clock = deps.clock or time.time
    policies = PolicyService(SqlPolicyStore(engine), upstream=pool.upstream, clock=clock)
    admission = AdmissionService(
        settings.quotas,
        redis_url=settings.redis_url.get_secret_value() if settings.redis_url else None,
        store=SqlLimitStore(engine),
        client_id_of=_client_id_of(store),
    )
    telemetry = Telemetry(node=settings.node_name, version=__version__, otlp=settings.telemetry)
    usage = build_usage(settings, engine, store, telemetry)
    inflight = InFlight(settings.upstreams, settings.limits, pool.upstream)
    pipeline = build_pipeline(
        pool,
        sealer,
        parking,
        authorize=AuthorizeStage(policies, lambda: pool.snapshot),
        checks=[
            ValidateStage(),
            GuardStage(on_findings=policies.decisions.note_findings),
            AdmitStage(admission, budgets=usage.metering),
            BudgetStage(usage.metering),
        ],
        outer=[UsageStage(usage.metering)],
        inflight=inflight,
        tracing=tracing,
    )
    catalog = CatalogSearch(pool)

    def visible(rc: RequestContext, snapshot: Snapshot) -> Callable[[ExposedItem], bool]:
        facts = policies.facts(rc.principal, source_ip=rc.source_ip, protocol_version=rc.protocol_version)
        return lambda tool: policies.visible_tool(rc.principal, snapshot, tool, facts)

    access = AccessRequests(SqlAccessRequestStore(engine), policies, pool, clock=clock)
    meta = MetaTools(catalog, lambda: pool.snapshot, visible, request_access=access.open)
    handlers = McpHandlers(
        pool,
        pipeline,
        page_size=settings.limits.page_size,
        policies=policies,
        metering=usage.metering,
        meta=meta,
    )
    public = urlsplit(settings.public_url)
    aggregate = AggregateView()

    def resolve_view(scope: Scope) -> View | None:
        params = scope.get("path_params", {})
        disclosure = query_disclosure(scope)
        view: View
        if "server" in params:
            if pool.upstream(params["server"]) is None:
                return None
            view = ServerView(params["server"])
        elif "toolset" in params:
            toolset = pool.snapshot.toolsets.get(params["toolset"])
            if toolset is None:
                return None
            view, disclosure = ToolsetView(toolset.name), disclosure or toolset.disclosure
        else:
            view = aggregate
        return DisclosureView(view, meta.access_requests) if disclosure == "search" else view

    auditor = build_auditor(
        settings, engine, door, trace_ids=current_ids, snapshot_version=lambda: pool.snapshot.version
    )
    # A call's usage event commits in the same transaction as its audit record (M4).
    auditor.trail.carry(usage.metering.writer)
    endpoint = McpEndpoint(handlers, sessions, settings.limits, resolve_view, auditor, tracing)
    a2a_proxy = A2AProxy(
        pool=pool,
        policies=policies,
        admission=admission,
        metering=usage.metering,
        auditor=auditor,
        owners=owners,
        tracing=tracing,
        public_url=settings.public_url,
        max_body_bytes=settings.limits.max_body_bytes,
        push_policy=UrlPolicy(
            allow_loopback_http=settings.a2a.push_allow_loopback_http,
            allow_private=settings.a2a.push_allow_private,
        ),
        inflight=inflight,
    )
    caller_search = CallerSearch(catalog, policies, a2a_proxy.usable)
    admin_state = AdminState(
        store=store,
        pool=pool,
        keys=keys,
        public_url=settings.public_url,
        identity=identity,
        door=door,
        secrets=creds.secrets,
        keyring=creds.keyring,
        policies=policies,
        admission=admission,
        usage=usage,
        auditor=auditor,
        sessions=sessions,
        access=access,
        catalog=caller_search,
    )
    # `keys rotate` swaps the ring: token signing follows (older keys stay in the JWKS).
    admin_state.keyring_listeners.append(door.use_ring)

    async def on_snapshot(old: Snapshot, new: Snapshot) -> None:
        if old.tool_fingerprint() != new.tool_fingerprint() or old.toolsets != new.toolsets:
            sessions.broadcast({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
        if old.prompts != new.prompts:
            sessions.broadcast({"jsonrpc": "2.0", "method": "notifications/prompts/list_changed"})
        if old.resources != new.resources or old.resource_templates != new.resource_templates:
            sessions.broadcast({"jsonrpc": "2.0", "method": "notifications/resources/list_changed"})

    pool.subscribe(on_snapshot)
    closers: list[Callable[[], Awaitable[None]]] = []

    async def follow_registry(notices: Sequence[ChangeNotice]) -> None:
        await pool.follow()
        # `servers refresh` on another replica: re-read the upstream here too (not only its row).
        for name in sorted({m[2] for n in notices if (m := _REFRESH.fullmatch(n.subject))}):
            if pool.upstream(name) is not None:
                with contextlib.suppress(UpstreamUnavailable):
                    await pool.refresh(name)

    async def follow_policies(notices: object) -> None:
        await policies.refresh_if_changed()

    async def follow_limits(notices: object) -> None:
        await admission.refresh_if_changed()

    async def follow_usage(notices: object) -> None:
        await usage.load()

    async def follow_identity(notices: object) -> None:
        # New clients' API keys at once; revocations also arrive by their own poll (≤ 5 s).
        keys.replace(await store.list_clients())

    async def follow_ended_sessions(notices: Sequence[ChangeNotice]) -> None:
        for notice in notices:
            held = sessions.ended(notice.subject, at=notice.at.timestamp())
            if held is not None:
                await sessions.close(held.id, end=False)

    changes.on("registry", follow_registry)
    changes.on("policies", follow_policies)
    changes.on("limits", follow_limits)
    changes.on("usage", follow_usage)
    changes.on("identity", follow_identity)
    changes.on("session.ended", follow_ended_sessions)
    lifecycle.on_drain(sessions.end_streams)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if deps.store is None:
            await anyio.to_thread.run_sync(upgrade, database_url)
        admin_state.admin_token_hash = await _admin_token_hash(settings, store)
        keys.replace(await store.list_clients())
        lifecycle.bind(asyncio.get_running_loop())
        # Changes after this mark are followed even if they land while the rest starts up.
        mark = await changes.mark()
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(auditor.trail.run)
                tg.start_soon(run_retention, auditor.trail, auditor, settings.audit)
                await tg.start(pool.run)
                await pool.set_toolsets(await store.list_toolsets())
                await tg.start(sessions.run)
                await tg.start(parking.run)
                await tg.start(poll_revocations, door, identity, store, settings.auth.revocation_poll_seconds)
                await policies.load()
                tg.start_soon(_follow_policies, policies, settings.auth.revocation_poll_seconds)
                await tg.start(admission.run)
                await tg.start(usage.run, settings.auth.revocation_poll_seconds)
                # An unreachable provider is logged and retried in the background, never fatal.
                await start_all(door.external, task_group=tg)
                max_age = timedelta(seconds=settings.limits.session_max_age_seconds)
                await follow_ended_sessions(await changes.recent("session.ended", max_age))
                await tg.start(changes.run, mark)
                if apply_config is not None:
                    await _apply_at_start(admin_state, apply_config)
                    for topic in ("registry", "policies", "limits", "usage", "identity"):
                        await changes.announce(topic)
                # What start-up built lives as long as the process: keep it out of the garbage
                # collector's full passes (about 100 ms each here, which would stall live calls).
                gc.collect()
                gc.freeze()
                yield
                tg.cancel_scope.cancel()
        finally:
            telemetry.shutdown()
            tracing.shutdown()
            with anyio.CancelScope(shield=True):
                for close in closers:
                    await close()
                await store.close()

    register_gateway_metrics(
        telemetry, pool=pool, sessions=sessions, admission=admission, usage=usage, audit=auditor.trail
    )

    async def metrics(request: Request) -> Response:
        return Response(await telemetry.render(), media_type=CONTENT_TYPE)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> JSONResponse:
        if lifecycle.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        snapshot = pool.snapshot
        return JSONResponse(
            {"status": "ready", "snapshot_version": snapshot.version, "live": sorted(snapshot.live)}
        )

    mcp = OriginGuard(
        BearerAuthMiddleware(endpoint, verifier=verifier, resources=door.resources, failures=door.failures),
        public_origin=f"{public.scheme}://{public.netloc}",
    )

    a2a_auth = OriginGuard(
        BearerAuthMiddleware(
            a2a_proxy,
            verifier=verifier,
            resources=door.resources,
            failures=door.failures,
            required_scopes=("a2a",),
            endpoint_of=_a2a_endpoint,
        ),
        public_origin=f"{public.scheme}://{public.netloc}",
    )
    catalog_api = OriginGuard(
        BearerAuthMiddleware(
            request_response(caller_search.endpoint),
            verifier=verifier,
            resources=door.resources,
            failures=door.failures,
            required_scopes=("mcp",),
        ),
        public_origin=f"{public.scheme}://{public.netloc}",
    )
    discovery = OriginGuard(
        BearerAuthMiddleware(
            a2a_proxy.discovery,
            verifier=verifier,
            resources=door.resources,
            failures=door.failures,
            required_scopes=("a2a",),
        ),
        public_origin=f"{public.scheme}://{public.netloc}",
    )

    def exists(kind: str, name: str) -> bool:
        upstream = pool.upstream(name)
        if kind == "agent":
            return upstream is not None and upstream.is_agent
        if kind == "server":
            return upstream is not None and not upstream.is_agent
        if kind == "toolset":
            return name in pool.snapshot.toolsets
        return False

    def step_up_scopes() -> frozenset[str]:
        return frozenset(s for u in pool.upstreams() for scopes in u.scopes.values() for s in scopes)

    oauth_routes = (
        authorization_server_routes(
            public_url=settings.public_url,
            issuer=door.issuer,
            identity=identity,
            registry=store,
            ring=door.ring,
            dev_loopback=is_dev_loopback(settings.public_url),
            on_revoke=door.revoke,
            access_ttl_seconds=settings.auth.access_token_ttl_seconds,
            known_scopes=lambda: step_up_scopes() | {CONSOLE_SCOPE},
            first_party=[console_client(settings.public_url)] if settings.console.enabled else [],
        )
        if settings.auth.builtin_server
        else []
    )
    # Every change made through the admin API (CLI, console, REST) is announced to the replicas.
    admin = AnnounceChanges(admin_app(admin_state), changes.announce)
    console = build_console(
        settings,
        verifier=door.verifier,
        audience=door.resources.base,
        ring=lambda: door.ring,
        admin_app=admin,
        token_app=Router(routes=oauth_routes) if oauth_routes else None,
    )
    closers.append(console.close)
    closers.append(changes.aclose)

    app = Starlette(
        routes=[
            *protected_resource_routes(door, exists=exists, step_up_scopes=step_up_scopes),
            *oauth_routes,
            Route("/mcp", mcp),
            Route("/mcp/{toolset}", mcp),
            Route("/servers/{server}/mcp", mcp),
            Route("/a2a", discovery, methods=["GET"]),
            Route("/catalog/v1/search", catalog_api, methods=["GET"]),
            Route("/a2a/{agent}", a2a_auth),
            Route("/a2a/{agent}/{rest:path}", a2a_auth),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Mount("/admin/api/v1", admin),
            *console.routes,
            Mount(
                "/oauth/upstreams",
                creds.connect_app(pool.upstream, bearer_identify(verifier, settings.public_url)),
            ),
        ],
        lifespan=lifespan,
    )
    return DiscoveryCors(app)


def _doorbell(settings: Settings, engine: object) -> Doorbell | None:
    """Redis pub/sub when Redis is configured, else PostgreSQL LISTEN/NOTIFY, else none (polling)."""
    if settings.redis_url is not None:
        return RedisDoorbell(settings.redis_url.get_secret_value(), settings.quotas.redis_prefix)
    url = getattr(engine, "url", None)
    if url is not None and url.get_backend_name() == "postgresql":
        return PostgresDoorbell(url.set(drivername="postgresql").render_as_string(hide_password=False))
    return None


def _a2a_endpoint(path: str) -> str:
    """`/a2a/{agent}/anything` is the resource `/a2a/{agent}` (its card and HTTP+JSON paths included)."""
    parts = path.split("/", 3)
    return "/".join(parts[:3]) if len(parts) > 3 else path


def _client_id_of(store: RegistryStore) -> Callable[[str], Awaitable[str | None]]:
    """Limits and kill switches may name a client by name; rules match on its id."""

    async def lookup(name: str) -> str | None:
        client = await store.get_client_by_name(name)
        return client.client_id if client is not None else None

    return lookup


async def _follow_policies(policies: PolicyService, interval_seconds: float) -> None:
    """Pick up policy changes made through another replica (one version read per interval)."""
    while True:
        await anyio.sleep(interval_seconds)
        try:
            await policies.refresh_if_changed()
        except Exception:  # a database hiccup must not end the loop; the next round retries
            logger.exception("policy refresh failed")


async def _admin_token_hash(settings: Settings, store: RegistryStore) -> str:
    """The admin credential's hash: from settings, else stored, else a new token printed once."""
    if settings.admin_token is not None:
        return hash_secret(settings.admin_token.get_secret_value())
    stored = await store.get_setting(ADMIN_TOKEN_SETTING)
    if stored:
        return stored
    import secrets

    token = "tha_" + secrets.token_urlsafe(32)
    digest = hash_secret(token)
    await store.set_setting(ADMIN_TOKEN_SETTING, digest)
    # Printed once, never logged: it is the only copy (only its hash is stored).
    print(f"tollhouse: created the admin token (shown once): {token}", file=sys.stderr)
    return digest


async def _apply_at_start(state: AdminState, config: LoadedConfig) -> None:
    summary = await apply_loaded(
        state,
        config.servers,
        config.clients,
        list(config.warnings),
        prune=False,
        toolsets=config.toolsets,
        secrets=config.secrets,
        teams=config.teams,
        policies=config.policies,
        limits=config.limits,
        by="config",
        prices=config.prices if "prices" in config.sections else None,
        budgets=config.budgets if "budgets" in config.sections else None,
        agents=config.agents,
    )
    if state.auditor is not None:
        # Changes made from the config file at start are admin actions too (names, never secrets).
        state.auditor.system(
            "config.applied",
            {
                "servers": sorted(s.name for s in config.servers),
                "agents": sorted(a.name for a in config.agents),
                "clients": sorted(c.name for c in config.clients),
                "sections": sorted(config.sections),
            },
        )
    for client in summary["clients"]:
        # New clients' keys exist only now; print them once, never log them.
        shown = ", ".join(
            f"{label}: {client[field]}"
            for field, label in (("client_secret", "client secret"), ("api_key", "API key"))
            if client.get(field)
        )
        print(
            f"tollhouse: created client {client['name']} ({client['client_id']}) — shown once: {shown}",
            file=sys.stderr,
        )
