"""Replicas of tollhouse as child processes: one database, one Redis, one key ring, one public URL.

Shared by `bench/load.py` and the tests' `tests/cluster.py` (which adds a scratch database and
admin clients), so that the benchmark and the acceptance tests run replicas exactly alike.

Each replica is `python -m tollhouse serve --host 127.0.0.1 --port P` with its own data
directory and node name, and the settings a real deployment shares between replicas: the
database and Redis URLs, a Redis key prefix, the master keys (`TOLLHOUSE_SECRET_KEYS`: tokens and
sealed session ids minted by one replica are read by the others), the admin token and one
`TOLLHOUSE_PUBLIC_URL` (replicas behind one origin). Replica 0 starts first and alone, since it
migrates the database; the others start together once it is ready (`GET /readyz` 200).

A replica's stdout and stderr go to files (`replica-<i>.out`, `.err`); failures quote their
tails. Each replica leads a session of its own, so that stopping the cluster can also kill
whatever a replica started (`--workers`) even when the replica itself was killed first.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.abc
import httpx2
import redis.asyncio

from tollhouse.auth.keyring import KeyRing, format_secret_key

__all__ = [
    "ROOT",
    "Replica",
    "Replicas",
    "delete_redis_prefix",
    "free_port",
    "running_replicas",
    "shared_env",
]

ROOT = Path(__file__).resolve().parents[1]
# Upstreams that come back are reconnected to quickly (the defaults back off up to 30 s).
FAST_RETRIES = {
    "TOLLHOUSE_UPSTREAMS__RETRY_MIN_SECONDS": "0.05",
    "TOLLHOUSE_UPSTREAMS__RETRY_MAX_SECONDS": "0.5",
}
TAIL_CHARS = 3000


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def shared_env(database_url: str, redis_url: str, redis_prefix: str, public_url: str) -> dict[str, str]:
    """The settings every replica of one cluster shares, with a fresh key ring and admin token."""
    ring = KeyRing.generate()
    return {
        "TOLLHOUSE_DATABASE_URL": database_url,
        "TOLLHOUSE_REDIS_URL": redis_url,
        "TOLLHOUSE_QUOTAS__REDIS_PREFIX": redis_prefix,
        "TOLLHOUSE_SECRET_KEYS": format_secret_key(*ring.masters[0]),
        "TOLLHOUSE_ADMIN_TOKEN": "tha_" + secrets.token_urlsafe(24),
        "TOLLHOUSE_PUBLIC_URL": public_url,
        **FAST_RETRIES,
    }


def _base_env() -> dict[str, str]:
    """This process's environment without TOLLHOUSE_* settings or proxies (they would leak into replicas)."""
    proxies = {"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"}
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("TOLLHOUSE_")}
    env = {k: v for k, v in env.items() if k.upper() not in proxies}
    return env | {"PYTHONUNBUFFERED": "1"}


