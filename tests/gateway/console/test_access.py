"""The access requests page: an approver sees what an agent asked for and grants or declines it; other
roles see the requests but cannot decide; requesters' text is shown as text.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from examples.servers import studio
from tests.console import add_person, csrf_of, signed_in
from tests.harness import Gateway, running_gateway
from tests.servers import serve
from tollhouse.gateway.disclosure import REQUEST_ACCESS

pytestmark = pytest.mark.anyio

HOSTILE = "<script>alert(1)</script>"


async def ask(gw: Gateway, key: str, name: str, reason: str) -> str:
    async with gw.client(key, "2026-07-28", path="/mcp?disclosure=search") as client:
        result = await client.call_tool(REQUEST_ACCESS, {"name": name, "reason": reason})
    assert result.structured_content is not None
    request_id: str = result.structured_content["request"]
    return request_id


async def test_an_approver_grants_and_declines_from_the_page(tmp_path: Path) -> None:
    async with (
        serve(studio.build_app(), path="/mcp") as studio_url,
        running_gateway(tmp_path, allow_all=False) as gw,
    ):
        await gw.add_server("studio", studio_url)
        key = await gw.create_client("asker", team="research")
        first = await ask(gw, key, "studio__add", HOSTILE)
        second = await ask(gw, key, "studio__echo", "to repeat things")
        await add_person(gw, "ann", "approver")
        async with signed_in(gw, "ann") as browser:
            page = await browser.get("/ui/access")
            assert page.status_code == 200, page.text
            assert HOSTILE not in page.text and "&lt;script&gt;" in page.text
            assert page.text.count('data-testid="pending-request"') == 2
            assert f'action="/ui/access/{first}/grant"' in page.text
            grant = f"/ui/access/{first}/grant"
            assert (await browser.post(grant, data={"duration": "3600"})).status_code == 403  # no CSRF
            done = await browser.post(
                grant, data={"csrf": csrf_of(page.text), "duration": "3600", "scope": "team"}
            )
            assert done.status_code == 303 and done.headers["location"] == "/ui/access"
            shown = (await gw.admin.get(f"/access-requests/{first}")).json()
            assert shown["status"] == "granted" and shown["decided_by"] == "ann" and shown["expires_at"]
            policy = (await gw.admin.get(f"/policies/{shown['policy_id']}")).json()
            assert policy["allow"]["team"] == "research"

            declined = await browser.post(
                f"/ui/access/{second}/decline", data={"csrf": csrf_of(page.text), "note": "not today"}
            )
            assert declined.status_code == 303
            after = await browser.get("/ui/access")
            assert "Declined the request for studio__echo" in after.text
            assert after.text.count('data-testid="decided-request"') == 2 and "not today" in after.text
            again = await browser.post(f"/ui/access/{second}/decline", data={"csrf": csrf_of(after.text)})
            assert again.status_code == 303
            assert "already declined" in (await browser.get("/ui/access")).text


async def test_other_roles_see_requests_but_cannot_decide(tmp_path: Path) -> None:
    async with (
        serve(studio.build_app(), path="/mcp") as studio_url,
        running_gateway(tmp_path, allow_all=False) as gw,
    ):
        await gw.add_server("studio", studio_url)
        key = await gw.create_client("asker")
        request_id = await ask(gw, key, "studio__add", "to add")
        await add_person(gw, "vic", "viewer", "auditor")
        async with signed_in(gw, "vic") as browser:
            page = await browser.get("/ui/access")
            assert page.status_code == 200 and "studio__add" in page.text
            assert "grant-form" not in page.text and "/grant" not in page.text
            refused = await browser.post(f"/ui/access/{request_id}/grant", data={"csrf": csrf_of(page.text)})
            assert refused.status_code == 403
        assert (await gw.admin.get(f"/access-requests/{request_id}")).json()["status"] == "pending"
