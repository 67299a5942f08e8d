"""A deterministic scripted agent (no LLM) that drives tollhouse with the official `mcp` client.

It walks the gateway's namespaced view of the example servers: tools are
`{server}__{tool}`, prompts `{server}__{prompt}`, and resource URIs
`tollhouse://{server}/{original-uri}`. Each step checks its result, and the first
failed check ends the run.

    python examples/agents/scripted_agent.py --url URL --token TOKEN [--mode legacy|2026-07-28|both]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any, Literal

import anyio
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.types import CallToolResult, TextContent, TextResourceContents

__all__ = ["MODES", "AgentCheckFailed", "Mode", "client_config", "main", "parse_args", "run_agent"]

Mode = Literal["legacy", "2026-07-28", "both"]
MODES: tuple[Mode, ...] = ("legacy", "2026-07-28", "both")
_Era = Literal["legacy", "2026-07-28"]
_ERAS: dict[str, tuple[_Era, ...]] = {
    "legacy": ("legacy",),
    "2026-07-28": ("2026-07-28",),
    "both": ("legacy", "2026-07-28"),
}


class AgentCheckFailed(Exception):
    """A step of the script did not get the result it expected."""


def client_config(url: str, token: str) -> dict[str, Any]:
    """A ready-to-paste MCP client configuration for tollhouse at `url`."""
    return {
        "mcpServers": {
            "tollhouse": {"type": "http", "url": url, "headers": {"Authorization": f"Bearer {token}"}}
        }
    }


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise AgentCheckFailed(message)


@contextmanager
def _step(name: str) -> Iterator[None]:
    # A protocol error is a failed check too, named after the step that hit it.
    try:
        yield
    except MCPError as exc:
        raise AgentCheckFailed(f"{name}: JSON-RPC error {exc.code}: {exc.message}") from exc


def _text(result: CallToolResult) -> str:
    return "".join(block.text for block in result.content if isinstance(block, TextContent))


def _tool_result(result: CallToolResult, name: str) -> CallToolResult:
    _check(not result.is_error, f"{name} returned a tool error: {_text(result)!r}")
    return result


def _structured_value(result: CallToolResult) -> Any:
    # MCPServer wraps a non-object return value as {"result": value}.
    content = result.structured_content
    if isinstance(content, dict) and set(content) == {"result"}:
        return content["result"]
    return content


async def _run_mode(
    url: str, token: str, mode: _Era, studio: str, notes: str, on_line: Callable[[str], None] | None
) -> list[str]:
    lines: list[str] = []

    def say(line: str) -> None:
        lines.append(f"[{mode}] {line}")
        if on_line is not None:
            on_line(lines[-1])

    failure: AgentCheckFailed | None = None
    async with (
        create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,
    ):
        say(f"connected to {url} (protocol {client.protocol_version})")
        try:
            await _script(client, mode, studio, notes, say)
        except AgentCheckFailed as exc:
            failure = exc
    # Raised out here: inside, the client's task groups would wrap it in exception groups.
    if failure is not None:
        raise failure
    return lines


async def _script(client: Client, mode: _Era, studio: str, notes: str, say: Callable[[str], None]) -> None:
    with _step("tools/list"):
        names: list[str] = []
        cursor: str | None = None
        while True:
            page = await client.list_tools(cursor=cursor)
            names.extend(tool.name for tool in page.tools)
            cursor = page.next_cursor
            if cursor is None:
                break
    expected = {f"{studio}__echo", f"{studio}__add", f"{studio}__slow_count"}
    if mode == "legacy":
        expected |= {f"{notes}__add_note", f"{notes}__list_notes"}
    missing = sorted(expected - set(names))
    _check(not missing, f"tools/list is missing {', '.join(missing)}")
    say(f"tools/list: {len(names)} tools")

    tool = f"{studio}__echo"
    with _step(tool):
        result = _tool_result(await client.call_tool(tool, {"text": "hello, tollhouse"}), tool)
    _check(_text(result) == "hello, tollhouse", f"{tool} echoed {_text(result)!r}")
    say(f"{tool}: {_text(result)!r}")

    tool = f"{studio}__add"
    with _step(tool):
        result = _tool_result(await client.call_tool(tool, {"a": 2, "b": 3}), tool)
    value = _structured_value(result)
    _check(value == 5, f"{tool}(2, 3) gave structured content {result.structured_content!r}, not 5")
    say(f"{tool}(2, 3) = {value}")

    tool = f"{studio}__slow_count"
    updates: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        updates.append(progress)

    with _step(tool):
        result = _tool_result(await client.call_tool(tool, {"n": 3}, progress_callback=on_progress), tool)
    _check(bool(updates), f"{tool} sent no progress notifications")
    say(f"{tool}: {_text(result)!r} after {len(updates)} progress updates")

    uri = f"tollhouse://{studio}/studio://readme"
    with _step(f"resources/read {uri}"):
        contents = (await client.read_resource(uri)).contents
    texts = [item.text for item in contents if isinstance(item, TextResourceContents)]
    _check(bool(texts) and bool(texts[0]), f"resources/read {uri} returned no text")
    say(f"read {uri}: {len(texts[0])} characters")

    prompt = f"{studio}__review"
    with _step(f"prompts/get {prompt}"):
        messages = (await client.get_prompt(prompt, {"code": "print('hi')", "language": "python"})).messages
    _check(bool(messages), f"prompts/get {prompt} returned no messages")
    say(f"prompt {prompt}: {len(messages)} message(s)")

    if mode == "legacy":
        for note in ("buy milk", "call Ada"):
            tool = f"{notes}__add_note"
            with _step(tool):
                _tool_result(await client.call_tool(tool, {"text": note}), tool)
        tool = f"{notes}__list_notes"
        with _step(tool):
            listed = _structured_value(_tool_result(await client.call_tool(tool, {}), tool))
        _check(
            isinstance(listed, list) and {"buy milk", "call Ada"} <= set(listed),
            f"{tool} gave {listed!r}: the session lost a note",
        )
        say(f"{tool}: {listed!r} (one session)")


async def run_agent(
    url: str,
    token: str,
    mode: str,
    studio: str = "studio",
    notes: str = "notes",
    *,
    on_line: Callable[[str], None] | None = None,
) -> list[str]:
    """Run the script against the gateway at `url` and return the transcript lines.

    `mode` is "legacy" (2025-11-25 session), "2026-07-28" or "both" (legacy first);
    `on_line` sees each transcript line as soon as its step has passed.

    Raises:
        AgentCheckFailed: A step got an unexpected result or a JSON-RPC error.
        ValueError: `mode` is not one of MODES.
    """
    if mode not in _ERAS:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    lines: list[str] = []
    for era in _ERAS[mode]:
        lines += await _run_mode(url, token, era, studio, notes, on_line)
    return lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the agent's command line."""
    parser = argparse.ArgumentParser(description="A scripted MCP agent that checks tollhouse end to end.")
    parser.add_argument(
        "--url", required=True, help="tollhouse's MCP endpoint, e.g. http://127.0.0.1:8000/mcp"
    )
    parser.add_argument("--token", required=True, help="bearer token tollhouse accepts")
    parser.add_argument(
        "--mode", choices=MODES, default="both", help="protocol era(s) to use (default: both)"
    )
    parser.add_argument("--studio", default="studio", help="registry id of the studio server")
    parser.add_argument("--notes", default="notes", help="registry id of the notes server")
    parser.add_argument(
        "--print-config", action="store_true", help="print an MCP client configuration for tollhouse and exit"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the agent from the command line; 0 when every check passed, 1 otherwise."""
    args = parse_args(argv)
    if args.print_config:
        print(json.dumps(client_config(args.url, args.token), indent=2))
        return 0
    try:
        anyio.run(partial(run_agent, args.url, args.token, args.mode, args.studio, args.notes, on_line=print))
    except AgentCheckFailed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        print(f"FAILED: could not talk MCP to {args.url}: {_describe(exc)}", file=sys.stderr)
        return 1
    print("OK: all checks passed")
    return 0


def _describe(exc: BaseException) -> str:
    # The client's task groups wrap a transport failure in exception groups.
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


if __name__ == "__main__":
    sys.exit(main())
