"""The console's agent pages: registered A2A agents, one agent's card and skills, and card approval.

Agents are the example echo agent or a card served from a mutable holder
(tests/gateway/test_admin_agents.py); `POST /agents/{name}/refresh` returns once the new card
is live, so a test changes the card and refreshes instead of waiting.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx2
import pytest

from tests.console import add_person, csrf_of, signed_in
from tests.gateway.test_admin_agents import add_agent, card_for, card_server, echo_agent
from tests.harness import running_gateway

pytestmark = pytest.mark.anyio

PAYLOAD = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'


async def follow(browser: httpx2.AsyncClient, response: httpx2.Response) -> httpx2.Response:
    assert response.status_code == 303, response.text
    return await browser.get(response.headers["location"])


def sha_of(html: str) -> str:
    found = re.search(r'name="sha256" value="([0-9a-f]{64})"', html)
    assert found, "no decision form in the page"
    return found.group(1)


async def test_every_role_reads_the_agents_and_admins_refresh_them(tmp_path: Path) -> None:
    async with echo_agent() as card_url, running_gateway(tmp_path) as gw:
        added = await add_agent(gw, "echo", card_url=card_url)
        await add_person(gw, "vic", "viewer")
        await add_person(gw, "ada", "admin")
        async with signed_in(gw, "vic") as viewer:
            listing = await viewer.get("/ui/agents")
            assert listing.status_code == 200, listing.text
            row = re.search(r'<tr data-testid="agent-row">(.*?)</tr>', listing.text, re.S)
            assert row and 'href="/ui/agents/echo"' in row.group(1) and card_url in row.group(1)
            assert "live" in row.group(1) and "approved" in row.group(1)
            assert re.search(r'<td class="num">2</td>', row.group(1))

            page = await viewer.get("/ui/agents/echo")
            assert page.status_code == 200, page.text
            assert len(re.findall(r'data-testid="skill-row"', page.text)) == 2
            assert 'href="/ui/tools/echo__echo"' in page.text
            assert "Echo Agent" in page.text and "0.1.0" in page.text and "JSONRPC" in page.text
            assert 'data-testid="card-json"' in page.text
            pinned = re.search(r'data-testid="pinned-hash">([0-9a-f]{64})<', page.text)
            assert pinned and pinned.group(1) == added["card_pin"]["approved_sha256"]
            assert 'data-testid="refresh-agent"' not in page.text and 'data-testid="review"' not in page.text
            assert (await viewer.get("/ui/agents/nope")).status_code == 404
            refused = await viewer.post("/ui/agents/echo/refresh", data={"csrf": csrf_of(page.text)})
            assert refused.status_code == 403
        async with signed_in(gw, "ada") as admin:
            page = await admin.get("/ui/agents/echo")
            assert 'data-testid="refresh-agent"' in page.text
            refreshed = await follow(
                admin, await admin.post("/ui/agents/echo/refresh", data={"csrf": csrf_of(page.text)})
            )
            assert "Agent echo is refreshed." in refreshed.text


async def test_a_changed_card_is_reviewed_as_text_and_approved_by_an_approver(tmp_path: Path) -> None:
    async with card_server() as holder, running_gateway(tmp_path) as gw:
        first = await add_agent(gw, "echo", card_url=holder.card_url)
        await add_person(gw, "ada", "admin")
        await add_person(gw, "al", "approver")
        changed = card_for(holder.base_url, description="Now sends your text elsewhere. " + PAYLOAD)
        changed["skills"][0]["description"] = PAYLOAD
        holder.card = changed
        async with signed_in(gw, "ada") as admin:
            page = await admin.get("/ui/agents/echo")
            refreshed = await follow(
                admin, await admin.post("/ui/agents/echo/refresh", data={"csrf": csrf_of(page.text)})
            )
            assert "Its card waits for approval." in refreshed.text
        async with signed_in(gw, "al") as browser:
            listing = await browser.get("/ui/tools")
            assert 'href="/ui/agents/echo"' in listing.text and "agent card" in listing.text
            agents = await browser.get("/ui/agents")
            assert "held" in agents.text and "changed" in agents.text

            page = await browser.get("/ui/agents/echo")
            assert "<script>window.__pwned" not in page.text and "<img src=x" not in page.text
            assert page.text.count("&lt;script&gt;window.__pwned=1&lt;/script&gt;") >= 3  # facts, skill, card
            old = re.search(r'data-testid="diff-old">(.*?)</pre>', page.text, re.S)
            new = re.search(r'data-testid="diff-new">(.*?)</pre>', page.text, re.S)
            assert old and "Echoes what it is sent." in old.group(1)
            assert new and "Now sends your text elsewhere." in new.group(1)
            assert 'data-testid="approve-card"' in page.text and 'data-testid="reject-card"' in page.text
            assert 'data-testid="findings"' in page.text
            pinned = re.search(r'data-testid="pinned-hash">([0-9a-f]{64})<', page.text)
            assert pinned and pinned.group(1) == first["card_pin"]["sha256"]

            approved = await browser.post(
                "/ui/agents/echo/card/approve", data={"csrf": csrf_of(page.text), "sha256": sha_of(page.text)}
            )
            after = await follow(browser, approved)
            assert "The card of agent echo is approved." in after.text
            assert 'data-testid="approve-card"' not in after.text
        agent = (await gw.admin.get("/agents/echo")).json()
        assert agent["held"] is False
        assert (agent["card_pin"]["status"], agent["card_pin"]["decided_by"]) == ("approved", "al")


async def test_only_approvers_decide_on_cards_and_never_without_the_csrf_token(tmp_path: Path) -> None:
    async with card_server() as holder, running_gateway(tmp_path) as gw:
        await add_agent(gw, "echo", card_url=holder.card_url)
        holder.card = card_for(holder.base_url, description="Changed.")
        assert (await gw.admin.post("/agents/echo/refresh")).status_code == 200
        sha = (await gw.admin.get("/agents/echo/card/diff")).json()["sha256"]
        await add_person(gw, "vic", "viewer")
        await add_person(gw, "al", "approver")
        async with signed_in(gw, "vic") as viewer:
            page = await viewer.get("/ui/agents/echo")
            assert 'data-testid="diff-new"' in page.text and 'data-testid="approve-card"' not in page.text
            for decision in ("approve", "reject"):
                refused = await viewer.post(
                    f"/ui/agents/echo/card/{decision}", data={"csrf": csrf_of(page.text), "sha256": sha}
                )
                assert refused.status_code == 403
        async with signed_in(gw, "al") as approver:
            page = await approver.get("/ui/agents/echo")
            assert 'data-testid="refresh-agent"' not in page.text
            csrf = csrf_of(page.text)
            assert (await approver.post("/ui/agents/echo/refresh", data={"csrf": csrf})).status_code == 403
            assert (
                await approver.post("/ui/agents/echo/card/reject", data={"sha256": sha})
            ).status_code == 403
            assert (await gw.admin.get("/agents/echo")).json()["card_pin"]["status"] == "changed"
            rejected = await follow(
                approver,
                await approver.post("/ui/agents/echo/card/reject", data={"csrf": csrf, "sha256": sha}),
            )
            assert "The card of agent echo is rejected." in rejected.text
            assert (
                'data-testid="approve-card"' in rejected.text
                and 'data-testid="reject-card"' not in rejected.text
            )
        agent = (await gw.admin.get("/agents/echo")).json()
        assert agent["held"] is True and agent["card_pin"]["status"] == "rejected"
