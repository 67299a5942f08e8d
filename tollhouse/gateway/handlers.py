"""MCP method handlers: the aggregate server behind every MCP endpoint.

Transport-free: the endpoint parses and frames, these answer one method each from the
current snapshot (lists) or by routing to one upstream (calls, reads, gets).
"""

from __future__ import annotations

import base64
import binascii
import functools
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tollhouse import __version__
from tollhouse.audit.records import AuditNotes
from tollhouse.auth.principal import Principal
from tollhouse.gateway.authorization import PolicyService
from tollhouse.gateway.disclosure import MetaTools
from tollhouse.gateway.errors import (
    GatewayError,
    InvalidArguments,
    MethodNotFound,
    UnknownPrompt,
    UnknownResource,
    UpstreamAuthorizationRequired,
    UpstreamProtocolError,
    UpstreamUnavailable,
    UrlElicitationRequired,
)
from tollhouse.gateway.metering import Metering
from tollhouse.gateway.pipeline import CallContext, Pipeline
from tollhouse.gateway.pool import UpstreamPool
from tollhouse.gateway.relay import Ask
from tollhouse.gateway.sessions import DownstreamSession
from tollhouse.gateway.snapshot import ExposedItem
from tollhouse.gateway.tasks import TaskRegistry, rewrite_task_ids
from tollhouse.gateway.upstream import NotificationCallback, ProgressCallback
from tollhouse.gateway.views import AggregateView, View
from tollhouse.policies.model import RequestFacts
from tollhouse.registry.models import JSONObject

__all__ = ["MODERN_VERSION", "SESSION_VERSIONS", "McpHandlers", "RequestContext"]

MODERN_VERSION = "2026-07-28"
SESSION_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")
SERVER_INFO: JSONObject = {"name": "tollhouse", "title": "tollhouse MCP gateway", "version": __version__}
_SERVER_INFO_KEY = "io.modelcontextprotocol/serverInfo"
AGGREGATE: View = AggregateView()
_INSTRUCTIONS = (
    "tollhouse aggregates several MCP servers. Tool and prompt names are '<server>__<name>'; "
    "resource URIs are 'tollhouse://<server>/<original uri>'."
)


@dataclass(frozen=True, slots=True)
class RequestContext:
    """One downstream request as the handlers see it."""

    principal: Principal
    protocol_version: str
    modern: bool
    view: View = AGGREGATE
    request_id: Any = None
    session_key: str | None = None
    on_progress: ProgressCallback | None = None
    client_capabilities: JSONObject | None = None
    ask: Ask | None = None
    notify: NotificationCallback | None = None
    log_level: str | None = None
    session: DownstreamSession | None = None
    resource_metadata: str | None = None  # this endpoint's RFC 9728 URL, for step-up challenges
    source_ip: str | None = None  # the caller's address, for policy and audit
    # Headers for the HTTP response, filled by stages before it starts (the stream's own list).
    response_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    # What the pipeline learns for this request's audit record.
    audit: AuditNotes = field(default_factory=AuditNotes)


Handler = Callable[[JSONObject, RequestContext], Awaitable[JSONObject]]


