"""The built-in authorization server, endpoint by endpoint, over real HTTP on loopback.

Each test mounts `authorization_server_routes` in a bare Starlette app served by
`tests.servers.serve`, with SQLite stores in tmp_path and a clock the test moves. A browser
is an httpx2 client with a cookie jar that fills in the login and consent forms.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx2
import pytest
from argon2 import PasswordHasher
from joserfc import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.servers import loopback_socket, serve
from tollhouse.auth.keyring import KeyRing
from tollhouse.auth.passwords import Passwords
from tollhouse.auth.server import Rate, ThrottleSettings, authorization_server_routes
from tollhouse.auth.tokens import TokenIssuer
from tollhouse.auth.verifiers import hash_secret
from tollhouse.registry.identity_store import SqlIdentityStore
from tollhouse.registry.migrate import create_engine_for, database_url_for, upgrade
from tollhouse.registry.models import ClientRecord, User
from tollhouse.registry.store import SqlRegistryStore

pytestmark = pytest.mark.anyio

PASSWORD = "correct horse battery staple"
CALLBACK = "http://127.0.0.1:9/callback"
MACHINE_SECRET = "machine-secret-" + "x" * 32
FIELD = re.compile(r'name="(txn|csrf)" value="([^"]*)"')


class Clock:
    """Epoch seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class AS:
    """A running authorization server and what the test needs to reach behind it."""

    base: str
    http: httpx2.AsyncClient
    identity: SqlIdentityStore
    registry: SqlRegistryStore
    issuer: TokenIssuer
    clock: Clock
    revoked: list[tuple[str, float]] = field(default_factory=list)

    def browser(self) -> httpx2.AsyncClient:
        """A fresh browser (own cookie jar) on the server."""
        return httpx2.AsyncClient(base_url=self.base, trust_env=False, follow_redirects=False, timeout=30)

    def claims(self, token: str) -> dict[str, Any]:
        """The verified claims of an access token."""
        return dict(jwt.decode(token, self.issuer.public_keys, algorithms=["ES256"]).claims)


def pkce() -> tuple[str, str]:
    """(verifier, S256 challenge)."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    return verifier, challenge


def fields(page: str) -> dict[str, str]:
    """The hidden txn and csrf fields of a login or consent page."""
    return dict(FIELD.findall(page))


def query(location: str) -> dict[str, str]:
    """The query parameters of a redirect (one value each)."""
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


@asynccontextmanager
async def running_as(
    tmp_path: Path,
    *,
    throttle: ThrottleSettings | None = None,
    known: frozenset[str] = frozenset(),
    extra_routes: list[Route] | None = None,
) -> AsyncIterator[AS]:
    url = database_url_for(None, str(tmp_path / "data"))
    await anyio.to_thread.run_sync(upgrade, url)
    engine = create_engine_for(url)
    clock = Clock()
    identity = SqlIdentityStore(engine, clock=lambda: datetime.fromtimestamp(clock(), UTC))
    registry = SqlRegistryStore(engine)
    sock = loopback_socket()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    ring = KeyRing.generate()
    issuer = TokenIssuer(base, ring, clock=clock)
    revoked: list[tuple[str, float]] = []
    # Cheap argon2 parameters: the tests exercise the flow, not the hash's cost.
    passwords = Passwords(PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    routes = authorization_server_routes(
        public_url=base,
        issuer=issuer,
        identity=identity,
        registry=registry,
        ring=ring,
        dev_loopback=True,
        on_revoke=lambda jti, exp: revoked.append((jti, exp)),
        known_scopes=lambda: known,
        throttle=throttle,
        clock=clock,
        passwords=passwords,
    )
    await identity.create_user(
        User(subject="alice", password_hash=passwords.hash(PASSWORD), teams=("platform",), roles=("viewer",))
    )
    await registry.create_client(
        ClientRecord(
            client_id="native-app",
            name="native-app",
            team=None,
            key_hash=None,
            kind="public",
            redirect_uris=(CALLBACK,),
            grant_types=("authorization_code", "refresh_token"),
            client_name="Native App",
        )
    )
    await registry.create_client(
        ClientRecord(
            client_id="ci-bot",
            name="ci-bot",
            team="platform",
            key_hash=None,
            secret_hash=hash_secret(MACHINE_SECRET),
        )
    )
    try:
        async with (
            serve(Starlette(routes=[*routes, *(extra_routes or [])]), sock=sock),
            httpx2.AsyncClient(base_url=base, trust_env=False, follow_redirects=False, timeout=30) as http,
        ):
            yield AS(base, http, identity, registry, issuer, clock, revoked)
    finally:
        engine.dispose()


def auth_params(challenge: str, **extra: str) -> dict[str, str]:
    params = {
        "response_type": "code",
        "client_id": "native-app",
        "redirect_uri": CALLBACK,
        "state": "st-" + secrets.token_urlsafe(8),
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    params.update(extra)
    return params


async def sign_in(
    browser: httpx2.AsyncClient, params: dict[str, str], password: str = PASSWORD
) -> httpx2.Response:
    """GET authorize (not signed in) → login page → POST login; returns the login POST's response."""
    first = await browser.get("/oauth/authorize", params=params)
    assert first.status_code == 303, first.text
    page = await browser.get(first.headers["location"])
    assert page.status_code == 200
    return await browser.post(
        "/oauth/login", data={**fields(page.text), "username": "alice", "password": password}
    )


