"""The scripted example agent succeeds through tollhouse in both eras."""

from __future__ import annotations

from pathlib import Path

import pytest

from examples.agents.scripted_agent import run_agent
from examples.servers import notes, studio
from tests.harness import running_gateway
from tests.servers import serve

pytestmark = pytest.mark.anyio


async def test_scripted_agent_passes_every_check_through_the_gateway(tmp_path: Path) -> None:
    async with (
        serve(studio.build_app(), path="/mcp") as studio_url,
        serve(notes.build_app(), path="/mcp") as notes_url,
        running_gateway(tmp_path) as gw,
    ):
        await gw.add_server("studio", studio_url)
        await gw.add_server("notes", notes_url)
        key = await gw.create_client("agent")
        lines = await run_agent(gw.mcp_url, key, "both")
        assert any("notes__list_notes" in line for line in lines)
        assert any("studio__add" in line for line in lines)
