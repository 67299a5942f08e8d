"""A client agent that delegates one skill to whichever A2A agent tollhouse offers for it.

It asks the gateway which agents the caller may use (`GET {gateway}/a2a`, answered with
`{"agents": [{"name": ..., "card_url": ..., "card": {...}}, ...]}`), picks the first agent
whose card has a skill with the requested id, fetches that agent's card (rewritten by
tollhouse to point at itself) with the caller's bearer token, and sends one message with
metadata `{"tollhouse/skill": skill}` through the a2a-sdk client: streaming when the card
says the agent streams, blocking otherwise. It prints the final state and the artifacts' text.

    python -m examples.agents.delegating_client --gateway http://127.0.0.1:8000 --token KEY \\
        --skill remember --text "buy milk" [--binding JSONRPC|HTTP+JSON]

`--token` defaults to $TOLLHOUSE_TOKEN. The exit status is 0 when the task completed.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import urljoin

import anyio
import httpx
from a2a.client import A2ACardResolver, ClientConfig, ClientFactory
from a2a.helpers import get_artifact_text, get_message_text
from a2a.types import Artifact, Message, Part, Role, SendMessageRequest, StreamResponse, TaskState
from a2a.utils.constants import AGENT_CARD_WELL_KNOWN_PATH

__all__ = [
    "BINDINGS",
    "SKILL_KEY",
    "AgentChoice",
    "DelegationResult",
    "NoAgentForSkill",
    "choose_agent",
    "delegate",
    "main",
    "parse_args",
]

SKILL_KEY = "tollhouse/skill"
BINDINGS = ("JSONRPC", "HTTP+JSON")
MESSAGE_STATE = "MESSAGE"
"""The `state` of a delegation the agent answered with a plain Message instead of a Task."""


class NoAgentForSkill(LookupError):
    """No agent the gateway offers has a skill with the requested id."""


@dataclass(frozen=True)
class AgentChoice:
    """The agent picked for a skill: its gateway name and where its card is."""

    name: str
    card_url: str


@dataclass
class DelegationResult:
    """How a delegated message ended."""

    agent: str
    task_id: str | None
    """None when the agent answered with a Message rather than a Task."""
    state: str
    """A TaskState name such as "TASK_STATE_COMPLETED", or "MESSAGE" for a Message answer."""
    texts: list[str] = field(default_factory=list)
    """The text of each final artifact (of the Message, for a Message answer)."""
    status_message: str = ""
    """The text of the task's last status message (why it failed, for example)."""

    @property
    def completed(self) -> bool:
        """Whether the agent finished the work."""
        return self.state in ("TASK_STATE_COMPLETED", MESSAGE_STATE)


def _skill_ids(card: Any) -> set[str]:
    skills = card.get("skills") if isinstance(card, Mapping) else None
    if not isinstance(skills, list):
        return set()
    return {
        skill["id"] for skill in skills if isinstance(skill, Mapping) and isinstance(skill.get("id"), str)
    }


def choose_agent(discovery: Mapping[str, Any], skill: str, *, base_url: str = "") -> AgentChoice:
    """The first agent in a `GET /a2a` document whose card offers `skill`.

    Entries without a name, a card URL or a card are skipped. A relative `card_url` is
    resolved against `base_url` (the gateway's).

    Raises:
        NoAgentForSkill: No listed agent has a skill with that id.
    """
    agents = discovery.get("agents")
    for entry in agents if isinstance(agents, list) else []:
        if not isinstance(entry, Mapping):
            continue
        name, card_url = entry.get("name"), entry.get("card_url")
        if isinstance(name, str) and isinstance(card_url, str) and skill in _skill_ids(entry.get("card")):
            return AgentChoice(name=name, card_url=urljoin(base_url.rstrip("/") + "/", card_url))
    raise NoAgentForSkill(f"no agent offers the skill {skill!r}")


