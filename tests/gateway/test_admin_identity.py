"""Users, teams and roles: the admin API by role, revocation of people, and the CLI for bootstrap."""

from __future__ import annotations

import io
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from pydantic import SecretStr

from examples.servers import studio
from tests.e2e.test_cli import run_cli
from tests.harness import ADMIN_TOKEN, Gateway, initialize_request, running_gateway
from tests.servers import serve
from tollhouse.auth.keyring import KeyRing, format_secret_key
from tollhouse.auth.tokens import TokenIssuer

pytestmark = pytest.mark.anyio

PASSWORD = "correct horse battery staple"


@dataclass
class Setup:
    gw: Gateway
    http: httpx2.AsyncClient
    issuer: TokenIssuer
    ring: KeyRing

    def user_token(self, subject: str, roles: tuple[str, ...] = (), *, kind: str = "user") -> str:
        return self.issuer.mint(
            subject=subject,
            client_id="console",
            audience=self.gw.base_url,
            scope="mcp a2a",
            kind=kind,
            roles=roles,
        ).token

    async def admin_as(self, token: str, method: str, path: str, body: Any = None) -> httpx2.Response:
        return await self.http.request(
            method,
            f"{self.gw.base_url}/admin/api/v1{path}",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        )


@asynccontextmanager
async def identity_gateway(tmp_path: Path) -> AsyncIterator[Setup]:
    ring = KeyRing.generate()
    kid, key = ring.masters[0]
    async with (
        serve(studio.build_app(), path="/mcp") as studio_url,
        running_gateway(tmp_path, secret_keys=SecretStr(format_secret_key(kid, key))) as gw,
        httpx2.AsyncClient(trust_env=False, timeout=30) as http,
    ):
        await gw.add_server("studio", studio_url)
        yield Setup(gw, http, TokenIssuer(gw.base_url, ring), ring)


async def test_users_and_teams_are_managed_with_validation(tmp_path: Path) -> None:
    async with identity_gateway(tmp_path) as s:
        admin = s.gw.admin
        assert (await admin.post("/teams", json={"name": "platform"})).status_code == 201
        assert (await admin.post("/teams", json={"name": "platform"})).status_code == 409
        assert (await admin.post("/teams", json={"name": "Bad Name"})).status_code == 400
        refused = [
            {"name": "alice", "password": "short"},
            {"name": "alice", "password": PASSWORD, "roles": ["root"]},
            {"name": "alice", "password": PASSWORD, "teams": ["nowhere"]},
            {"name": "bad name", "password": PASSWORD},
        ]
        for body in refused:
            response = await admin.post("/users", json=body)
            assert response.status_code == 400, body
            assert response.headers["content-type"] == "application/problem+json"
        created = await admin.post(
            "/users", json={"name": "alice", "password": PASSWORD, "roles": ["viewer"], "teams": ["platform"]}
        )
        assert created.status_code == 201
        user = created.json()
        assert user["has_password"] is True
        assert "password" not in json.dumps(user).replace("has_password", "")
        assert user["roles"] == ["viewer"] and user["teams"] == ["platform"]
        patched = await admin.patch("/users/alice", json={"roles": ["approver", "viewer"]})
        assert patched.json()["roles"] == ["approver", "viewer"]
        assert (await admin.patch("/users/alice", json={"colour": "red"})).status_code == 400
        assert (await admin.get("/users/nobody")).status_code == 404
        assert [u["name"] for u in (await admin.get("/users")).json()["items"]] == ["alice"]


async def test_the_admin_api_is_authorized_by_role_and_never_by_client_credentials(tmp_path: Path) -> None:
    async with identity_gateway(tmp_path) as s:
        viewer = s.user_token("vera", ("viewer",))
        auditor = s.user_token("aud", ("auditor",))
        admin = s.user_token("ada", ("admin",))
        nobody = s.user_token("nora")
        machine = s.user_token("c_bot", ("admin",), kind="client")
        api_key = (await s.gw.admin.post("/clients", json={"name": "bot"})).json()["api_key"]

        assert (await s.admin_as(viewer, "GET", "/servers")).status_code == 200
        assert (await s.admin_as(viewer, "POST", "/teams", {"name": "x"})).status_code == 403
        assert (await s.admin_as(viewer, "GET", "/auth/failures")).status_code == 403
        assert (await s.admin_as(auditor, "GET", "/auth/failures")).status_code == 200
        assert (await s.admin_as(admin, "POST", "/teams", {"name": "x"})).status_code == 201
        assert (await s.admin_as(nobody, "GET", "/servers")).status_code == 403
        # A client credential never reaches the admin API, whatever roles its token claims.
        assert (await s.admin_as(machine, "GET", "/servers")).status_code == 403
        assert (await s.admin_as(api_key, "GET", "/servers")).status_code == 403
        # A user token for an MCP endpoint (another audience) is not an admin credential.
        narrow = s.issuer.mint(
            subject="ada",
            client_id="console",
            audience=s.gw.mcp_url,
            scope="mcp",
            kind="user",
            roles=("admin",),
        ).token
        assert (await s.admin_as(narrow, "GET", "/servers")).status_code == 401


