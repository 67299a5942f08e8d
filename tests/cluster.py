"""Real tollhouse replicas as subprocesses, for the scale-out acceptance tests (issue 10).

`cluster(tmp_path, postgres_url, redis_url, n=3, **env)` creates a scratch database on the shared
PostgreSQL server and a Redis key prefix of the test's own, starts `n` replicas of
`python -m tollhouse serve` on them (bench/_cluster.py: the benchmark bench/load.py runs them the
same way) and yields a `Cluster` whose replicas are reached only through their HTTP interfaces.
On exit every replica still running is stopped (SIGTERM, then SIGKILL), the database dropped and
the prefix's Redis keys deleted, however the test ended.

Keyword arguments are extra settings for every replica: `cluster(..., TOLLHOUSE_CLUSTER__DRAIN_SECONDS="5")`.
"""

from __future__ import annotations

import secrets
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc
import httpx2

from tests.databases import scratch_postgres

# The bench scripts import each other as top-level modules (they are run as scripts, not a
# package); the harness shares bench/_cluster.py with bench/load.py the same way.
BENCH = str(Path(__file__).resolve().parents[1] / "bench")
if BENCH not in sys.path:
    sys.path.append(BENCH)

from _cluster import Replica, Replicas, delete_redis_prefix, running_replicas  # noqa: E402

__all__ = ["ALLOW_ALL", "Cluster", "ClusterReplica", "cluster"]

ALLOW_ALL = "permit(principal, action, resource);"


@dataclass
class ClusterReplica:
    """One replica: its addresses, its current process and an admin API client for it."""

    node: Replica
    admin: httpx2.AsyncClient

    @property
    def name(self) -> str:
        """Its node name, `replica-<i>`."""
        return self.node.name

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:<port>` (the same after a restart)."""
        return self.node.base_url

    @property
    def mcp_url(self) -> str:
        """Its aggregate MCP endpoint."""
        return self.node.mcp_url

    @property
    def process(self) -> anyio.abc.Process:
        """Its current process (a new one after `Cluster.restart`)."""
        assert self.node.process is not None
        return self.node.process


@dataclass
class Cluster:
    """Handle on the running replicas; everything goes through their HTTP interfaces."""

    replicas: list[ClusterReplica]
    processes: Replicas
    admin_token: str

    def kill(self, i: int, sig: signal.Signals = signal.SIGKILL) -> None:
        """Send `sig` (SIGKILL: a crash, SIGTERM: a drain) to replica `i`."""
        self.processes.kill(i, sig)

    async def wait_exit(self, i: int, seconds: float = 30) -> int:
        """Wait for replica `i` to exit; its return code (-9 after SIGKILL)."""
        return await self.processes.wait_exit(i, seconds)

    async def restart(self, i: int) -> None:
        """Start replica `i` again (same port, data directory and settings) and wait until it is ready."""
        await self.processes.restart(i)

    def logs(self) -> str:
        """The tails of every replica's output, for assertion messages."""
        return self.processes.tails()

    async def policy_allow_all(self) -> None:
        """One policy permitting everything (id `tests-allow-all`), put through replica 0."""
        response = await self.replicas[0].admin.put("/policies/tests-allow-all", json={"cedar": ALLOW_ALL})
        assert response.status_code in (200, 201), response.text

    async def create_client(self, name: str, team: str | None = "platform") -> str:
        """Create an API client through replica 0; returns its key."""
        response = await self.replicas[0].admin.post("/clients", json={"name": name, "team": team})
        assert response.status_code == 201, response.text
        key: str = response.json()["api_key"]
        return key


@asynccontextmanager
async def cluster(
    tmp_path: Path, postgres_url: str, redis_url: str, n: int = 3, **env: str
) -> AsyncIterator[Cluster]:
    """`n` ready replicas on a scratch database and a Redis prefix of their own (see the module doc)."""
    prefix = f"th-test-{secrets.token_hex(6)}"
    try:
        with scratch_postgres(postgres_url) as database:
            async with (
                running_replicas(
                    tmp_path / "cluster",
                    n,
                    database_url=database,
                    redis_url=redis_url,
                    redis_prefix=prefix,
                    env=env,
                ) as processes,
                AsyncExitStack() as stack,
            ):
                token = processes[0].env["TOLLHOUSE_ADMIN_TOKEN"]
                replicas = []
                for node in processes.replicas:
                    admin = httpx2.AsyncClient(
                        base_url=f"{node.base_url}/admin/api/v1",
                        headers={"Authorization": f"Bearer {token}"},
                        trust_env=False,
                        timeout=30,
                    )
                    replicas.append(ClusterReplica(node, await stack.enter_async_context(admin)))
                yield Cluster(replicas, processes, token)
    finally:
        with anyio.CancelScope(shield=True):
            await delete_redis_prefix(redis_url, prefix)
