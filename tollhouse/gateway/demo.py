"""`tollhouse demo`: the example servers and agents, a gateway in front of them, a key, and agent runs.

It starts examples/servers/studio.py and notes.py as child processes, serves tollhouse
in-process with a fresh SQLite registry under `.tollhouse/demo`, registers both servers and
a client through the admin API, runs the scripted agent once through the gateway, then
starts the example A2A agents (echo, and notes-agent, which itself uses the notes tools
through the gateway), registers them, and has the delegating client discover them through
`GET /a2a` and delegate a task: an agent calling an agent calling a tool, in one audit trail.
It prints the URLs, the key and an MCP client configuration, and serves until Ctrl-C (or
SIGTERM), then stops every child.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import sys
from pathlib import Path

import anyio
import httpx2
import uvicorn
from anyio.abc import Process
from pydantic import SecretStr

from tollhouse.gateway.app import create_app
from tollhouse.gateway.serve import uvicorn_config
from tollhouse.gateway.settings import Settings

__all__ = ["demo_main"]

_EXAMPLES = ("studio", "notes")


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


async def _start_example(name: str, root: Path, *args: str) -> tuple[Process, str]:
    """Start an example (`servers/NAME.py`, or a module `examples.agents.NAME`); its READY URL."""
    script = root / "examples" / "servers" / f"{name}.py"
    env = {**os.environ, "PYTHONPATH": str(root)}
    command = [str(script)] if script.exists() else ["-m", f"examples.agents.{name}"]
    proc = await anyio.open_process(
        [sys.executable, *command, "--port", "0", *args], env=env, cwd=root, stderr=None
    )
    assert proc.stdout is not None
    line = b""
    with anyio.fail_after(30):
        while not line.endswith(b"\n"):
            line += await proc.stdout.receive(1)
    if not line.startswith(b"READY "):
        proc.kill()
        raise RuntimeError(f"example server {name} did not start")
    return proc, line.decode().split()[1]


def _listen_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.bind((host, 0))  # the default port is taken: any free one will do for a demo
    return sock


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = anyio.Event()

    def install_signal_handlers(self) -> None:
        pass  # the demo handles signals itself

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets=sockets)
        finally:
            self.ready.set()


async def _demo(port: int) -> int:
    root = _repo_root()
    data_dir = root / ".tollhouse" / "demo"
    shutil.rmtree(data_dir, ignore_errors=True)
    admin_token = "tha_" + secrets.token_urlsafe(24)
    sock = _listen_socket("127.0.0.1", port)
    bound = sock.getsockname()[1]
    base = f"http://127.0.0.1:{bound}"
    # Everything explicit: a TOLLHOUSE_DATABASE_URL in the environment must not point the demo at it.
    settings = Settings(
        public_url=base,
        data_dir=str(data_dir),
        database_url=None,
        admin_token=SecretStr(admin_token),
        port=bound,
        log_level="warning",
    )
    children: list[Process] = []
    try:
        urls = {}
        for name in _EXAMPLES:
            proc, url = await _start_example(name, root)
            children.append(proc)
            urls[name] = url
        server = _Server(uvicorn_config(create_app(settings), settings))
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            with anyio.fail_after(30):
                await server.ready.wait()
            if not server.started:
                raise RuntimeError("the gateway did not start")
            key, password = await _register(base, admin_token, urls)
            transcript = await _run_agent(f"{base}/mcp", key)
            agents: dict[str, str] = {}
            examples = (
                ("echo", "echo_agent", ()),
                ("notes-agent", "notes_agent", ("--mcp-url", f"{base}/mcp", "--token", key)),
            )
            for agent, module, args in examples:
                proc, card_url = await _start_example(module, root, *args)
                children.append(proc)
                agents[agent] = card_url
            transcript += await _run_agents(base, admin_token, key, agents)
            _banner(base, admin_token, urls, key, password, transcript)
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    break
            print("\ntollhouse demo: stopping", flush=True)
            server.should_exit = True
        return 0
    finally:
        with anyio.CancelScope(shield=True):
            for proc in children:
                proc.terminate()
            for proc in children:
                with anyio.move_on_after(10):
                    await proc.wait()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
                await proc.aclose()
        sock.close()


async def _register(base: str, admin_token: str, urls: dict[str, str]) -> tuple[str, str]:
    """Register the servers, a client (its API key) and a user who can sign in (its password)."""
    async with httpx2.AsyncClient(
        base_url=f"{base}/admin/api/v1",
        headers={"Authorization": f"Bearer {admin_token}"},
        trust_env=False,
        timeout=30,
    ) as admin:
        for name, url in urls.items():
            response = await admin.post("/servers", json={"name": name, "url": url})
            response.raise_for_status()
        response = await admin.post("/clients", json={"name": "demo-agent", "team": "demo"})
        response.raise_for_status()
        key: str = response.json()["api_key"]
        (await admin.post("/teams", json={"name": "demo"})).raise_for_status()
        # Policy denies by default: the demo team (its client and its user) may use every tool.
        grant = {"cedar": 'permit(principal in Team::"demo", action, resource);', "description": "the demo"}
        (await admin.put("/policies/demo-team", json=grant)).raise_for_status()
        password = secrets.token_urlsafe(12)
        user = {"name": "demo", "password": password, "roles": ["admin"], "teams": ["demo"]}
        (await admin.post("/users", json=user)).raise_for_status()
        return key, password


async def _run_agent(url: str, key: str) -> list[str]:
    from examples.agents.scripted_agent import run_agent

    lines: list[str] = []
    for mode in ("2026-07-28", "legacy"):
        lines.extend(await run_agent(url, key, mode))
    return lines


async def _run_agents(base: str, admin_token: str, key: str, agents: dict[str, str]) -> list[str]:
    """Register the example A2A agents and delegate one task through the gateway."""
    from examples.agents.delegating_client import delegate

    async with httpx2.AsyncClient(
        base_url=f"{base}/admin/api/v1",
        headers={"Authorization": f"Bearer {admin_token}"},
        trust_env=False,
        timeout=30,
    ) as admin:
        for name, card_url in agents.items():
            (await admin.post("/agents", json={"name": name, "card_url": card_url})).raise_for_status()
    lines = [f"A2A agents: {', '.join(f'{base}/a2a/{name}' for name in agents)} (discovery: {base}/a2a)"]
    result = await delegate(base, key, "remember", "the demo ran")
    lines.append(
        f"delegating client -> {result.agent} (skill remember) -> notes__add_note: "
        f"task {result.state}, {' | '.join(result.texts)}"
    )
    return lines


def _banner(
    base: str, admin_token: str, urls: dict[str, str], key: str, password: str, transcript: list[str]
) -> None:
    from examples.agents.scripted_agent import client_config

    mcp_url = f"{base}/mcp"
    out = [
        "",
        "tollhouse demo is running. Press Ctrl-C to stop.",
        "",
        f"  MCP endpoint:     {mcp_url}",
        f"  Search mode:      {mcp_url}?disclosure=search  (4 meta-tools find, describe and call the rest)",
        f"  Admin API:        {base}/admin/api/v1  (admin token: {admin_token})",
        f"  Web console:      {base}/ui/  (sign in as demo, password {password}; role admin)",
        *(f"  upstream {name + ':':<9}{url}" for name, url in urls.items()),
        f"  OAuth sign-in:    user demo, password {password}",
        "                    (MCP clients that speak OAuth connect to the endpoint with no header,",
        f"                    discover {base}/.well-known/oauth-protected-resource/mcp and sign in)",
        "",
        "Scripted agent run through the gateway:",
        *(f"  {line}" for line in transcript),
        "",
        "MCP client configuration (paste into your MCP client):",
        json.dumps(client_config(mcp_url, key), indent=2),
        "",
        f"Try it (export KEY={key}):",
        f"  curl -s {mcp_url} -H 'Content-Type: application/json' \\",
        "    -H 'Accept: application/json, text/event-stream' -H 'MCP-Protocol-Version: 2026-07-28' \\",
        "    -H 'Mcp-Method: tools/list' -H \"Authorization: Bearer $KEY\" \\",
        '    -d \'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{'
        '"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}\'',
        "",
        f"Authorization: Bearer {key}",
    ]
    print("\n".join(out), flush=True)


def demo_main() -> int:
    """Run the demo until interrupted; 0 on a clean stop."""
    port = int(os.environ.get("TOLLHOUSE_DEMO_PORT", "8000"))
    return anyio.run(_demo, port, backend_options={"use_uvloop": True})