async def consent_page(browser: httpx2.AsyncClient, params: dict[str, str]) -> httpx2.Response:
    """Sign in and follow to the consent page."""
    login = await sign_in(browser, params)
    assert login.status_code == 303, login.text
    page = await browser.get(login.headers["location"])
    assert page.status_code == 200, page.text
    return page


async def authorize(
    browser: httpx2.AsyncClient, params: dict[str, str], decision: str = "allow"
) -> dict[str, str]:
    """The whole browser leg; returns the parameters of the redirect to the client."""
    page = await consent_page(browser, params)
    answer = await browser.post("/oauth/authorize", data={**fields(page.text), "decision": decision})
    assert answer.status_code == 302, answer.text
    assert answer.headers["location"].startswith(CALLBACK + "?")
    return query(answer.headers["location"])


async def redeem(server: AS, code: str, verifier: str, **extra: str) -> httpx2.Response:
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": CALLBACK,
        "client_id": "native-app",
        "code_verifier": verifier,
        **extra,
    }
    return await server.http.post("/oauth/token", data=data)


# -- discovery -----------------------------------------------------------------------------


async def test_metadata_documents_advertise_what_mcp_clients_require(tmp_path: Path) -> None:
    async with running_as(tmp_path, known=frozenset({"files:write"})) as server:
        oauth = (await server.http.get("/.well-known/oauth-authorization-server")).json()
        oidc = (await server.http.get("/.well-known/openid-configuration")).json()
        jwks = (await server.http.get("/oauth/jwks.json")).json()
    assert oauth["issuer"] == server.base
    assert oauth["authorization_endpoint"] == f"{server.base}/oauth/authorize"
    assert oauth["token_endpoint"] == f"{server.base}/oauth/token"
    assert oauth["registration_endpoint"] == f"{server.base}/oauth/register"
    assert oauth["revocation_endpoint"] == f"{server.base}/oauth/revoke"
    assert oauth["jwks_uri"] == f"{server.base}/oauth/jwks.json"
    assert oauth["code_challenge_methods_supported"] == ["S256"]
    assert oauth["response_types_supported"] == ["code"]
    assert oauth["grant_types_supported"] == ["authorization_code", "refresh_token", "client_credentials"]
    assert oauth["token_endpoint_auth_methods_supported"] == [
        "client_secret_basic",
        "client_secret_post",
        "none",
    ]
    assert oauth["authorization_response_iss_parameter_supported"] is True
    assert oauth["client_id_metadata_document_supported"] is True
    assert oauth["scopes_supported"] == ["a2a", "files:write", "mcp"]
    assert {k: v for k, v in oidc.items() if k in oauth} == oauth
    assert oidc["id_token_signing_alg_values_supported"] == ["ES256"]
    assert oidc["subject_types_supported"] == ["public"]
    assert jwks["keys"] and all(key["kty"] == "EC" and "d" not in key for key in jwks["keys"])


# -- authorization endpoint ----------------------------------------------------------------


async def test_full_code_flow_echoes_state_sends_iss_and_binds_the_token_to_the_resource(
    tmp_path: Path,
) -> None:
    async with running_as(tmp_path) as server, server.browser() as browser:
        verifier, challenge = pkce()
        params = auth_params(challenge, resource=f"{server.base}/servers/calc/mcp")
        result = await authorize(browser, params)
        assert result["state"] == params["state"]
        assert result["iss"] == server.base
        token = await redeem(server, result["code"], verifier, resource=f"{server.base}/servers/calc/mcp")
    assert token.status_code == 200, token.text
    assert token.headers["cache-control"] == "no-store"
    body = token.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900
    assert body["scope"] == "mcp a2a"
    assert body["refresh_token"]
    claims = server.claims(body["access_token"])
    assert claims["aud"] == f"{server.base}/servers/calc/mcp"
    assert claims["sub"] == "alice"
    assert claims["client_id"] == "native-app"
    assert claims["kind"] == "user"
    assert claims["teams"] == ["platform"]
    assert claims["roles"] == ["viewer"]
    assert claims["iss"] == server.base
    assert claims["exp"] - claims["iat"] == 900


