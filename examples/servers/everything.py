"""everything: the fixtures the official MCP conformance suite expects of a server.

`@modelcontextprotocol/conformance` (pinned in `tools/conformance/package.json`) drives
a server through named tools, resources, prompts and utilities (`test_simple_text`,
`test://static-text`, `test_prompt_with_arguments`, ...). This module implements
exactly those fixtures with the SDK's `MCPServer`, serving both protocol eras on one
endpoint, so the suite can run against it directly and through the gateway.

    python examples/servers/everything.py [--host 127.0.0.1] [--port 0]

Fixtures that the 2026-07-28 revision removed (logging, `resources/subscribe`, the
standalone sampling and elicitation requests) still work on 2025-era sessions, which is
where the suite exercises them; sampling and elicitation go through the SDK's resolvers
(`Resolve`), so the same tools also work on 2026-07-28 connections (as MRTR rounds).
"""

from __future__ import annotations

import base64
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Literal, TypeVar

import anyio
from mcp.server import ServerRequestContext
from mcp.server.elicitation import ElicitationResult
from mcp.server.mcpserver import Context, Elicit, MCPServer, Message, Resolve, Sample, UserMessage
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp.types import (
    AudioContent,
    Completion,
    CompletionArgument,
    CompletionContext,
    CreateMessageResult,
    EmbeddedResource,
    EmptyResult,
    ImageContent,
    PromptReference,
    ResourceTemplateReference,
    SamplingMessage,
    SetLevelRequestParams,
    SubscribeRequestParams,
    TextContent,
    TextResourceContents,
    UnsubscribeRequestParams,
)
from pydantic import BaseModel, Field, WithJsonSchema
from starlette.applications import Starlette

from examples.servers._serving import run_cli

__all__ = [
    "AUDIO_WAV_BASE64",
    "IMAGE_PNG_BASE64",
    "TEMPLATE_URI",
    "EverythingState",
    "build_app",
    "build_server",
    "main",
]

# A 1x1 red PNG and a minimal WAV file: the suite only checks that data and mimeType exist.
IMAGE_PNG_BASE64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
)
AUDIO_WAV_BASE64 = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA="
TEMPLATE_URI = "test://template/{id}/data"
WATCHED_URI = "test://watched-resource"
# Values test_prompt_with_arguments' arguments complete from (completion/complete).
ARGUMENT_SUGGESTIONS = ("paris", "park", "party", "test-value")
# The pause between a tool's notifications; the suite asks for ~50 ms so that the
# client sees several notifications arrive while the call is still running.
STEP_DELAY = 0.05


@dataclass
class EverythingState:
    """What the server observed, so an in-process test can see what reached it.

    `subscriptions` holds the URIs currently subscribed to; the counters count every
    `resources/subscribe` and `resources/unsubscribe` request.
    """

    subscriptions: set[str] = field(default_factory=set)
    subscribe_count: int = 0
    unsubscribe_count: int = 0
    log_level: str | None = None


# ----- elicitation schemas ----------------------------------------------------------


class ContactDetails(BaseModel):
    """What `test_elicitation` asks for (the suite answers with a username and an email)."""

    username: str = Field(description="User's response")
    email: str = Field(description="User's email address")


class ProfileDefaults(BaseModel):
    """SEP-1034: a default for every primitive type."""

    name: str = Field(default="John Doe", description="User name")
    age: int = Field(default=30, description="User age")
    score: float = Field(default=95.5, description="User score")
    status: Literal["active", "inactive", "pending"] = Field(default="active", description="User status")
    verified: bool = Field(default=True, description="Verification status")


_OPTIONS = Literal["option1", "option2", "option3"]
_VALUES = Literal["value1", "value2", "value3"]


