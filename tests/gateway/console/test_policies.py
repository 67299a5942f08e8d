"""The policies pages: list, edit with validation, create, delete, by role; and the decision simulator."""

from __future__ import annotations

from html import unescape
from pathlib import Path

import httpx2
import pytest

from tests.console import add_person, csrf_of, signed_in
from tests.harness import Gateway, running_gateway

pytestmark = pytest.mark.anyio

SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(1)>"
SUPPORT_PUBLIC = {
    "id": "support-files-public",
    "description": "support reads public files",
    "allow": {"team": "support", "tools": ["files__read"], "when_arguments": {"path": {"like": "/public/*"}}},
}
NO_ETC = 'forbid(principal, action == Action::"call_tool", resource == Tool::"files__etc");'


async def _policy(gw: Gateway, policy_id: str) -> httpx2.Response:
    return await gw.admin.get(f"/policies/{policy_id}")


async def test_the_list_shows_each_policy_with_its_effect(tmp_path: Path) -> None:
    async with running_gateway(tmp_path) as gw:
        await add_person(gw, "vic", "viewer")
        assert (await gw.admin.put("/policies/support-files-public", json=SUPPORT_PUBLIC)).status_code == 201
        assert (await gw.admin.put("/policies/no-etc", json={"cedar": NO_ETC})).status_code == 201
        async with signed_in(gw, "vic") as browser:
            page = await browser.get("/ui/policies")
            assert page.status_code == 200, page.text
            text = page.text
            for policy_id in ("tests-allow-all", "support-files-public", "no-etc"):
                assert f'href="/ui/policies/{policy_id}"' in text
            assert "support reads public files" in text and ">forbid<" in text and ">permit<" in text
            assert "/ui/policies/simulate" in text
            assert "/ui/policies/new" not in text  # a viewer gets no "New policy"


async def test_an_admin_edits_validates_and_saves_a_policy(tmp_path: Path) -> None:
    async with running_gateway(tmp_path) as gw:
        await add_person(gw, "ada", "admin")
        assert (await gw.admin.put("/policies/no-etc", json={"cedar": NO_ETC})).status_code == 201
        async with signed_in(gw, "ada") as browser:
            page = await browser.get("/ui/policies/no-etc")
            assert page.status_code == 200, page.text
            assert '<textarea name="cedar"' in page.text and 'data-testid="save-policy"' in page.text
            assert 'data-testid="validate-policy"' in page.text and 'data-testid="delete-policy"' in page.text
            assert NO_ETC in unescape(page.text)
            csrf = csrf_of(page.text)

            broken = 'forbid(principal, action == Action::"call_tool", resource == Tool::"x") when { nope };'
            fragment = await browser.post(
                "/ui/policies/no-etc/validate",
                data={"cedar": broken, "description": ""},
                headers={"HX-Request": "true", "HX-Target": "validation", "X-CSRF-Token": csrf},
            )
            assert fragment.status_code == 200, fragment.text
            assert 'data-testid="validation"' in fragment.text and "<html" not in fragment.text
            assert "Not valid" in fragment.text and "no-etc" in fragment.text
            fine = await browser.post(
                "/ui/policies/no-etc/validate",
                data={"cedar": NO_ETC.replace("files__etc", "files__passwd"), "csrf": csrf},
            )
            assert (
                fine.status_code == 200
                and "<html" in fine.text
                and "Valid: the policy set compiles" in fine.text
            )
            assert "files__passwd" in unescape(fine.text)  # the text being edited is kept

            refused = await browser.post(
                "/ui/policies/no-etc", data={"cedar": broken, "description": "kept", "csrf": csrf}
            )
            assert refused.status_code == 400
            assert broken in unescape(refused.text) and 'value="kept"' in refused.text
            assert 'data-testid="validation"' in refused.text and "Not valid" in refused.text
            assert (await _policy(gw, "no-etc")).json()["cedar"].endswith(NO_ETC)

            changed = NO_ETC.replace("files__etc", "files__shadow")
            saved = await browser.post(
                "/ui/policies/no-etc", data={"cedar": changed, "description": "no shadow", "csrf": csrf}
            )
            assert saved.status_code == 303 and saved.headers["location"] == "/ui/policies/no-etc"
            stored = (await _policy(gw, "no-etc")).json()
            assert "files__shadow" in stored["cedar"] and stored["description"] == "no shadow"
            assert stored["updated_by"] == "ada"
            assert "saved" in (await browser.get("/ui/policies/no-etc")).text

            deleted = await browser.post("/ui/policies/no-etc/delete", data={"csrf": csrf})
            assert deleted.status_code == 303 and deleted.headers["location"] == "/ui/policies"
            assert (await _policy(gw, "no-etc")).status_code == 404


