"""What progressive disclosure saves: `tools/list` of the demo catalog, full versus `?disclosure=search`.

Usage: python bench/disclosure.py [--synthetic-servers 8 --synthetic-tools 50] [--out FILE] [--quick]

It runs `tollhouse demo` (the example servers and agents behind a gateway, as `make demo` does),
reads its endpoint, admin token and key from the banner, and fetches the whole `tools/list`
(every page, 2026-07-28 stateless requests) from `/mcp` and from `/mcp?disclosure=search`. With
`--synthetic-servers`, it also registers that many generated upstreams (bench/_upstreams.py, each
with `--synthetic-tools` small tools) and measures again: the saving grows with the catalog,
while the meta-tools cost the same.

Figures per catalog: the number of tools listed and the bytes of the `tools` array as compact
JSON (what a client puts in a prompt), and estimated tokens = bytes / 4 (a common rule of thumb
for JSON under BPE tokenizers; no tokenizer is installed here). Output: a JSON document on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx2

ROOT = Path(__file__).resolve().parents[1]
MODERN = "2026-07-28"
BYTES_PER_TOKEN = 4


def _meta() -> dict[str, Any]:
    return {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
    }


async def list_all(http: httpx2.AsyncClient, url: str, key: str) -> list[dict[str, Any]]:
    """Every tool of an endpoint, following nextCursor."""
    tools: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"_meta": _meta(), **({"cursor": cursor} if cursor else {})}
        response = await http.post(
            url,
            headers={
                "Authorization": f"Bearer {key}",
                "Accept": "application/json, text/event-stream",
                "MCP-Protocol-Version": MODERN,
                "Mcp-Method": "tools/list",
            },
            json={"jsonrpc": "2.0", "id": len(tools) + 1, "method": "tools/list", "params": params},
        )
        response.raise_for_status()
        result = response.json()["result"]
        tools.extend(result["tools"])
        cursor = result.get("nextCursor")
        if not cursor:
            return tools


def sizes(tools: list[dict[str, Any]]) -> dict[str, Any]:
    """Tool count, compact-JSON bytes and estimated tokens of a `tools` array."""
    size = len(json.dumps(tools, separators=(",", ":")).encode())
    return {"tools": len(tools), "bytes": size, "estimated_tokens": round(size / BYTES_PER_TOKEN)}


async def measure(base: str, key: str) -> dict[str, Any]:
    """Full versus disclosure for the gateway's current catalog."""
    async with httpx2.AsyncClient(trust_env=False, timeout=60) as http:
        full = sizes(await list_all(http, f"{base}/mcp", key))
        search = sizes(await list_all(http, f"{base}/mcp?disclosure=search", key))
    return {
        "full": full,
        "disclosure": search,
        "bytes_saved": full["bytes"] - search["bytes"],
        "saving_percent": round(100 * (1 - search["bytes"] / full["bytes"]), 1) if full["bytes"] else None,
    }


def read_banner(proc: subprocess.Popen[str], deadline: float) -> dict[str, str]:
    """The demo's MCP endpoint, admin token and key, from the banner it prints once ready."""
    found: dict[str, str] = {}
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the demo exited before it was ready")
        text = line.strip()
        if text.startswith("MCP endpoint:"):
            found["mcp"] = text.split()[-1]
        elif text.startswith("Admin API:"):
            found["admin"] = text.split()[2]
            found["admin_token"] = text.rsplit("admin token: ", 1)[1].rstrip(")")
        elif text.startswith("Authorization: Bearer "):
            found["key"] = text.split()[-1]
            return found
    raise RuntimeError("the demo did not print its banner in time")


async def add_synthetic(admin: str, admin_token: str, urls: list[str]) -> None:
    """Register generated upstreams and wait until their tools are listed."""
    async with httpx2.AsyncClient(
        base_url=admin, headers={"Authorization": f"Bearer {admin_token}"}, trust_env=False, timeout=60
    ) as http:
        for i, url in enumerate(urls):
            response = await http.post("/servers", json={"name": f"gen{i:02d}", "url": url})
            response.raise_for_status()


def run(args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "TOLLHOUSE_DEMO_PORT": "0", "PYTHONPATH": str(ROOT)}
    demo = subprocess.Popen(
        [sys.executable, "-m", "tollhouse", "demo"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    children = [demo]
    try:
        banner = read_banner(demo, time.monotonic() + 120)
        base = banner["mcp"].removesuffix("/mcp")
        report: dict[str, Any] = {"demo": asyncio.run(measure(base, banner["key"]))}
        if args.synthetic_servers:
            generated = subprocess.Popen(
                [
                    sys.executable,
                    str(ROOT / "bench" / "_upstreams.py"),
                    "--count",
                    str(args.synthetic_servers),
                    "--tools",
                    str(args.synthetic_tools),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                start_new_session=True,
            )
            children.append(generated)
            assert generated.stdout is not None
            ready = generated.stdout.readline().split()
            if not ready or ready[0] != "READY":
                raise RuntimeError("the synthetic upstreams did not start")
            asyncio.run(add_synthetic(banner["admin"], banner["admin_token"], ready[1:]))
            report["demo_plus_synthetic"] = asyncio.run(measure(base, banner["key"]))
            report["synthetic"] = {"servers": args.synthetic_servers, "tools_each": args.synthetic_tools}
        return report
    finally:
        for child in children:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic-servers", type=int, default=0)
    parser.add_argument("--synthetic-tools", type=int, default=50)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--quick", action="store_true", help="a smoke test: 2 synthetic servers of 10 tools")
    args = parser.parse_args(argv)
    if args.quick:
        args.synthetic_servers, args.synthetic_tools = 2, 10
    report = run(args)
    text = json.dumps(report, indent=2)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
