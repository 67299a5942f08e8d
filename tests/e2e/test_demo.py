"""`make demo` starts everything, the agent succeeds, the printed token works, Ctrl-C stops it all."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import anyio
import pytest
from anyio.streams.text import TextReceiveStream

from tests.console import signed_in
from tests.harness import MODES, Gateway
from tollhouse.gateway.demo import _EXAMPLES

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


async def test_make_demo_serves_with_a_working_token_and_stops_cleanly() -> None:
    env = {**os.environ, "TOLLHOUSE_DEMO_PORT": "0", "PYTHONUNBUFFERED": "1"}
    process = await anyio.open_process(
        ["make", "-s", "demo"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        with anyio.fail_after(180):
            buffer = ""
            async for chunk in TextReceiveStream(process.stdout):
                buffer += chunk
                *done, buffer = buffer.split("\n")
                lines.extend(done)
                if any(line.startswith("Authorization: Bearer ") for line in done):
                    break
        text = "\n".join(lines)
        mcp_lines = [line for line in lines if "http://" in line and "/mcp" in line]
        assert "MCP endpoint:" in mcp_lines[0], text
        mcp_url = mcp_lines[0].split()[-1]
        assert "FAILED" not in text
        # An agent calling an agent calling a tool: the delegation completed through the gateway.
        delegated = [line for line in lines if "delegating client ->" in line]
        assert delegated and "TASK_STATE_COMPLETED" in delegated[0] and "the demo ran" in delegated[0], text
        assert any("A2A agents:" in line and "/a2a/echo" in line for line in lines), text
        assert lines[-1].startswith("Authorization: Bearer ")
        key = lines[-1].removeprefix("Authorization: Bearer ").strip()
        gw = Gateway(base_url=mcp_url.removesuffix("/mcp"), admin=None)  # type: ignore[arg-type]
        for mode in MODES:
            async with gw.client(key, mode) as client:
                names = {t.name for t in (await client.list_tools()).tools}
                assert {f"{name}__" in " ".join(names) for name in _EXAMPLES} == {True}
                assert {"echo__echo", "notes-agent__remember"} <= names  # the agents' skills as tools
        # The printed console sign-in works: the demo user is an admin of the web console.
        console_line = next(line for line in lines if "Web console:" in line)
        password = console_line.split("password ", 1)[1].split(";", 1)[0]
        async with signed_in(gw, "demo", password) as browser:
            page = await browser.get("/ui/servers")
            assert page.status_code == 200 and "notes" in page.text, page.text
    finally:
        # Ctrl-C goes to the whole process group, as a terminal would send it.
        os.killpg(process.pid, signal.SIGINT)
        with anyio.fail_after(60):
            assert process.stdout is not None
            async for chunk in TextReceiveStream(process.stdout):
                lines.extend(chunk.splitlines())
            code = await process.wait()
    # make reports the interrupt itself (-SIGINT); the demo under it stopped cleanly.
    assert code in (0, -signal.SIGINT), "\n".join(lines)
    assert "tollhouse demo: stopping" in lines, "\n".join(lines)
    assert not any("Traceback" in line for line in lines), "\n".join(lines)
    # Every child was stopped: nothing is left in the demo's process group.
    with pytest.raises(ProcessLookupError):
        os.killpg(process.pid, 0)