async def test_disabling_or_removing_a_user_revokes_their_tokens_at_once(tmp_path: Path) -> None:
    async with identity_gateway(tmp_path) as s:
        for name in ("alice", "bob"):
            assert (
                await s.gw.admin.post("/users", json={"name": name, "password": PASSWORD})
            ).status_code == 201
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
        }
        init = initialize_request()

        async def status(token: str) -> int:
            response = await s.http.post(
                s.gw.mcp_url, json=init, headers={**headers, "Authorization": f"Bearer {token}"}
            )
            return response.status_code

        alice, bob = s.user_token("alice"), s.user_token("bob")
        assert await status(alice) == 200 and await status(bob) == 200
        assert (await s.gw.admin.patch("/users/alice", json={"disabled": True})).status_code == 200
        assert await status(alice) == 401
        assert (await s.gw.admin.delete("/users/bob")).status_code == 204
        assert await status(bob) == 401
        # Re-enabled, alice signs in again: a token issued from now on works.
        assert (await s.gw.admin.patch("/users/alice", json={"disabled": False})).status_code == 200
        # Revocation is by issue time (whole seconds): a token issued after it works again.
        fresh = TokenIssuer(s.gw.base_url, s.ring, clock=lambda: time.time() + 2).mint(
            subject="alice", client_id="console", audience=s.gw.mcp_url, scope="mcp", kind="user"
        )
        assert await status(fresh.token) == 200


async def test_users_and_teams_through_the_cli_with_the_password_on_stdin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with identity_gateway(tmp_path) as s:
        g = ["--url", s.gw.base_url, "--token", ADMIN_TOKEN]
        code, out, err = await run_cli(capsys, *g, "teams", "create", "platform", "--json")
        assert code == 0, err
        assert json.loads(out)["name"] == "platform"
        monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
        code, out, err = await run_cli(
            capsys, *g, "users", "create", "root", "--role", "admin", "--team", "platform", "--json"
        )
        assert code == 0, err
        created = json.loads(out)
        assert created["roles"] == ["admin"] and created["has_password"] is True
        assert PASSWORD not in out + err
        code, out, _ = await run_cli(capsys, *g, "users", "list")
        assert code == 0 and "root" in out and "admin" in out
        code, out, _ = await run_cli(capsys, *g, "users", "update", "root", "--disable")
        assert code == 0 and "disabled: yes" in out
        code, out, err = await run_cli(capsys, *g, "users", "update", "root")
        assert code == 2
        code, out, _ = await run_cli(capsys, *g, "teams", "list", "--json")
        assert [t["name"] for t in json.loads(out)["items"]] == ["platform"]
        monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
        code, _, err = await run_cli(capsys, *g, "users", "create", "nopass")
        assert code == 1 and "no password" in err


async def test_apply_creates_teams_and_scoped_clients_and_export_writes_them_back(tmp_path: Path) -> None:
    async with identity_gateway(tmp_path) as s:
        config = {
            "teams": [{"name": "platform"}, {"name": "finance", "description": "Pays"}],
            "clients": [{"name": "ci-bot", "team": "platform", "scopes": ["calc:write"]}],
        }
        first = (await s.gw.admin.post("/config/apply", json={"config": config})).json()
        assert {"team/platform", "team/finance", "client/ci-bot"} <= set(first["created"])
        assert first["clients"][0]["client_secret"].startswith("ths_")
        again = (await s.gw.admin.post("/config/apply", json={"config": config})).json()
        assert again["created"] == [] and {"team/platform", "team/finance"} <= set(again["unchanged"])
        assert [t["name"] for t in (await s.gw.admin.get("/teams")).json()["items"]] == [
            "finance",
            "platform",
        ]
        exported = (await s.gw.admin.get("/config/export")).json()
        assert exported["teams"] == [{"name": "finance", "description": "Pays"}, {"name": "platform"}]
        assert exported["clients"] == [{"name": "ci-bot", "team": "platform", "scopes": ["calc:write"]}]
        assert "ths_" not in str(exported) and "thk_" not in str(exported)
