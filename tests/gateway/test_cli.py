"""The `tollhouse` command line: parsing, output and errors, against a real HTTP admin API.

The admin API here is `tests.fakes.FakeAdminApi`, which mirrors the contract; the same commands
against the real gateway are exercised in tests/e2e.
"""

from __future__ import annotations

import io
import json
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from tests.fakes import FakeAdminApi
from tests.servers import serve
from tollhouse import __version__
from tollhouse.gateway.cli import main
from tollhouse.registry.config import load_config
from tollhouse.registry.models import Upstream, UpstreamAuth

ADD_TOOL = {
    "name": "add",
    "title": "Add",
    "description": "Add two numbers.",
    "inputSchema": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}},
}
SUB_TOOL = {
    "name": "sub",
    "description": "Subtract b from a.\nSecond line.",
    "inputSchema": {"type": "object"},
}
CONFIG = """\
servers:
  - name: calc
    url: "http://127.0.0.1:9001/mcp"
    auth: {type: bearer, token_env: CALC_TOKEN}
  - name: files
    command: ["python", "examples/servers/files.py"]
    env: {ROOT: "./data"}
toolsets:
  - name: support
    tools: ["calc__add"]
clients:
  - name: ci-bot
    team: platform
"""


async def tollhouse(*argv: str) -> int:
    """Run the CLI in a worker thread, as a console script would, while the test server runs."""
    return await anyio.to_thread.run_sync(main, list(argv))


@asynccontextmanager
async def admin_api(**options: Any) -> AsyncIterator[tuple[FakeAdminApi, list[str]]]:
    """A fake admin API on a loopback port, and the global options that reach it."""
    options.setdefault("upstream_tools", {"calc": [ADD_TOOL, SUB_TOOL]})
    fake = FakeAdminApi(**options)
    async with serve(fake.app) as url:
        yield fake, ["--url", url, "--token", fake.token]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- parsing ---------------------------------------------------------------------------------

COMMANDS = [
    [],
    ["serve"],
    ["demo"],
    ["db"],
    ["db", "upgrade"],
    ["apply"],
    ["export"],
    ["servers"],
    ["servers", "add"],
    ["servers", "list"],
    ["servers", "show"],
    ["servers", "remove"],
    ["servers", "refresh"],
    ["tools"],
    ["tools", "list"],
    ["tools", "show"],
    ["toolsets"],
    ["toolsets", "list"],
    ["toolsets", "show"],
    ["toolsets", "set"],
    ["toolsets", "remove"],
    ["clients"],
    ["clients", "create"],
    ["clients", "list"],
    ["clients", "revoke"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "tollhouse")
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: tollhouse {' '.join(command)}".rstrip())


@pytest.mark.parametrize(
    "command",
    [c for c in COMMANDS if c[-1:] in (["list"], ["show"], ["create"], ["add"], ["refresh"], ["set"])],
    ids=" ".join,
)
def test_list_show_and_create_commands_take_json(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    main([*command, "--help"])
    assert "--json" in capsys.readouterr().out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"tollhouse {__version__}\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["servers"], "the following arguments are required: ACTION"),
        (["servers", "add", "calc"], "one of the arguments --url --command is required"),
        (
            ["servers", "add", "calc", "--url", "http://x", "--command", "y"],
            "not allowed with argument --url",
        ),
        (
            ["servers", "add", "calc", "--url", "http://x", "--env", "A=1"],
            "--env applies to --command servers only",
        ),
        (["servers", "add", "calc", "--command", "x", "--env", "A"], "expected KEY=VALUE"),
        (["servers", "add", "calc", "--command", "x", "--sse"], "--sse applies to --url servers only"),
        (["servers", "add", "calc", "--command", "'x"], "--command: No closing quotation"),
        (
            ["servers", "add", "calc", "--url", "http://x", "--call-timeout", "0"],
            "positive number of seconds",
        ),
        (["servers", "add", "calc", "--url", "http://x", "--approval", "never"], "invalid choice"),
        (["servers", "add", "calc", "--url", "http://x", "--failure-mode", "half"], "invalid choice"),
        (["serve", "--port", "70000"], "expected a port number"),
        (["tools", "frobnicate"], "invalid choice"),
        (["toolsets", "set", "support"], "give at least one --tool or --alias"),
        (["toolsets", "set", "support", "--alias", "plus"], "expected ALIAS=SERVER__TOOL"),
        (
            ["toolsets", "set", "support", "--alias", "plus=calc__add", "--alias", "plus=calc__sub"],
            "--alias plus: given twice",
        ),
    ],
)
def test_usage_errors_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: tollhouse")
    assert message in err


