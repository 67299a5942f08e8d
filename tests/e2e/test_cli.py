"""The `tollhouse` CLI against a real gateway: servers, tools, clients, apply, export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest

from examples.servers import notes, studio
from tests.harness import ADMIN_TOKEN, gateway_settings, running_gateway
from tests.servers import serve
from tollhouse.gateway.app import create_app
from tollhouse.gateway.cli import main
from tollhouse.registry.config import load_config

pytestmark = pytest.mark.anyio


async def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the CLI in a worker thread (as a console script would) and capture its output."""
    code = await anyio.to_thread.run_sync(main, list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def test_servers_tools_and_clients_round_trip_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with serve(studio.build_app(), path="/mcp") as studio_url, running_gateway(tmp_path) as gw:
        g = ["--url", gw.base_url, "--token", ADMIN_TOKEN]
        code, out, err = await run_cli(capsys, *g, "servers", "add", "studio", "--url", studio_url, "--json")
        assert code == 0, err
        added = json.loads(out)
        assert added["name"] == "studio"
        assert added["health"]["status"] == "healthy"
        assert added["tool_count"] == 6

        code, out, _ = await run_cli(capsys, *g, "servers", "list", "--json")
        assert [s["name"] for s in json.loads(out)["items"]] == ["studio"]
        code, out, _ = await run_cli(capsys, *g, "servers", "list")
        assert code == 0
        assert "studio" in out
        assert "healthy" in out

        code, out, _ = await run_cli(capsys, *g, "servers", "refresh", "studio", "--json")
        assert code == 0
        assert json.loads(out)["tools"] == 6

        code, out, _ = await run_cli(capsys, *g, "tools", "list", "--json")
        names = [t["name"] for t in json.loads(out)["items"]]
        assert "studio__echo" in names
        code, out, _ = await run_cli(capsys, *g, "tools", "show", "studio__echo", "--json")
        shown = json.loads(out)
        assert shown["definition"]["name"] == "studio__echo"
        assert shown["upstream_definition"]["name"] == "echo"
        assert len(shown["sha256"]) == 64

        code, out, _ = await run_cli(
            capsys, *g, "clients", "create", "ci-bot", "--team", "platform", "--json"
        )
        created = json.loads(out)
        assert created["api_key"].startswith("thk_")
        assert created["team"] == "platform"
        async with gw.client(created["api_key"], "2026-07-28") as client:
            assert (await client.call_tool("studio__echo", {"text": "cli"})).content

        code, out, _ = await run_cli(capsys, *g, "clients", "list", "--json")
        listed = json.loads(out)["items"]
        assert listed[0]["name"] == "ci-bot"
        assert "api_key" not in listed[0]
        code, out, _ = await run_cli(capsys, *g, "clients", "revoke", "ci-bot")
        assert code == 0

        code, _, err = await run_cli(capsys, *g, "servers", "remove", "studio")
        assert code == 0, err
        code, _, err = await run_cli(capsys, *g, "servers", "show", "studio")
        assert code == 1
        assert "studio" in err

        code, _, err = await run_cli(capsys, "--url", gw.base_url, "--token", "wrong", "servers", "list")
        assert code == 1
        assert err.startswith("tollhouse: error:")


async def test_apply_is_idempotent_and_export_writes_the_same_shape_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with (
        serve(studio.build_app(), path="/mcp") as studio_url,
        serve(notes.build_app(), path="/mcp") as notes_url,
        running_gateway(tmp_path) as gw,
    ):
        g = ["--url", gw.base_url, "--token", ADMIN_TOKEN]
        config = tmp_path / "tollhouse.yaml"
        config.write_text(
            f"""\
gateway: {{public_url: "{gw.base_url}"}}
servers:
  - name: studio
    url: "{studio_url}"
  - name: notes
    url: "{notes_url}"
    call_timeout_seconds: 30
clients:
  - name: ci-bot
    team: platform
policies:
  - id: later
    cedar: 'permit(principal, action, resource);'
"""
        )
        code, out, err = await run_cli(capsys, *g, "apply", str(config), "--json")
        assert code == 0, err
        first = json.loads(out)
        assert sorted(first["created"]) == ["client/ci-bot", "policy/later", "server/notes", "server/studio"]
        assert first["clients"][0]["api_key"].startswith("thk_")
        assert first["warnings"] == []

        code, out, err = await run_cli(capsys, *g, "apply", str(config), "--json")
        assert code == 0, err
        second = json.loads(out)
        assert second["created"] == []
        assert second["updated"] == []
        assert second["clients"] == []

        exported = tmp_path / "exported.yaml"
        code, _, err = await run_cli(capsys, *g, "export", "--out", str(exported))
        assert code == 0, err
        loaded = load_config(exported.read_text())
        assert [s.name for s in loaded.servers] == ["notes", "studio"]
        assert {s.name: s.call_timeout_seconds for s in loaded.servers}["notes"] == 30
        assert [c.name for c in loaded.clients] == ["ci-bot"]
        assert [p.id for p in loaded.policies] == ["later", "tests-allow-all"]

        # --prune deletes what the file omits, in the sections it has (no policies section here).
        config.write_text(f'servers:\n  - name: studio\n    url: "{studio_url}"\n')
        code, out, err = await run_cli(capsys, *g, "apply", str(config), "--prune", "--json")
        assert code == 0, err
        assert json.loads(out)["deleted"] == ["server/notes"]


async def test_apply_refuses_an_invalid_file_and_names_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with running_gateway(tmp_path) as gw:
        config = tmp_path / "bad.yaml"
        config.write_text('servers:\n  - name: calc\n    urll: "http://127.0.0.1:1/mcp"\n')
        code, _, err = await run_cli(
            capsys, "--url", gw.base_url, "--token", ADMIN_TOKEN, "apply", str(config)
        )
        assert code == 1
        assert "servers[0].urll" in err
        assert (await gw.admin.get("/servers")).json()["items"] == []


async def test_serve_with_a_config_applies_it_at_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with serve(studio.build_app(), path="/mcp") as studio_url:
        loaded = load_config(
            f'servers:\n  - name: studio\n    url: "{studio_url}"\nclients:\n  - name: boot\n'
        )
        app = create_app(gateway_settings(tmp_path), apply_config=loaded)
        async with serve(app) as base:
            code, out, err = await run_cli(
                capsys, "--url", base, "--token", ADMIN_TOKEN, "servers", "list", "--json"
            )
            assert code == 0, err
            items: list[dict[str, Any]] = json.loads(out)["items"]
            assert items[0]["name"] == "studio"
            assert items[0]["health"]["status"] == "healthy"
            # The new client's key was printed once, at start (captured along with this call).
            assert "shown once: client secret: ths_" in err
            assert "API key: thk_" in err