async def delete_redis_prefix(redis_url: str, prefix: str) -> None:
    """Remove every key under `prefix` from the shared Redis."""
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@dataclass
class Replica:
    """One replica: where it listens, where it logs, and its current process (None before start)."""

    index: int
    port: int
    directory: Path
    env: dict[str, str]
    process: anyio.abc.Process | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        """Its node name (`TOLLHOUSE_NODE_NAME`)."""
        return f"replica-{self.index}"

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:<port>`."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def mcp_url(self) -> str:
        """Its aggregate MCP endpoint."""
        return f"{self.base_url}/mcp"

    @property
    def alive(self) -> bool:
        """True while its process runs (as far as this process has reaped it)."""
        return self.process is not None and self.process.returncode is None

    @property
    def pid(self) -> int:
        """Its process id (the current process)."""
        if self.process is None:
            raise RuntimeError(f"{self.name} was never started")
        return self.process.pid

    def tail(self) -> str:
        """The ends of its stdout and stderr files."""
        parts = []
        for suffix in ("out", "err"):
            path = self.directory / f"{self.name}.{suffix}"
            text = path.read_text(errors="replace") if path.exists() else ""
            parts.append(f"--- {self.name} std{suffix} (tail) ---\n{text[-TAIL_CHARS:]}")
        return "\n".join(parts)


class Replicas:
    """The processes of a cluster: one replica per loopback port, each with `env` over its own settings."""

    def __init__(self, directory: Path, ports: list[int], env: Mapping[str, str]) -> None:
        if not ports:
            raise ValueError("a cluster has at least one replica")
        self.directory = directory
        self.replicas = [Replica(i, port, directory, {}) for i, port in enumerate(ports)]
        for replica in self.replicas:
            (directory / replica.name).mkdir(parents=True, exist_ok=True)
            own = {
                "TOLLHOUSE_DATA_DIR": str(directory / replica.name / "data"),
                "TOLLHOUSE_NODE_NAME": replica.name,
            }
            replica.env = _base_env() | own | dict(env)

    def __getitem__(self, i: int) -> Replica:
        return self.replicas[i]

    def __len__(self) -> int:
        return len(self.replicas)

    def tails(self) -> str:
        """Every replica's log tails, for a failure message."""
        return "\n".join(replica.tail() for replica in self.replicas)

    async def spawn(self, i: int) -> None:
        """Start replica `i`'s process (it must not be running); returns at once."""
        replica = self.replicas[i]
        if replica.alive:
            raise RuntimeError(f"{replica.name} is already running")
        if replica.process is not None:
            await replica.process.aclose()
        argv = [
            sys.executable,
            "-m",
            "tollhouse",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(replica.port),
        ]
        with (
            (self.directory / f"{replica.name}.out").open("ab") as out,
            (self.directory / f"{replica.name}.err").open("ab") as err,
        ):
            replica.process = await anyio.open_process(
                argv,
                stdin=None,
                stdout=out,
                stderr=err,
                cwd=ROOT,
                env=replica.env,
                start_new_session=True,
            )

    async def wait_ready(self, i: int, seconds: float = 60) -> None:
        """Poll replica `i`'s `/readyz` until 200; fails with its logs if it exits or the time runs out."""
        replica = self.replicas[i]
        async with httpx2.AsyncClient(trust_env=False, timeout=5) as http:
            with anyio.move_on_after(seconds):
                while replica.alive:
                    with suppress(httpx2.TransportError):
                        if (await http.get(f"{replica.base_url}/readyz")).status_code == 200:
                            return
                    await anyio.sleep(0.05)
        state = "exited" if not replica.alive else f"was not ready within {seconds} s"
        raise RuntimeError(f"{replica.name} {state}\n{replica.tail()}")

    async def start(self, seconds: float = 60) -> None:
        """Replica 0 first (it migrates the database) until ready, then all the others together."""
        await self.spawn(0)
        await self.wait_ready(0, seconds)
        rest = range(1, len(self.replicas))
        for i in rest:
            await self.spawn(i)
        async with anyio.create_task_group() as tg:
            for i in rest:
                tg.start_soon(self.wait_ready, i, seconds)

    def kill(self, i: int, sig: signal.Signals = signal.SIGKILL) -> None:
        """Send `sig` to replica `i`'s process (not to what it started: a crash of that process alone)."""
        replica = self.replicas[i]
        if replica.process is None:
            raise RuntimeError(f"{replica.name} was never started")
        replica.process.send_signal(sig)

    async def wait_exit(self, i: int, seconds: float = 30) -> int:
        """Wait until replica `i`'s process has exited; its return code (-9: SIGKILL)."""
        replica = self.replicas[i]
        if replica.process is None:
            raise RuntimeError(f"{replica.name} was never started")
        with anyio.fail_after(seconds):
            return await replica.process.wait()

    async def restart(self, i: int, seconds: float = 60) -> None:
        """Start replica `i` again on the same port and data directory (after it exited) until ready."""
        await self.spawn(i)
        await self.wait_ready(i, seconds)

    async def stop(self, grace: float = 15) -> None:
        """SIGTERM every replica still running, SIGKILL whatever is left of each session after `grace`."""
        running = [r for r in self.replicas if r.alive]
        for replica in running:
            with suppress(ProcessLookupError):
                replica.process.terminate()  # type: ignore[union-attr]
        with anyio.move_on_after(grace):
            for replica in running:
                await replica.process.wait()  # type: ignore[union-attr]
        for replica in self.replicas:
            if replica.process is None:
                continue
            # The session also holds any worker processes, which outlive a SIGKILLed leader.
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(replica.process.pid, signal.SIGKILL)
            await replica.process.wait()
            await replica.process.aclose()


@asynccontextmanager
async def running_replicas(
    directory: Path,
    n: int,
    *,
    database_url: str,
    redis_url: str,
    redis_prefix: str,
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[Replicas]:
    """`n` ready replicas sharing the database, Redis (under `redis_prefix`) and a new key ring.

    The public URL is replica 0's address; `env` adds or overrides settings of every replica.
    Every process is stopped on exit, however the block ends; the database and the Redis keys are
    the caller's to remove.
    """
    ports = [free_port() for _ in range(n)]
    shared = shared_env(database_url, redis_url, redis_prefix, f"http://127.0.0.1:{ports[0]}")
    replicas = Replicas(directory, ports, shared | dict(env or {}))
    try:
        await replicas.start()
        yield replicas
    finally:
        with anyio.CancelScope(shield=True):
            await replicas.stop()