class EnumChoices(BaseModel):
    """SEP-1330: the five enum shapes, each rendered exactly as the suite expects.

    The camelCase field names are the suite's; `WithJsonSchema` pins each rendering
    while the `Literal` types still validate the answer.
    """

    untitledSingle: Annotated[
        _OPTIONS,
        WithJsonSchema({"type": "string", "enum": ["option1", "option2", "option3"]}),
    ] = Field(default="option1", description="Select one option")
    titledSingle: Annotated[
        _VALUES,
        WithJsonSchema(
            {
                "type": "string",
                "oneOf": [
                    {"const": "value1", "title": "First Option"},
                    {"const": "value2", "title": "Second Option"},
                    {"const": "value3", "title": "Third Option"},
                ],
            }
        ),
    ] = Field(default="value1", description="Select one option with titles")
    legacyEnum: Annotated[
        Literal["opt1", "opt2", "opt3"],
        WithJsonSchema(
            {
                "type": "string",
                "enum": ["opt1", "opt2", "opt3"],
                "enumNames": ["Option One", "Option Two", "Option Three"],
            }
        ),
    ] = Field(default="opt1", description="Select one option (legacy)")
    untitledMulti: Annotated[
        list[_OPTIONS],
        WithJsonSchema(
            {
                "type": "array",
                "minItems": 1,
                "maxItems": 3,
                "items": {"type": "string", "enum": ["option1", "option2", "option3"]},
            }
        ),
    ] = Field(default=["option1"], description="Select multiple options")
    titledMulti: Annotated[
        list[_VALUES],
        WithJsonSchema(
            {
                "type": "array",
                "minItems": 1,
                "maxItems": 3,
                "items": {
                    "anyOf": [
                        {"const": "value1", "title": "First Choice"},
                        {"const": "value2", "title": "Second Choice"},
                        {"const": "value3", "title": "Third Choice"},
                    ]
                },
            }
        ),
    ] = Field(default=["value1"], description="Select multiple options with titles")


# ----- resolvers: dual-era server->client requests ----------------------------------


async def _ask_llm(prompt: str) -> Sample:
    return Sample(
        [SamplingMessage(role="user", content=TextContent(type="text", text=prompt))], max_tokens=100
    )


async def _ask_contact(message: str) -> Elicit[ContactDetails]:
    return Elicit(message, ContactDetails)


async def _ask_profile() -> Elicit[ProfileDefaults]:
    return Elicit("Please review and update the form fields with defaults", ProfileDefaults)


async def _ask_choices() -> Elicit[EnumChoices]:
    return Elicit("Please select options from the enum fields", EnumChoices)


_Answer = TypeVar("_Answer", bound=BaseModel)


def _describe(outcome: ElicitationResult[_Answer]) -> str:
    content = outcome.data.model_dump_json() if outcome.action == "accept" else "{}"
    return f"action={outcome.action}, content={content}"