async def test_resource_defaults_to_the_mcp_endpoint(tmp_path: Path) -> None:
    async with running_as(tmp_path) as server, server.browser() as browser:
        verifier, challenge = pkce()
        result = await authorize(browser, auth_params(challenge))
        token = await redeem(server, result["code"], verifier)
    assert server.claims(token.json()["access_token"])["aud"] == f"{server.base}/mcp"


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        ({"code_challenge": "", "code_challenge_method": ""}, "invalid_request"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge_method": ""}, "invalid_request"),
        ({"resource": "https://elsewhere.example/mcp"}, "invalid_target"),
        ({"resource": "/mcp"}, "invalid_target"),
        ({"scope": "mcp root"}, "invalid_scope"),
        ({"response_type": "token"}, "unsupported_response_type"),
    ],
)
async def test_bad_requests_from_a_known_client_go_back_to_it_with_an_error(
    tmp_path: Path, extra: dict[str, str], error: str
) -> None:
    async with running_as(tmp_path) as server:
        _, challenge = pkce()
        params = {k: v for k, v in auth_params(challenge, **extra).items() if v}
        answer = await server.http.get("/oauth/authorize", params=params)
    assert answer.status_code == 302, answer.text
    assert answer.headers["location"].startswith(CALLBACK + "?")
    result = query(answer.headers["location"])
    assert result["error"] == error
    assert result["state"] == params["state"]
    assert result["iss"] == server.base


@pytest.mark.parametrize(
    "extra",
    [
        {"redirect_uri": "http://127.0.0.1:9/other"},
        {"redirect_uri": "https://evil.example/callback"},
        {"redirect_uri": CALLBACK + "?x=1"},
        {"redirect_uri": ""},
        {"client_id": "nobody"},
        {"client_id": ""},
    ],
)
async def test_unknown_client_or_unregistered_redirect_gets_an_error_page_not_a_redirect(
    tmp_path: Path, extra: dict[str, str]
) -> None:
    async with running_as(tmp_path) as server:
        _, challenge = pkce()
        params = {k: v for k, v in auth_params(challenge, **extra).items() if v}
        answer = await server.http.get("/oauth/authorize", params=params)
    assert answer.status_code == 400
    assert "location" not in answer.headers
    assert answer.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]


async def test_a_loopback_redirect_may_use_any_port_for_a_public_client(tmp_path: Path) -> None:
    async with running_as(tmp_path) as server, server.browser() as browser:
        verifier, challenge = pkce()
        params = auth_params(challenge, redirect_uri="http://127.0.0.1:55123/callback")
        page = await consent_page(browser, params)
        answer = await browser.post("/oauth/authorize", data={**fields(page.text), "decision": "allow"})
        assert answer.headers["location"].startswith("http://127.0.0.1:55123/callback?")
        code = query(answer.headers["location"])["code"]
        token = await redeem(server, code, verifier, redirect_uri="http://127.0.0.1:55123/callback")
    assert token.status_code == 200, token.text


async def test_consent_page_refuses_framing_and_shows_client_scopes_and_redirect(tmp_path: Path) -> None:
    async with running_as(tmp_path) as server, server.browser() as browser:
        _, challenge = pkce()
        page = await consent_page(browser, auth_params(challenge))
    csp = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp
    assert "default-src 'none'" in csp
    assert "script-src" not in csp and "unsafe-inline" not in csp
    assert "form-action 'self' http://127.0.0.1:9" in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "<script" not in page.text
    assert "Native App" in page.text and CALLBACK in page.text and "<code>mcp</code>" in page.text
    cookie = next(c for c in browser.cookies.jar if c.name == "tollhouse-session")
    assert cookie.has_nonstandard_attr("HttpOnly")


async def test_login_page_is_an_html_page_with_the_same_protections(tmp_path: Path) -> None:
    async with running_as(tmp_path) as server, server.browser() as browser:
        _, challenge = pkce()
        first = await browser.get("/oauth/authorize", params=auth_params(challenge))
        page = await browser.get(first.headers["location"])
    assert page.status_code == 200
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assert 'type="password"' in page.text


@pytest.mark.parametrize("csrf", [None, "", "k.bogus"])
async def test_consent_without_the_right_csrf_token_is_refused(tmp_path: Path, csrf: str | None) -> None:
    async with running_as(tmp_path) as server, server.browser() as browser:
        _, challenge = pkce()
        page = await consent_page(browser, auth_params(challenge))
        form = {"txn": fields(page.text)["txn"], "decision": "allow"}
        if csrf is not None:
            form["csrf"] = csrf
        answer = await browser.post("/oauth/authorize", data=form)
    assert answer.status_code == 403
    assert "location" not in answer.headers