class McpHandlers:
    """Answers MCP methods for the aggregate of all live upstreams."""

    def __init__(
        self,
        pool: UpstreamPool,
        pipeline: Pipeline,
        *,
        page_size: int,
        policies: PolicyService,
        metering: Metering | None = None,
        meta: MetaTools | None = None,
    ) -> None:
        self._metering = metering
        self._meta = meta
        self._tasks = TaskRegistry()
        self._pool = pool
        self._pipeline = pipeline
        self._page_size = page_size
        self._policies = policies
        self._table: dict[str, Handler] = {
            "tools/list": self.list_tools,
            "tools/call": self.call_tool,
            "resources/list": self.list_resources,
            "resources/templates/list": self.list_resource_templates,
            "resources/read": self.read_resource,
            "resources/subscribe": self.subscribe,
            "resources/unsubscribe": self.unsubscribe,
            "prompts/list": self.list_prompts,
            "prompts/get": self.get_prompt,
            "completion/complete": self.complete,
            **{method: functools.partial(self.task_call, method) for method in _TASK_METHODS},
            "tasks/list": self.list_tasks,
        }

    def handler(self, method: str) -> Handler:
        """The handler for a method served in both eras.

        Raises:
            MethodNotFound: no such method.
        """
        handler = self._table.get(method)
        if handler is None:
            raise MethodNotFound(method)
        return handler

    # -- handshake and discovery ------------------------------------------------------------

    def capabilities(self, *, modern: bool) -> JSONObject:
        """What tollhouse offers; list changes reach legacy GET streams and 2026-07-28 listen streams."""
        return {
            "tools": {"listChanged": True},
            # resources/subscribe is a session-era method; 2026-07-28 uses subscriptions/listen
            "resources": {"listChanged": True, "subscribe": not modern},
            "prompts": {"listChanged": True},
            "completions": {},
            "logging": {},
            # 2025-11-25 tasks, relayed with gateway task ids (tasks.py)
            **({} if modern else {"tasks": {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}}),
        }

    def initialize(self, params: JSONObject) -> JSONObject:
        """The InitializeResult for a session-era client, negotiating the version."""
        requested = params.get("protocolVersion")
        version = requested if requested in SESSION_VERSIONS else SESSION_VERSIONS[0]
        return {
            "protocolVersion": version,
            "capabilities": self.capabilities(modern=False),
            "serverInfo": SERVER_INFO,
            "instructions": _INSTRUCTIONS,
        }

    def discover(self) -> JSONObject:
        """The `server/discover` result (2026-07-28)."""
        return {
            "supportedVersions": [MODERN_VERSION],
            "capabilities": self.capabilities(modern=True),
            "instructions": _INSTRUCTIONS,
            "ttlMs": 0,
            "cacheScope": "private",
            "_meta": {_SERVER_INFO_KEY: SERVER_INFO},
        }

    # -- lists ------------------------------------------------------------------------------

    def _check_fail_closed(self, rc: RequestContext) -> None:
        """Refuse an aggregate list while a fail-closed upstream is down: no partial catalog.

        Raises:
            UpstreamUnavailable: the first such upstream, by name.
        """
        if isinstance(rc.view, AggregateView):
            down = self._pool.down_fail_closed()
            if down:
                raise UpstreamUnavailable(down[0])

    def _facts(self, rc: RequestContext) -> RequestFacts:
        return self._policies.facts(
            rc.principal, source_ip=rc.source_ip, protocol_version=rc.protocol_version
        )

    async def list_tools(self, params: JSONObject, rc: RequestContext) -> JSONObject:
        """One page of the tools this caller may call (list phase of the policy), by exposed name."""
        self._check_fail_closed(rc)
        after = _decode_cursor(params, "t")
        snapshot, facts, policies = self._pool.snapshot, self._facts(rc), self._policies

        def keep(tool: ExposedItem) -> bool:
            return policies.visible_tool(rc.principal, snapshot, tool, facts)

        page, last = rc.view.tools(snapshot, after, self._page_size, keep)
        return _list_result("tools", page, _encode_cursor("t", last), rc)

    async def list_prompts(self, params: JSONObject, rc: RequestContext) -> JSONObject:
        """One page of the prompts this caller may get."""
        self._check_fail_closed(rc)
        after = _decode_cursor(params, "p")
        facts, policies = self._facts(rc), self._policies

        def keep(prompt: ExposedItem) -> bool:
            return policies.visible_prompt(rc.principal, prompt, facts)

        page, last = rc.view.prompts(self._pool.snapshot, after, self._page_size, keep)
        return _list_result("prompts", page, _encode_cursor("p", last), rc)

    async def list_resources(self, params: JSONObject, rc: RequestContext) -> JSONObject:
        """One page of the resources this caller may read (URIs rewritten)."""
        self._check_fail_closed(rc)
        items = self._readable(rc.view.resources(self._pool.snapshot), "uri", rc)
        return self._offset_page("resources", items, params, rc)

    async def list_resource_templates(self, params: JSONObject, rc: RequestContext) -> JSONObject:
        """One page of the resource templates this caller may read from (URI templates rewritten)."""
        self._check_fail_closed(rc)
        items = self._readable(rc.view.resource_templates(self._pool.snapshot), "uriTemplate", rc)
        return self._offset_page("resourceTemplates", items, params, rc)

    def _readable(
        self, items: tuple[JSONObject, ...], key: str, rc: RequestContext
    ) -> tuple[JSONObject, ...]:
        facts, snapshot = self._facts(rc), self._pool.snapshot
        kept: list[JSONObject] = []
        for item in items:
            shown = item.get(key)
            target = rc.view.route_uri(snapshot, shown) if isinstance(shown, str) else None
            if target is not None and self._policies.visible_resource(
                rc.principal, target[0], target[1], facts
            ):
                kept.append(item)
        return tuple(kept)

    def _check_read(self, server: str, uri: str, shown: str, rc: RequestContext) -> None:
        """A resource the caller may not read answers like one that does not exist."""
        if not self._policies.may_read(rc.principal, server, uri, self._facts(rc)):
            raise UnknownResource(shown)

    def _check_prompt(self, prompt: ExposedItem, name: str, rc: RequestContext) -> None:
        if not self._policies.may_get_prompt(rc.principal, prompt, self._facts(rc)):
            raise UnknownPrompt(name)

    def _offset_page(
        self, key: str, items: tuple[JSONObject, ...], params: JSONObject, rc: RequestContext
    ) -> JSONObject:
        raw = _decode_cursor(params, "o")
        try:
            start = int(raw) if raw is not None else 0
        except ValueError:
            raise InvalidArguments("Invalid cursor") from None
        if start < 0:
            raise InvalidArguments("Invalid cursor")
        end = start + self._page_size
        cursor = _encode_cursor("o", str(end)) if end < len(items) else None
        return _list_result(key, list(items[start:end]), cursor, rc)

    # -- routed calls -----------------------------------------------------------------------

    async def call_tool(self, params: JSONObject, rc: RequestContext) -> JSONObject:
        """Route a tools/call through the pipeline."""
        name = params.get("name")
        arguments = params.get("arguments", {})
        if not isinstance(name, str) or not isinstance(arguments, dict):
            raise InvalidArguments("tools/call needs a string 'name' and an object 'arguments'")
        if self._meta is not None and self._meta.handles(rc.view, name):
            return _own_result(await self._meta.call(name, arguments, params, rc, self.call_tool), rc)
        ctx = CallContext(
            principal=rc.principal,
            name=rc.view.tool_name(self._pool.snapshot, name),
            arguments=arguments,
            protocol_version=rc.protocol_version,
            request_id=rc.request_id,
            session_key=rc.session_key,
            on_progress=rc.on_progress,
            modern=rc.modern,
            client_capabilities=rc.client_capabilities,
            ask=rc.ask,
            notify=rc.notify,
            log_level=rc.log_level,
            input_responses=_object_or_none(params.get("inputResponses")),
            request_state=params.get("requestState"),
            task=_object_or_none(params.get("task")),
            source_ip=rc.source_ip,
            response_headers=rc.response_headers,
            audit=rc.audit,
        )
        try:
            result = await self._pipeline(ctx)
        except UpstreamAuthorizationRequired as exc:
            connect_url = (exc.data or {}).get("connect_url")
            if connect_url and _supports_url_elicitation(rc):
                raise UrlElicitationRequired(
                    str((exc.data or {}).get("server")), str(connect_url), secrets.token_urlsafe(12)
                ) from None
            raise
        upstream_task = _created_task(result)
        if upstream_task is not None:
            server = ctx.name.partition("__")[0]
            task_id = self._tasks.register(
                server,
                upstream_task[0],
                principal=rc.principal.key,
                session_key=rc.session_key,
                ttl_ms=upstream_task[1],
            )
            rc.audit.task_id = task_id
            result = rewrite_task_ids(result, {upstream_task[0]: task_id})
        return _own_result(result, rc)

    async def task_call(self, method: str, params: JSONObject, rc: RequestContext) -> JSONObject:
        """tasks/get|result|cancel|update: the caller's own task, on the upstream that runs it."""
        ref = self._tasks.lookup(params.get("taskId"), rc.principal.key)
        if ref is None:
            raise InvalidArguments("Unknown task", {"taskId": params.get("taskId")})
        upstream_params = {k: v for k, v in params.items() if k != "_meta"}
        upstream_params["taskId"] = ref.upstream_id
        connector = self._pool.connector(ref.server)
        result = await connector.request(
            method, upstream_params, session_key=ref.session_key, principal_key=rc.principal.key
        )
        return _own_result(rewrite_task_ids(result, {ref.upstream_id: params["taskId"]}), rc)

    async def list_tasks(self, params: JSONObject, rc: RequestContext) -> JSONObject:
        """tasks/list: the caller's tasks across upstreams, under gateway ids."""
        by_server: dict[str, dict[str, str]] = {}  # server -> {upstream id: gateway id}
        session_of: dict[str, str | None] = {}
        for task_id, ref in self._tasks.owned(rc.principal.key).items():
            by_server.setdefault(ref.server, {})[ref.upstream_id] = task_id
            session_of.setdefault(ref.server, ref.session_key)
        tasks: list[JSONObject] = []
        for server, ids in sorted(by_server.items()):
            try:
                connector = self._pool.connector(server)
                listed = await connector.request("tasks/list", {}, session_key=session_of[server])
            except GatewayError:
                continue  # one upstream down does not hide the others' tasks
            for task in listed.get("tasks", []):
                if isinstance(task, dict) and task.get("taskId") in ids:
                    tasks.append({**task, "taskId": ids[task["taskId"]]})
        return _own_result({"tasks": tasks}, rc)

    async def read_resource(self, params: JSONObject, rc: RequestContext) -> JSONObject:
        """Route a resources/read by the server named in the URI; rewrite URIs in the result."""
        uri = params.get("uri")
        if not isinstance(uri, str):
            raise InvalidArguments("resources/read needs a string 'uri'")
        target = rc.view.route_uri(self._pool.snapshot, uri)
        if target is None:
            raise UnknownResource(uri)
        server, original = target
        self._check_read(server, original, uri, rc)
        result = await self._metered(
            "resources/read",
            server,
            original,
            {"uri": original},
            rc,
            lambda: self._routed(server, "resources/read", {"uri": original}, rc),
        )
        contents = result.get("contents")
        if isinstance(contents, list):
            result = dict(result)
            result["contents"] = [
                {**c, "uri": rc.view.show_uri(server, c["uri"])} if isinstance(c, dict) and "uri" in c else c
                for c in contents
            ]
        if rc.modern:  # 2026-07-28 caching hints: nothing the gateway relays is shared across callers
            result = {**result, "ttlMs": 0, "cacheScope": "private"}
        return _own_result(result, rc)

    async def subscribe(self, params: JSONObject, rc: RequestContext) -> JSONObject:
        """resources/subscribe (session era): updates then arrive on the session's GET stream."""
        target = self._resource_target(params, rc)
        if rc.session is None:
            raise MethodNotFound("resources/subscribe")
        if target not in rc.session.subscriptions:
            await self._pool.subscribe_resource(*target)
            rc.session.subscriptions.add(target)
        return {}

    async def unsubscribe(self, params: JSONObject, rc: RequestContext) -> JSONObject:
        """resources/unsubscribe (session era)."""
        target = self._resource_target(params, rc)
        if rc.session is None:
            raise MethodNotFound("resources/unsubscribe")
        if target in rc.session.subscriptions:
            rc.session.subscriptions.discard(target)
            await self._pool.unsubscribe_resource(*target)
        return {}

    async def hold_resources(self, uris: list[Any], view: View) -> dict[str, tuple[str, str]]:
        """Subscribe upstream to each routable URI; {shown uri: (server, upstream uri)} of those held."""
        held: dict[str, tuple[str, str]] = {}
        for uri in uris:
            target = view.route_uri(self._pool.snapshot, uri) if isinstance(uri, str) else None
            if target is None or uri in held:
                continue
            try:
                await self._pool.subscribe_resource(*target)
            except GatewayError:
                continue  # not honoured: omitted from the acknowledgement
            held[uri] = target
        return held

    async def release_resources(self, held: dict[str, tuple[str, str]]) -> None:
        """Undo `hold_resources`."""
        for target in held.values():
            await self._pool.unsubscribe_resource(*target)

    def _resource_target(self, params: JSONObject, rc: RequestContext) -> tuple[str, str]:
        uri = params.get("uri")
        if not isinstance(uri, str):
            raise InvalidArguments("'uri' must be a string")
        target = rc.view.route_uri(self._pool.snapshot, uri)
        if target is None:
            raise UnknownResource(uri)
        self._check_read(target[0], target[1], uri, rc)
        return target

    async def get_prompt(self, params: JSONObject, rc: RequestContext) -> JSONObject:
        """Route a prompts/get by exposed prompt name."""
        name = params.get("name")
        if not isinstance(name, str):
            raise InvalidArguments("prompts/get needs a string 'name'")
        if "arguments" in params and not _string_map(params["arguments"]):
            raise InvalidArguments("prompts/get 'arguments' must be an object of strings")
        prompt = rc.view.prompt(self._pool.snapshot, name)
        if prompt is None:
            raise UnknownPrompt(name)
        self._check_prompt(prompt, name, rc)
        upstream_params: JSONObject = {"name": prompt.name}
        if "arguments" in params:
            upstream_params["arguments"] = params["arguments"]
        result = await self._metered(
            "prompts/get",
            prompt.server,
            prompt.name,
            upstream_params,
            rc,
            lambda: self._routed(prompt.server, "prompts/get", upstream_params, rc),
        )
        return _own_result(result, rc)

    async def complete(self, params: JSONObject, rc: RequestContext) -> JSONObject:
        """Route completion/complete by the prompt or resource it refers to."""
        ref = params.get("ref")
        if not isinstance(ref, dict):
            raise InvalidArguments("completion/complete needs a 'ref'")
        _check_completion_argument(params)
        upstream_ref = dict(ref)
        if ref.get("type") == "ref/prompt":
            prompt = rc.view.prompt(self._pool.snapshot, str(ref.get("name")))
            if prompt is None:
                raise UnknownPrompt(str(ref.get("name")))
            self._check_prompt(prompt, str(ref.get("name")), rc)
            server, upstream_ref["name"] = prompt.server, prompt.name
        elif ref.get("type") == "ref/resource":
            target = rc.view.route_uri(self._pool.snapshot, str(ref.get("uri")))
            if target is None:
                raise UnknownResource(str(ref.get("uri")))
            self._check_read(target[0], target[1], str(ref.get("uri")), rc)
            server, upstream_ref["uri"] = target
        else:
            raise InvalidArguments("Unknown completion reference type")
        upstream_params = {k: v for k, v in params.items() if k != "_meta"}
        upstream_params["ref"] = upstream_ref
        return _own_result(await self._routed(server, "completion/complete", upstream_params, rc), rc)

    async def _metered(
        self,
        method: str,
        server: str,
        name: str,
        params: JSONObject,
        rc: RequestContext,
        call: Callable[[], Awaitable[JSONObject]],
    ) -> JSONObject:
        """`call`, recorded as one usage event when metering is on."""
        if self._metering is None:
            return await call()
        version = self._pool.snapshot.version
        return await self._metering.metered(method, rc.principal, server, name, params, version, call)

    async def _routed(self, server: str, method: str, params: JSONObject, rc: RequestContext) -> JSONObject:
        connector = self._pool.connector(server)
        try:
            result = await connector.request(
                method,
                params,
                session_key=rc.session_key,
                on_progress=rc.on_progress,
                on_notification=rc.notify,
                log_level=rc.log_level,
                principal_key=rc.principal.key,
            )
        except (UpstreamUnavailable, UpstreamProtocolError) as exc:
            await self._pool.report_failure(server, exc)
            raise
        self._pool.report_success(server)
        return result


