"""The replica harness itself: three replicas start and answer; one killed is dead, the rest answer.

tests/cluster.py runs real `tollhouse serve` processes on one scratch PostgreSQL database and one
Redis prefix; the scale-out acceptance tests build on it, so it is tested on its own first.
"""

from __future__ import annotations

import signal
from pathlib import Path

import anyio
import httpx2
import pytest

from tests.cluster import cluster

# Starting a replica costs ~3-4 s of CPU (imports, migrations): three of them are not a fast test.
pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def test_three_replicas_start_and_a_killed_one_is_dead_while_the_rest_answer(
    tmp_path: Path, postgres_url: str, redis_url: str
) -> None:
    async with (
        cluster(tmp_path, postgres_url, redis_url, n=3) as c,
        httpx2.AsyncClient(trust_env=False, timeout=10) as http,
    ):
        assert len(c.replicas) == 3
        assert len({r.base_url for r in c.replicas}) == 3
        for replica in c.replicas:
            response = await http.get(f"{replica.base_url}/readyz")
            assert response.status_code == 200, c.logs()
            assert response.json()["status"] == "ready"
            assert replica.process.returncode is None
        # One shared database and admin token: what is made through replica 0 is read through replica 2.
        await c.create_client("bot")
        listed = (await c.replicas[2].admin.get("/clients")).json()
        assert "bot" in str(listed), listed
        await c.policy_allow_all()
        # Replica 2 serves policies from memory: it reloads them on the change notice, soon after.
        with anyio.fail_after(5):
            while (await c.replicas[2].admin.get("/policies/tests-allow-all")).status_code != 200:
                pass

        killed = c.replicas[1]
        c.kill(1, signal.SIGKILL)
        assert await c.wait_exit(1, 10) == -signal.SIGKILL
        with pytest.raises(httpx2.TransportError):
            await http.get(f"{killed.base_url}/readyz")
        for replica in (c.replicas[0], c.replicas[2]):
            assert (await http.get(f"{replica.base_url}/readyz")).status_code == 200, c.logs()

        await c.restart(1)
        assert (await http.get(f"{killed.base_url}/readyz")).status_code == 200, c.logs()
        assert killed.process.returncode is None


async def test_every_replica_is_stopped_when_the_block_fails(
    tmp_path: Path, postgres_url: str, redis_url: str
) -> None:
    processes = []
    with pytest.raises(RuntimeError, match="the test body failed"):
        async with cluster(tmp_path, postgres_url, redis_url, n=2) as c:
            processes = [r.process for r in c.replicas]
            raise RuntimeError("the test body failed")
    assert len(processes) == 2
    assert all(p.returncode is not None for p in processes)