async def test_a_csrf_token_is_bound_to_its_login_session(tmp_path: Path) -> None:
    async with running_as(tmp_path) as server, server.browser() as victim, server.browser() as attacker:
        _, challenge = pkce()
        theirs = fields((await consent_page(attacker, auth_params(challenge))).text)
        await consent_page(victim, auth_params(challenge))
        answer = await victim.post("/oauth/authorize", data={**theirs, "decision": "allow"})
    assert answer.status_code == 403


async def test_a_transaction_is_single_use(tmp_path: Path) -> None:
    async with running_as(tmp_path) as server, server.browser() as browser:
        _, challenge = pkce()
        page = await consent_page(browser, auth_params(challenge))
        first = await browser.post("/oauth/authorize", data={**fields(page.text), "decision": "allow"})
        again = await browser.post("/oauth/authorize", data={**fields(page.text), "decision": "allow"})
    assert first.status_code == 302
    assert again.status_code == 400
    assert "location" not in again.headers


async def test_a_transaction_expires_after_ten_minutes(tmp_path: Path) -> None:
    async with running_as(tmp_path) as server, server.browser() as browser:
        _, challenge = pkce()
        page = await consent_page(browser, auth_params(challenge))
        server.clock.advance(601)
        answer = await browser.post("/oauth/authorize", data={**fields(page.text), "decision": "allow"})
    assert answer.status_code in (400, 403)
    assert "location" not in answer.headers


async def test_denying_consent_sends_access_denied_with_state_and_iss(tmp_path: Path) -> None:
    async with running_as(tmp_path) as server, server.browser() as browser:
        _, challenge = pkce()
        params = auth_params(challenge)
        result = await authorize(browser, params, decision="deny")
    assert {k: result[k] for k in ("error", "state", "iss")} == {
        "error": "access_denied",
        "state": params["state"],
        "iss": server.base,
    }
    assert "code" not in result


async def test_an_approved_client_skips_the_consent_page_unless_it_asks_for_it(tmp_path: Path) -> None:
    async with running_as(tmp_path) as server, server.browser() as browser:
        _, challenge = pkce()
        await authorize(browser, auth_params(challenge))
        again = await browser.get("/oauth/authorize", params=auth_params(challenge))
        assert again.status_code == 302
        assert "code" in query(again.headers["location"])
        forced = await browser.get("/oauth/authorize", params=auth_params(challenge, prompt="consent"))
    assert forced.status_code == 200
    assert "Allow access?" in forced.text


async def test_prompt_none_without_a_session_answers_login_required(tmp_path: Path) -> None:
    async with running_as(tmp_path) as server:
        _, challenge = pkce()
        answer = await server.http.get("/oauth/authorize", params=auth_params(challenge, prompt="none"))
    assert query(answer.headers["location"])["error"] == "login_required"


# -- login ---------------------------------------------------------------------------------


async def test_wrong_password_gets_a_generic_message(tmp_path: Path) -> None:
    async with running_as(tmp_path) as server, server.browser() as browser:
        _, challenge = pkce()
        answer = await sign_in(browser, auth_params(challenge), password="wrong password!")
    assert answer.status_code == 401
    assert "The user name or password is not correct." in answer.text
    assert not [c for c in browser.cookies.jar if c.name == "tollhouse-session"]


async def test_login_locks_out_after_repeated_failures_even_with_the_right_password(tmp_path: Path) -> None:
    async with running_as(tmp_path) as server, server.browser() as browser:
        _, challenge = pkce()
        first = await browser.get("/oauth/authorize", params=auth_params(challenge))
        page = await browser.get(first.headers["location"])
        form = fields(page.text)
        statuses = []
        for _ in range(5):
            answer = await browser.post(
                "/oauth/login", data={**form, "username": "alice", "password": "nope nope"}
            )
            statuses.append(answer.status_code)
        locked = await browser.post("/oauth/login", data={**form, "username": "alice", "password": PASSWORD})
        assert statuses == [401] * 5
        assert locked.status_code == 429
        assert int(locked.headers["retry-after"]) >= 1
        server.clock.advance(3)
        unlocked = await browser.post(
            "/oauth/login", data={**form, "username": "alice", "password": PASSWORD}
        )
    assert unlocked.status_code == 303


async def test_login_without_the_pre_login_cookie_is_refused(tmp_path: Path) -> None:
    async with running_as(tmp_path) as server, server.browser() as browser:
        _, challenge = pkce()
        first = await browser.get("/oauth/authorize", params=auth_params(challenge))
        page = await browser.get(first.headers["location"])
        browser.cookies.clear()
        answer = await browser.post(
            "/oauth/login", data={**fields(page.text), "username": "alice", "password": PASSWORD}
        )
    assert answer.status_code == 403


