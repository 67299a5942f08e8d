"""echo: a deterministic A2A agent (a2a-sdk 1.3.0, A2A 1.0 with 0.3 compatibility), no LLM.

Skills, chosen by the message metadata key `tollhouse/skill` (default `echo`):

- `echo` answers "echo: <text>";
- `shout` answers the text upper-cased.

Every execution creates a Task, marks it working, adds one artifact and completes; data
parts of the message come back unchanged in that artifact. A text starting with "wait"
parks the task in WORKING until it is cancelled (CancelTask), so tests can cancel a running
task and resubscribe to it; the wait is bounded (30 s by default), after which the task
fails. An unknown skill is rejected.

Routes: the card at `/.well-known/agent-card.json`, JSON-RPC at `/a2a/jsonrpc` and HTTP+JSON
under `/a2a/rest`, both also answering A2A 0.3 requests. The card's interfaces are absolute
URLs, so `build_app` takes the base URL clients reach the agent at. To serve on an ephemeral
port, bind the socket first, then build the app for that port and serve it on that socket:

    sock = tests.servers.loopback_socket()
    app = build_app(f"http://127.0.0.1:{sock.getsockname()[1]}")
    async with tests.servers.serve(app, sock=sock) as base_url: ...

`serve_agent` does the same for the command line, which prints exactly one line,
`READY http://HOST:PORT/.well-known/agent-card.json`, once it accepts connections and exits
with status 0 on SIGTERM or SIGINT:

    python -m examples.agents.echo_agent [--host 127.0.0.1] [--port 0] [--protocol 1.0|0.3]
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial

import anyio
from a2a.helpers import new_task, new_text_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes, create_rest_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import AgentCapabilities, AgentCard, AgentInterface, AgentSkill, Message, Part, TaskState
from a2a.utils.constants import AGENT_CARD_WELL_KNOWN_PATH
from starlette.applications import Starlette
from starlette.types import ASGIApp

from examples.servers._serving import serve_built

__all__ = [
    "AGENT_CARD_PATH",
    "JSONRPC_PATH",
    "REST_PATH",
    "SKILLS",
    "SKILL_KEY",
    "EchoExecutor",
    "a2a_app",
    "agent_card",
    "agent_text",
    "build_app",
    "main",
    "open_task",
    "parse_args",
    "serve_agent",
    "skill_of",
]

AGENT_CARD_PATH = AGENT_CARD_WELL_KNOWN_PATH
JSONRPC_PATH = "/a2a/jsonrpc"
REST_PATH = "/a2a/rest"
SKILL_KEY = "tollhouse/skill"
"""Message metadata key naming the skill a message is for (tollhouse's convention)."""

SKILLS = (
    AgentSkill(
        id="echo",
        name="Echo",
        description='Answers "echo: <text>"; data parts come back unchanged.',
        tags=["demo"],
        examples=["hello"],
    ),
    AgentSkill(
        id="shout",
        name="Shout",
        description="Answers the text upper-cased; data parts come back unchanged.",
        tags=["demo"],
        examples=["hello"],
    ),
)


def agent_card(
    base_url: str,
    *,
    name: str,
    description: str,
    skills: Sequence[AgentSkill],
    legacy: bool = False,
    input_modes: Sequence[str] = ("text/plain",),
    output_modes: Sequence[str] = ("text/plain",),
) -> AgentCard:
    """A card for an agent served by `a2a_app` at `base_url`: JSON-RPC preferred, then HTTP+JSON.

    `legacy` declares protocol version 0.3 on both interfaces, so the served card carries the
    0.3 fields (`url`, `preferredTransport`, `protocolVersion`) a 0.3 client reads.
    """
    base = base_url.rstrip("/")
    version = "0.3" if legacy else "1.0"
    return AgentCard(
        name=name,
        description=description,
        version="0.1.0",
        supported_interfaces=[
            AgentInterface(url=f"{base}{JSONRPC_PATH}", protocol_binding="JSONRPC", protocol_version=version),
            AgentInterface(url=f"{base}{REST_PATH}", protocol_binding="HTTP+JSON", protocol_version=version),
        ],
        capabilities=AgentCapabilities(streaming=True, push_notifications=False),
        default_input_modes=list(input_modes),
        default_output_modes=list(output_modes),
        skills=list(skills),
    )


def a2a_app(card: AgentCard, executor: AgentExecutor) -> Starlette:
    """Serve `executor` behind `card`: the card, JSON-RPC and HTTP+JSON routes (both with 0.3 compat).

    Tasks live in memory; the app's lifespan drains running tasks on shutdown.
    """
    handler = DefaultRequestHandler(agent_executor=executor, task_store=InMemoryTaskStore(), agent_card=card)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            with anyio.move_on_after(5, shield=True):
                await handler.aclose()

    # The REST routes end with a catch-all `/{tenant}` mount, so they go last.
    routes = [
        *create_agent_card_routes(card),
        *create_jsonrpc_routes(handler, rpc_url=JSONRPC_PATH, enable_v0_3_compat=True),
        *create_rest_routes(handler, path_prefix=REST_PATH, enable_v0_3_compat=True),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def skill_of(context: RequestContext, default: str) -> str:
    """The skill a request asks for: `tollhouse/skill` in the message's metadata, else the request's."""
    message_metadata = context.message.metadata if context.message is not None else None
    if message_metadata is not None and SKILL_KEY in message_metadata:
        skill = message_metadata[SKILL_KEY]
    else:
        skill = context.metadata.get(SKILL_KEY)
    return skill if isinstance(skill, str) and skill else default


async def open_task(context: RequestContext, event_queue: EventQueue) -> TaskUpdater:
    """Enqueue this request's Task (SUBMITTED) unless it exists already; return its updater."""
    assert context.task_id is not None and context.context_id is not None
    if context.current_task is None:
        history = [context.message] if context.message is not None else []
        task = new_task(context.task_id, context.context_id, TaskState.TASK_STATE_SUBMITTED, history=history)
        await event_queue.enqueue_event(task)
    return TaskUpdater(event_queue, context.task_id, context.context_id)


def agent_text(updater: TaskUpdater, text: str) -> Message:
    """An agent message of one text part on the updater's task."""
    return updater.new_agent_message([new_text_part(text)])


class EchoExecutor(AgentExecutor):
    """Runs the `echo` and `shout` skills; "wait..." texts park until cancelled."""

    def __init__(self, *, wait_timeout_seconds: float = 30.0) -> None:
        self._wait_timeout_seconds = wait_timeout_seconds
        # Task id -> the event cancel() sets for a parked ("wait...") task.
        self._cancels: dict[str, anyio.Event] = {}

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        """Answer the message with one artifact, or park the task for a "wait" text."""
        updater = await open_task(context, event_queue)
        skill = skill_of(context, "echo")
        if skill not in {s.id for s in SKILLS}:
            known = ", ".join(s.id for s in SKILLS)
            await updater.reject(agent_text(updater, f"unknown skill {skill!r}; this agent offers {known}"))
            return
        text = context.get_user_input()
        if text.startswith("wait"):
            await self._wait_for_cancel(updater)
            return
        await updater.start_work()
        answer = f"echo: {text}" if skill == "echo" else text.upper()
        data = [part for part in (context.message.parts if context.message else []) if part.HasField("data")]
        parts: list[Part] = [new_text_part(answer)] if text or not data else []
        for part in data:
            copied = Part()
            copied.CopyFrom(part)
            parts.append(copied)
        await updater.add_artifact(parts, name=skill)
        await updater.complete()

    async def _wait_for_cancel(self, updater: TaskUpdater) -> None:
        cancelled = self._cancels[updater.task_id] = anyio.Event()
        try:
            await updater.start_work(agent_text(updater, "waiting to be cancelled"))
            with anyio.fail_after(self._wait_timeout_seconds):
                await cancelled.wait()
            # cancel() has written CANCELED; nothing more to say.
        except TimeoutError:
            seconds = self._wait_timeout_seconds
            await updater.failed(agent_text(updater, f"gave up after {seconds:g} s without a cancel"))
        finally:
            self._cancels.pop(updater.task_id, None)

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        """Mark the task CANCELED and release it if it is parked."""
        assert context.task_id is not None and context.context_id is not None
        updater = TaskUpdater(event_queue, context.task_id, context.context_id)
        await updater.cancel(agent_text(updater, "cancelled"))
        event = self._cancels.get(context.task_id)
        if event is not None:
            event.set()


def build_app(
    base_url: str, *, name: str = "Echo Agent", legacy: bool = False, wait_timeout_seconds: float = 30.0
) -> Starlette:
    """Build the echo agent's app for clients reaching it at `base_url` (e.g. http://127.0.0.1:8766).

    `legacy` serves a 0.3 card (both endpoints answer 0.3 and 1.0 requests either way);
    `wait_timeout_seconds` bounds how long a "wait" task stays parked.
    """
    card = agent_card(
        base_url,
        name=name,
        description="Echoes or shouts the text it is sent; a deterministic example agent.",
        skills=SKILLS,
        legacy=legacy,
        input_modes=("text/plain", "application/json"),
        output_modes=("text/plain", "application/json"),
    )
    return a2a_app(card, EchoExecutor(wait_timeout_seconds=wait_timeout_seconds))


# --- the command line ---------------------------------------------------------------------


async def serve_agent(
    build: Callable[[str], ASGIApp], host: str, port: int, public_url: str | None = None
) -> None:
    """Bind host:port, build the app for its base URL, serve it, print READY, return on SIGTERM/SIGINT.

    `build` gets `public_url` when given, else `http://HOST:PORT` with the port actually bound.

    Raises:
        SystemExit: The application failed to start.
    """
    # A bounded graceful shutdown: an open SSE stream (a subscriber) must not keep the process alive.
    await serve_built(
        build, host, port, ready_path=AGENT_CARD_PATH, public_url=public_url, graceful_seconds=5
    )


def parse_args(
    argv: Sequence[str] | None,
    description: str,
    *,
    default_name: str,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    """Parse an example agent's command line: --host, --port, --public-url, --name, --protocol, and more."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one (default: 0)")
    parser.add_argument(
        "--public-url", help="base URL clients reach the agent at, for its card (default: http://HOST:PORT)"
    )
    parser.add_argument("--name", default=default_name, help=f"the agent's name (default: {default_name})")
    parser.add_argument(
        "--protocol",
        choices=("1.0", "0.3"),
        default="1.0",
        help="A2A version the card declares (default: 1.0)",
    )
    if add_arguments is not None:
        add_arguments(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the echo agent until SIGTERM or SIGINT, printing `READY http://HOST:PORT/.well-known/agent-card.json`."""
    args = parse_args(argv, "echo: a deterministic example A2A agent", default_name="Echo Agent")
    logging.basicConfig(level=logging.WARNING)
    build = partial(_build_from_args, args)
    anyio.run(serve_agent, build, args.host, args.port, args.public_url)


def _build_from_args(args: argparse.Namespace, base_url: str) -> Starlette:
    return build_app(base_url, name=args.name, legacy=args.protocol == "0.3")


if __name__ == "__main__":
    main(sys.argv[1:])
