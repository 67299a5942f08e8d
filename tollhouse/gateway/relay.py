"""Relays of server->client interactions across protocol eras (PROTOCOLS.md §1.10).

- modern downstream, modern upstream: an `input_required` result passes through; the
  upstream's `requestState` travels inside the gateway's sealed envelope and is unwrapped,
  checked and forwarded on the retry.
- legacy downstream, modern upstream: the gateway answers each `inputRequests` entry by
  asking the downstream (a legacy server->client request on the call's stream), then
  retries upstream with the answers, for a bounded number of rounds.
- legacy downstream, legacy upstream: the upstream's own server->client requests reach the
  downstream through the connector's `on_request` hook (wired in the upstream stage).
- modern downstream, legacy upstream: not relayed yet; the upstream's request is refused.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from tollhouse.gateway.errors import (
    METHOD_NOT_FOUND,
    InvalidArguments,
    UpstreamProtocolError,
    UpstreamRpcError,
)
from tollhouse.gateway.sealing import Sealer
from tollhouse.registry.models import JSONObject

__all__ = [
    "MAX_INPUT_ROUNDS",
    "STATE_TTL_SECONDS",
    "Ask",
    "answer_input_requests",
    "open_request_state",
    "require_capability",
    "seal_request_state",
]

Ask = Callable[[str, JSONObject], Awaitable[JSONObject]]
# The client capability each server->client request needs (MCP client features).
_CAPABILITY_OF = {
    "sampling/createMessage": "sampling",
    "elicitation/create": "elicitation",
    "roots/list": "roots",
}


def require_capability(method: str, capabilities: JSONObject | None) -> None:
    """Refuse a server->client request the client did not declare it can answer (MCP: never ask for more).

    Raises:
        UpstreamRpcError: -32601, relayed to the upstream that asked.
    """
    needed = _CAPABILITY_OF.get(method)
    if needed is None or needed not in (capabilities or {}):
        raise UpstreamRpcError(METHOD_NOT_FOUND, f"The client does not support {method}")


MAX_INPUT_ROUNDS = 8
STATE_TTL_SECONDS = 600


def seal_request_state(
    sealer: Sealer, *, principal: str, tool: str, upstream_state: Any = None, held: str | None = None
) -> str:
    """The requestState the downstream sees: the upstream's (or a held call's id), bound to
    principal, tool and expiry."""
    expires = int(time.time()) + STATE_TTL_SECONDS
    return sealer.seal({"p": principal, "t": tool, "e": expires, "s": upstream_state, "h": held})


def open_request_state(sealer: Sealer, token: Any, *, principal: str, tool: str) -> tuple[Any, str | None]:
    """(the upstream's requestState, the held call's id) inside a downstream retry's token.

    Raises:
        InvalidArguments: the token is not ours, was altered, expired, or belongs to
            another principal or tool.
    """
    state = sealer.open(token) if isinstance(token, str) else None
    if (
        not isinstance(state, dict)
        or state.get("p") != principal
        or state.get("t") != tool
        or not isinstance(state.get("e"), int)
        or state["e"] < time.time()
    ):
        raise InvalidArguments("Invalid or expired requestState")
    held = state.get("h")
    return state.get("s"), held if isinstance(held, str) else None


async def answer_input_requests(result: JSONObject, ask: Ask, server: str) -> JSONObject:
    """Answer every entry of an `input_required` result by asking the downstream.

    Raises:
        UpstreamProtocolError: the result's `inputRequests` are malformed.
    """
    requests = result.get("inputRequests") or {}
    if not isinstance(requests, dict):
        raise UpstreamProtocolError(server)
    answers: JSONObject = {}
    for key, request in requests.items():
        if not isinstance(request, dict) or not isinstance(request.get("method"), str):
            raise UpstreamProtocolError(server)
        params = request.get("params")
        answers[key] = await ask(request["method"], params if isinstance(params, dict) else {})
    return answers