async def test_an_admin_creates_a_policy(tmp_path: Path) -> None:
    async with running_gateway(tmp_path) as gw:
        await add_person(gw, "ada", "admin")
        async with signed_in(gw, "ada") as browser:
            page = await browser.get("/ui/policies/new")
            assert (
                page.status_code == 200 and 'name="id"' in page.text and '<textarea name="cedar"' in page.text
            )
            csrf = csrf_of(page.text)
            bad_id = await browser.post(
                "/ui/policies/new", data={"id": "no way", "cedar": NO_ETC, "csrf": csrf}
            )
            assert bad_id.status_code == 400 and "The id must" in bad_id.text
            assert NO_ETC in unescape(bad_id.text)
            taken = await browser.post(
                "/ui/policies/new", data={"id": "tests-allow-all", "cedar": NO_ETC, "csrf": csrf}
            )
            assert taken.status_code == 409 and "already exists" in taken.text
            assert "forbid" not in (await _policy(gw, "tests-allow-all")).json()["cedar"]
            invalid = await browser.post(
                "/ui/policies/new", data={"id": "no-etc", "cedar": "permit(", "csrf": csrf}
            )
            assert invalid.status_code == 400 and "Not valid" in invalid.text
            assert (await _policy(gw, "no-etc")).status_code == 404
            checked = await browser.post(
                "/ui/policies/new/validate",
                data={"id": "no-etc", "cedar": NO_ETC, "csrf": csrf},
                headers={"HX-Request": "true", "HX-Target": "validation"},
            )
            assert "Valid: the policy set compiles" in checked.text
            created = await browser.post(
                "/ui/policies/new", data={"id": "no-etc", "cedar": NO_ETC, "description": "", "csrf": csrf}
            )
            assert created.status_code == 303 and created.headers["location"] == "/ui/policies/no-etc"
            assert (await _policy(gw, "no-etc")).json()["cedar"].endswith(NO_ETC)


async def test_other_roles_read_policies_but_cannot_change_them(tmp_path: Path) -> None:
    async with running_gateway(tmp_path) as gw:
        await add_person(gw, "vic", "viewer", "auditor", "approver")
        async with signed_in(gw, "vic") as browser:
            page = await browser.get("/ui/policies/tests-allow-all")
            assert page.status_code == 200
            assert "<textarea" not in page.text and 'data-testid="policy-cedar"' in page.text
            assert "save-policy" not in page.text and "delete-policy" not in page.text
            assert (await browser.get("/ui/policies/new")).status_code == 403
            csrf = csrf_of(page.text)
            for path, data in [
                ("/ui/policies/tests-allow-all", {"cedar": "forbid(principal, action, resource);"}),
                ("/ui/policies/tests-allow-all/delete", {}),
                ("/ui/policies/new", {"id": "mine", "cedar": NO_ETC}),
            ]:
                assert (await browser.post(path, data={**data, "csrf": csrf})).status_code == 403, path
            assert (
                (await _policy(gw, "tests-allow-all"))
                .json()["cedar"]
                .strip()
                .endswith("permit(principal, action, resource);")
            )
            assert (await _policy(gw, "mine")).status_code == 404


async def test_changes_without_the_csrf_token_are_refused(tmp_path: Path) -> None:
    async with running_gateway(tmp_path) as gw:
        await add_person(gw, "ada", "admin")
        async with signed_in(gw, "ada") as browser:
            forbid_all = {"cedar": "forbid(principal, action, resource);"}
            assert (await browser.post("/ui/policies/tests-allow-all", data=forbid_all)).status_code == 403
            assert (await browser.post("/ui/policies/tests-allow-all/delete", data={})).status_code == 403
            assert (await browser.post("/ui/policies/simulate", data={"principal": "a"})).status_code == 403
            assert "forbid" not in (await _policy(gw, "tests-allow-all")).json()["cedar"]