async def test_a_disabled_user_cannot_sign_in(tmp_path: Path) -> None:
    async with running_as(tmp_path) as server, server.browser() as browser:
        await server.identity.update_user("alice", disabled=True)
        _, challenge = pkce()
        answer = await sign_in(browser, auth_params(challenge))
    assert answer.status_code == 401


# -- token endpoint: authorization code ----------------------------------------------------


async def test_a_code_works_once_and_its_replay_revokes_what_it_issued(tmp_path: Path) -> None:
    async with running_as(tmp_path) as server, server.browser() as browser:
        verifier, challenge = pkce()
        result = await authorize(browser, auth_params(challenge))
        first = await redeem(server, result["code"], verifier)
        replay = await redeem(server, result["code"], verifier)
        refresh = await server.http.post(
            "/oauth/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": first.json()["refresh_token"],
                "client_id": "native-app",
            },
        )
    assert first.status_code == 200
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    assert refresh.status_code == 400 and refresh.json()["error"] == "invalid_grant"
    assert server.revoked and server.revoked[0][0] == server.claims(first.json()["access_token"])["jti"]


async def test_concurrent_redemptions_of_one_code_have_exactly_one_winner(tmp_path: Path) -> None:
    async with running_as(tmp_path) as server, server.browser() as browser:
        verifier, challenge = pkce()
        result = await authorize(browser, auth_params(challenge))
        statuses: list[int] = []

        async def attempt() -> None:
            statuses.append((await redeem(server, result["code"], verifier)).status_code)

        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(attempt)
    assert sorted(statuses) == [200] + [400] * 7


async def test_a_code_expires_after_sixty_seconds(tmp_path: Path) -> None:
    async with running_as(tmp_path) as server, server.browser() as browser:
        verifier, challenge = pkce()
        result = await authorize(browser, auth_params(challenge))
        server.clock.advance(61)
        answer = await redeem(server, result["code"], verifier)
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_grant"


@pytest.mark.parametrize(
    "change",
    [
        {"code_verifier": "wrong-" + "v" * 50},
        {"code_verifier": ""},
        {"redirect_uri": "http://127.0.0.1:9/elsewhere"},
        {"resource": "http://127.0.0.1:1/mcp"},
    ],
)
async def test_a_code_is_bound_to_verifier_redirect_and_resource(
    tmp_path: Path, change: dict[str, str]
) -> None:
    async with running_as(tmp_path) as server, server.browser() as browser:
        verifier, challenge = pkce()
        result = await authorize(browser, auth_params(challenge))
        data = {
            "grant_type": "authorization_code",
            "code": result["code"],
            "redirect_uri": CALLBACK,
            "client_id": "native-app",
            "code_verifier": verifier,
            **change,
        }
        answer = await server.http.post("/oauth/token", data={k: v for k, v in data.items() if v})
    assert answer.status_code == 400
    assert answer.json()["error"] in ("invalid_grant", "invalid_request", "invalid_target")


async def test_a_code_is_bound_to_its_client(tmp_path: Path) -> None:
    async with running_as(tmp_path) as server, server.browser() as browser:
        await server.registry.create_client(
            ClientRecord(
                client_id="other-app",
                name="other-app",
                team=None,
                key_hash=None,
                kind="public",
                redirect_uris=(CALLBACK,),
                grant_types=("authorization_code",),
            )
        )
        verifier, challenge = pkce()
        result = await authorize(browser, auth_params(challenge))
        answer = await redeem(server, result["code"], verifier, client_id="other-app")
    assert answer.json()["error"] == "invalid_grant"


# -- token endpoint: refresh ---------------------------------------------------------------


async def test_refresh_tokens_rotate_and_reuse_revokes_the_family(tmp_path: Path) -> None:
    async with running_as(tmp_path) as server, server.browser() as browser:
        verifier, challenge = pkce()
        result = await authorize(browser, auth_params(challenge))
        first = (await redeem(server, result["code"], verifier)).json()

        async def refresh(token: str, **extra: str) -> httpx2.Response:
            return await server.http.post(
                "/oauth/token",
                data={
                    "grant_type": "refresh_token",
                    "refresh_token": token,
                    "client_id": "native-app",
                    **extra,
                },
            )

        narrowed = await refresh(first["refresh_token"], scope="mcp")
        second = narrowed.json()
        assert narrowed.status_code == 200, narrowed.text
        assert second["refresh_token"] != first["refresh_token"]
        assert second["scope"] == "mcp"
        assert server.claims(second["access_token"])["aud"] == f"{server.base}/mcp"
        widened = await refresh(second["refresh_token"], scope="mcp a2a files:write")
        reused = await refresh(first["refresh_token"])
        after = await refresh(second["refresh_token"])
    assert widened.json()["error"] == "invalid_scope"
    assert reused.json()["error"] == "invalid_grant"
    assert after.json()["error"] == "invalid_grant"


