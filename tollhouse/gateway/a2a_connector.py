"""An A2A agent as an upstream: its card, a client transport to it, and its skills as MCP tools.

The pool treats an agent like an MCP server (transport `a2a`): it connects (fetches and checks
the card), syncs (the skills become the tools `{agent}__{skill}`, the card is pinned like a
server's instructions), reports health, and closes. The A2A proxy (a2a_proxy.py) borrows the
connector's transport to forward downstream requests; `request("tools/call")` is the agent
reached as a tool.

Every request carries the gateway's own credential for the agent (never the caller's token)
and the current trace context, added by an httpx request hook.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import orjson
from a2a.client.client import ClientCallContext
from a2a.client.transports.base import ClientTransport
from a2a.client.transports.jsonrpc import JsonRpcTransport
from a2a.client.transports.rest import RestTransport
from a2a.client.transports.tenant_decorator import TenantTransportDecorator
from a2a.compat.v0_3.jsonrpc_transport import CompatJsonRpcTransport
from a2a.compat.v0_3.rest_transport import CompatRestTransport
from a2a.compat.v0_3.versions import is_legacy_version
from a2a.types import Message, Part, Role, SendMessageRequest, Task, TaskState
from a2a.utils.constants import PROTOCOL_VERSION_1_0, VERSION_HEADER
from a2a.utils.errors import A2AError
from google.protobuf.json_format import MessageToDict

from tollhouse.a2a.cards import SKILL_METADATA_KEY, CardError, ParsedCard, parse_card
from tollhouse.a2a.signing import SignatureError, verify_card_signatures
from tollhouse.auth.ssrf import FetchError, UnsafeUrlError, UrlPolicy, resolve_safe
from tollhouse.gateway.credentials import CredentialProvider, StaticCredentials
from tollhouse.gateway.errors import (
    GatewayError,
    MethodNotFound,
    UnknownTool,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from tollhouse.gateway.upstream import NotificationCallback, ProgressCallback, ServerDescription
from tollhouse.registry.models import AgentOptions, JSONObject, Upstream
from tollhouse.tracing import inject_headers

__all__ = [
    "A2AConnector",
    "TaskRecorder",
    "agent_error",
    "skill_tool",
    "tool_result",
    "transport_failure",
]

logger = logging.getLogger(__name__)

# MCP tool names: what the major model APIs accept.
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_TERMINAL_FAILURES = frozenset(
    {TaskState.TASK_STATE_FAILED, TaskState.TASK_STATE_CANCELED, TaskState.TASK_STATE_REJECTED}
)
TaskRecorder = Callable[[str, str, str | None, str], Awaitable[None]]  # (agent, task, context, owner)


def skill_tool(agent: str, parsed: ParsedCard, skill_id: str) -> JSONObject | None:
    """The MCP tool definition of one skill (None when its id cannot be a tool name)."""
    skill = parsed.skill(skill_id)
    if skill is None or not _TOOL_NAME.match(skill.id):
        return None
    lines = [skill.description or skill.name, "", f"A2A agent '{agent}' ({parsed.name}), skill '{skill.id}'."]
    if skill.examples:
        lines.append("Examples: " + "; ".join(skill.examples[:5]))
    return {
        "name": skill.id,
        "title": skill.name,
        "description": "\n".join(lines),
        "inputSchema": {
            "type": "object",
            "properties": {
                "text": {"type": "string", "description": "The message to the agent."},
                "data": {"type": "object", "description": "Structured input, sent as a data part."},
                "context_id": {"type": "string", "description": "Continue this A2A context."},
                "task_id": {"type": "string", "description": "Continue this A2A task (input required)."},
            },
            "anyOf": [{"required": ["text"]}, {"required": ["data"]}],
            "additionalProperties": False,
        },
        "annotations": {"openWorldHint": True},
    }


def tool_result(outcome: Task | Message) -> JSONObject:
    """An A2A answer as an MCP tool result: its text, and the task as structured content."""
    if isinstance(outcome, Message):
        return {
            "content": _content(outcome.parts),
            "structuredContent": {"message": MessageToDict(outcome)},
            "isError": False,
        }
    parts = [part for artifact in outcome.artifacts for part in artifact.parts]
    if not parts and outcome.status.HasField("message"):
        parts = list(outcome.status.message.parts)
    state = TaskState.Name(outcome.status.state)
    content = _content(parts) or [{"type": "text", "text": f"The agent's task ended as {state}."}]
    return {
        "content": content,
        "structuredContent": {
            "taskId": outcome.id,
            "contextId": outcome.context_id,
            "state": state,
            "artifacts": [MessageToDict(a) for a in outcome.artifacts],
        },
        "isError": outcome.status.state in _TERMINAL_FAILURES,
    }


def _content(parts: Sequence[Part]) -> list[JSONObject]:
    out: list[JSONObject] = []
    for part in parts:
        kind = part.WhichOneof("content")
        if kind == "text":
            out.append({"type": "text", "text": part.text})
        elif kind == "data":
            out.append({"type": "text", "text": orjson.dumps(MessageToDict(part.data)).decode()})
        elif kind == "url":
            out.append({"type": "text", "text": part.url})
    return out


def agent_error(agent: str, exc: BaseException, timeout_seconds: float = 0.0) -> GatewayError:
    """What an upstream failure looks like to the caller (never the transport's own text)."""
    if isinstance(exc, GatewayError):
        return exc
    if (
        isinstance(exc, TimeoutError | httpx.TimeoutException)
        or type(exc).__name__ == "A2AClientTimeoutError"
    ):
        return UpstreamTimeout(agent, timeout_seconds)
    if isinstance(exc, httpx.HTTPError | OSError):
        return UpstreamUnavailable(agent)
    return UpstreamProtocolError(agent)


def transport_failure(exc: BaseException) -> BaseException | None:
    """The underlying cause when `exc` is a failure to reach the agent (not the agent's own A2A error).

    The SDK's client wraps network and HTTP failures in its own A2A error classes; the agent's
    answers (TaskNotFound, …) arrive as the protocol's error classes and are passed on as they are.
    """
    if isinstance(exc, A2AError) and type(exc).__module__.startswith("a2a.client"):
        return exc.__cause__ or exc
    if isinstance(exc, httpx.HTTPError | OSError | TimeoutError):
        return exc
    return None


class _CappedStream(httpx.AsyncByteStream):
    def __init__(self, stream: httpx.AsyncByteStream, limit: int) -> None:
        self._stream = stream
        self._limit = limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self._stream:
            seen += len(chunk)
            if seen > self._limit:
                raise httpx.ReadError("response larger than the configured limit")
            yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()


class _CappedTransport(httpx.AsyncBaseTransport):
    """Abandons a JSON answer past `limit` bytes (event streams are bounded per event by the SDK)."""

    def __init__(self, limit: int) -> None:
        self._inner = httpx.AsyncHTTPTransport(retries=0)
        self._limit = limit

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            return response
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _CappedStream(response.stream, self._limit)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class A2AConnector:
    """One registered A2A agent: card, transport, skills as tools."""

    def __init__(
        self,
        upstream: Upstream,
        *,
        credentials: CredentialProvider | None = None,
        max_response_bytes: int = 16 * 1024 * 1024,
        card_max_bytes: int = 256 * 1024,
        interface_policy: UrlPolicy | None = None,
        on_task: TaskRecorder | None = None,
    ) -> None:
        self.name = upstream.name
        self._upstream = upstream
        self._options = upstream.a2a or AgentOptions()
        self._credentials: CredentialProvider = credentials or StaticCredentials(upstream, os.environ)
        self._card_max_bytes = card_max_bytes
        self._interface_policy = interface_policy or UrlPolicy()
        self._on_task = on_task
        self._etag: str | None = None
        self._parsed: ParsedCard | None = None
        self._transport: ClientTransport | None = None
        self._interface_url: str | None = None
        self._version_header: str | None = None
        self._http = httpx.AsyncClient(
            transport=_CappedTransport(max_response_bytes),
            # No read timeout: a stream may be quiet for long; unary calls run under fail_after.
            timeout=httpx.Timeout(
                upstream.call_timeout_seconds, connect=upstream.connect_timeout_seconds, read=None
            ),
            follow_redirects=False,
        )

    # -- what the proxy uses ---------------------------------------------------------------

    @property
    def card(self) -> ParsedCard:
        """The current card.

        Raises:
            UpstreamUnavailable: not connected yet.
        """
        if self._parsed is None:
            raise UpstreamUnavailable(self.name)
        return self._parsed

    @property
    def transport(self) -> ClientTransport:
        """The client transport to the agent's preferred interface."""
        if self._transport is None:
            raise UpstreamUnavailable(self.name)
        return self._transport

    @property
    def call_timeout_seconds(self) -> float:
        """How long a unary call to the agent may take."""
        return self._upstream.call_timeout_seconds

    async def call_context(self, principal_key: str | None) -> ClientCallContext:
        """What one upstream call carries: the gateway's credential (for `principal_key` when the
        credential is per user), the A2A version of the interface, and the current trace context."""
        credentials = self._credentials
        headers = dict(await credentials.headers(principal_key if credentials.per_request else None))
        if self._version_header is not None:
            # The SDK's transports leave the version to the HTTP client; a 1.x agent needs it.
            headers[VERSION_HEADER] = self._version_header
        inject_headers(headers)
        return ClientCallContext(service_parameters=headers)

    async def record_task(self, task_id: str, context_id: str | None, owner: str) -> None:
        """Remember who owns a task created through the gateway."""
        if self._on_task is not None and task_id:
            await self._on_task(self.name, task_id, context_id, owner)

    # -- UpstreamConnector -----------------------------------------------------------------

    async def start(self) -> ServerDescription:
        """Fetch and check the card, and open the transport to its preferred interface."""
        return await self.describe()

    async def describe(self) -> ServerDescription:
        """Fetch the card again (conditionally) and describe the agent as of now."""
        parsed = await self._load_card()
        if parsed is not self._parsed:
            await self._open(parsed)
            self._parsed = parsed
        capabilities: JSONObject = {"tools": {}} if self._options.tools == "skills" else {}
        return ServerDescription(
            era="modern",
            protocol_version=f"a2a/{parsed.version}",
            capabilities=capabilities,
            server_info={"name": parsed.name, "version": str(parsed.document.get("version", ""))},
            card=parsed.pinned(),
        )

    async def request(
        self,
        method: str,
        params: JSONObject,
        *,
        session_key: str | None = None,
        on_progress: ProgressCallback | None = None,
        timeout_seconds: float | None = None,
        on_request: Any = None,
        client_capabilities: JSONObject | None = None,
        on_notification: NotificationCallback | None = None,
        log_level: str | None = None,
        principal_key: str | None = None,
    ) -> JSONObject:
        """tools/call of a skill: one blocking SendMessage, its task or message as the result."""
        if method != "tools/call":
            raise MethodNotFound(f"Method not found: {method}")
        skill = str(params.get("name", ""))
        if self.card.skill(skill) is None:
            raise UnknownTool(f"{self.name}__{skill}")
        arguments = params.get("arguments") or {}
        request = SendMessageRequest(message=_message(arguments, skill))
        try:
            with anyio.fail_after(timeout_seconds or self._upstream.call_timeout_seconds):
                context = await self.call_context(principal_key)
                response = await self.transport.send_message(request, context=context)
        except (A2AError, httpx.HTTPError, OSError, TimeoutError) as exc:
            cause = transport_failure(exc)
            if cause is not None:
                raise agent_error(self.name, cause, self._upstream.call_timeout_seconds) from None
            # The agent's own refusal (task not found, not cancelable, …) is a tool error.
            return {"content": [{"type": "text", "text": str(exc)}], "isError": True}
        if response.HasField("task"):
            task = response.task
            if principal_key is not None:
                await self.record_task(task.id, task.context_id or None, principal_key)
            return tool_result(task)
        if response.HasField("message"):
            return tool_result(response.message)
        raise UpstreamProtocolError(self.name)

    async def list_all(self, method: str, key: str) -> list[JSONObject]:
        """tools/list: the skills that can be tools; nothing else is listed."""
        if method != "tools/list" or self._options.tools != "skills":
            return []
        parsed = self.card
        tools = (skill_tool(self.name, parsed, s.id) for s in parsed.skills)
        return [t for t in tools if t is not None]

    async def end_session(self, session_key: str) -> None:
        """A2A has no sessions."""

    async def set_resource_subscriptions(self, uris: Sequence[str]) -> None:
        """A2A agents have no resources."""

    async def watch(self, on_notification: NotificationCallback) -> None:
        """Nothing to watch: card changes are found by the periodic sync (describe)."""
        await anyio.sleep_forever()

    async def aclose(self) -> None:
        """Close the transport and the HTTP client."""
        await self._http.aclose()

    # -- internals -------------------------------------------------------------------------

    async def _load_card(self) -> ParsedCard:
        if self._upstream.url is None:
            if self._parsed is not None:
                return self._parsed
            document: Any = self._options.card
        else:
            fetched = await self._fetch_card(self._upstream.url)
            if fetched is None:  # 304: unchanged
                assert self._parsed is not None
                return self._parsed
            document = fetched
        try:
            parsed = parse_card(document)
        except CardError as exc:
            raise UpstreamUnavailable(self.name, f"invalid agent card: {exc}") from None
        if self._options.require_signature:
            try:
                verify_card_signatures(parsed.document, self._options.jwks or {"keys": []})
            except SignatureError as exc:
                raise UpstreamUnavailable(self.name, f"agent card signature refused: {exc}") from None
        if self._parsed is not None and parsed.document == self._parsed.document:
            return self._parsed
        return parsed

    async def _fetch_card(self, url: str) -> Any:
        headers = {"Accept": "application/json", **await self._credentials.headers(None)}
        if self._etag and self._parsed is not None:
            headers["If-None-Match"] = self._etag
        try:
            with anyio.fail_after(self._upstream.call_timeout_seconds):
                async with self._http.stream("GET", url, headers=headers) as response:
                    if response.status_code == 304 and self._parsed is not None:
                        return None
                    if response.status_code != 200:
                        raise UpstreamUnavailable(
                            self.name, f"agent card fetch answered HTTP {response.status_code}"
                        )
                    body = bytearray()
                    async for chunk in response.aiter_raw():
                        body += chunk
                        if len(body) > self._card_max_bytes:
                            raise UpstreamUnavailable(
                                self.name, f"agent card larger than {self._card_max_bytes} bytes"
                            )
                    self._etag = response.headers.get("etag")
        except (httpx.HTTPError, TimeoutError) as exc:
            raise agent_error(self.name, exc, self._upstream.call_timeout_seconds) from None
        try:
            return orjson.loads(bytes(body))
        except orjson.JSONDecodeError:
            raise UpstreamUnavailable(self.name, "agent card is not JSON") from None

    async def _open(self, parsed: ParsedCard) -> None:
        try:
            interface = parsed.preferred()
        except CardError as exc:
            raise UpstreamUnavailable(self.name, f"invalid agent card: {exc}") from None
        card_url = self._upstream.url
        if card_url is not None and _origin(interface.url) != _origin(card_url):
            # A card may point anywhere: an interface on another origin is checked like any URL
            # learned from a peer (DESIGN.md, Contract details).
            try:
                await resolve_safe(interface.url, self._interface_policy)
            except (UnsafeUrlError, FetchError) as exc:
                raise UpstreamUnavailable(self.name, f"agent interface URL refused: {exc}") from None
        legacy = is_legacy_version(interface.protocol_version)
        transport: ClientTransport
        if interface.binding == "HTTP+JSON":
            rest = CompatRestTransport if legacy else RestTransport
            transport = rest(self._http, parsed.card, interface.url, is_shared_httpx=True)
        else:
            rpc = CompatJsonRpcTransport if legacy else JsonRpcTransport
            transport = rpc(self._http, parsed.card, interface.url, is_shared_httpx=True)
        if interface.tenant:
            transport = TenantTransportDecorator(transport, interface.tenant)
        self._transport = transport
        self._interface_url = interface.url
        self._version_header = None if legacy else PROTOCOL_VERSION_1_0


def _message(arguments: JSONObject, skill: str) -> Message:
    parts: list[Part] = []
    text = arguments.get("text")
    if isinstance(text, str):
        parts.append(Part(text=text))
    data = arguments.get("data")
    if isinstance(data, dict):
        part = Part()
        part.data.struct_value.update(data)
        parts.append(part)
    message = Message(role=Role.ROLE_USER, message_id=str(uuid.uuid4()), parts=parts)
    message.metadata.update({SKILL_METADATA_KEY: skill})
    if isinstance(arguments.get("context_id"), str):
        message.context_id = arguments["context_id"]
    if isinstance(arguments.get("task_id"), str):
        message.task_id = arguments["task_id"]
    return message


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname, parts.port
