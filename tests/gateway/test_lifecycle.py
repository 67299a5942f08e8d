"""Draining and sealed session ids, in one process.

- Once draining starts (what SIGTERM does in serve.py), `/readyz` answers 503 and the long-lived
  streams end gracefully, while ordinary requests are still served.
- A session id is sealed: it carries no readable owner, only the ring opens it, a key rotation
  keeps it valid, and past `session_max_age_seconds` it is refused everywhere.
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import httpx2
import pytest

from tests.harness import initialize_request, running_gateway
from tollhouse.auth.keyring import KeyRing
from tollhouse.auth.principal import Principal
from tollhouse.gateway.app import Deps
from tollhouse.gateway.lifecycle import Lifecycle
from tollhouse.gateway.sealing import Sealer
from tollhouse.gateway.sessions import SESSION_PURPOSE, SessionManager, session_digest
from tollhouse.gateway.views import AggregateView

pytestmark = pytest.mark.anyio

HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


async def test_draining_fails_readiness_and_ends_session_streams_but_serves_requests(tmp_path: Path) -> None:
    lifecycle = Lifecycle()
    async with (
        running_gateway(tmp_path, Deps(lifecycle=lifecycle)) as gw,
        httpx2.AsyncClient(trust_env=False, timeout=30) as http,
    ):
        assert (await http.get(f"{gw.base_url}/readyz")).status_code == 200
        key = await gw.create_client("bot")
        auth = {**HEADERS, "Authorization": f"Bearer {key}"}
        opened = await http.post(gw.mcp_url, json=initialize_request(), headers=auth)
        session = {
            **auth,
            "Mcp-Session-Id": opened.headers["mcp-session-id"],
            "MCP-Protocol-Version": "2025-11-25",
        }
        async with http.stream(
            "GET", gw.mcp_url, headers={**session, "Accept": "text/event-stream"}
        ) as stream:
            assert stream.status_code == 200
            chunks = stream.aiter_bytes()
            with anyio.fail_after(10):
                assert b"id:" in await anext(chunks)  # the priming event: the stream is attached
                lifecycle.start_draining()
                async for _ in chunks:  # ends: the drain closed it
                    pass
        ready = await http.get(f"{gw.base_url}/readyz")
        assert ready.status_code == 503 and ready.json() == {"status": "draining"}
        # Requests in flight, and ones on connections already open, are still served.
        ping = await http.post(
            gw.mcp_url, json={"jsonrpc": "2.0", "id": 9, "method": "ping"}, headers=session
        )
        assert ping.status_code == 200


def manager(ring: KeyRing, *, max_age: float = 3600) -> SessionManager:
    async def nothing(_: object) -> None:
        return None

    return SessionManager(
        idle_seconds=60,
        max_sessions=10,
        on_close=nothing,
        sealer=Sealer(list(ring.derive_all("mcp-session").values()), purpose=SESSION_PURPOSE),
        max_age_seconds=max_age,
    )


def principal(subject: str) -> Principal:
    return Principal(subject=subject, client_id=subject, teams=("platform",), scopes=("mcp",))


def test_a_sealed_session_id_is_opaque_adopted_by_a_ring_holder_and_bound_to_its_owner() -> None:
    ring = KeyRing.generate()
    view = AggregateView()
    alice = principal("alice")
    made = manager(ring).create(alice, "2025-11-25", {"elicitation": {}, "huge": "x" * 10_000}, view=view)
    assert "alice" not in made.id and len(made.id) < 600  # unreadable, and small (extras are dropped)
    other_replica = manager(ring)
    adopted = other_replica.get(made.id, alice, view)
    assert adopted is not None and adopted.protocol_version == "2025-11-25"
    assert adopted.client_capabilities == {"elicitation": {}}
    assert manager(ring).get(made.id, principal("mallory"), view) is None
    assert manager(KeyRing.generate()).get(made.id, alice, view) is None  # another ring
    assert manager(ring).get(made.id[:-4] + "AAAA", alice, view) is None


def test_a_rotated_ring_still_opens_ids_sealed_before_and_old_ids_expire() -> None:
    ring = KeyRing.generate()
    alice = principal("alice")
    view = AggregateView()
    made = manager(ring).create(alice, "2025-11-25", {}, view=view)
    rotated = KeyRing((KeyRing.generate().masters[0], *ring.masters))
    assert manager(rotated).get(made.id, alice, view) is not None
    expired = manager(ring, max_age=1)
    expired_id = made.id
    # The id's creation time is sealed in it: with a max age already past, every replica refuses it.
    assert time.time() - made.created_at < 1
    later = manager(ring, max_age=1e-9)
    assert later.get(expired_id, alice, view) is None
    assert expired.get(expired_id, alice, view) is not None


def test_an_ended_session_is_refused_by_a_replica_that_hears_of_it() -> None:
    ring = KeyRing.generate()
    alice = principal("alice")
    view = AggregateView()
    made = manager(ring).create(alice, "2025-11-25", {}, view=view)
    other = manager(ring)
    assert other.get(made.id, alice, view) is not None
    held = other.ended(session_digest(made.id))
    assert held is not None and held.id == made.id  # its local copy, for the caller to close
    third = manager(ring)
    third.ended(session_digest(made.id))
    assert third.get(made.id, alice, view) is None


def test_a_session_may_not_outlive_the_memory_of_its_end_nor_a_drain_be_instant() -> None:
    from pydantic import ValidationError

    from tollhouse.gateway.settings import ClusterSettings, LimitsSettings

    # Ended sessions are remembered through change notices kept a day: a longer age could revive one.
    with pytest.raises(ValidationError):
        LimitsSettings(session_max_age_seconds=86_401)
    with pytest.raises(ValidationError):
        ClusterSettings(drain_seconds=0)
    assert LimitsSettings(session_max_age_seconds=86_400).session_max_age_seconds == 86_400