async def test_refresh_cannot_move_the_token_to_another_resource(tmp_path: Path) -> None:
    async with running_as(tmp_path) as server, server.browser() as browser:
        verifier, challenge = pkce()
        result = await authorize(browser, auth_params(challenge))
        first = (await redeem(server, result["code"], verifier)).json()
        answer = await server.http.post(
            "/oauth/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": first["refresh_token"],
                "client_id": "native-app",
                "resource": f"{server.base}/servers/calc/mcp",
            },
        )
    assert answer.json()["error"] == "invalid_target"


async def test_a_disabled_user_cannot_refresh(tmp_path: Path) -> None:
    async with running_as(tmp_path) as server, server.browser() as browser:
        verifier, challenge = pkce()
        result = await authorize(browser, auth_params(challenge))
        first = (await redeem(server, result["code"], verifier)).json()
        await server.identity.update_user("alice", disabled=True)
        answer = await server.http.post(
            "/oauth/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": first["refresh_token"],
                "client_id": "native-app",
            },
        )
    assert answer.json()["error"] == "invalid_grant"


# -- token endpoint: client credentials ----------------------------------------------------


async def test_client_credentials_with_basic_and_with_post(tmp_path: Path) -> None:
    async with running_as(tmp_path) as server:
        basic = await server.http.post(
            "/oauth/token", data={"grant_type": "client_credentials"}, auth=("ci-bot", MACHINE_SECRET)
        )
        post = await server.http.post(
            "/oauth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": "ci-bot",
                "client_secret": MACHINE_SECRET,
                "resource": f"{server.base}/mcp",
                "scope": "mcp",
            },
        )
    assert basic.status_code == 200, basic.text
    assert "refresh_token" not in basic.json()
    claims = server.claims(basic.json()["access_token"])
    assert claims["sub"] == "ci-bot" and claims["kind"] == "client" and claims["teams"] == ["platform"]
    assert claims["aud"] == server.base
    assert basic.json()["scope"] == "mcp a2a"
    assert post.status_code == 200, post.text
    assert server.claims(post.json()["access_token"])["aud"] == f"{server.base}/mcp"
    assert post.json()["scope"] == "mcp"


async def test_wrong_secret_and_revoked_clients_are_invalid_clients(tmp_path: Path) -> None:
    async with running_as(tmp_path) as server:
        wrong = await server.http.post(
            "/oauth/token", data={"grant_type": "client_credentials"}, auth=("ci-bot", "not-the-secret")
        )
        no_secret = await server.http.post(
            "/oauth/token", data={"grant_type": "client_credentials", "client_id": "ci-bot"}
        )
        await server.registry.revoke_client("ci-bot")
        revoked = await server.http.post(
            "/oauth/token", data={"grant_type": "client_credentials"}, auth=("ci-bot", MACHINE_SECRET)
        )
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    assert no_secret.json()["error"] == "invalid_client"
    assert revoked.status_code == 401 and revoked.json()["error"] == "invalid_client"


async def test_public_clients_cannot_use_client_credentials(tmp_path: Path) -> None:
    async with running_as(tmp_path) as server:
        answer = await server.http.post(
            "/oauth/token", data={"grant_type": "client_credentials", "client_id": "native-app"}
        )
    assert answer.status_code in (400, 401)
    assert answer.json()["error"] in ("invalid_client", "unauthorized_client")


async def test_failed_client_authentication_is_throttled(tmp_path: Path) -> None:
    throttle = ThrottleSettings(token_failures=Rate(3, 60.0))
    async with running_as(tmp_path, throttle=throttle) as server:
        statuses = []
        for _ in range(4):
            answer = await server.http.post(
                "/oauth/token", data={"grant_type": "client_credentials"}, auth=("ci-bot", "guess")
            )
            statuses.append(answer.status_code)
        good = await server.http.post(
            "/oauth/token", data={"grant_type": "client_credentials"}, auth=("ci-bot", MACHINE_SECRET)
        )
    assert statuses == [401, 401, 401, 429]
    assert good.status_code == 429 and int(good.headers["retry-after"]) >= 1


# -- dynamic registration ------------------------------------------------------------------