class _Outcome:
    """Folds the events of one send into the task's final state and artifacts."""

    def __init__(self) -> None:
        self.task_id: str | None = None
        self.state = "TASK_STATE_UNSPECIFIED"
        self.status_message = ""
        self.artifacts: dict[str, Artifact] = {}
        self.message_text: str | None = None

    def add(self, event: StreamResponse) -> None:
        if event.HasField("task"):
            task = event.task
            self.task_id = task.id
            self._status(task.status.state, task.status.message if task.status.HasField("message") else None)
            for artifact in task.artifacts:
                self.artifacts[artifact.artifact_id] = artifact
        elif event.HasField("status_update"):
            status = event.status_update.status
            self.task_id = event.status_update.task_id
            self._status(status.state, status.message if status.HasField("message") else None)
        elif event.HasField("artifact_update"):
            update = event.artifact_update
            known = self.artifacts.get(update.artifact.artifact_id)
            if update.append and known is not None:
                known.parts.extend(update.artifact.parts)
            else:
                copied = Artifact()
                copied.CopyFrom(update.artifact)
                self.artifacts[copied.artifact_id] = copied
        elif event.HasField("message"):
            self.message_text = get_message_text(event.message)

    def _status(self, state: int, message: Message | None) -> None:
        self.state = TaskState.Name(state)
        self.status_message = get_message_text(message) if message is not None else ""

    def result(self, agent: str) -> DelegationResult:
        if self.message_text is not None and self.task_id is None:
            return DelegationResult(agent, None, MESSAGE_STATE, [self.message_text])
        texts = [get_artifact_text(artifact) for artifact in self.artifacts.values()]
        return DelegationResult(agent, self.task_id, self.state, texts, self.status_message)


async def delegate(
    gateway_url: str,
    token: str,
    skill: str,
    text: str,
    *,
    binding: str = "JSONRPC",
    timeout_seconds: float = 60.0,
) -> DelegationResult:
    """Send `text` for `skill` to the agent tollhouse at `gateway_url` offers for it, over `binding`.

    Raises:
        NoAgentForSkill: No agent the caller may use offers `skill`.
        httpx.HTTPStatusError: The gateway refused the discovery request.
        a2a.client.errors.A2AClientError: The agent's card or the A2A exchange failed.
        TimeoutError: The exchange took longer than `timeout_seconds`.
    """
    if binding not in BINDINGS:
        raise ValueError(f"binding must be one of {', '.join(BINDINGS)}, not {binding!r}")
    gateway = gateway_url.rstrip("/")
    headers = {"Authorization": f"Bearer {token}"}
    with anyio.fail_after(timeout_seconds):
        async with httpx.AsyncClient(headers=headers, timeout=timeout_seconds) as http:
            response = await http.get(f"{gateway}/a2a")
            response.raise_for_status()
            choice = choose_agent(response.json(), skill, base_url=gateway)
            base = choice.card_url.removesuffix(AGENT_CARD_WELL_KNOWN_PATH)
            card = await A2ACardResolver(http, base).get_agent_card()
            config = ClientConfig(
                streaming=card.capabilities.streaming,
                httpx_client=http,
                supported_protocol_bindings=[binding],
            )
            client = ClientFactory(config).create(card)
            message = Message(role=Role.ROLE_USER, message_id=str(uuid.uuid4()), parts=[Part(text=text)])
            message.metadata.update({SKILL_KEY: skill})
            outcome = _Outcome()
            try:
                async for event in client.send_message(SendMessageRequest(message=message)):
                    outcome.add(event)
            finally:
                await client.close()
    return outcome.result(choice.name)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the delegating client's command line."""
    parser = argparse.ArgumentParser(description="Delegate one skill to an A2A agent behind tollhouse.")
    parser.add_argument("--gateway", required=True, help="tollhouse's base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument(
        "--token", default=os.environ.get("TOLLHOUSE_TOKEN"), help="bearer token (default: $TOLLHOUSE_TOKEN)"
    )
    parser.add_argument("--skill", required=True, help="id of the skill to delegate, e.g. remember")
    parser.add_argument("--text", default="", help="the message text")
    parser.add_argument(
        "--binding", choices=BINDINGS, default="JSONRPC", help="A2A binding (default: JSONRPC)"
    )
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("--token (or $TOLLHOUSE_TOKEN) is required")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Delegate from the command line; 0 when the agent completed the task, 1 otherwise."""
    args = parse_args(argv)
    run = partial(delegate, args.gateway, args.token, args.skill, args.text, binding=args.binding)
    try:
        result = anyio.run(run)
    except NoAgentForSkill as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        print(
            f"FAILED: could not delegate through {args.gateway}: {type(exc).__name__}: {exc}", file=sys.stderr
        )
        return 1
    print(f"agent: {result.agent}  task: {result.task_id or '-'}  state: {result.state}")
    if result.status_message:
        print(f"status: {result.status_message}")
    for text in result.texts:
        print(text)
    return 0 if result.completed else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