def test_connection_refused_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{closed_port()}"

    assert main(["servers", "list", "--url", url]) == 1

    captured = capsys.readouterr()
    assert captured.err == f"tollhouse: error: cannot reach the gateway at {url} (is it running?)\n"
    assert captured.out == ""


def test_an_invalid_gateway_url_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["servers", "list", "--url", "localhost:8000"]) == 1
    assert capsys.readouterr().err.startswith("tollhouse: error: invalid gateway URL 'localhost:8000'")


class _ClosedPipe(io.StringIO):
    """Standard output whose reader has gone away (`tollhouse ... | head`)."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


@pytest.mark.anyio
async def test_a_closed_pipe_ends_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    async with admin_api() as (_, conn):
        monkeypatch.setattr(sys, "stdout", _ClosedPipe())

        assert await tollhouse(*conn, "servers", "list") == 141


def test_db_upgrade_runs_locally(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TOLLHOUSE_DATA_DIR", str(tmp_path / "data"))

    assert main(["db", "upgrade"]) == 0

    assert capsys.readouterr().out == "tollhouse: database is up to date\n"
    assert (tmp_path / "data").is_dir()


# --- servers ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_servers_add_list_show_refresh_remove(capsys: pytest.CaptureFixture[str]) -> None:
    async with admin_api() as (fake, conn):
        assert await tollhouse(*conn, "servers", "add", "calc", "--url", "http://127.0.0.1:9001/mcp") == 0
        assert capsys.readouterr().out == (
            "added server calc (http, http://127.0.0.1:9001/mcp): 2 tools, health healthy\n"
        )
        assert fake.bodies == [{"name": "calc", "url": "http://127.0.0.1:9001/mcp"}]

        assert await tollhouse(*conn, "servers", "list") == 0
        assert capsys.readouterr().out.splitlines() == [
            "NAME  TRANSPORT  TARGET                     HEALTH   MODE  ERA         TOOLS",
            "calc  http       http://127.0.0.1:9001/mcp  healthy  open  2026-07-28  2",
        ]

        assert await tollhouse(*conn, "servers", "show", "calc") == 0
        shown = capsys.readouterr().out
        assert "url:       http://127.0.0.1:9001/mcp\n" in shown
        assert "approval:  first-use\n" in shown
        assert "fail mode: open\n" in shown
        assert shown.endswith("tools:     2\n  calc__add\n  calc__sub\n")

        assert await tollhouse(*conn, "servers", "refresh", "calc") == 0
        assert capsys.readouterr().out == (
            "refreshed calc (snapshot 2): 2 tools, 0 resources, 0 resource templates, 0 prompts\n"
        )

        assert await tollhouse(*conn, "servers", "remove", "calc") == 0
        assert capsys.readouterr().out == "removed server calc\n"
        assert fake.servers == {}

        assert await tollhouse(*conn, "servers", "list") == 0
        assert capsys.readouterr().out == "no servers registered\n"


@pytest.mark.anyio
async def test_servers_add_sends_a_stdio_server_with_env_auth_and_timeouts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with admin_api() as (fake, conn):
        argv = [
            *conn,
            "servers",
            "add",
            "files",
            "--command",
            "python",
            "examples/servers/files.py",
            "--arg=--root",
            "--arg",
            "./data dir",
            "--env",
            "ROOT=./data",
            "--env",
            "MODE=a=b",
            "--header-env",
            "X-Api-Key=FILES_KEY",
            "--approval",
            "manual",
            "--failure-mode",
            "closed",
            "--connect-timeout",
            "2",
            "--call-timeout",
            "7.5",
        ]
        assert await tollhouse(*argv) == 0

    assert fake.bodies == [
        {
            "name": "files",
            "command": ["python", "examples/servers/files.py", "--root", "./data dir"],
            "env": {"ROOT": "./data", "MODE": "a=b"},
            "auth": {"type": "header", "header": "X-Api-Key", "value_env": "FILES_KEY"},
            "approval": "manual",
            "failure_mode": "closed",
            "connect_timeout_seconds": 2.0,
            "call_timeout_seconds": 7.5,
        }
    ]
    assert capsys.readouterr().out.startswith(
        "added server files (stdio, python examples/servers/files.py --root './data dir'): 0 tools"
    )


@pytest.mark.anyio
async def test_servers_add_splits_a_single_quoted_command_line() -> None:
    async with admin_api() as (fake, conn):
        argv = [*conn, "servers", "add", "notes", "--command", "python -m examples.servers.notes --x 'a b'"]
        assert await tollhouse(*argv) == 0
        argv = [
            *conn,
            "servers",
            "add",
            "gh",
            "--url",
            "https://gh.example/mcp",
            "--sse",
            "--bearer-env",
            "GH",
        ]
        assert await tollhouse(*argv) == 0

    assert fake.servers["notes"].command == ("python", "-m", "examples.servers.notes", "--x", "a b")
    assert fake.servers["gh"].transport == "sse"
    assert fake.servers["gh"].auth == UpstreamAuth(type="bearer", token_env="GH")


@pytest.mark.anyio
async def test_json_output_is_exactly_the_api_document(capsys: pytest.CaptureFixture[str]) -> None:
    async with admin_api() as (_, conn):
        assert await tollhouse(*conn, "servers", "add", "calc", "--url", "http://x/mcp", "--json") == 0
        added = json.loads(capsys.readouterr().out)
        assert await tollhouse(*conn, "servers", "list", "--json") == 0
        listed = json.loads(capsys.readouterr().out)
        assert await tollhouse(*conn, "servers", "show", "calc", "--json") == 0
        shown = json.loads(capsys.readouterr().out)
        assert await tollhouse(*conn, "servers", "refresh", "calc", "--json") == 0
        refreshed = json.loads(capsys.readouterr().out)

    assert added["name"] == "calc"
    assert added["url"] == "http://x/mcp"
    assert added["health"]["status"] == "healthy"
    assert listed == {"items": [added]}
    assert shown == {**added, "tools": ["calc__add", "calc__sub"]}
    assert refreshed == {
        "server": "calc",
        "snapshot_version": 2,
        "tools": 2,
        "resources": 0,
        "resource_templates": 0,
        "prompts": 0,
    }


@pytest.mark.anyio
async def test_an_api_error_prints_its_detail(capsys: pytest.CaptureFixture[str]) -> None:
    async with admin_api() as (_, conn):
        assert await tollhouse(*conn, "servers", "show", "nope") == 1
        assert capsys.readouterr().err == "tollhouse: error: no server named 'nope'\n"

        assert await tollhouse(*conn, "servers", "add", "Calc", "--url", "http://x") == 1
        assert capsys.readouterr().err.startswith("tollhouse: error: name: 'Calc' is not a valid name")

        assert await tollhouse(*conn, "servers", "add", "calc", "--url", "http://x") == 0
        assert await tollhouse(*conn, "servers", "add", "calc", "--url", "http://x") == 1
        captured = capsys.readouterr()
        assert captured.err == "tollhouse: error: a server or agent named 'calc' already exists\n"


@pytest.mark.anyio
async def test_a_server_that_is_not_a_tollhouse_gateway_is_reported(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def page(request: Request) -> Response:
        return HTMLResponse("<html>hello</html>")

    async def moved(request: Request) -> Response:
        return RedirectResponse("https://gw.example/admin/api/v1/servers", status_code=308)

    async def broken(request: Request) -> Response:
        return PlainTextResponse("Internal Server Error", status_code=500)

    app = Starlette(
        routes=[
            Route("/html/admin/api/v1/servers", page),
            Route("/moved/admin/api/v1/servers", moved),
            Route("/broken/admin/api/v1/servers", broken),
        ]
    )
    async with serve(app) as url:
        for prefix in ("html", "moved", "broken"):
            assert await tollhouse("servers", "list", "--url", f"{url}/{prefix}", "--token", "t") == 1

    assert capsys.readouterr().err.splitlines() == [
        f"tollhouse: error: the gateway at {url}/html did not answer with a JSON object"
        " (is it a tollhouse gateway?)",
        f"tollhouse: error: the gateway at {url}/moved redirects to https://gw.example/admin/api/v1/servers;"
        " pass the address it names with --url",
        "tollhouse: error: the gateway answered HTTP 500 Internal Server Error",
    ]


@pytest.mark.anyio
async def test_the_admin_token_is_required_and_checked(capsys: pytest.CaptureFixture[str]) -> None:
    async with admin_api() as (_, conn):
        url = conn[1]
        assert await tollhouse("servers", "list", "--url", url) == 1
        assert capsys.readouterr().err == (
            "tollhouse: error: the admin API needs the admin token"
            " (pass --token or set TOLLHOUSE_ADMIN_TOKEN)\n"
        )
        assert await tollhouse("servers", "list", "--url", url, "--token", "wrong") == 1
        assert capsys.readouterr().err == "tollhouse: error: invalid admin token\n"


@pytest.mark.anyio
async def test_url_and_token_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async with admin_api() as (fake, conn):
        monkeypatch.setenv("TOLLHOUSE_URL", conn[1])
        monkeypatch.setenv("TOLLHOUSE_ADMIN_TOKEN", fake.token)
        assert await tollhouse("servers", "add", "calc", "--url", "http://x") == 0
        capsys.readouterr()
        assert await tollhouse("servers", "list", "--json") == 0

    assert [s["name"] for s in json.loads(capsys.readouterr().out)["items"]] == ["calc"]


# --- tools -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_tools_list_and_show(capsys: pytest.CaptureFixture[str]) -> None:
    async with admin_api() as (fake, conn):
        await tollhouse(*conn, "servers", "add", "calc", "--url", "http://x")
        await tollhouse(*conn, "servers", "add", "other", "--url", "http://y")
        capsys.readouterr()

        assert await tollhouse(*conn, "tools", "list") == 0
        assert capsys.readouterr().out.splitlines() == [
            "NAME       SERVER  DESCRIPTION",
            "calc__add  calc    Add",
            "calc__sub  calc    Subtract b from a. Second line.",
        ]
        assert await tollhouse(*conn, "tools", "list", "--server", "other", "--json") == 0
        assert json.loads(capsys.readouterr().out) == {"items": []}
        assert fake.requests[-1] == ("GET", "/admin/api/v1/tools")

        assert await tollhouse(*conn, "tools", "show", "calc__add") == 0
        shown = capsys.readouterr().out
        assert "description: Add two numbers.\n" in shown
        assert '"name": "calc__add"' in shown
        assert "upstream definition:\n" in shown

        assert await tollhouse(*conn, "tools", "show", "calc__add", "--json") == 0
        tool = json.loads(capsys.readouterr().out)
        assert tool["definition"] == {**ADD_TOOL, "name": "calc__add"}
        assert tool["upstream_definition"] == ADD_TOOL

        assert await tollhouse(*conn, "tools", "show", "calc__nope") == 1
        assert capsys.readouterr().err == "tollhouse: error: no tool named 'calc__nope'\n"


@pytest.mark.anyio
async def test_upstream_text_cannot_drive_the_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    hostile = {
        "name": "x",
        "description": "\x1b[2J\x1b]0;owned\x07fine\rtext",
        "inputSchema": {"type": "object"},
    }
    async with admin_api(upstream_tools={"evil": [hostile]}) as (_, conn):
        await tollhouse(*conn, "servers", "add", "evil", "--url", "http://x")
        for argv in (["tools", "list"], ["tools", "show", "evil__x"], ["tools", "show", "evil__x", "--json"]):
            assert await tollhouse(*conn, *argv) == 0
            out = capsys.readouterr().out
            assert "\x1b" not in out
            assert "\x07" not in out
            assert "\r" not in out


# --- toolsets --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_toolsets_set_list_show_and_remove(capsys: pytest.CaptureFixture[str]) -> None:
    async with admin_api() as (fake, conn):
        await tollhouse(*conn, "servers", "add", "calc", "--url", "http://x")
        capsys.readouterr()

        argv = ["toolsets", "set", "support", "--tool", "calc__s*", "--alias", "plus=calc__add"]
        assert await tollhouse(*conn, *argv, "--description", "Support\tdesk") == 0
        assert capsys.readouterr().out == (
            "created toolset support: 2 live tools\n  calc__sub\n  plus -> calc__add\n"
        )
        assert fake.bodies[-1] == {
            "tools": ["calc__s*"],
            "aliases": {"plus": "calc__add"},
            "description": "Support\tdesk",
        }
        assert fake.requests[-1] == ("PUT", "/admin/api/v1/toolsets/support")

        assert await tollhouse(*conn, "toolsets", "set", "empty", "--tool", "other__*") == 0
        assert capsys.readouterr().out == "created toolset empty: 0 live tools\n"

        assert await tollhouse(*conn, "toolsets", "list") == 0
        assert capsys.readouterr().out.splitlines() == [
            "NAME     MEMBERS  TOOLS                    DESCRIPTION",
            "empty    0        other__*                 -",
            "support  2        calc__s* plus=calc__add  Support desk",
        ]

        assert await tollhouse(*conn, "toolsets", "show", "support") == 0
        assert capsys.readouterr().out == (
            "name:        support\n"
            "description: Support desk\n"
            "tools:       calc__s*\n"
            "aliases:     plus=calc__add\n"
            "created:     2026-11-03 10:22 UTC\n"
            "updated:     2026-11-03 10:22 UTC\n"
            "members:     2\n"
            "  calc__sub\n"
            "  plus -> calc__add\n"
        )

        # `set` replaces the whole definition: the alias and the description are gone.
        assert await tollhouse(*conn, "toolsets", "set", "support", "--tool", "calc__*", "--json") == 0
        replaced = json.loads(capsys.readouterr().out)
        assert replaced == {
            "name": "support",
            "description": None,
            "tools": ["calc__*"],
            "aliases": {},
            "members": ["calc__add", "calc__sub"],
            "created_at": "2026-11-03T10:22:00+00:00",
            "updated_at": "2026-11-03T10:22:00+00:00",
        }
        assert await tollhouse(*conn, "toolsets", "set", "support", "--tool", "calc__add") == 0
        assert capsys.readouterr().out.startswith("updated toolset support: 1 live tool\n")

        assert await tollhouse(*conn, "toolsets", "show", "support", "--json") == 0
        assert json.loads(capsys.readouterr().out)["members"] == ["calc__add"]
        assert await tollhouse(*conn, "toolsets", "list", "--json") == 0
        assert [t["name"] for t in json.loads(capsys.readouterr().out)["items"]] == ["empty", "support"]

        assert await tollhouse(*conn, "toolsets", "remove", "support") == 0
        assert capsys.readouterr().out == "removed toolset support\n"
        assert await tollhouse(*conn, "toolsets", "remove", "empty") == 0
        capsys.readouterr()
        assert await tollhouse(*conn, "toolsets", "list") == 0
        assert capsys.readouterr().out == "no toolsets\n"


@pytest.mark.anyio
async def test_toolsets_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    async with admin_api() as (_, conn):
        assert await tollhouse(*conn, "toolsets", "show", "nope") == 1
        assert capsys.readouterr().err == "tollhouse: error: no toolset named 'nope'\n"
        assert await tollhouse(*conn, "toolsets", "remove", "nope") == 1
        assert capsys.readouterr().err == "tollhouse: error: no toolset named 'nope'\n"

        assert await tollhouse(*conn, "toolsets", "set", "support", "--tool", "add") == 1
        assert capsys.readouterr().err.startswith(
            "tollhouse: error: tools[0]: 'add' is not an exposed tool name (server__tool)"
        )
        assert await tollhouse(*conn, "toolsets", "set", "Support", "--tool", "calc__add") == 1
        assert capsys.readouterr().err.startswith("tollhouse: error: name: 'Support' is not a valid name")
        assert await tollhouse(*conn, "toolsets", "set", "s", "--alias", "plus=calc__*") == 1
        assert "an alias names exactly one tool" in capsys.readouterr().err


# --- clients ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_clients_create_prints_the_key_once_then_list_and_revoke(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with admin_api() as (fake, conn):
        assert await tollhouse(*conn, "clients", "create", "ci-bot", "--team", "platform") == 0
        created = capsys.readouterr().out.splitlines()
        assert created[0] == "created client ci-bot (id c_0001, team platform)"
        assert created[1].startswith("  API key: thk_")
        assert created[2] == "Store the credentials now: they are not shown again."
        key = created[1].removeprefix("  API key: ")
        assert fake.bodies == [{"name": "ci-bot", "team": "platform"}]

        assert await tollhouse(*conn, "clients", "list") == 0
        listed = capsys.readouterr().out
        assert listed.splitlines() == [
            "CLIENT ID  NAME    TEAM      KEY PREFIX  CREATED               STATUS",
            f"c_0001     ci-bot  platform  {key[:8]}    2026-11-03 10:22 UTC  active",
        ]
        assert key not in listed

        assert await tollhouse(*conn, "clients", "revoke", "ci-bot") == 0
        assert capsys.readouterr().out == "revoked client ci-bot (c_0001)\n"
        assert await tollhouse(*conn, "clients", "list", "--json") == 0
        assert json.loads(capsys.readouterr().out)["items"][0]["revoked_at"] == "2026-11-03T10:22:00+00:00"


@pytest.mark.anyio
async def test_clients_create_json_prints_exactly_the_created_object(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with admin_api() as (_, conn):
        assert await tollhouse(*conn, "clients", "create", "ci-bot", "--json") == 0

    created = json.loads(capsys.readouterr().out)
    assert set(created) == {"client_id", "name", "team", "key_prefix", "created_at", "revoked_at", "api_key"}
    assert (created["client_id"], created["name"], created["team"]) == ("c_0001", "ci-bot", None)
    assert created["api_key"].startswith(created["key_prefix"])


# --- apply and export ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_apply_of_an_invalid_file_names_the_key_and_sends_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "tollhouse.yaml"
    path.write_text("servers:\n  - name: calc\n    urll: http://x\n", encoding="utf-8")
    async with admin_api() as (fake, conn):
        assert await tollhouse(*conn, "apply", str(path)) == 1
        missing = tmp_path / "missing.yaml"
        assert await tollhouse(*conn, "apply", str(missing)) == 1

    assert capsys.readouterr().err.splitlines() == [
        f"tollhouse: error: {path}: servers[0].urll: unknown key (did you mean 'url'?)",
        f"tollhouse: error: {missing}: cannot read the file: No such file or directory",
    ]
    assert fake.requests == []


@pytest.mark.anyio
async def test_apply_creates_then_is_idempotent_and_prints_new_keys_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "tollhouse.yaml"
    path.write_text(CONFIG, encoding="utf-8")
    async with admin_api() as (fake, conn):
        assert await tollhouse(*conn, "apply", str(path)) == 0
        first = capsys.readouterr()
        assert await tollhouse(*conn, "apply", str(path)) == 0
        second = capsys.readouterr()

    lines = first.out.splitlines()
    assert lines[:5] == [
        "created   server/calc",
        "created   server/files",
        "created   toolset/support",
        "created   client/ci-bot",
        f"applied {path}: 4 created, 0 updated, 0 deleted, 0 unchanged",
    ]
    assert lines[5] == "client ci-bot (id c_0001):"
    assert lines[6].startswith("  API key: thk_")
    assert lines[7] == "Store the credentials now: they are not shown again."
    assert first.err == ""
    assert second.out == f"applied {path}: 0 created, 0 updated, 0 deleted, 4 unchanged\n"
    assert fake.bodies[0]["prune"] is False
    assert fake.bodies[0]["config"]["toolsets"] == [{"name": "support", "tools": ["calc__add"]}]
    assert fake.servers["files"].env == {"ROOT": "./data"}
    assert fake.toolsets["support"].tools == ("calc__add",)


@pytest.mark.anyio
async def test_apply_prune_deletes_what_the_file_omits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "tollhouse.yaml"
    path.write_text(
        "servers: [{name: calc, url: 'http://x', approval: manual}]\nwhen: 2026-11-03\n", encoding="utf-8"
    )
    async with admin_api() as (fake, conn):
        await tollhouse(*conn, "servers", "add", "calc", "--url", "http://x")
        await tollhouse(*conn, "servers", "add", "old", "--url", "http://y")
        capsys.readouterr()

        assert await tollhouse(*conn, "apply", str(path), "--prune", "--json") == 0

    result = json.loads(capsys.readouterr().out)
    assert (result["updated"], result["deleted"]) == (["server/calc"], ["server/old"])
    assert fake.bodies[-1]["config"]["when"] == "2026-11-03"
    assert fake.bodies[-1]["prune"] is True
    assert list(fake.servers) == ["calc"]


@pytest.mark.anyio
async def test_export_writes_yaml_that_loads_back_to_the_same_configuration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "tollhouse.yaml"
    source.write_text(CONFIG, encoding="utf-8")
    out = tmp_path / "exported.yaml"
    async with admin_api(public_url="https://gw.example") as (_, conn):
        assert await tollhouse(*conn, "apply", str(source)) == 0
        capsys.readouterr()
        assert await tollhouse(*conn, "export") == 0
        exported = capsys.readouterr().out
        assert await tollhouse(*conn, "export", "--out", str(out)) == 0
        assert capsys.readouterr().out == ""

    assert out.read_text(encoding="utf-8") == exported
    again = load_config(exported)
    original = load_config(CONFIG)
    assert again.gateway.public_url == "https://gw.example"
    assert again.servers == original.servers
    assert again.clients == original.clients
    assert again.toolsets == original.toolsets
    assert again.servers[0] == Upstream(
        name="calc", url="http://127.0.0.1:9001/mcp", auth=UpstreamAuth(type="bearer", token_env="CALC_TOKEN")
    )