def _own_result(result: JSONObject, rc: RequestContext) -> JSONObject:
    """Replace the upstream's self-description with tollhouse's; the client talks to us."""
    meta = result.get("_meta")
    if isinstance(meta, dict) and _SERVER_INFO_KEY in meta:
        result = dict(result)
        result["_meta"] = {k: v for k, v in meta.items() if k != _SERVER_INFO_KEY}
    if rc.modern:
        result = dict(result)
        result.setdefault("resultType", "complete")
        result.setdefault("_meta", {})[_SERVER_INFO_KEY] = SERVER_INFO
    elif "resultType" in result:
        result = {k: v for k, v in result.items() if k != "resultType"}
    return result


_TASK_METHODS = ("tasks/get", "tasks/result", "tasks/cancel", "tasks/update")


def _created_task(result: JSONObject) -> tuple[str, Any] | None:
    """(upstream task id, ttl ms) when a tools/call result created a task (either era), else None."""
    task = result.get("task")
    if isinstance(task, dict) and isinstance(task.get("taskId"), str):
        return task["taskId"], task.get("ttl")
    if result.get("resultType") == "task" and isinstance(result.get("taskId"), str):
        return result["taskId"], result.get("ttlMs")
    return None


def _object_or_none(value: Any) -> JSONObject | None:
    return value if isinstance(value, dict) else None


