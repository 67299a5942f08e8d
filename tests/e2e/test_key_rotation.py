"""`keys rotate` keeps live tokens valid and signs new ones with the new key (`tollhouse token`)."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest
from joserfc import jws
from mcp.types import TextContent

from tests.e2e.test_cli import run_cli
from tests.e2e.test_oauth_mcp_client import gateway_with_echo
from tests.harness import ADMIN_TOKEN, Gateway

pytestmark = pytest.mark.anyio


def kid_of(token: str) -> str:
    kid: str = jws.extract_compact(token.encode()).protected["kid"]
    return kid


async def echo(gateway: Gateway, token: str) -> str:
    async with gateway.client(token, "2026-07-28") as client:
        result = await client.call_tool("echo__echo", {"text": "rotated"})
    content = result.content[0]
    assert isinstance(content, TextContent)
    return content.text


async def test_rotation_keeps_live_tokens_and_signs_new_ones_with_the_new_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with gateway_with_echo(tmp_path) as gw:
        client = (await gw.admin.post("/clients", json={"name": "ci-bot", "team": "platform"})).json()
        token_cmd = [
            "--url",
            gw.base_url,
            "token",
            "--client-id",
            client["client_id"],
            "--client-secret",
            client["client_secret"],
        ]
        code, out, err = await run_cli(capsys, *token_cmd)
        assert code == 0, err
        before = out.strip()
        async with httpx2.AsyncClient(base_url=gw.base_url, trust_env=False) as http:
            first_jwks = (await http.get("/oauth/jwks.json")).json()["keys"]
            assert [k["kid"] for k in first_jwks] == [kid_of(before)]

            code, out, err = await run_cli(
                capsys, "--url", gw.base_url, "--token", ADMIN_TOKEN, "keys", "rotate"
            )
            assert code == 0, err
            after_jwks = (await http.get("/oauth/jwks.json")).json()["keys"]
        code, out, err = await run_cli(capsys, *token_cmd)
        assert code == 0, err
        after = out.strip()

        old_kid, new_kid = kid_of(before), kid_of(after)
        assert old_kid != new_kid
        assert [k["kid"] for k in after_jwks] == [new_kid, old_kid]
        # The token from before the rotation still works, and so does the new one.
        assert await echo(gw, before) == "rotated"
        assert await echo(gw, after) == "rotated"

        # A wrong secret or an unknown client: the CLI says the request was refused.
        code, _, err = await run_cli(
            capsys,
            "--url",
            gw.base_url,
            "token",
            "--client-id",
            client["client_id"],
            "--client-secret",
            "nope",
        )
        assert code == 1 and "refused" in err and client["client_secret"] not in err
