"""The scripted agent's pieces that need no gateway: its client configuration and command line."""

from __future__ import annotations

import json

import pytest

from examples.agents import scripted_agent
from examples.agents.scripted_agent import client_config, parse_args, run_agent


def test_client_config_is_a_ready_to_paste_http_entry() -> None:
    config = client_config("http://127.0.0.1:8000/mcp", "tok-123")

    assert config == {
        "mcpServers": {
            "tollhouse": {
                "type": "http",
                "url": "http://127.0.0.1:8000/mcp",
                "headers": {"Authorization": "Bearer tok-123"},
            }
        }
    }
    assert json.loads(json.dumps(config)) == config


def test_agent_cli_defaults_to_both_eras_and_the_example_server_ids() -> None:
    args = parse_args(["--url", "http://gw/mcp", "--token", "t"])

    assert (args.url, args.token, args.mode, args.studio, args.notes) == (
        "http://gw/mcp",
        "t",
        "both",
        "studio",
        "notes",
    )
    assert not args.print_config


def test_agent_cli_accepts_an_era_and_server_ids() -> None:
    args = parse_args(
        ["--url", "u", "--token", "t", "--mode", "2026-07-28", "--studio", "studio-b", "--notes", "notes-b"]
    )

    assert (args.mode, args.studio, args.notes) == ("2026-07-28", "studio-b", "notes-b")


@pytest.mark.parametrize(
    "argv",
    [
        ["--url", "u"],
        ["--token", "t"],
        ["--url", "u", "--token", "t", "--mode", "2025-11-25"],
    ],
)
def test_agent_cli_rejects_missing_or_bad_arguments(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(argv)

    assert exited.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_agent_cli_prints_the_client_config(capsys: pytest.CaptureFixture[str]) -> None:
    code = scripted_agent.main(["--url", "http://gw/mcp", "--token", "t", "--print-config"])

    assert code == 0
    assert json.loads(capsys.readouterr().out) == client_config("http://gw/mcp", "t")


@pytest.mark.anyio
async def test_run_agent_rejects_an_unknown_mode() -> None:
    with pytest.raises(ValueError, match="mode"):
        await run_agent("http://127.0.0.1:1/mcp", "t", "2025-11-25")