def _string_map(value: Any) -> bool:
    """An object of strings: prompt arguments and completion context (MCP schema)."""
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())


def _check_completion_argument(params: JSONObject) -> None:
    """completion/complete's `argument` and `context` as the MCP schema has them, checked before routing.

    Raises:
        InvalidArguments: `argument` is not {name: str, value: str}, or `context` is malformed.
    """
    argument = params.get("argument")
    if not (
        isinstance(argument, dict)
        and isinstance(argument.get("name"), str)
        and isinstance(argument.get("value"), str)
    ):
        raise InvalidArguments("completion/complete needs an 'argument' with string 'name' and 'value'")
    context = params.get("context", {})
    if not isinstance(context, dict) or ("arguments" in context and not _string_map(context["arguments"])):
        raise InvalidArguments("completion/complete 'context.arguments' must be an object of strings")


def _list_result(key: str, items: list[JSONObject], cursor: str | None, rc: RequestContext) -> JSONObject:
    result: JSONObject = {key: items}
    if cursor is not None:
        result["nextCursor"] = cursor
    if rc.modern:
        result["ttlMs"] = 0
        result["cacheScope"] = "private"
        result["resultType"] = "complete"
    return result


def _encode_cursor(kind: str, value: str | None) -> str | None:
    if value is None:
        return None
    return base64.urlsafe_b64encode(f"{kind}:{value}".encode()).decode().rstrip("=")


def _decode_cursor(params: JSONObject, kind: str) -> str | None:
    cursor = params.get("cursor")
    if cursor is None:
        return None
    if not isinstance(cursor, str):
        raise InvalidArguments("Invalid cursor")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidArguments("Invalid cursor") from None
    prefix, sep, value = raw.partition(":")
    if prefix != kind or not sep:
        raise InvalidArguments("Invalid cursor")
    return value


def _supports_url_elicitation(rc: RequestContext) -> bool:
    """A 2025-11-25 session client that declared `elicitation.url` (its error -32042 is session-era only)."""
    if rc.modern or rc.protocol_version < "2025-11-25":
        return False
    elicitation = (rc.client_capabilities or {}).get("elicitation")
    return isinstance(elicitation, dict) and isinstance(elicitation.get("url"), dict)
