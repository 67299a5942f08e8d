"""Fuzzing the MCP endpoint (issue 10, SECURITY_GOALS R11): both eras, raw bytes, and a corpus.

One gateway in front of one counting upstream serves the whole module. They run in an
event loop on a background thread (an anyio blocking portal); Hypothesis drives a plain
synchronous HTTP client against them, so `@given` needs no async support. Every input is
checked for:
1. no 5xx, and a well-formed answer: 202, a 4xx, or a 200 whose JSON (or last SSE event) is
   a JSON-RPC response with our id (or null, for a request whose id could not be used);
2. no upstream call unless the strategy built a valid routed call (tests/fuzz/strategies.py
   says exactly what that is), and a successful routed call was answered by the upstream;
3. bounded memory: the Python heap (tracemalloc) grows by less than `MEMORY_BOUND` over a
   run, and the gateway still answers a normal call afterwards.
Failing inputs are printed as corpus JSON (see tests/fuzz/README.md) and kept in corpus/.
"""

from __future__ import annotations

import gc
import json
import os
import re
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, currently_in_test_context, given, note, settings
from mcp.server import Server, ServerRequestContext
from mcp.types import (
    CallToolRequestParams,
    CallToolResult,
    CompleteRequestParams,
    CompleteResult,
    Completion,
    GetPromptRequestParams,
    GetPromptResult,
    ListPromptsResult,
    ListResourcesResult,
    ListResourceTemplatesResult,
    ListToolsResult,
    PaginatedRequestParams,
    Prompt,
    PromptArgument,
    PromptMessage,
    ReadResourceRequestParams,
    ReadResourceResult,
    Resource,
    TextContent,
    TextResourceContents,
    Tool,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tests.fuzz.strategies import (
    MODERN,
    PROMPTS,
    RESOURCES,
    ROUTED,
    SERVER,
    SESSION_VERSIONS,
    TOOLS,
    Case,
    mcp_cases,
    raw_cases,
)
from tests.harness import initialize_request, running_gateway
from tests.servers import serve

CORPUS = Path(__file__).parent / "corpus"
MEMORY_BOUND = 50 * 1024 * 1024
# The defaults keep the module within 30 s on 2 cores; TOLLHOUSE_FUZZ_EXAMPLES overrides them.
EXAMPLES = int(os.environ.get("TOLLHOUSE_FUZZ_EXAMPLES", "0")) or None
_PLACEHOLDER = re.compile(r"\{(key|session:[0-9-]+)\}")


def fuzz_settings(default_examples: int) -> settings:
    """The fuzz profile: bounded, reproducible (derandomized) unless TOLLHOUSE_FUZZ_RANDOM=1, no database."""
    return settings(
        max_examples=EXAMPLES or default_examples,
        deadline=None,
        database=None,
        derandomize=os.environ.get("TOLLHOUSE_FUZZ_RANDOM") != "1",
        print_blob=False,
        suppress_health_check=[
            # clean_environ (conftest) only strips variables; it holds nothing between examples
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.large_base_example,
        ],
    )


# -- the counting upstream ----------------------------------------------------------------


def counting_upstream() -> Server[Any]:
    """A low-level MCP server with the tools, prompt and resource the strategies know."""

    async def list_tools(
        ctx: ServerRequestContext[Any], params: PaginatedRequestParams | None
    ) -> ListToolsResult:
        return ListToolsResult(tools=[Tool(name=name, input_schema=schema) for name, schema in TOOLS.items()])

    async def call_tool(ctx: ServerRequestContext[Any], params: CallToolRequestParams) -> CallToolResult:
        arguments = params.arguments or {}
        text = str(arguments.get("text")) if params.name == "echo" else str(arguments["a"] + arguments["b"])
        return CallToolResult(content=[TextContent(type="text", text=text[:64])])

    async def list_resources(
        ctx: ServerRequestContext[Any], params: PaginatedRequestParams | None
    ) -> ListResourcesResult:
        return ListResourcesResult(resources=[Resource(name=uri, uri=uri) for uri in RESOURCES])

    async def list_templates(
        ctx: ServerRequestContext[Any], params: PaginatedRequestParams | None
    ) -> ListResourceTemplatesResult:
        return ListResourceTemplatesResult(resource_templates=[])

    async def read_resource(
        ctx: ServerRequestContext[Any], params: ReadResourceRequestParams
    ) -> ReadResourceResult:
        return ReadResourceResult(contents=[TextResourceContents(uri=str(params.uri), text="fuzz")])

    async def list_prompts(
        ctx: ServerRequestContext[Any], params: PaginatedRequestParams | None
    ) -> ListPromptsResult:
        argument = PromptArgument(name="name", required=False)
        return ListPromptsResult(prompts=[Prompt(name=name, arguments=[argument]) for name in PROMPTS])

    async def get_prompt(ctx: ServerRequestContext[Any], params: GetPromptRequestParams) -> GetPromptResult:
        text = TextContent(type="text", text=f"hello {(params.arguments or {}).get('name', '')}"[:64])
        return GetPromptResult(messages=[PromptMessage(role="user", content=text)])

    async def complete(ctx: ServerRequestContext[Any], params: CompleteRequestParams) -> CompleteResult:
        return CompleteResult(completion=Completion(values=["a"]))

    return Server(
        "fuzz-upstream",
        version="0.0.1",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_list_resource_templates=list_templates,
        on_read_resource=read_resource,
        on_list_prompts=list_prompts,
        on_get_prompt=get_prompt,
        on_completion=complete,
    )


class Counting:
    """ASGI wrapper counting the routed JSON-RPC requests (strategies.ROUTED) the upstream receives."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.calls: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            method = orjson.loads(body).get("method")
        except (orjson.JSONDecodeError, AttributeError):
            method = None
        if method in ROUTED:
            self.calls[method] += 1
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def total(self) -> int:
        """Routed requests received so far."""
        return sum(self.calls.values())


# -- the target: a gateway in front of the counting upstream ---------------------------------


@dataclass
class Answer:
    """What came back: status, content type, and the JSON-RPC messages in the body."""

    status: int
    content_type: str
    messages: list[Any]
    raw: bytes


@dataclass
class Target:
    """The running gateway, seen from the fuzzing thread."""

    url: str
    key: str
    sessions: dict[str, str]
    upstream: Counting
    http: httpx2.Client

    def fill(self, value: str) -> str:
        def one(match: re.Match[str]) -> str:
            word = match.group(1)
            return self.key if word == "key" else self.sessions[word.partition(":")[2]]

        return _PLACEHOLDER.sub(one, value)

    def send(self, case: Case) -> Answer:
        """Send one case; read JSON, or SSE until the response (or a listen acknowledgement)."""
        headers = [(k.encode("latin-1"), self.fill(v).encode("latin-1")) for k, v in case.headers]
        with self.http.stream(case.method, self.url, content=case.body, headers=headers) as response:
            content_type = response.headers.get("content-type", "")
            if not content_type.startswith("text/event-stream"):
                raw = response.read()
                messages = [json.loads(raw)] if content_type.startswith("application/json") else []
                return Answer(response.status_code, content_type, messages, raw)
            messages = []
            data: list[str] = []
            for line in response.iter_lines():
                if line.startswith("data:"):
                    data.append(line[5:].strip())
                elif line == "" and data:
                    joined, data = "\n".join(data), []
                    if not joined:
                        continue  # a priming event
                    event = json.loads(joined)
                    messages.append(event)
                    if (
                        _is_response(event)
                        or event.get("method") == "notifications/subscriptions/acknowledged"
                    ):
                        break
            return Answer(response.status_code, content_type, messages, b"")


def _is_response(message: Any) -> bool:
    return (
        isinstance(message, dict) and "method" not in message and ("result" in message or "error" in message)
    )


async def _legacy_session(gateway_url: str, key: str, version: str) -> str:
    async with httpx2.AsyncClient(trust_env=False, timeout=30) as http:
        response = await http.post(
            gateway_url,
            json=initialize_request(version),
            headers={"Authorization": f"Bearer {key}", "Accept": "application/json, text/event-stream"},
        )
        assert response.status_code == 200, response.text
        session = response.headers["mcp-session-id"]
        notified = await http.post(
            gateway_url,
            json={"jsonrpc": "2.0", "method": "notifications/initialized"},
            headers={
                "Authorization": f"Bearer {key}",
                "Accept": "application/json, text/event-stream",
                "Mcp-Session-Id": session,
                "MCP-Protocol-Version": version,
            },
        )
        assert notified.status_code == 202, notified.text
        return session


@asynccontextmanager
async def _world(tmp_path: Path) -> AsyncIterator[tuple[str, str, dict[str, str], Counting]]:
    upstream = Counting(counting_upstream().streamable_http_app())
    async with serve(upstream, path="/mcp") as upstream_url, running_gateway(tmp_path) as gw:
        await gw.add_server(SERVER, upstream_url)
        key = await gw.create_client("fuzz")
        sessions = {version: await _legacy_session(gw.mcp_url, key, version) for version in SESSION_VERSIONS}
        yield gw.mcp_url, key, sessions, upstream


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """One gateway and one counting upstream for the module, served from a background event loop."""
    with pytest.MonkeyPatch.context() as env:
        for name in list(os.environ):  # as conftest's clean_environ, for this module-wide gateway
            if name.upper().startswith("TOLLHOUSE_") and not name.upper().startswith("TOLLHOUSE_TEST_"):
                env.delenv(name)
        with (
            start_blocking_portal(backend="asyncio") as portal,
            portal.wrap_async_context_manager(_world(tmp_path_factory.mktemp("fuzz"))) as world,
            httpx2.Client(trust_env=False, timeout=15) as http,
        ):
            url, key, sessions, upstream = world
            del http.headers["accept"]  # a case without Accept must go without it
            target = Target(url, key, sessions, upstream, http)
            _normal_call(target)
            yield target


# -- invariants -----------------------------------------------------------------------------


def _normal_call(target: Target) -> None:
    """A plain 2026-07-28 tools/call still goes through and reaches the upstream once."""
    body = {
        "jsonrpc": "2.0",
        "id": "normal",
        "method": "tools/call",
        "params": {
            "name": f"{SERVER}__echo",
            "arguments": {"text": "still here"},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientCapabilities": {},
            },
        },
    }
    case = Case(
        headers=(
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
            ("authorization", "Bearer {key}"),
            ("mcp-protocol-version", MODERN),
            ("mcp-method", "tools/call"),
            ("mcp-name", f"{SERVER}__echo"),
        ),
        body=orjson.dumps(body),
        may_reach=True,
    )
    before = target.upstream.total()
    answer = target.send(case)
    assert answer.status == 200, answer
    assert answer.messages[-1]["result"]["content"][0]["text"] == "still here"
    assert target.upstream.total() == before + 1


def _request_id(body: bytes) -> tuple[bool, Any]:
    """(whether the body is one JSON object with a usable id, that id) as the gateway parses it."""
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False, None
    if not isinstance(message, dict):
        return False, None
    request_id = message.get("id")
    usable = isinstance(request_id, (str, int)) and not isinstance(request_id, bool)
    return usable, request_id


def check(target: Target, case: Case) -> None:
    """Send `case` and assert the three invariants; on failure, print the case as corpus JSON."""
    _note(f"corpus file:\n{case.to_json()}")
    before = target.upstream.total()
    answer = target.send(case)
    reached = target.upstream.total() - before
    _note(f"answer: {answer}; upstream calls: {reached}")
    assert answer.status < 500, "a 5xx"
    if not case.may_reach:
        assert reached == 0, "an invalid message reached the upstream"
    usable, request_id = _request_id(case.body)
    if answer.status == 401:
        # the bearer layer answers before MCP, in RFC 6750 terms
        assert isinstance(answer.messages[0]["error"], str)
    elif answer.content_type.startswith("application/json"):
        assert len(answer.messages) == 1
        _check_response(answer.messages[0], usable, request_id)
    if answer.status == 200:
        assert answer.messages, "a 200 without a JSON-RPC message"
        final = answer.messages[-1]
        if final.get("method") == "notifications/subscriptions/acknowledged":
            return
        _check_response(final, usable, request_id)
        if case.may_reach and "result" in final and final["result"].get("isError") is not True:
            assert reached >= 1, "a routed call answered with a result the upstream never gave"
    else:
        assert answer.status == 202 or 400 <= answer.status < 500, answer.status
        if answer.status == 202:
            assert answer.raw == b""


def _note(text: str) -> None:
    """Printed with Hypothesis's falsifying example; corpus replays name their file instead."""
    if currently_in_test_context():
        note(text)


def _check_response(message: Any, usable: bool, request_id: Any) -> None:
    assert _is_response(message), message
    assert message.get("jsonrpc") == "2.0"
    assert ("result" in message) != ("error" in message)
    if "error" in message:
        error = message["error"]
        assert (
            isinstance(error, dict)
            and isinstance(error.get("code"), int)
            and isinstance(error.get("message"), str)
        )
        assert error["code"] != -32603, "an unexpected error inside the gateway (-32603)"
        assert message["id"] is None or (usable and message["id"] == request_id)
    else:
        assert usable and message["id"] == request_id


@contextmanager
def bounded_memory() -> Iterator[None]:
    """Python heap growth (tracemalloc, the gateway runs in this process) stays under MEMORY_BOUND.

    The heap rather than RSS: a run of 1,500 random examples grew RSS by about 80 MiB (large bodies
    leave the allocator holding pages) while the traced heap grew by under 1 MiB.
    """
    gc.collect()
    tracemalloc.start(1)
    try:
        start, _ = tracemalloc.get_traced_memory()
        yield
        gc.collect()
        end, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert end - start < MEMORY_BOUND, f"the heap grew by {(end - start) / 2**20:.1f} MiB"


# -- the tests --------------------------------------------------------------------------------


def test_mcp_messages_of_both_eras(target: Target) -> None:
    """Valid and mutated JSON-RPC/MCP messages: no 5xx, no upstream call for invalid ones, bounded memory."""

    @fuzz_settings(default_examples=250)
    @given(case=mcp_cases())
    def fuzz(case: Case) -> None:
        check(target, case)

    with bounded_memory():
        fuzz()
    _normal_call(target)


def test_raw_bytes_under_any_content_type(target: Target) -> None:
    """Arbitrary bodies, Content-Types, Accepts and HTTP methods: no 5xx, no upstream call."""

    @fuzz_settings(default_examples=150)
    @given(case=raw_cases())
    def fuzz(case: Case) -> None:
        check(target, case)

    with bounded_memory():
        fuzz()
    _normal_call(target)


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.json")), ids=lambda p: p.stem)
def test_corpus(target: Target, path: Path) -> None:
    """Every kept input (hand-written seeds and what the fuzzer found) still holds the invariants."""
    case = Case.load(json.loads(path.read_text()))
    check(target, case)