def build_server(state: EverythingState | None = None, *, name: str = "everything") -> MCPServer:
    """Build the everything `MCPServer`; `state` records subscriptions and the log level."""
    state = state if state is not None else EverythingState()
    server: MCPServer = MCPServer(
        name, version="1.0.0", instructions="The MCP conformance suite's server fixtures."
    )

    # ----- tools ----------------------------------------------------------------------

    @server.tool(structured_output=False)
    def test_simple_text() -> str:
        """Tests simple text content response."""
        return "This is a simple text response for testing."

    @server.tool()
    def test_image_content() -> list[ImageContent]:
        """Tests image content response."""
        return [ImageContent(type="image", data=IMAGE_PNG_BASE64, mime_type="image/png")]

    @server.tool()
    def test_audio_content() -> list[AudioContent]:
        """Tests audio content response."""
        return [AudioContent(type="audio", data=AUDIO_WAV_BASE64, mime_type="audio/wav")]

    @server.tool()
    def test_embedded_resource() -> list[EmbeddedResource]:
        """Tests embedded resource content response."""
        return [
            EmbeddedResource(
                type="resource",
                resource=TextResourceContents(
                    uri="test://embedded-resource",
                    mime_type="text/plain",
                    text="This is an embedded resource content.",
                ),
            )
        ]

    @server.tool()
    def test_multiple_content_types() -> list[TextContent | ImageContent | EmbeddedResource]:
        """Tests response with multiple content types (text, image, resource)."""
        return [
            TextContent(type="text", text="Multiple content types test:"),
            ImageContent(type="image", data=IMAGE_PNG_BASE64, mime_type="image/png"),
            EmbeddedResource(
                type="resource",
                resource=TextResourceContents(
                    uri="test://mixed-content-resource",
                    mime_type="application/json",
                    text=json.dumps({"test": "data", "value": 123}),
                ),
            ),
        ]

    @server.tool(structured_output=False)
    async def test_tool_with_logging(ctx: Context) -> str:
        """Tests tool that emits log messages during execution."""
        for step, text in enumerate(
            ("Tool execution started", "Tool processing data", "Tool execution completed")
        ):
            if step:
                await anyio.sleep(STEP_DELAY)
            # Logging is deprecated as of 2026-07-28 (SEP-2577), but this fixture exists to
            # exercise it on 2025-era sessions, so the SDK's deprecation warning is silenced
            # for this call alone. `send_log_message` is what `ctx.info` ends in (ctx.info
            # itself would warn again from inside the awaited coroutine); its decorator warns
            # when the coroutine is created, so the await can stay outside the block.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", MCPDeprecationWarning)
                sending = ctx.session.send_log_message("info", text, related_request_id=ctx.request_id)
            await sending
        return "Tool with logging executed successfully"

    @server.tool(structured_output=False)
    async def test_tool_with_progress(ctx: Context) -> str:
        """Tests tool that reports progress notifications (0, 50 and 100 of 100)."""
        for step, progress in enumerate((0, 50, 100)):
            if step:
                await anyio.sleep(STEP_DELAY)
            await ctx.report_progress(progress, 100, f"Completed step {progress} of 100")
        meta = ctx.request_context.meta
        token = meta.get("progress_token") if meta is not None else None
        return str(token if token is not None else 0)

    @server.tool(structured_output=False)
    def test_error_handling() -> str:
        """Tests error response handling (always fails with isError)."""
        raise ToolError("This tool intentionally returns an error for testing")

    @server.tool(structured_output=False)
    async def test_sampling(prompt: str, sampled: Annotated[CreateMessageResult, Resolve(_ask_llm)]) -> str:
        """Tests server-initiated sampling (LLM completion request)."""
        reply = sampled.content
        return f"LLM response: {reply.text if isinstance(reply, TextContent) else 'No response'}"

    @server.tool(structured_output=False)
    async def test_elicitation(
        message: str, outcome: Annotated[ElicitationResult[ContactDetails], Resolve(_ask_contact)]
    ) -> str:
        """Tests server-initiated elicitation (user input request)."""
        return f"User response: {_describe(outcome)}"

    @server.tool(structured_output=False)
    async def test_elicitation_sep1034_defaults(
        outcome: Annotated[ElicitationResult[ProfileDefaults], Resolve(_ask_profile)],
    ) -> str:
        """Tests elicitation with default values for all primitive types (SEP-1034)."""
        return f"Elicitation completed: {_describe(outcome)}"

    @server.tool(structured_output=False)
    async def test_elicitation_sep1330_enums(
        outcome: Annotated[ElicitationResult[EnumChoices], Resolve(_ask_choices)],
    ) -> str:
        """Tests elicitation with the enum schema variants of SEP-1330."""
        return f"Elicitation completed: {_describe(outcome)}"

    # ----- resources ------------------------------------------------------------------

    @server.resource(
        "test://static-text", name="static-text", title="Static Text Resource", mime_type="text/plain"
    )
    def static_text() -> str:
        """A static text resource for testing."""
        return "This is the content of the static text resource."

    @server.resource(
        "test://static-binary", name="static-binary", title="Static Binary Resource", mime_type="image/png"
    )
    def static_binary() -> bytes:
        """A static binary resource (image) for testing."""
        return base64.b64decode(IMAGE_PNG_BASE64)

    @server.resource(TEMPLATE_URI, name="template", title="Resource Template", mime_type="application/json")
    def template(id: str) -> str:
        """A resource template with parameter substitution."""
        return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})

    @server.resource(WATCHED_URI, name="watched-resource", title="Watched Resource", mime_type="text/plain")
    def watched() -> str:
        """A resource clients can subscribe to."""
        return "Watched resource content"

    # ----- prompts --------------------------------------------------------------------

    @server.prompt(title="Simple Test Prompt")
    def test_simple_prompt() -> list[Message]:
        """A simple prompt without arguments."""
        return [UserMessage("This is a simple prompt for testing.")]

    @server.prompt(title="Prompt With Arguments")
    def test_prompt_with_arguments(
        arg1: Annotated[str, Field(description="First test argument")],
        arg2: Annotated[str, Field(description="Second test argument")],
    ) -> list[Message]:
        """A prompt with required arguments."""
        return [UserMessage(f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'")]

    @server.prompt(title="Prompt With Embedded Resource")
    def test_prompt_with_embedded_resource(
        resourceUri: Annotated[str, Field(description="URI of the resource to embed")],
    ) -> list[Message]:
        """A prompt that includes an embedded resource."""
        embedded = TextResourceContents(
            uri=resourceUri, mime_type="text/plain", text="Embedded resource content for testing."
        )
        return [
            UserMessage(EmbeddedResource(type="resource", resource=embedded)),
            UserMessage("Please process the embedded resource above."),
        ]

    @server.prompt(title="Prompt With Image")
    def test_prompt_with_image() -> list[Message]:
        """A prompt that includes image content."""
        return [
            UserMessage(ImageContent(type="image", data=IMAGE_PNG_BASE64, mime_type="image/png")),
            UserMessage("Please analyze the image above."),
        ]

    # ----- completion -----------------------------------------------------------------

    # MCPServer.completion() is unannotated in the SDK, hence the ignore.
    @server.completion()  # type: ignore[no-untyped-call, untyped-decorator]
    async def complete(
        ref: PromptReference | ResourceTemplateReference,
        argument: CompletionArgument,
        context: CompletionContext | None,
    ) -> Completion:
        if isinstance(ref, PromptReference) and ref.name == "test_prompt_with_arguments":
            found = [value for value in ARGUMENT_SUGGESTIONS if value.startswith(argument.value)]
            return Completion(values=found, total=len(found), has_more=False)
        return Completion(values=[], total=0, has_more=False)

    # ----- 2025-era utilities MCPServer has no decorator for ----------------------------
    # `logging/setLevel` and `resources/subscribe`/`unsubscribe` are gone from the 2026-07-28
    # revision, so MCPServer offers no public hook; the SDK's docs (MethodBinding) point at
    # the low-level `Server.add_request_handler` for re-providing such methods, and the SDK's
    # own conformance fixture registers them this way too.

    async def set_level(ctx: ServerRequestContext, params: SetLevelRequestParams) -> EmptyResult:
        state.log_level = params.level
        return EmptyResult()

    async def subscribe(ctx: ServerRequestContext, params: SubscribeRequestParams) -> EmptyResult:
        state.subscriptions.add(str(params.uri))
        state.subscribe_count += 1
        return EmptyResult()

    async def unsubscribe(ctx: ServerRequestContext, params: UnsubscribeRequestParams) -> EmptyResult:
        state.subscriptions.discard(str(params.uri))
        state.unsubscribe_count += 1
        return EmptyResult()

    lowlevel = server._lowlevel_server
    lowlevel.add_request_handler("logging/setLevel", SetLevelRequestParams, set_level)
    lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, subscribe)
    lowlevel.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, unsubscribe)

    return server


def build_app(
    state: EverythingState | None = None, *, name: str = "everything", host: str = "127.0.0.1"
) -> Starlette:
    """Build the everything ASGI app, serving MCP at `/mcp` for both protocol eras.

    On a loopback `host` the SDK turns on DNS-rebinding protection (the suite checks it).
    """
    return build_server(state, name=name).streamable_http_app(host=host)


def main(argv: Sequence[str] | None = None) -> None:
    """Run everything until SIGTERM or SIGINT, printing `READY http://HOST:PORT/mcp` once serving."""
    run_cli(
        lambda host: build_app(host=host), "everything: the MCP conformance suite's server fixtures", argv
    )


if __name__ == "__main__":
    main()
