"""`tollhouse agents …` against a real gateway and the example echo agent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from examples.agents.echo_agent import AGENT_CARD_PATH
from tests.e2e.test_cli import run_cli
from tests.gateway.test_admin_agents import card_for, card_server, echo_agent, signing_key
from tests.harness import ADMIN_TOKEN, running_gateway

pytestmark = pytest.mark.anyio


async def test_agents_add_list_show_remove_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with echo_agent() as card_url, running_gateway(tmp_path) as gw:
        g = ["--url", gw.base_url, "--token", ADMIN_TOKEN]
        code, out, err = await run_cli(capsys, *g, "agents", "add", "echo", "--card-url", card_url, "--json")
        assert code == 0, err
        added = json.loads(out)
        assert added["name"] == "echo" and added["status"] == "live"
        assert [s["tool"] for s in added["skills"]] == ["echo__echo", "echo__shout"]

        card_file = tmp_path / "card.json"
        card_file.write_text(json.dumps(card_for(card_url.removesuffix(AGENT_CARD_PATH))))
        code, out, err = await run_cli(
            capsys, *g, "agents", "add", "inline", "--card-file", str(card_file), "--no-tools", "--disabled"
        )
        assert code == 0, err
        assert out.startswith("added agent inline: disabled")

        code, out, err = await run_cli(capsys, *g, "agents", "list", "--json")
        assert code == 0, err
        listed = {a["name"]: a for a in json.loads(out)["items"]}
        assert sorted(listed) == ["echo", "inline"]
        assert listed["inline"]["inline_card"] is True and listed["inline"]["tools"] == "none"

        code, out, err = await run_cli(capsys, *g, "agents", "list")
        assert code == 0, err
        header, *rows = out.splitlines()
        assert header.split() == ["NAME", "STATUS", "SKILLS", "ENDPOINT"]
        assert rows[0].split() == ["echo", "live", "echo,", "shout", f"{gw.base_url}/a2a/echo"]
        assert rows[1].split()[:2] == ["inline", "disabled"]

        code, out, err = await run_cli(capsys, *g, "agents", "show", "echo", "--json")
        assert code == 0, err
        shown = json.loads(out)
        assert shown["card_document"]["name"] == "Echo Agent"
        code, out, err = await run_cli(capsys, *g, "agents", "show", "echo")
        assert code == 0, err
        assert "endpoint:" in out and f"{gw.base_url}/a2a/echo" in out
        assert "echo: Echo -> echo__echo" in out

        code, out, err = await run_cli(capsys, *g, "agents", "refresh", "echo")
        assert code == 0, err
        assert out.startswith("refreshed agent echo: live; skills: echo, shout")

        # The servers commands do not see agents.
        code, out, _ = await run_cli(capsys, *g, "servers", "list", "--json")
        assert json.loads(out)["items"] == []

        code, out, err = await run_cli(capsys, *g, "agents", "remove", "echo")
        assert code == 0, err
        assert out.strip() == "removed agent echo"
        code, _, err = await run_cli(capsys, *g, "agents", "show", "echo")
        assert code == 1
        assert err.startswith("tollhouse: error:") and "echo" in err

        # A refusal is one line on stderr.
        bad = tmp_path / "bad.json"
        bad.write_text('{"name": "x"}')
        code, _, err = await run_cli(capsys, *g, "agents", "add", "bad", "--card-file", str(bad))
        assert code == 1 and "agent 'bad'" in err
        code, _, err = await run_cli(
            capsys, *g, "agents", "add", "bad", "--card-url", card_url, "--require-signature"
        )
        assert code == 2 and "--jwks-file" in err


async def test_card_diff_approve_and_reject_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    private, jwks = signing_key("k1")
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(jwks))
    async with card_server() as holder, running_gateway(tmp_path) as gw:
        g = ["--url", gw.base_url, "--token", ADMIN_TOKEN]
        code, out, err = await run_cli(
            capsys, *g, "agents", "add", "mutable", "--card-url", holder.card_url, "--approval", "manual"
        )
        assert code == 0, err
        assert out.startswith("added agent mutable: live (held: card pending)")

        code, out, err = await run_cli(capsys, *g, "agents", "diff", "mutable")
        assert code == 0, err
        assert "status:" in out and "pending (agent held)" in out
        assert '+  "name": "Echo Agent",' in out.splitlines()
        code, out, err = await run_cli(capsys, *g, "agents", "approve", "mutable", "--json")
        assert code == 0, err
        assert json.loads(out)["status"] == "approved" and json.loads(out)["held"] is False

        holder.card = card_for(holder.base_url, description="Changed.")
        code, out, err = await run_cli(capsys, *g, "agents", "refresh", "mutable", "--json")
        assert code == 0, err
        assert json.loads(out)["held"] is True
        code, out, err = await run_cli(capsys, *g, "agents", "diff", "mutable")
        assert code == 0, err
        assert '+  "description": "Changed.",' in out.splitlines()
        code, out, err = await run_cli(capsys, *g, "agents", "reject", "mutable")
        assert code == 0, err
        assert out.startswith("rejected the card of agent mutable")
        assert "stays held" in out

        # A signature requirement with keys that do not sign the card: registered, but down.
        code, out, err = await run_cli(
            capsys,
            *g,
            "agents",
            "add",
            "locked",
            "--card-url",
            holder.card_url,
            "--require-signature",
            "--jwks-file",
            str(jwks_file),
            "--json",
        )
        assert code == 0, err
        locked = json.loads(out)
        assert locked["status"] == "down" and "signature" in locked["last_error"]
        assert private["d"] not in out
