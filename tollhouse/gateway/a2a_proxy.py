"""The A2A front door: `/a2a/{agent}` (JSON-RPC at that path, HTTP+JSON under it), its card, `GET /a2a`.

tollhouse terminates A2A with the SDK's own server side (JSON-RPC and HTTP+JSON, 1.0 and 0.3
method names and shapes, SSE), so a client of any of those meets exactly the behaviour of an
SDK agent; the request handler here forwards each operation to the agent's preferred
interface with the gateway's own credential (a2a_connector.py), whatever version it speaks.

Governance runs in front of the SDK, where the request is still raw: the agent must be visible
to the caller (else 404, like an unknown agent); the method and skill are classified (a message
names its skill in metadata under `tollhouse/skill`); Cedar decides `call_agent` on
`Skill::"<agent>/<skill>"` (or `Agent::"<agent>"`) with `context.method` set; a held card
refuses; rate and concurrency limits admit it (a stream holds its slot while open). Behind
the SDK, the handler binds every task (and context) to the principal that created it, answers
TaskNotFound for anyone else's, filters task lists, and refuses push-notification URLs that
fail the SSRF rules. Every request ends in one audit record and one usage event, with the task
id as correlation.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import orjson
from a2a.client.client import ClientCallContext
from a2a.client.transports.base import ClientTransport
from a2a.server.context import ServerCallContext
from a2a.server.request_handlers.request_handler import RequestHandler
from a2a.server.routes import create_rest_routes
from a2a.server.routes.common import DefaultServerCallContextBuilder
from a2a.server.routes.jsonrpc_dispatcher import JsonRpcDispatcher
from a2a.types import (
    AgentCard,
    CancelTaskRequest,
    DeleteTaskPushNotificationConfigRequest,
    GetExtendedAgentCardRequest,
    GetTaskPushNotificationConfigRequest,
    GetTaskRequest,
    ListTaskPushNotificationConfigsRequest,
    ListTaskPushNotificationConfigsResponse,
    ListTasksRequest,
    ListTasksResponse,
    Message,
    SendMessageRequest,
    StreamResponse,
    SubscribeToTaskRequest,
    Task,
    TaskPushNotificationConfig,
)
from a2a.utils.errors import (
    A2AError,
    InternalError,
    InvalidParamsError,
    PushNotificationNotSupportedError,
    TaskNotFoundError,
    UnsupportedOperationError,
)
from google.protobuf.json_format import MessageToDict, ParseDict
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, Router
from starlette.types import Message as AsgiMessage
from starlette.types import Receive, Scope, Send

from tollhouse.a2a.cards import (
    SKILL_METADATA_KEY,
    CardError,
    ParsedCard,
    card_etag,
    etag_matches,
    parse_card,
    rewrite_card,
)
from tollhouse.audit.records import AuditNotes
from tollhouse.auth.middleware import client_address, principal_of
from tollhouse.auth.principal import Principal
from tollhouse.auth.ssrf import FetchError, UnsafeUrlError, UrlPolicy, resolve_safe
from tollhouse.gateway.a2a_connector import A2AConnector, agent_error, transport_failure
from tollhouse.gateway.admission import AdmissionService, AdmitStage
from tollhouse.gateway.auditing import Auditor
from tollhouse.gateway.authorization import PolicyService
from tollhouse.gateway.errors import (
    AuditUnavailable,
    GatewayError,
    PendingApproval,
    UpstreamUnavailable,
)
from tollhouse.gateway.inflight import InFlight
from tollhouse.gateway.metering import Metering, classify
from tollhouse.gateway.pipeline import CallContext
from tollhouse.gateway.pool import UpstreamPool
from tollhouse.gateway.snapshot import ExposedItem
from tollhouse.policies.model import AgentRef, SkillRef, principal_view
from tollhouse.registry.a2a_task_store import SqlTaskOwners
from tollhouse.registry.models import JSONObject
from tollhouse.tracing import Tracing

__all__ = ["AGENT_DENIED", "A2AProxy", "AgentDenied", "normalize_method"]


AGENT_DENIED = -31011
CARD_PATHS = frozenset({"/.well-known/agent-card.json", "/.well-known/agent.json"})
EXCHANGE_KEY = "tollhouse.a2a"
_CARD_CACHE = 1024  # served cards kept (agent x card x the skill sets callers see)
NOT_OWNER = "NotOwner"  # answered as TaskNotFound; recorded as what it is
# 0.3 JSON-RPC names -> the 1.0 (gRPC) names that policy, audit and usage use.
_V03_METHODS = {
    "message/send": "SendMessage",
    "message/stream": "SendStreamingMessage",
    "tasks/get": "GetTask",
    "tasks/list": "ListTasks",
    "tasks/cancel": "CancelTask",
    "tasks/resubscribe": "SubscribeToTask",
    "tasks/pushNotificationConfig/set": "CreateTaskPushNotificationConfig",
    "tasks/pushNotificationConfig/get": "GetTaskPushNotificationConfig",
    "tasks/pushNotificationConfig/list": "ListTaskPushNotificationConfigs",
    "tasks/pushNotificationConfig/delete": "DeleteTaskPushNotificationConfig",
    "agent/getAuthenticatedExtendedCard": "GetExtendedAgentCard",
}
_METHODS = tuple(_V03_METHODS.values())
_V10_METHODS = frozenset(_METHODS)
# HTTP+JSON: (verb, path pattern at the end of the path) -> method; a tenant or /v1 prefix may precede.
_REST = (
    ("POST", re.compile(r"/message:send$"), "SendMessage"),
    ("POST", re.compile(r"/message:stream$"), "SendStreamingMessage"),
    ("POST", re.compile(r"/tasks/([^/]+):cancel$"), "CancelTask"),
    ("GET", re.compile(r"/tasks/([^/]+):subscribe$"), "SubscribeToTask"),
    ("POST", re.compile(r"/tasks/([^/]+):subscribe$"), "SubscribeToTask"),
    ("POST", re.compile(r"/tasks/([^/]+)/pushNotificationConfigs$"), "CreateTaskPushNotificationConfig"),
    ("GET", re.compile(r"/tasks/([^/]+)/pushNotificationConfigs$"), "ListTaskPushNotificationConfigs"),
    ("GET", re.compile(r"/tasks/([^/]+)/pushNotificationConfigs/[^/]+$"), "GetTaskPushNotificationConfig"),
    (
        "DELETE",
        re.compile(r"/tasks/([^/]+)/pushNotificationConfigs/[^/]+$"),
        "DeleteTaskPushNotificationConfig",
    ),
    ("GET", re.compile(r"/tasks/([^/:]+)$"), "GetTask"),
    ("GET", re.compile(r"/tasks$"), "ListTasks"),
    ("GET", re.compile(r"/(extendedAgentCard|card)$"), "GetExtendedAgentCard"),
)
_SEND = frozenset({"SendMessage", "SendStreamingMessage"})
_INVALID = frozenset(
    {
        "InvalidParamsError",
        "InvalidRequestError",
        "MethodNotFoundError",
        "UnsupportedOperationError",
        "PushNotificationNotSupportedError",
    }
)
_GRPC_STATUS = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
}


def normalize_method(name: str) -> str:
    """The 1.0 name of a JSON-RPC method (0.3 names mapped); "" for anything else."""
    if name in _V10_METHODS:
        return name
    return _V03_METHODS.get(name, "")


class AgentDenied(GatewayError):
    """Policy does not let the caller use this method (or skill) of the agent; unknown skills alike."""

    code = AGENT_DENIED
    status = 403

    def __init__(self, agent: str, method: str, skill: str | None) -> None:
        target = f"skill '{skill}' of agent '{agent}'" if skill else f"agent '{agent}'"
        data: dict[str, Any] = {"agent": agent, "method": method}
        if skill:
            data["skill"] = skill
        super().__init__(f"Not permitted: {method or 'request'} on {target}", data)


@dataclass
class _Exchange:
    """One A2A request as governance sees it; the handler fills in what the agent answered."""

    agent: str
    principal: Principal
    connector: A2AConnector
    binding: str  # "jsonrpc" | "rest"
    method: str
    version: str
    skill: str | None = None
    request_id: Any = None
    source_ip: str | None = None
    task_id: str | None = None
    context_id: str | None = None
    failure: GatewayError | None = None  # an upstream failure, answered by tollhouse
    a2a_error: str | None = None  # the name of an A2A error the agent (or ownership) answered
    payload: JSONObject = field(default_factory=dict)  # the request's params (the loop breaker's key)
    notes: AuditNotes = field(default_factory=AuditNotes)
    started: float = field(default_factory=time.perf_counter)
    upstream_ms: int | None = None
    finished: bool = False  # metered and audited


def _failed(exchange: _Exchange, exc: BaseException) -> BaseException:
    """What the SDK answers for an upstream error: the agent's own A2A error as is; a failure to
    reach the agent as an internal error whose real answer (tollhouse's) the front layer sends."""
    cause = transport_failure(exc)
    if cause is None:
        exchange.a2a_error = type(exc).__name__
        return exc
    exchange.failure = agent_error(exchange.agent, cause, exchange.connector.call_timeout_seconds)
    return InternalError("upstream agent failed")


class _ContextBuilder(DefaultServerCallContextBuilder):
    def build(self, request: Request) -> ServerCallContext:
        context = super().build(request)
        context.state[EXCHANGE_KEY] = request.scope[EXCHANGE_KEY]
        return context


def _exchange(context: ServerCallContext) -> _Exchange:
    exchange: _Exchange = context.state[EXCHANGE_KEY]
    return exchange


class _Forwarder(RequestHandler):
    """The SDK request handler: every operation goes to the agent, scoped to its owner."""

    def __init__(self, owners: SqlTaskOwners, push_policy: UrlPolicy, proxy: A2AProxy) -> None:
        self._owners = owners
        self._push_policy = push_policy
        self._proxy = proxy

    async def _call(self, exchange: _Exchange, call: Callable[[ClientCallContext], Awaitable[Any]]) -> Any:
        connector = exchange.connector
        started = time.perf_counter()
        try:
            with anyio.fail_after(connector.call_timeout_seconds):
                return await call(await connector.call_context(exchange.principal.key))
        except (A2AError, httpx.HTTPError, OSError, TimeoutError) as exc:
            raise _failed(exchange, exc) from None
        finally:
            exchange.upstream_ms = round((time.perf_counter() - started) * 1000)

    async def _task_op(
        self,
        context: ServerCallContext,
        task_id: str,
        call: Callable[[ClientTransport, ClientCallContext], Awaitable[Any]],
        *,
        capability: str | None = None,
        push_url: str | None = None,
    ) -> Any:
        """An operation on one task: what the card allows, the caller's own task, then the agent."""
        exchange = _exchange(context)
        if capability is not None:
            self._capable(exchange, capability)
        await self._own(exchange, task_id)
        if push_url is not None:
            await self._check_push_url(exchange, push_url)
        transport = exchange.connector.transport
        return await self._call(exchange, lambda c: call(transport, c))

    def _capable(self, exchange: _Exchange, capability: str) -> None:
        """Refuse what the agent's card says it cannot do, before anything else (as an SDK agent does)."""
        card = exchange.connector.card
        if capability == "push" and not card.push_notifications:
            exchange.a2a_error = "PushNotificationNotSupportedError"
            raise PushNotificationNotSupportedError()
        if capability == "streaming" and not card.streaming:
            exchange.a2a_error = "UnsupportedOperationError"
            raise UnsupportedOperationError("Streaming is not supported by the agent")
        if capability == "extended_card" and not card.extended_card:
            exchange.a2a_error = "UnsupportedOperationError"
            raise UnsupportedOperationError("The agent does not support authenticated extended cards")

    async def _own(self, exchange: _Exchange, task_id: str) -> None:
        exchange.task_id = exchange.task_id or task_id or None
        owner = await self._owners.task_owner(exchange.agent, task_id) if task_id else None
        if owner != exchange.principal.key:
            exchange.a2a_error = NOT_OWNER
            raise TaskNotFoundError()

    async def _check_message(self, exchange: _Exchange, params: SendMessageRequest) -> None:
        message = params.message
        if message.task_id:
            await self._own(exchange, message.task_id)
        if message.context_id:
            exchange.context_id = message.context_id
            owner = await self._owners.context_owner(exchange.agent, message.context_id)
            if owner is not None and owner != exchange.principal.key:
                exchange.a2a_error = NOT_OWNER
                raise TaskNotFoundError("Context not found")
        config = params.configuration
        if config.HasField("task_push_notification_config"):
            await self._check_push_url(exchange, config.task_push_notification_config.url)

    async def _check_push_url(self, exchange: _Exchange, url: str) -> None:
        try:
            await resolve_safe(url, self._push_policy)
        except (UnsafeUrlError, FetchError) as exc:
            exchange.a2a_error = "InvalidParamsError"
            raise InvalidParamsError(f"push notification URL refused: {exc}") from None

    async def _bind(self, exchange: _Exchange, task: Task) -> None:
        exchange.task_id, exchange.context_id = task.id, task.context_id or exchange.context_id
        if task.id:
            await self._owners.record(
                exchange.agent, task.id, task.context_id or None, exchange.principal.key
            )

    async def on_message_send(self, params: SendMessageRequest, context: ServerCallContext) -> Task | Message:
        exchange = _exchange(context)
        await self._check_message(exchange, params)
        transport = exchange.connector.transport
        response = await self._call(exchange, lambda c: transport.send_message(params, context=c))
        if response.HasField("task"):
            await self._bind(exchange, response.task)
            task: Task = response.task
            return task
        message: Message = response.message
        return message

    async def on_message_send_stream(
        self, params: SendMessageRequest, context: ServerCallContext
    ) -> AsyncGenerator[Any]:
        exchange = _exchange(context)
        self._capable(exchange, "streaming")
        await self._check_message(exchange, params)
        connector = exchange.connector
        async for event in self._stream(
            exchange, lambda c: connector.transport.send_message_streaming(params, context=c)
        ):
            yield event

    async def on_subscribe_to_task(
        self, params: SubscribeToTaskRequest, context: ServerCallContext
    ) -> AsyncGenerator[Any]:
        exchange = _exchange(context)
        self._capable(exchange, "streaming")
        await self._own(exchange, params.id)
        connector = exchange.connector
        async for event in self._stream(exchange, lambda c: connector.transport.subscribe(params, context=c)):
            yield event

    async def _stream(
        self, exchange: _Exchange, open_stream: Callable[[ClientCallContext], AsyncGenerator[StreamResponse]]
    ) -> AsyncGenerator[Any]:
        started = time.perf_counter()
        context = await exchange.connector.call_context(exchange.principal.key)
        try:
            async for response in open_stream(context):
                kind = response.WhichOneof("payload")
                if kind is None:
                    continue
                event = getattr(response, kind)
                if kind == "task":
                    await self._bind(exchange, event)
                elif kind in ("status_update", "artifact_update") and not exchange.task_id:
                    exchange.task_id = event.task_id
                yield event
        except (A2AError, httpx.HTTPError, OSError) as exc:
            raise _failed(exchange, exc) from None
        finally:
            exchange.upstream_ms = round((time.perf_counter() - started) * 1000)

    async def on_get_task(self, params: GetTaskRequest, context: ServerCallContext) -> Task | None:
        task: Task = await self._task_op(context, params.id, lambda t, c: t.get_task(params, context=c))
        return task

    async def on_list_tasks(self, params: ListTasksRequest, context: ServerCallContext) -> ListTasksResponse:
        exchange = _exchange(context)
        if params.context_id:
            owner = await self._owners.context_owner(exchange.agent, params.context_id)
            if owner != exchange.principal.key:
                return ListTasksResponse()
        transport = exchange.connector.transport
        listed: ListTasksResponse = await self._call(
            exchange, lambda c: transport.list_tasks(params, context=c)
        )
        owners = await self._owners.task_owners(exchange.agent, [t.id for t in listed.tasks])
        mine = [t for t in listed.tasks if owners.get(t.id) == exchange.principal.key]
        del listed.tasks[:]
        listed.tasks.extend(mine)
        listed.total_size = len(mine) if not listed.next_page_token else listed.total_size
        return listed

    async def on_cancel_task(self, params: CancelTaskRequest, context: ServerCallContext) -> Task | None:
        task: Task = await self._task_op(context, params.id, lambda t, c: t.cancel_task(params, context=c))
        return task

    async def on_create_task_push_notification_config(
        self, params: TaskPushNotificationConfig, context: ServerCallContext
    ) -> TaskPushNotificationConfig:
        created: TaskPushNotificationConfig = await self._task_op(
            context,
            params.task_id,
            lambda t, c: t.create_task_push_notification_config(params, context=c),
            capability="push",
            push_url=params.url,
        )
        return created

    async def on_get_task_push_notification_config(
        self, params: GetTaskPushNotificationConfigRequest, context: ServerCallContext
    ) -> TaskPushNotificationConfig:
        got: TaskPushNotificationConfig = await self._task_op(
            context,
            params.task_id,
            lambda t, c: t.get_task_push_notification_config(params, context=c),
            capability="push",
        )
        return got

    async def on_list_task_push_notification_configs(
        self, params: ListTaskPushNotificationConfigsRequest, context: ServerCallContext
    ) -> ListTaskPushNotificationConfigsResponse:
        listed: ListTaskPushNotificationConfigsResponse = await self._task_op(
            context,
            params.task_id,
            lambda t, c: t.list_task_push_notification_configs(params, context=c),
            capability="push",
        )
        return listed

    async def on_delete_task_push_notification_config(
        self, params: DeleteTaskPushNotificationConfigRequest, context: ServerCallContext
    ) -> None:
        await self._task_op(
            context,
            params.task_id,
            lambda t, c: t.delete_task_push_notification_config(params, context=c),
            capability="push",
        )

    async def on_get_extended_agent_card(
        self, params: GetExtendedAgentCardRequest, context: ServerCallContext
    ) -> AgentCard:
        exchange = _exchange(context)
        self._capable(exchange, "extended_card")
        transport = exchange.connector.transport
        card: AgentCard = await self._call(
            exchange, lambda c: transport.get_extended_agent_card(params, context=c)
        )
        try:
            parsed = parse_card(MessageToDict(card))
        except CardError:
            exchange.failure = UpstreamUnavailable(exchange.agent, "invalid extended agent card")
            raise InternalError("upstream agent failed") from None
        served = self._proxy.served_card(exchange.agent, parsed, exchange.principal)
        rewritten: AgentCard = ParseDict(served, AgentCard(), ignore_unknown_fields=True)
        return rewritten


class A2AProxy:
    """The `/a2a` routes: discovery, each agent's card and endpoint."""

    def __init__(
        self,
        *,
        pool: UpstreamPool,
        policies: PolicyService,
        admission: AdmissionService,
        metering: Metering,
        auditor: Auditor,
        owners: SqlTaskOwners,
        tracing: Tracing,
        public_url: str,
        max_body_bytes: int,
        push_policy: UrlPolicy,
        inflight: InFlight | None = None,
    ) -> None:
        self._inflight = inflight
        self._pool = pool
        self._policies = policies
        self._admit = AdmitStage(admission)
        self._metering = metering
        self._auditor = auditor
        self._tracing = tracing
        self._base = public_url.rstrip("/")
        self._max_body = max_body_bytes
        self._cards: dict[tuple[str, int, tuple[str, ...]], tuple[ParsedCard, JSONObject]] = {}
        handler = _Forwarder(owners, push_policy, self)
        builder = _ContextBuilder()
        rpc = JsonRpcDispatcher(handler, context_builder=builder, enable_v0_3_compat=True)
        self._inner = Router(
            routes=[
                Route("/", rpc.handle_requests, methods=["POST"]),
                *create_rest_routes(handler, context_builder=builder, enable_v0_3_compat=True),
            ]
        )

    # -- cards ---------------------------------------------------------------------------------

    def endpoint_url(self, agent: str) -> str:
        """The agent's A2A endpoint at tollhouse."""
        return f"{self._base}/a2a/{agent}"

    def served_card(self, agent: str, parsed: ParsedCard, principal: Principal) -> JSONObject:
        """The card as this caller sees it: tollhouse's URLs and security, only the skills it may use."""
        facts = self._policies.facts(principal, source_ip=None, protocol_version="a2a", method="SendMessage")
        view = principal_view(principal)
        engine = self._policies.engine
        skills = [s.id for s in parsed.skills if engine.visible(view, SkillRef(agent, s.id), facts)]
        # Rewriting parses and serialises the whole card: done once per card and skill set, not per request.
        key = (agent, id(parsed), tuple(skills))
        cached = self._cards.get(key)
        if cached is not None and cached[0] is parsed:
            return cached[1]
        schemes, requirements = self._security()
        served = rewrite_card(
            parsed,
            endpoint_url=self.endpoint_url(agent),
            security_schemes=schemes,
            security_requirements=requirements,
            skills=skills,
        )
        if len(self._cards) >= _CARD_CACHE:
            self._cards.clear()
        self._cards[key] = (parsed, served)
        return served

    def _security(self) -> tuple[JSONObject, list[JSONObject]]:
        schemes: JSONObject = {
            "tollhouse": {
                "oauth2SecurityScheme": {
                    "description": "An access token from tollhouse's authorization server (or its IdP).",
                    "oauth2MetadataUrl": f"{self._base}/.well-known/oauth-authorization-server",
                    "flows": {
                        "clientCredentials": {
                            "tokenUrl": f"{self._base}/oauth/token",
                            "scopes": {"a2a": "Call A2A agents through tollhouse"},
                        }
                    },
                }
            },
            "bearer": {"httpAuthSecurityScheme": {"scheme": "Bearer", "description": "A tollhouse API key"}},
        }
        requirements: list[JSONObject] = [
            {"schemes": {"tollhouse": {"list": ["a2a"]}}},
            {"schemes": {"bearer": {"list": []}}},
        ]
        return schemes, requirements

    def usable(self, agent: str, principal: Principal, source_ip: str | None) -> A2AConnector | None:
        """The agent's live connector if the caller may use the agent at all (else None: "no such agent")."""
        upstream = self._pool.upstream(agent)
        if upstream is None or not upstream.is_agent or not upstream.enabled:
            return None
        if agent not in self._pool.snapshot.live:
            return None
        try:
            connector = self._pool.connector(agent)
        except GatewayError:
            return None
        if not isinstance(connector, A2AConnector):
            return None
        return connector if self._may_use(agent, connector, principal, source_ip) else None

    def _may_use(self, agent: str, connector: A2AConnector, principal: Principal, source: str | None) -> bool:
        """Whether some method of the agent, or some skill, is not definitely denied to the caller."""
        policies = self._policies
        view = principal_view(principal)
        for method in _METHODS:
            facts = policies.facts(principal, source_ip=source, protocol_version="a2a", method=method)
            if policies.engine.visible(view, AgentRef(agent), facts):
                return True
        facts = policies.facts(principal, source_ip=source, protocol_version="a2a", method="SendMessage")
        return any(policies.engine.visible(view, SkillRef(agent, s.id), facts) for s in connector.card.skills)

    # -- GET /a2a --------------------------------------------------------------------------------

    async def discovery(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The agents the caller may use, with their cards as the caller sees them."""
        principal = principal_of(scope)
        source = client_address(scope)
        agents = []
        for upstream in sorted(self._pool.upstreams(), key=lambda u: u.name):
            connector = self.usable(upstream.name, principal, source) if upstream.is_agent else None
            if connector is None:
                continue
            agents.append(
                {
                    "name": upstream.name,
                    "url": self.endpoint_url(upstream.name),
                    "card_url": f"{self.endpoint_url(upstream.name)}/.well-known/agent-card.json",
                    "card": self.served_card(upstream.name, connector.card, principal),
                }
            )
        await JSONResponse({"agents": agents})(scope, receive, send)

    # -- /a2a/{agent}[/…] --------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        params = scope.get("path_params", {})
        agent: str = params["agent"]
        sub_path = "/" + params.get("rest", "").lstrip("/")
        principal = principal_of(scope)
        source = client_address(scope)
        connector = self.usable(agent, principal, source)
        if connector is None:
            await _not_found(scope, receive, send)
            return
        verb = scope["method"]
        if sub_path in CARD_PATHS and verb in ("GET", "HEAD"):
            await self._card(scope, receive, send, agent, connector, principal)
            return
        body = b""
        if verb in ("POST", "PUT", "PATCH"):
            read = await _read_body(receive, self._max_body)
            if read is None:
                await JSONResponse({"error": "request body too large"}, status_code=413)(scope, receive, send)
                return
            body = read
        binding, method, task_id, request_id, payload = _classify(verb, sub_path, body)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        version = headers.get("a2a-version") or _query_version(scope) or "0.3"
        exchange = _Exchange(
            agent=agent,
            principal=principal,
            connector=connector,
            binding=binding,
            method=method,
            version=version,
            request_id=request_id,
            source_ip=source,
            task_id=task_id,
        )
        exchange.skill = _skill_of(payload) if method in _SEND else None
        exchange.payload = payload
        with self._tracing.server_span(
            method or "a2a", None, headers, target=agent, request_id=request_id, client_address=source
        ):
            await self._govern(scope, receive, send, exchange, body, source)

    async def _govern(
        self, scope: Scope, receive: Receive, send: Send, exchange: _Exchange, body: bytes, source: str | None
    ) -> None:
        agent, method, skill = exchange.agent, exchange.method, exchange.skill
        failure: BaseException | None = None
        status = 0
        try:
            facts = self._policies.facts(
                exchange.principal,
                source_ip=source,
                protocol_version=f"a2a/{exchange.version}",
                method=method,
            )
            known_skill = skill is None or exchange.connector.card.skill(skill) is not None
            resource = SkillRef(agent, skill) if skill else AgentRef(agent)
            decision = self._policies.decide(exchange.principal, "call_agent", resource, facts)
            exchange.notes.policies, exchange.notes.policy_version = (
                decision.policy_ids,
                self._policies.version,
            )
            exchange.notes.snapshot = self._pool.snapshot.version
            if not decision.allowed or not known_skill:
                raise AgentDenied(agent, method, skill)
            if agent in self._pool.pinning.view().held:
                raise PendingApproval(agent, "held")
            self._auditor.before(method, exchange.notes)
            exposed = f"{agent}__{skill}" if skill else agent
            ctx = CallContext(
                principal=exchange.principal,
                name=exposed,
                # The loop breaker counts identical requests: the params, path task id included.
                arguments={**exchange.payload, "_method": method, "_task": exchange.task_id},
                protocol_version=f"a2a/{exchange.version}",
                tool=ExposedItem(exposed, agent, skill or "", {}, {}),
                source_ip=source,
                snapshot_version=exchange.notes.snapshot or 0,
            )

            async def forward(ctx: CallContext) -> JSONObject:
                nonlocal status
                # The same in-flight caps as tools/call: the agent's slot and the caller's.
                with (
                    self._inflight.slot(agent, ctx.principal.key)
                    if self._inflight
                    else contextlib.nullcontext()
                ):
                    status = await self._forward(scope, receive, send, exchange, body, ctx.response_headers)
                return {}

            await self._admit(ctx, forward)
        except GatewayError as exc:
            failure = exc
            status = await _send_error(send, exchange, exc)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            if not exchange.finished:
                # The answer is already out: a record not committed now stays queued and is retried.
                with anyio.CancelScope(shield=True), contextlib.suppress(AuditUnavailable):
                    await self._finish(exchange, failure, status)

    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        exchange: _Exchange,
        body: bytes,
        extra: list[tuple[bytes, bytes]],
    ) -> int:
        inner_scope = dict(scope)
        inner_scope["path"] = "/" + scope.get("path_params", {}).get("rest", "").lstrip("/")
        inner_scope["root_path"] = ""
        inner_scope[EXCHANGE_KEY] = exchange
        sent_body = False

        async def replay() -> AsgiMessage:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            # After the body, only a real disconnect (an SSE response listens for it).
            return await receive()

        # A unary answer is held until complete, so an upstream failure the SDK could only call
        # "internal error" is answered with tollhouse's own error instead.
        start: AsgiMessage | None = None
        held: list[bytes] = []
        streaming = False
        status = 0

        async def observe(message: AsgiMessage) -> None:
            nonlocal start, streaming, status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", [])) + extra
                message = {**message, "headers": headers}
                content_type = dict(headers).get(b"content-type", b"")
                streaming = content_type.startswith(b"text/event-stream")
                if streaming:
                    await send(message)
                else:
                    start = message
                return
            if message["type"] == "http.response.body" and not streaming:
                held.append(message.get("body", b""))
                if not message.get("more_body", False):
                    await self._release(send, exchange, start, b"".join(held))
                return
            await send(message)

        await self._inner(inner_scope, replay, observe)
        return status

    async def _release(self, send: Send, exchange: _Exchange, start: AsgiMessage | None, body: bytes) -> None:
        """Send a held unary answer once its record is kept (committed first for a message)."""
        assert start is not None
        if exchange.failure is None and exchange.a2a_error is None and exchange.binding == "jsonrpc":
            exchange.a2a_error = _rpc_error_name(body)
        try:
            await self._finish(exchange, None, int(start["status"]))
        except AuditUnavailable as exc:
            await _send_error(send, exchange, exc)
            return
        if exchange.failure is not None:
            await _send_error(send, exchange, exchange.failure)
            return
        await send(start)
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _finish(self, exchange: _Exchange, failure: BaseException | None, status: int) -> None:
        """Meter, audit and report the request (once).

        Raises:
            AuditUnavailable: a message's record could not be committed and the trail fails closed.
        """
        exchange.finished = True
        failure = failure or exchange.failure
        if exchange.failure is not None:
            await self._pool.report_failure(exchange.agent, exchange.failure)
        elif exchange.upstream_ms is not None:
            self._pool.report_success(exchange.agent)
        if failure is not None:
            outcome = classify(failure)
            if isinstance(failure, AgentDenied):
                outcome = "denied"
        elif exchange.a2a_error == NOT_OWNER:
            outcome = "denied"  # answered as TaskNotFound: someone else's task
        elif exchange.a2a_error in _INVALID:
            outcome = "invalid"
        elif exchange.a2a_error is not None:
            outcome = "tool_error"  # the agent's own error answer
        elif status >= 400 or not exchange.method:
            outcome = "invalid"
        else:
            outcome = "ok"
        meter = self._metering.begin(exchange.method or "a2a", None)
        meter.started = exchange.started
        meter.upstream_ms = exchange.upstream_ms
        if isinstance(failure, GatewayError):
            meter.error_code = failure.code
        self._metering.record(
            meter,
            exchange.principal,
            exchange.agent,
            exchange.skill or "",
            outcome,
            None,
            exchange.notes.snapshot or 0,
            extra={"protocol": "a2a", "task_id": exchange.task_id, "context_id": exchange.context_id},
        )
        record = self._auditor.a2a_record(
            exchange.method or "a2a",
            principal=exchange.principal,
            source_ip=exchange.source_ip,
            agent=exchange.agent,
            skill=exchange.skill,
            binding=exchange.binding,
            version=exchange.version,
            outcome=outcome,
            failure=failure if isinstance(failure, GatewayError) else None,
            a2a_error=exchange.a2a_error,
            notes=exchange.notes,
            request_id=exchange.request_id,
            task_id=exchange.task_id,
            context_id=exchange.context_id,
            usage_event=meter.event_id,
        )
        await self._auditor.after(exchange.method, record, failure)

    async def _card(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        agent: str,
        connector: A2AConnector,
        principal: Principal,
    ) -> None:
        served = self.served_card(agent, connector.card, principal)
        etag = card_etag(served)
        headers = {"ETag": etag, "Cache-Control": "private, max-age=60"}
        if etag_matches(Request(scope).headers.get("if-none-match"), etag):
            await Response(status_code=304, headers=headers)(scope, receive, send)
            return
        await JSONResponse(served, headers=headers)(scope, receive, send)


def _classify(verb: str, sub_path: str, body: bytes) -> tuple[str, str, str | None, Any, JSONObject]:
    """(binding, 1.0 method or "", task id from the path, JSON-RPC id, the request's params object)."""
    if sub_path == "/" and verb == "POST":
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            return "jsonrpc", "", None, None, {}
        if not isinstance(document, dict):
            return "jsonrpc", "", None, None, {}
        request_id = document.get("id")
        if not isinstance(request_id, str | int) or isinstance(request_id, bool):
            request_id = None
        name = document.get("method")
        params = document.get("params")
        params = params if isinstance(params, dict) else {}
        method = normalize_method(name) if isinstance(name, str) else ""
        task = (
            params.get("id")
            if method in ("GetTask", "CancelTask", "SubscribeToTask")
            else params.get("taskId")
        )
        return "jsonrpc", method, task if isinstance(task, str) else None, request_id, params
    for rest_verb, pattern, method in _REST:
        if verb != rest_verb:
            continue
        match = pattern.search(sub_path)
        if match is None:
            continue
        task = match.group(1) if pattern.groups and method != "GetExtendedAgentCard" else None
        payload: JSONObject = {}
        if body:
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError:
                parsed = None
            payload = parsed if isinstance(parsed, dict) else {}
        return "rest", method, task, None, payload
    return "rest", "", None, None, {}


def _skill_of(params: JSONObject) -> str | None:
    """The skill a message names: message metadata first, then the request's metadata."""
    for holder in (params.get("message"), params):
        if isinstance(holder, dict):
            metadata = holder.get("metadata")
            if isinstance(metadata, dict) and isinstance(metadata.get(SKILL_METADATA_KEY), str):
                return str(metadata[SKILL_METADATA_KEY])
    return None


def _query_version(scope: Scope) -> str | None:
    query: str = scope.get("query_string", b"").decode("latin-1")
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if key == "A2A-Version" and value:
            return value
    return None


def _rpc_error_name(body: bytes) -> str | None:
    """The A2A error a JSON-RPC answer the SDK produced itself carries (None for a result)."""
    if b'"error"' not in body[:200]:  # the member comes first or early: skip parsing results
        return None
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    error = document.get("error") if isinstance(document, dict) else None
    if not isinstance(error, dict):
        return None
    names = {
        -32001: "TaskNotFoundError",
        -32602: "InvalidParamsError",
        -32600: "InvalidRequestError",
        -32601: "MethodNotFoundError",
        -32700: "InvalidRequestError",
    }
    code = error.get("code")
    if not isinstance(code, int):
        return "A2AError"
    return names.get(code, f"A2AError({code})")


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _send_error(send: Send, exchange: _Exchange, error: GatewayError) -> int:
    """A refusal in the request's own binding: a JSON-RPC error, or a google.rpc.Status for HTTP+JSON."""
    headers = [(b"content-type", b"application/json"), *error.headers]
    if exchange.binding == "jsonrpc":
        status = error.status if error.status != 403 else 200
        # A2A's JSON-RPC errors carry google.rpc details in an array; ours name their domain.
        info = {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": type(error).__name__,
            "domain": "tollhouse",
            "metadata": {k: str(v) for k, v in (error.data or {}).items()},
        }
        wire = {"code": error.code, "message": error.message, "data": [info]}
        body = {"jsonrpc": "2.0", "id": exchange.request_id, "error": wire}
    else:
        status = error.status if error.status != 200 else _rest_status(error)
        metadata = {k: str(v) for k, v in (error.data or {}).items()}
        metadata["code"] = str(error.code)
        body = {
            "error": {
                "code": status,
                "status": _GRPC_STATUS.get(status, "UNAVAILABLE" if status >= 500 else "FAILED_PRECONDITION"),
                "message": error.message,
                "details": [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": type(error).__name__,
                        "domain": "tollhouse",
                        "metadata": metadata,
                    }
                ],
            }
        }
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": orjson.dumps(body), "more_body": False})
    return status


def _rest_status(error: GatewayError) -> int:
    name = type(error).__name__
    if name == "UpstreamTimeout":
        return 504
    if name.startswith("Upstream"):
        return 502
    if name == "PendingApproval":
        return 403
    return 400


async def _not_found(scope: Scope, receive: Receive, send: Send) -> None:
    await JSONResponse({"error": "no such agent"}, status_code=404)(scope, receive, send)