async def test_hostile_policy_text_is_shown_as_text(tmp_path: Path) -> None:
    async with running_gateway(tmp_path) as gw:
        await add_person(gw, "ada", "admin")
        cedar = f"// {SCRIPT}\n{NO_ETC}"
        response = await gw.admin.put("/policies/no-etc", json={"cedar": cedar, "description": IMG})
        assert response.status_code == 201, response.text
        async with signed_in(gw, "ada") as browser:
            for path in ("/ui/policies", "/ui/policies/no-etc"):
                page = await browser.get(path)
                assert SCRIPT not in page.text and IMG not in page.text, path
                assert "&lt;img src=x onerror=alert(1)&gt;" in page.text, path
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
            assert "</textarea><script>" not in page.text


async def test_any_role_simulates_a_decision(tmp_path: Path) -> None:
    async with running_gateway(tmp_path, allow_all=False) as gw:
        await add_person(gw, "vic", "viewer")
        assert (await gw.admin.put("/policies/support-files-public", json=SUPPORT_PUBLIC)).status_code == 201
        async with signed_in(gw, "vic") as browser:
            page = await browser.get("/ui/policies/simulate?resource=files__read")
            assert page.status_code == 200 and 'value="files__read"' in page.text
            form = {
                "csrf": csrf_of(page.text),
                "principal_kind": "user",
                "principal": "alice",
                "teams": "support",
                "action": "call_tool",
                "resource_kind": "tool",
                "resource": "files__read",
                "arguments": '{"path": "/public/readme"}',
            }
            allowed = await browser.post("/ui/policies/simulate", data=form)
            assert allowed.status_code == 200, allowed.text
            assert 'data-testid="decision">ALLOW<' in allowed.text
            assert 'href="/ui/policies/support-files-public"' in allowed.text
            assert 'data-testid="explanation">ALLOW User::&#34;alice&#34; call_tool' in allowed.text
            assert "/public/readme" in unescape(allowed.text)  # the form keeps what was asked

            denied = await browser.post(
                "/ui/policies/simulate", data={**form, "arguments": '{"path": "/etc/x"}'}
            )
            assert 'data-testid="decision">DENY<' in denied.text
            outsider = await browser.post("/ui/policies/simulate", data={**form, "teams": ""})
            assert 'data-testid="decision">DENY<' in outsider.text

            for arguments, said in [("{nope", "not valid JSON"), ("[1, 2]", "must be a JSON object")]:
                bad = await browser.post("/ui/policies/simulate", data={**form, "arguments": arguments})
                assert (
                    bad.status_code == 400 and said in bad.text and 'data-testid="decision"' not in bad.text
                )
            unnamed = await browser.post("/ui/policies/simulate", data={**form, "principal": ""})
            assert unnamed.status_code == 400 and "Name the principal" in unnamed.text
            no_server = await browser.post(
                "/ui/policies/simulate", data={**form, "resource_kind": "resource", "resource": "note://x"}
            )
            assert no_server.status_code == 400 and "server" in no_server.text

            hostile = await browser.post(
                "/ui/policies/simulate",
                data={**form, "principal": SCRIPT, "arguments": '{"p": "' + IMG + '"}'},
            )
            assert hostile.status_code == 200
            assert SCRIPT not in hostile.text and IMG not in hostile.text
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in hostile.text


async def test_the_simulator_handles_agents_and_clients(tmp_path: Path) -> None:
    async with running_gateway(tmp_path, allow_all=False) as gw:
        await add_person(gw, "ada", "admin")
        cedar = (
            'permit(principal == Client::"ci-bot", action == Action::"call_agent", '
            'resource == Agent::"helper");'
        )
        assert (await gw.admin.put("/policies/bot-helper", json={"cedar": cedar})).status_code == 201
        async with signed_in(gw, "ada") as browser:
            csrf = csrf_of((await browser.get("/ui/policies/simulate")).text)
            form = {
                "csrf": csrf,
                "principal_kind": "client",
                "principal": "ci-bot",
                "action": "call_agent",
                "resource_kind": "agent",
                "resource": "helper",
            }
            allowed = await browser.post("/ui/policies/simulate", data=form)
            assert 'data-testid="decision">ALLOW<' in allowed.text, allowed.text
            other = await browser.post("/ui/policies/simulate", data={**form, "resource": "stranger"})
            assert 'data-testid="decision">DENY<' in other.text