async def test_dcr_registers_a_public_client_that_completes_the_flow(tmp_path: Path) -> None:
    async with running_as(tmp_path) as server, server.browser() as browser:
        answer = await server.http.post(
            "/oauth/register",
            json={
                "redirect_uris": [CALLBACK],
                "token_endpoint_auth_method": "none",
                "grant_types": ["authorization_code", "refresh_token"],
                "client_name": "Registered <b>App</b>",
                "application_type": "native",
            },
        )
        assert answer.status_code == 201, answer.text
        registered = answer.json()
        assert "client_secret" not in registered
        assert registered["redirect_uris"] == [CALLBACK]
        assert registered["token_endpoint_auth_method"] == "none"
        verifier, challenge = pkce()
        params = auth_params(challenge, client_id=registered["client_id"])
        page = await consent_page(browser, params)
        assert "Registered &lt;b&gt;App&lt;/b&gt;" in page.text
        redirect = await browser.post("/oauth/authorize", data={**fields(page.text), "decision": "allow"})
        code = query(redirect.headers["location"])["code"]
        token = await redeem(server, code, verifier, client_id=registered["client_id"])
    assert token.status_code == 200, token.text
    stored = await server.registry.get_client(registered["client_id"])
    assert stored is not None and stored.registration == "dcr" and stored.kind == "public"
    assert stored.name == f"dcr-{registered['client_id'][:12]}"


async def test_dcr_confidential_client_gets_a_secret_but_no_client_credentials(tmp_path: Path) -> None:
    async with running_as(tmp_path) as server:
        answer = await server.http.post(
            "/oauth/register", json={"redirect_uris": ["https://app.example/cb"], "client_name": "Web App"}
        )
        registered = answer.json()
        cc = await server.http.post(
            "/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=(registered["client_id"], registered["client_secret"]),
        )
        asks_cc = await server.http.post(
            "/oauth/register",
            json={"redirect_uris": ["https://app.example/cb"], "grant_types": ["client_credentials"]},
        )
    assert answer.status_code == 201
    assert registered["token_endpoint_auth_method"] == "client_secret_basic"
    assert cc.json()["error"] == "unauthorized_client"
    assert asks_cc.status_code == 400


@pytest.mark.parametrize(
    "uri",
    [
        "javascript:alert(1)",
        "data:text/html,hi",
        "file:///etc/passwd",
        "http://evil.example/cb",
        "https://app.example/cb#frag",
        "https://user@app.example/cb",
        "ftp://app.example/cb",
        "vbscript:x",
        "",
    ],
)
async def test_dcr_refuses_hostile_redirect_uris(tmp_path: Path, uri: str) -> None:
    async with running_as(tmp_path) as server:
        answer = await server.http.post(
            "/oauth/register", json={"redirect_uris": [uri], "token_endpoint_auth_method": "none"}
        )
    assert answer.status_code == 400
    assert answer.json()["error"] in ("invalid_redirect_uri", "invalid_client_metadata")


async def test_dcr_accepts_private_use_scheme_redirects(tmp_path: Path) -> None:
    async with running_as(tmp_path) as server:
        answer = await server.http.post(
            "/oauth/register",
            json={"redirect_uris": ["com.example.app:/oauth/cb"], "token_endpoint_auth_method": "none"},
        )
    assert answer.status_code == 201, answer.text


async def test_dcr_caps_the_body_and_throttles_per_address(tmp_path: Path) -> None:
    throttle = ThrottleSettings(register=Rate(2, 3600.0))
    async with running_as(tmp_path, throttle=throttle) as server:
        big = await server.http.post(
            "/oauth/register", json={"redirect_uris": [CALLBACK], "client_name": "x" * 20_000}
        )
        ok = await server.http.post("/oauth/register", json={"redirect_uris": [CALLBACK]})
        limited = await server.http.post("/oauth/register", json={"redirect_uris": [CALLBACK]})
    assert big.status_code == 413
    assert ok.status_code == 201
    assert limited.status_code == 429


# -- client ID metadata documents ----------------------------------------------------------


def cimd_routes(documents: dict[str, dict[str, Any]], fetched: list[str]) -> list[Route]:
    async def document(request: Request) -> Response:
        fetched.append(request.url.path)
        body = documents.get(request.path_params["name"])
        if body is None:
            return Response(status_code=404)
        return JSONResponse(body, headers={"Cache-Control": "max-age=120"})

    return [Route("/clients/{name}", document)]


