"""Safe retries of upstream tool calls (SECURITY_GOALS R3), and the budget that prevents storms.

A call is sent again only when that cannot make the upstream run it twice against its will:

- the request provably never left (`UpstreamUnavailable.sent` is False: the connection could
  not be established — refused, connect timeout, TLS handshake — see http_rpc.unreachable);
- or the tool is idempotent by an admin's word: a glob of the server's `idempotent` list
  matches its original name, or the server is `trusted` and the tool says `idempotentHint`
  (S17: an untrusted server's annotations are never believed).

Only transport failures qualify (-31001/-31003); a timeout never does (the upstream may still
be running the call, and the deadline is spent), nor does anything the upstream answered.

Retries are budgeted per upstream, Envoy-style: at most max(20 % of the calls in flight to it,
3) retries outstanding at once on this replica; beyond that a failure is final. So when an
upstream fails everything, retries add a bounded fraction to its load instead of doubling it.
Retry n first waits a jittered pause of between half and all of `retry_backoff_seconds` *
2^(n-1) ("equal jitter": spread out, yet never an instant hammer on a failing upstream).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable

import anyio

from tollhouse.gateway.errors import GatewayError, UpstreamProtocolError, UpstreamUnavailable
from tollhouse.gateway.settings import UpstreamDefaults
from tollhouse.gateway.snapshot import ExposedItem
from tollhouse.registry.models import Upstream

__all__ = ["Retries", "idempotent"]

logger = logging.getLogger("tollhouse.retries")

BUDGET_RATIO = 0.2
BUDGET_MIN = 3


def idempotent(upstream: Upstream | None, tool: ExposedItem) -> bool:
    """True when `tool` may run twice: an admin marked it, or a trusted server's annotation says so."""
    if upstream is None:
        return False
    if upstream.marked_idempotent(tool.name):
        return True
    if not upstream.trusted:
        return False
    annotations = tool.upstream_definition.get("annotations")
    return isinstance(annotations, dict) and annotations.get("idempotentHint") is True


class Retries:
    """When a failed upstream call is sent again, and the per-upstream budget of outstanding retries."""

    def __init__(self, settings: UpstreamDefaults, in_flight: Callable[[str], int]) -> None:
        self._max = settings.max_retries
        self._backoff = settings.retry_backoff_seconds
        self._in_flight = in_flight
        self._outstanding: dict[str, int] = {}
        self.taken = 0  # retries started, for tests and the curious
        self.refused = 0  # retries the budget did not allow

    def budget(self, server: str) -> int:
        """How many retries may be outstanding for `server` now."""
        return max(math.ceil(BUDGET_RATIO * self._in_flight(server)), BUDGET_MIN)

    def outstanding(self, server: str) -> int:
        """Retries of calls to `server` under way now."""
        return self._outstanding.get(server, 0)

    def allowed(
        self, error: GatewayError, upstream: Upstream | None, tool: ExposedItem, attempt: int
    ) -> bool:
        """Whether attempt number `attempt` (1 = the first) may be followed by another, budget aside."""
        if attempt > self._max:
            return False
        if isinstance(error, UpstreamUnavailable) and not error.sent:
            return True
        return isinstance(error, UpstreamUnavailable | UpstreamProtocolError) and idempotent(upstream, tool)

    def take(self, server: str) -> bool:
        """Count one retry of a call to `server` as outstanding, if the budget has room."""
        held = self._outstanding.get(server, 0)
        if held >= self.budget(server):
            self.refused += 1
            return False
        self._outstanding[server] = held + 1
        self.taken += 1
        return True

    def give_back(self, server: str) -> None:
        """The call that took a retry is over (it succeeded, failed or was cancelled)."""
        left = self._outstanding[server] - 1
        if left:
            self._outstanding[server] = left
        else:
            del self._outstanding[server]

    async def pause(self, server: str, tool: str, retry: int, error: GatewayError) -> None:
        """Wait before retry number `retry` (1 = the first): equal jitter, doubling per retry."""
        sent = not isinstance(error, UpstreamUnavailable) or error.sent
        logger.info(
            "upstream %s: retrying %s (retry %d, %s)",
            server,
            tool,
            retry,
            "idempotent tool" if sent else "not connected, nothing sent",
        )
        ceiling = self._backoff * 2 ** (retry - 1)
        if ceiling > 0:
            await anyio.sleep(ceiling / 2 + random.uniform(0, ceiling / 2))
