"""Teams, users and clients in the console: lists for every role, changes for admins only, secrets once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.console import add_person, csrf_of, signed_in
from tests.harness import Gateway, initialize_request, running_gateway

pytestmark = pytest.mark.anyio

SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(1)>"
NEW_PASSWORD = "a long and unguessable passphrase"


async def _items(gw: Gateway, path: str) -> list[dict[str, Any]]:
    response = await gw.admin.get(path)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def _initialize(gw: Gateway, key: str) -> int:
    async with httpx2.AsyncClient(trust_env=False, timeout=30) as http:
        response = await http.post(
            gw.mcp_url,
            json=initialize_request(),
            headers={"Authorization": f"Bearer {key}", "Accept": "application/json, text/event-stream"},
        )
        return response.status_code


async def test_an_admin_creates_and_deletes_teams(tmp_path: Path) -> None:
    async with running_gateway(tmp_path) as gw:
        await add_person(gw, "ada", "admin")
        async with signed_in(gw, "ada") as browser:
            page = await browser.get("/ui/identity")
            assert page.status_code == 200, page.text
            assert 'data-testid="team-form"' in page.text
            csrf = csrf_of(page.text)
            created = await browser.post(
                "/ui/identity/teams", data={"name": "support", "description": "help desk", "csrf": csrf}
            )
            assert created.status_code == 303 and created.headers["location"] == "/ui/identity"
            assert [(t["name"], t["description"]) for t in await _items(gw, "/teams")] == [
                ("support", "help desk")
            ]
            listed = await browser.get("/ui/identity")
            assert "help desk" in listed.text and "Team &#39;support&#39; created." in listed.text

            again = await browser.post("/ui/identity/teams", data={"name": "support", "csrf": csrf})
            assert again.status_code == 409 and "already exists" in again.text
            bad = await browser.post("/ui/identity/teams", data={"name": "Not OK", "csrf": csrf})
            assert (
                bad.status_code == 400
                and 'value="Not OK"' in bad.text
                and 'data-testid="team-error"' in bad.text
            )

            deleted = await browser.post("/ui/identity/teams/support/delete", data={"csrf": csrf})
            assert deleted.status_code == 303
            assert await _items(gw, "/teams") == []


async def test_an_admin_creates_changes_and_deletes_users(tmp_path: Path) -> None:
    async with running_gateway(tmp_path) as gw:
        await add_person(gw, "ada", "admin")
        assert (await gw.admin.post("/teams", json={"name": "support"})).status_code == 201
        assert (await gw.admin.post("/teams", json={"name": "platform"})).status_code == 201
        async with signed_in(gw, "ada") as browser:
            page = await browser.get("/ui/identity")
            assert 'type="password" name="password"' in page.text
            for role in ("admin", "approver", "auditor", "viewer"):
                assert f'name="roles" value="{role}"' in page.text
            csrf = csrf_of(page.text)
            form = {
                "name": "bea",
                "display_name": "Bea Smith",
                "password": NEW_PASSWORD,
                "roles": ["viewer", "auditor"],
                "teams": ["support"],
                "csrf": csrf,
            }
            created = await browser.post("/ui/identity/users", data=form)
            assert created.status_code == 303, created.text
            (bea,) = [u for u in await _items(gw, "/users") if u["name"] == "bea"]
            assert bea["display_name"] == "Bea Smith" and bea["roles"] == ["auditor", "viewer"]
            assert bea["teams"] == ["support"] and bea["has_password"] and not bea["disabled"]

            duplicate = await browser.post("/ui/identity/users", data=form)
            assert duplicate.status_code == 409 and "already exists" in duplicate.text
            assert NEW_PASSWORD not in duplicate.text  # never shown back
            assert 'value="Bea Smith"' in duplicate.text

            async with signed_in(gw, "bea", NEW_PASSWORD) as bea_browser:
                assert (await bea_browser.get("/ui/identity")).status_code == 200

            user_page = await browser.get("/ui/identity/users/bea")
            assert user_page.status_code == 200 and 'data-testid="user-edit-form"' in user_page.text
            assert NEW_PASSWORD not in user_page.text
            changed = await browser.post(
                "/ui/identity/users/bea",
                data={
                    "display_name": "Bea S.",
                    "roles": ["approver"],
                    "teams": ["platform", "support"],
                    "disabled": "on",
                    "csrf": csrf,
                },
            )
            assert changed.status_code == 303 and changed.headers["location"] == "/ui/identity/users/bea"
            bea = (await gw.admin.get("/users/bea")).json()
            assert bea["roles"] == ["approver"] and bea["teams"] == ["platform", "support"]
            assert bea["disabled"] and bea["display_name"] == "Bea S."
            refused = await browser.post(
                "/ui/identity/users/bea", data={"roles": ["root"], "display_name": "x", "csrf": csrf}
            )
            assert refused.status_code == 400 and "unknown role" in refused.text

            deleted = await browser.post("/ui/identity/users/bea/delete", data={"csrf": csrf})
            assert deleted.status_code == 303
            assert (await gw.admin.get("/users/bea")).status_code == 404


async def test_a_new_clients_secrets_are_shown_once(tmp_path: Path) -> None:
    async with running_gateway(tmp_path) as gw:
        await add_person(gw, "ada", "admin")
        async with signed_in(gw, "ada") as browser:
            csrf = csrf_of((await browser.get("/ui/identity")).text)
            created = await browser.post(
                "/ui/identity/clients",
                data={"name": "ci-bot", "team": "platform", "scopes": "", "csrf": csrf},
            )
            assert created.status_code == 201, created.text
            assert created.headers["cache-control"] == "no-store"
            assert "will not be shown again" in created.text
            (client,) = await _items(gw, "/clients")
            assert client["name"] == "ci-bot" and client["team"] == "platform"
            secret = _between(created.text, 'data-testid="client-secret">', "<")
            key = _between(created.text, 'data-testid="api-key">', "<")
            assert secret.startswith("ths_") and key.startswith("thk_")
            assert await _initialize(gw, key) == 200  # the key shown is the client's

            listed = await browser.get("/ui/identity")
            assert client["client_id"] in listed.text and "ci-bot" in listed.text
            assert secret not in listed.text and key not in listed.text
            assert 'data-testid="revoke-client"' in listed.text

            duplicate = await browser.post("/ui/identity/clients", data={"name": "ci-bot", "csrf": csrf})
            assert duplicate.status_code == 409 and 'data-testid="client-error"' in duplicate.text

            revoked = await browser.post(
                f"/ui/identity/clients/{client['client_id']}/revoke", data={"csrf": csrf}
            )
            assert revoked.status_code == 303
            (client,) = await _items(gw, "/clients")
            assert client["revoked_at"] is not None
            assert await _initialize(gw, key) == 401
            after = await browser.get("/ui/identity")
            assert "revoked" in after.text and 'data-testid="revoke-client"' not in after.text


async def test_other_roles_see_the_lists_without_forms_and_cannot_change_anything(tmp_path: Path) -> None:
    async with running_gateway(tmp_path) as gw:
        await add_person(gw, "vic", "viewer", "auditor", "approver")
        assert (await gw.admin.post("/teams", json={"name": "support"})).status_code == 201
        key = await gw.create_client("ci-bot")
        (client,) = await _items(gw, "/clients")
        async with signed_in(gw, "vic") as browser:
            page = await browser.get("/ui/identity")
            assert page.status_code == 200
            assert "support" in page.text and "ci-bot" in page.text and ">vic<" in page.text
            assert '<form method="post" action="/ui/identity' not in page.text
            assert 'type="password"' not in page.text
            user_page = await browser.get("/ui/identity/users/vic")
            assert user_page.status_code == 200 and "user-edit-form" not in user_page.text
            csrf = csrf_of(page.text)
            attempts = [
                ("/ui/identity/teams", {"name": "mine"}),
                ("/ui/identity/teams/support/delete", {}),
                ("/ui/identity/users", {"name": "eve", "roles": "admin", "password": NEW_PASSWORD}),
                ("/ui/identity/users/vic", {"roles": "admin"}),
                ("/ui/identity/users/vic/delete", {}),
                ("/ui/identity/clients", {"name": "sneaky"}),
                (f"/ui/identity/clients/{client['client_id']}/revoke", {}),
            ]
            for path, data in attempts:
                assert (await browser.post(path, data={**data, "csrf": csrf})).status_code == 403, path
        assert [t["name"] for t in await _items(gw, "/teams")] == ["support"]
        assert [u["name"] for u in await _items(gw, "/users")] == ["vic"]
        assert (await gw.admin.get("/users/vic")).json()["roles"] == ["approver", "auditor", "viewer"]
        assert [(c["name"], c["revoked_at"]) for c in await _items(gw, "/clients")] == [("ci-bot", None)]
        assert await _initialize(gw, key) == 200


async def test_changes_without_the_csrf_token_are_refused(tmp_path: Path) -> None:
    async with running_gateway(tmp_path) as gw:
        await add_person(gw, "ada", "admin")
        async with signed_in(gw, "ada") as browser:
            assert (await browser.post("/ui/identity/teams", data={"name": "support"})).status_code == 403
            assert (await browser.post("/ui/identity/clients", data={"name": "ci-bot"})).status_code == 403
            assert (await browser.post("/ui/identity/users/ada", data={"roles": "viewer"})).status_code == 403
        assert await _items(gw, "/teams") == [] and await _items(gw, "/clients") == []
        assert (await gw.admin.get("/users/ada")).json()["roles"] == ["admin"]


async def test_hostile_names_and_descriptions_are_shown_as_text(tmp_path: Path) -> None:
    async with running_gateway(tmp_path) as gw:
        await add_person(gw, "ada", "admin")
        assert (
            await gw.admin.post("/teams", json={"name": "support", "description": SCRIPT})
        ).status_code == 201
        response = await gw.admin.post("/users", json={"name": "mallory", "display_name": IMG, "roles": []})
        assert response.status_code == 201
        async with signed_in(gw, "ada") as browser:
            for path in ("/ui/identity", "/ui/identity/users/mallory"):
                page = await browser.get(path)
                assert SCRIPT not in page.text and IMG not in page.text, path
                assert "&lt;img src=x onerror=alert(1)&gt;" in page.text, path
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in (await browser.get("/ui/identity")).text
            csrf = csrf_of(page.text)
            refused = await browser.post("/ui/identity/teams", data={"name": SCRIPT, "csrf": csrf})
            assert refused.status_code == 400 and SCRIPT not in refused.text


def _between(text: str, start: str, end: str) -> str:
    head = text.index(start) + len(start)
    return text[head : text.index(end, head)].strip()