async def test_cimd_client_completes_the_flow_with_its_document_cached(tmp_path: Path) -> None:
    documents: dict[str, dict[str, Any]] = {}
    fetched: list[str] = []
    async with running_as(tmp_path, extra_routes=cimd_routes(documents, fetched)) as server:
        client_id = f"{server.base}/clients/agent.json"
        documents["agent.json"] = {
            "client_id": client_id,
            "client_name": "Agent <i>One</i>",
            "redirect_uris": [CALLBACK],
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
        }
        async with server.browser() as browser:
            verifier, challenge = pkce()
            params = auth_params(challenge, client_id=client_id)
            page = await consent_page(browser, params)
            assert "Agent &lt;i&gt;One&lt;/i&gt;" in page.text
            assert urlsplit(server.base).netloc in page.text
            redirect = await browser.post("/oauth/authorize", data={**fields(page.text), "decision": "allow"})
            code = query(redirect.headers["location"])["code"]
            token = await redeem(server, code, verifier, client_id=client_id)
    assert token.status_code == 200, token.text
    assert server.claims(token.json()["access_token"])["client_id"] == client_id
    assert fetched == ["/clients/agent.json"]


@pytest.mark.parametrize(
    "document",
    [
        {"client_id": "https://impostor.example/agent.json", "redirect_uris": [CALLBACK]},
        {"redirect_uris": [CALLBACK]},
        {"client_id": "SELF"},
        {"client_id": "SELF", "redirect_uris": ["javascript:alert(1)"]},
        {
            "client_id": "SELF",
            "redirect_uris": [CALLBACK],
            "token_endpoint_auth_method": "client_secret_basic",
        },
        {"client_id": "SELF", "redirect_uris": [CALLBACK], "token_endpoint_auth_method": "private_key_jwt"},
        {"client_id": "SELF", "redirect_uris": [CALLBACK], "grant_types": ["client_credentials"]},
    ],
)
async def test_cimd_documents_that_do_not_validate_give_an_error_page(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    documents: dict[str, dict[str, Any]] = {}
    async with running_as(tmp_path, extra_routes=cimd_routes(documents, [])) as server:
        client_id = f"{server.base}/clients/bad.json"
        documents["bad.json"] = {k: (client_id if v == "SELF" else v) for k, v in document.items()}
        _, challenge = pkce()
        answer = await server.http.get("/oauth/authorize", params=auth_params(challenge, client_id=client_id))
        missing = await server.http.get(
            "/oauth/authorize", params=auth_params(challenge, client_id=f"{server.base}/clients/none.json")
        )
    assert answer.status_code == 400 and "location" not in answer.headers
    assert missing.status_code == 400 and "location" not in missing.headers


# -- revocation ----------------------------------------------------------------------------


async def test_revoking_a_refresh_token_revokes_its_family(tmp_path: Path) -> None:
    async with running_as(tmp_path) as server, server.browser() as browser:
        verifier, challenge = pkce()
        result = await authorize(browser, auth_params(challenge))
        tokens = (await redeem(server, result["code"], verifier)).json()
        revoked = await server.http.post(
            "/oauth/revoke",
            data={
                "token": tokens["refresh_token"],
                "token_type_hint": "refresh_token",
                "client_id": "native-app",
            },
        )
        unknown = await server.http.post(
            "/oauth/revoke", data={"token": "nonsense", "client_id": "native-app"}
        )
        refresh = await server.http.post(
            "/oauth/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": tokens["refresh_token"],
                "client_id": "native-app",
            },
        )
    assert revoked.status_code == 200
    assert unknown.status_code == 200
    assert refresh.json()["error"] == "invalid_grant"


async def test_revoking_an_access_token_records_its_jti_and_tells_the_resource_server(tmp_path: Path) -> None:
    async with running_as(tmp_path) as server:
        issued = await server.http.post(
            "/oauth/token", data={"grant_type": "client_credentials"}, auth=("ci-bot", MACHINE_SECRET)
        )
        token = issued.json()["access_token"]
        claims = server.claims(token)
        unauthenticated = await server.http.post("/oauth/revoke", data={"token": token})
        answer = await server.http.post(
            "/oauth/revoke", data={"token": token}, auth=("ci-bot", MACHINE_SECRET)
        )
        stored = await server.identity.revoked_jtis()
    assert unauthenticated.status_code in (400, 401)
    assert not [j for j, _ in server.revoked if j != claims["jti"]]
    assert answer.status_code == 200
    assert server.revoked == [(claims["jti"], float(claims["exp"]))]
    assert [jti for jti, _, _ in stored] == [claims["jti"]]


async def test_another_clients_token_is_not_revoked(tmp_path: Path) -> None:
    async with running_as(tmp_path) as server:
        issued = await server.http.post(
            "/oauth/token", data={"grant_type": "client_credentials"}, auth=("ci-bot", MACHINE_SECRET)
        )
        answer = await server.http.post(
            "/oauth/revoke", data={"token": issued.json()["access_token"], "client_id": "native-app"}
        )
    assert answer.status_code == 200
    assert server.revoked == []
