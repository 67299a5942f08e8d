"""notes: an A2A agent that keeps its notes in an MCP server reached *through tollhouse*.

Skills, chosen by the message metadata key `tollhouse/skill` (default `remember`):

- `remember` calls `notes__add_note` with the message text, then `notes__list_notes`;
- `recall` calls only `notes__list_notes`.

Both answer with one artifact listing the notes: a text part (one `- note` line each) and a
data part `{"notes": [...]}`. The agent is a plain MCP client of the gateway's `/mcp`
endpoint (the official `mcp` client over Streamable HTTP) with a bearer token of its own,
and opens one MCP connection per task. It speaks 2026-07-28 by default: tollhouse then keeps
one upstream notes session per caller, so what `remember` stored, a later `recall` with the
same token finds. (With `mode="legacy"` every task is its own MCP session, and so its own
notes.) A `traceparent` (and `tracestate`) header on the incoming A2A request is passed on as
HTTP headers and in `_meta` of every MCP request, so the agent's MCP calls join the caller's
trace. A failed MCP call, or a gateway that cannot be reached, ends the task FAILED with a
status message saying why; the agent keeps serving.

Routes and card layout are echo_agent's; see its docstring for serving on an ephemeral port.

    python -m examples.agents.notes_agent --mcp-url http://127.0.0.1:8000/mcp --token KEY [--port 0]

`--mcp-url` and `--token` default to $TOLLHOUSE_MCP_URL and $TOLLHOUSE_TOKEN.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from functools import partial
from typing import Any, Literal, cast

import anyio
from a2a.helpers import new_data_part, new_text_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.tasks import TaskUpdater
from a2a.types import AgentSkill
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.types import CallToolResult, RequestParamsMeta, TextContent
from starlette.applications import Starlette

from examples.agents.echo_agent import (
    a2a_app,
    agent_card,
    agent_text,
    open_task,
    parse_args,
    serve_agent,
    skill_of,
)

__all__ = [
    "MODES",
    "SKILLS",
    "Mode",
    "NotesExecutor",
    "NotesUnavailable",
    "build_app",
    "main",
    "render_notes",
]

Mode = Literal["legacy", "2026-07-28"]
MODES: tuple[Mode, ...] = ("2026-07-28", "legacy")
TRACE_HEADERS = ("traceparent", "tracestate")

SKILLS = (
    AgentSkill(
        id="remember",
        name="Remember",
        description="Adds the message text to the notes and answers with every note.",
        tags=["notes"],
        examples=["buy milk"],
    ),
    AgentSkill(
        id="recall",
        name="Recall",
        description="Answers with every note.",
        tags=["notes"],
        examples=["what did I say?"],
    ),
)


class NotesUnavailable(Exception):
    """The notes could not be read or written through the gateway."""


def render_notes(notes: Sequence[str]) -> str:
    """The text of the answer: one `- note` line per note, or "(no notes)"."""
    return "\n".join(f"- {note}" for note in notes) or "(no notes)"


def _trace_headers(context: RequestContext) -> dict[str, str]:
    headers = context.call_context.state.get("headers") or {}
    return {name: headers[name] for name in TRACE_HEADERS if isinstance(headers.get(name), str)}


def _text(result: CallToolResult) -> str:
    return "".join(block.text for block in result.content if isinstance(block, TextContent))


def _describe(exc: BaseException) -> str:
    # The client's task groups wrap a transport failure in exception groups.
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class NotesExecutor(AgentExecutor):
    """Runs `remember` and `recall` against the notes tools of an MCP endpoint."""

    def __init__(
        self,
        mcp_url: str,
        token: str,
        *,
        server: str = "notes",
        mode: Mode = "2026-07-28",
        timeout_seconds: float = 30.0,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        self._mcp_url = mcp_url
        self._token = token
        self._server = server
        self._mode = mode
        self._timeout_seconds = timeout_seconds

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        """Run the skill the message asks for; answer with the notes, or fail with the reason."""
        updater = await open_task(context, event_queue)
        skill = skill_of(context, "remember")
        if skill not in {s.id for s in SKILLS}:
            known = ", ".join(s.id for s in SKILLS)
            await updater.reject(agent_text(updater, f"unknown skill {skill!r}; this agent offers {known}"))
            return
        text = context.get_user_input().strip()
        if skill == "remember" and not text:
            await updater.reject(agent_text(updater, "remember needs a text to remember"))
            return
        await updater.start_work()
        try:
            notes = await self._use_notes(text if skill == "remember" else None, _trace_headers(context))
        except NotesUnavailable as exc:
            await updater.failed(agent_text(updater, f"{skill} failed: {exc}"))
            return
        await updater.add_artifact(
            [new_text_part(render_notes(notes)), new_data_part({"notes": notes})], name="notes"
        )
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        """Mark the task CANCELED; the SDK then cancels the running MCP calls."""
        assert context.task_id is not None and context.context_id is not None
        updater = TaskUpdater(event_queue, context.task_id, context.context_id)
        await updater.cancel(agent_text(updater, "cancelled"))

    async def _use_notes(self, note: str | None, trace: dict[str, str]) -> list[str]:
        """Add `note` (unless None), then list the notes, on one MCP connection.

        Raises:
            NotesUnavailable: An MCP error, a tool error, an unexpected result, or no gateway.
        """
        failure: str | None = None
        notes: list[str] = []
        headers = {"Authorization": f"Bearer {self._token}", **trace}
        # `_meta` is an open map; the 2026 spec reserves unprefixed traceparent/tracestate in it.
        meta = cast(RequestParamsMeta, dict(trace)) if trace else None
        try:
            with anyio.fail_after(self._timeout_seconds):
                async with (
                    create_mcp_http_client(headers=headers) as http,
                    Client(
                        streamable_http_client(self._mcp_url, http_client=http), mode=self._mode
                    ) as client,
                ):
                    # Failures are raised out here: inside, the client's task groups would wrap them.
                    try:
                        notes = await self._script(client, note, meta)
                    except NotesUnavailable as exc:
                        failure = str(exc)
        except TimeoutError:
            failure = f"no answer from {self._mcp_url} within {self._timeout_seconds:g} s"
        except Exception as exc:
            failure = f"could not talk MCP to {self._mcp_url}: {_describe(exc)}"
        if failure is not None:
            raise NotesUnavailable(failure)
        return notes

    async def _script(self, client: Client, note: str | None, meta: RequestParamsMeta | None) -> list[str]:
        if note is not None:
            await self._call(client, "add_note", {"text": note}, meta)
        result = await self._call(client, "list_notes", {}, meta)
        content: Any = result.structured_content
        # MCPServer wraps a non-object return value as {"result": value}.
        listed = content.get("result") if isinstance(content, dict) else None
        if not isinstance(listed, list) or not all(isinstance(item, str) for item in listed):
            raise NotesUnavailable(f"{self._server}__list_notes gave {content!r}, not a list of notes")
        return listed

    async def _call(
        self, client: Client, tool: str, arguments: dict[str, Any], meta: RequestParamsMeta | None
    ) -> CallToolResult:
        name = f"{self._server}__{tool}"
        try:
            result = await client.call_tool(name, arguments, meta=meta)
        except MCPError as exc:
            raise NotesUnavailable(f"{name}: {_describe_mcp(exc)}") from exc
        if result.is_error:
            raise NotesUnavailable(f"{name} returned a tool error: {_text(result)!r}")
        return result


def _describe_mcp(exc: MCPError) -> str:
    return f"JSON-RPC error {exc.code}: {exc.message}"


def build_app(
    base_url: str,
    *,
    mcp_url: str,
    token: str,
    name: str = "Notes Agent",
    server: str = "notes",
    mode: Mode = "2026-07-28",
    legacy: bool = False,
    timeout_seconds: float = 30.0,
) -> Starlette:
    """Build the notes agent's app for clients reaching it at `base_url`.

    It uses the tools `{server}__add_note` and `{server}__list_notes` of the MCP endpoint
    `mcp_url` (tollhouse's /mcp) with `token` as its bearer token, in protocol era `mode`;
    `timeout_seconds` bounds each task's MCP work. `legacy` serves a 0.3 card.
    """
    card = agent_card(
        base_url,
        name=name,
        description="Remembers notes in an MCP notes server reached through tollhouse.",
        skills=SKILLS,
        legacy=legacy,
        output_modes=("text/plain", "application/json"),
    )
    executor = NotesExecutor(mcp_url, token, server=server, mode=mode, timeout_seconds=timeout_seconds)
    return a2a_app(card, executor)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mcp-url",
        default=os.environ.get("TOLLHOUSE_MCP_URL"),
        help="tollhouse's MCP endpoint, e.g. http://127.0.0.1:8000/mcp (default: $TOLLHOUSE_MCP_URL)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("TOLLHOUSE_TOKEN"),
        help="bearer token for it (default: $TOLLHOUSE_TOKEN)",
    )
    parser.add_argument("--notes", default="notes", help="registry id of the notes server (default: notes)")
    parser.add_argument("--mode", choices=MODES, default="2026-07-28", help="MCP era (default: 2026-07-28)")


def main(argv: Sequence[str] | None = None) -> None:
    """Run the notes agent until SIGTERM or SIGINT, printing `READY http://HOST:PORT/.well-known/agent-card.json`."""
    args = parse_args(
        argv,
        "notes: an example A2A agent that keeps notes through tollhouse",
        default_name="Notes Agent",
        add_arguments=_add_arguments,
    )
    if not args.mcp_url or not args.token:
        sys.exit(
            "notes_agent: --mcp-url and --token (or $TOLLHOUSE_MCP_URL and $TOLLHOUSE_TOKEN) are required"
        )
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("mcp").setLevel(logging.WARNING)
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    anyio.run(serve_agent, partial(_build_from_args, args), args.host, args.port, args.public_url)


def _build_from_args(args: argparse.Namespace, base_url: str) -> Starlette:
    return build_app(
        base_url,
        mcp_url=args.mcp_url,
        token=args.token,
        name=args.name,
        server=args.notes,
        mode=args.mode,
        legacy=args.protocol == "0.3",
    )


if __name__ == "__main__":
    main(sys.argv[1:])
