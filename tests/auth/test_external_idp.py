"""External identity providers: JWTs of a foreign issuer and RFC 7662 introspection.

Everything runs against `tests.idp`, a provider written from the specs that shares no code
with tollhouse's own authorization server, served on a loopback port. Time is a `Clock` the
tests move by hand, so expiry, caching and rate limits are exercised without sleeping.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import orjson
import pytest
from mcp.types import CallToolResult, TextContent
from pydantic import ValidationError

from tests.harness import MODES, Mode, running_gateway
from tests.idp import TestIdp, compact, ec_key, rsa_key, running_idp
from tests.servers import serve
from tests.upstreams import HeaderRecorder, echo_upstream
from tollhouse.auth.external import (
    ExternalIssuer,
    ExternalIssuerConfig,
    Introspector,
    build_external_verifiers,
    discovery_urls,
    start_all,
)
from tollhouse.auth.resources import ResourceSpace
from tollhouse.auth.settings import AuthSettings
from tollhouse.auth.tokens import InvalidTokenError
from tollhouse.auth.verifiers import CompositeVerifier
from tollhouse.gateway.serve import load_settings
from tollhouse.gateway.settings import Settings
from tollhouse.registry.config import ConfigError, config_to_dict, load_config

pytestmark = pytest.mark.anyio

GW = "https://gw.example"
RESOURCES = ResourceSpace(GW)
MCP = GW + "/mcp"
START = 1_900_000_000.0


class Clock:
    """Wall-clock time that moves only when a test says so."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def config_for(idp: TestIdp, **overrides: Any) -> ExternalIssuerConfig:
    values: dict[str, Any] = {
        "issuer": idp.issuer,
        "allow_loopback_http": True,
        "team_map": {"platform-team": "platform"},
        "team_prefix": "/",
        "role_map": {"idp-admins": "admin", "gateway-approvers": "approver"},
    }
    values.update(overrides)
    return ExternalIssuerConfig(**values)


@asynccontextmanager
async def provider(**options: Any) -> AsyncIterator[tuple[TestIdp, Clock]]:
    clock = Clock()
    async with running_idp(clock=clock, **options) as idp:
        yield idp, clock


async def started(idp: TestIdp, clock: Clock, **overrides: Any) -> ExternalIssuer:
    issuer = ExternalIssuer(config_for(idp, **overrides), RESOURCES, clock=clock)
    assert await issuer.start(), issuer.last_error
    return issuer


async def reason_of(verify: Callable[[], Any]) -> str:
    with pytest.raises(InvalidTokenError) as caught:
        await verify()
    return caught.value.reason


# -- JWTs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rsa", "ec"])
async def test_valid_tokens_are_accepted_with_the_mapped_principal(kind: str) -> None:
    async with provider() as (idp, clock):
        issuer = await started(idp, clock)
        claims = idp.claims(
            MCP,
            scope="mcp tools:read",
            groups=["platform-team", "/finance", "idp-admins", "unrelated"],
            roles=["gateway-approvers", "admin"],
        )
        token = idp.mint(claims, key=idp.rsa if kind == "rsa" else idp.ec)
        principal = await issuer.verify(token, MCP)
    assert principal.subject == "alice"
    assert principal.issuer == idp.issuer
    assert principal.client_id == "agent-app"
    assert principal.kind == "user"
    assert principal.scopes == ("mcp", "tools:read")
    # Mapped group, prefix-stripped group; "idp-admins" and "unrelated" lack the prefix.
    assert principal.teams == ("finance", "platform")
    # Only role_map grants roles: a literal "admin" in the provider's roles claim does not.
    assert principal.roles == ("admin", "approver")
    assert principal.expires_at == claims["exp"]
    assert principal.token_id == claims["jti"]


async def test_claim_shapes_of_other_providers_map_by_configuration() -> None:
    async with provider() as (idp, clock):
        okta = await started(idp, clock, team_prefix="")
        token = idp.mint(idp.claims(MCP, scope=None, scp=["mcp", "a2a"], groups=["Everyone"], cid="0oa1"))
        principal = await okta.verify(token, MCP)
        assert principal.scopes == ("a2a", "mcp")
        assert principal.teams == ("Everyone",)

        keycloak = await started(
            idp,
            clock,
            role_claims=("realm_access.roles",),
            role_map={"tollhouse-admin": "admin"},
            client_id_claims=("azp",),
        )
        token = idp.mint(idp.claims(MCP, realm_access={"roles": ["tollhouse-admin", "offline_access"]}))
        assert (await keycloak.verify(token, MCP)).roles == ("admin",)

        entra = await started(
            idp,
            clock,
            teams_from_map_only=True,
            team_map={"5f1c7f3e-0000-4000-8000-000000000001": "finance"},
            audiences=("api://tollhouse",),
        )
        guid = "5f1c7f3e-0000-4000-8000-000000000001"
        claims = idp.claims("api://tollhouse", scope=None, scp="mcp", groups=[guid, "another-guid"])
        principal = await entra.verify(idp.mint(claims), MCP)
        assert principal.teams == ("finance",)
        assert principal.scopes == ("mcp",)

        app_only = idp.claims(MCP, sub="svc-1", azp="svc-1", idtyp="app")
        assert (await entra.verify(idp.mint(app_only), MCP)).kind == "client"
        auth0 = idp.claims(MCP, sub="abc@clients", azp="abc", gty="client-credentials")
        assert (await entra.verify(idp.mint(auth0), MCP)).kind == "client"


def _tampered(idp: TestIdp) -> str:
    header, _, signature = idp.mint(idp.claims(MCP)).split(".")
    forged = compact({}, idp.claims(MCP, sub="mallory"), None).split(".")[1]
    return f"{header}.{forged}.{signature}"


# (name, token maker, resource the token is presented at, expected reason)
BAD_TOKENS: list[tuple[str, Callable[[TestIdp], str], str, str]] = [
    ("foreign audience", lambda i: i.mint(i.claims("https://other.example/mcp")), MCP, "audience"),
    (
        "another tollhouse endpoint",
        lambda i: i.mint(i.claims(GW + "/servers/calc/mcp")),
        MCP,
        "audience",
    ),
    ("token for a different resource", lambda i: i.mint(i.claims(MCP)), GW + "/mcp/support", "audience"),
    ("the provider as audience", lambda i: i.mint(i.claims(i.issuer)), MCP, "audience"),
    ("wrong issuer", lambda i: i.mint(i.claims(MCP, iss="https://evil.example")), MCP, "issuer"),
    ("expired", lambda i: i.mint(i.claims(MCP, exp=int(i.clock()) - 120)), MCP, "expired"),
    ("future nbf", lambda i: i.mint(i.claims(MCP, nbf=int(i.clock()) + 120)), MCP, "not_yet_valid"),
    ("alg none", lambda i: i.unsigned(i.claims(MCP)), MCP, "algorithm"),
    ("HS256 keyed with the public key", lambda i: i.hs256_with_public_key(i.claims(MCP)), MCP, "algorithm"),
    ("payload swapped under a valid signature", _tampered, MCP, "signature"),
    (
        "foreign key under a known kid",
        lambda i: i.mint(i.claims(MCP), key=rsa_key("rsa-1")),
        MCP,
        "signature",
    ),
    ("unknown kid", lambda i: i.mint(i.claims(MCP), key=ec_key("ghost")), MCP, "unknown_kid"),
    (
        "ES256 header on the RSA key",
        lambda i: i.mint(i.claims(MCP), key=i.ec, header={"kid": "rsa-1"}),
        MCP,
        "key",
    ),
    ("missing exp", lambda i: i.mint(i.claims(MCP, exp=None)), MCP, "claims"),
    ("missing aud", lambda i: i.mint({k: v for k, v in i.claims(MCP).items() if k != "aud"}), MCP, "claims"),
    ("missing sub", lambda i: i.mint(i.claims(MCP, sub=None)), MCP, "claims"),
    ("malformed", lambda i: "not-a-jwt", MCP, "malformed"),
    ("three garbage segments", lambda i: "a.b.c", MCP, "malformed"),
]


async def test_bad_tokens_are_refused_with_the_right_reason() -> None:
    async with provider() as (idp, clock):
        issuer = await started(idp, clock)
        results = {}
        for name, make, resource, _ in BAD_TOKENS:
            token = make(idp)
            results[name] = await reason_of(lambda t=token, r=resource: issuer.verify(t, r))  # type: ignore[misc]
        # Control: the same provider's good token passes.
        assert (await issuer.verify(idp.mint(idp.claims(MCP)), MCP)).subject == "alice"
    assert results == {name: reason for name, _, _, reason in BAD_TOKENS}
    assert len(BAD_TOKENS) >= 12


async def test_skew_is_small_and_id_token_type_is_refused_only_when_configured() -> None:
    async with provider() as (idp, clock):
        issuer = await started(idp, clock)
        just_expired = idp.mint(idp.claims(MCP, exp=int(clock()) - 10))
        assert (await issuer.verify(just_expired, MCP)).subject == "alice"
        id_token = idp.mint(idp.claims(MCP), header={"typ": "JWT"})
        assert (await issuer.verify(id_token, MCP)).subject == "alice"

        strict = await started(idp, clock, require_typ="at+jwt")
        assert await reason_of(lambda: strict.verify(id_token, MCP)) == "type"
        assert (await strict.verify(idp.mint(idp.claims(MCP)), MCP)).subject == "alice"


async def test_a_gateway_wide_audience_is_accepted_at_every_endpoint() -> None:
    async with provider() as (idp, clock):
        issuer = await started(idp, clock)
        token = idp.mint(idp.claims(GW))
        for resource in (MCP, GW + "/mcp/support", GW + "/servers/calc/mcp", GW + "/a2a/researcher"):
            assert (await issuer.verify(token, resource)).subject == "alice"


async def test_rotated_keys_are_picked_up_and_unknown_kid_refetches_are_rate_limited() -> None:
    async with provider() as (idp, clock):
        issuer = await started(idp, clock)
        assert idp.requests["jwks"] == 1
        new = idp.rotate("rsa-2")
        rotated = idp.mint(idp.claims(MCP), key=new)
        # Right after a fetch, a new kid waits for the interval (it could be a forgery flood).
        assert await reason_of(lambda: issuer.verify(rotated, MCP)) == "unknown_kid"
        assert idp.requests["jwks"] == 1

        clock.advance(31)
        assert (await issuer.verify(rotated, MCP)).subject == "alice"
        assert idp.requests["jwks"] == 2
        assert {"rsa-1", "rsa-2", "ec-1"} <= issuer.kids

        # A flood of invented kids: at most one refetch per interval.
        clock.advance(31)
        for _ in range(25):
            bogus = idp.mint(idp.claims(MCP), key=ec_key(secrets.token_hex(4)))
            assert await reason_of(lambda t=bogus: issuer.verify(t, MCP)) == "unknown_kid"  # type: ignore[misc]
        assert idp.requests["jwks"] == 3
        async with anyio.create_task_group() as tg:
            for _ in range(25):
                bogus = idp.mint(idp.claims(MCP), key=ec_key(secrets.token_hex(4)))
                tg.start_soon(reason_of, lambda t=bogus: issuer.verify(t, MCP))
        assert idp.requests["jwks"] == 3


async def test_symmetric_and_weak_keys_in_the_jwks_are_never_used() -> None:
    async with provider() as (idp, clock):
        secret = b"k" * 32
        idp.extra_jwks.append({"kty": "oct", "kid": "hmac", "k": "a" * 43, "alg": "HS256", "use": "sig"})
        issuer = await started(idp, clock)
        assert "hmac" not in issuer.kids
        forged = compact({"alg": "HS256", "kid": "hmac"}, idp.claims(MCP), lambda d: secret + d)
        assert await reason_of(lambda: issuer.verify(forged, MCP)) in {"unknown_kid", "algorithm"}


async def test_discovery_follows_path_insertion_then_the_oidc_location() -> None:
    assert discovery_urls("https://idp.example") == [
        "https://idp.example/.well-known/oauth-authorization-server",
        "https://idp.example/.well-known/openid-configuration",
    ]
    assert discovery_urls("https://kc.example/realms/acme/") == [
        "https://kc.example/.well-known/oauth-authorization-server/realms/acme",
        "https://kc.example/.well-known/openid-configuration/realms/acme",
        "https://kc.example/realms/acme/.well-known/openid-configuration",
    ]
    # A Keycloak-shaped issuer: only `<issuer>/.well-known/openid-configuration` exists.
    async with provider(issuer_path="/realms/acme", rfc8414=False) as (idp, clock):
        issuer = await started(idp, clock)
        assert issuer.metadata is not None and issuer.metadata["issuer"] == idp.issuer
        assert (await issuer.verify(idp.mint(idp.claims(MCP)), MCP)).issuer == idp.issuer


async def test_a_discovery_document_for_another_issuer_is_refused() -> None:
    async with provider() as (idp, clock):
        idp.advertised_issuer = idp.issuer + "/other"
        issuer = ExternalIssuer(config_for(idp), RESOURCES, clock=clock)
        assert not await issuer.start()
        assert issuer.last_error is not None and "another issuer" in issuer.last_error
        assert idp.requests["jwks"] == 0
        assert await reason_of(lambda: issuer.verify(idp.mint(idp.claims(MCP)), MCP)) == "keys_unavailable"


@pytest.mark.parametrize(
    ("jwks_uri", "why"),
    [
        ("https://169.254.169.254/latest/meta-data/jwks", "link-local"),
        ("http://169.254.169.254/jwks.json", "plain http"),
        ("https://10.1.2.3/jwks.json", "private"),
        ("https://[fd00::1]/jwks.json", "private"),
        ("file:///etc/passwd", "scheme"),
    ],
)
async def test_a_jwks_uri_into_the_internal_network_is_refused(jwks_uri: str, why: str) -> None:
    async with provider() as (idp, clock):
        idp.jwks_uri = jwks_uri
        issuer = ExternalIssuer(config_for(idp), RESOURCES, clock=clock)
        assert not await issuer.start()
        assert issuer.last_error is not None and why in issuer.last_error
        assert await reason_of(lambda: issuer.verify(idp.mint(idp.claims(MCP)), MCP)) == "keys_unavailable"


async def test_an_unreachable_provider_at_start_is_retried_and_keeps_the_last_good_keys(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with provider() as (idp, clock):
        idp.down = True
        verifiers, _ = build_external_verifiers([config_for(idp)], RESOURCES, clock=clock)
        with caplog.at_level(logging.WARNING, logger="tollhouse.auth.external"):
            await start_all(verifiers)  # must not raise
        assert "not available yet" in caplog.text
        issuer = verifiers[idp.issuer]
        assert isinstance(issuer, ExternalIssuer) and not issuer.loaded
        token = idp.mint(idp.claims(MCP))
        assert await reason_of(lambda: issuer.verify(token, MCP)) == "keys_unavailable"

        idp.down = False
        # Still within the retry interval: no request to the provider.
        before = dict(idp.requests)
        assert await reason_of(lambda: issuer.verify(token, MCP)) == "keys_unavailable"
        assert dict(idp.requests) == before
        clock.advance(31)
        assert (await issuer.verify(token, MCP)).subject == "alice"

        idp.down = True
        assert not await issuer.refresh(discovery=True)
        assert (await issuer.verify(idp.mint(idp.claims(MCP)), MCP)).subject == "alice"
        assert token not in caplog.text


async def test_the_background_loop_backs_off_then_refreshes_periodically() -> None:
    class Stop(Exception):
        pass

    async with provider() as (idp, clock):
        idp.down = True
        delays: list[float] = []

        async def sleep(seconds: float) -> None:
            delays.append(seconds)
            clock.advance(seconds)
            if len(delays) == 3:
                idp.down = False
            if len(delays) == 5:
                raise Stop

        issuer = ExternalIssuer(
            config_for(idp, jwks_refresh_seconds=600), RESOURCES, clock=clock, sleep=sleep
        )
        with pytest.raises(Stop):
            await issuer.run()
        assert delays == [1.0, 2.0, 4.0, 600.0, 600.0]
        assert issuer.loaded
        assert idp.requests["jwks"] == 2


async def test_composite_routes_by_issuer_and_opaque_tokens_to_introspection() -> None:
    async with provider() as (idp, clock):
        config = config_for(idp, client_id=idp.client_id, client_secret_env="IDP_SECRET")
        issuers, opaque = build_external_verifiers(
            [config], RESOURCES, environ={"IDP_SECRET": idp.client_secret}, clock=clock
        )
        await start_all(issuers)
        composite = CompositeVerifier(issuers=issuers, opaque=opaque)
        assert (await composite.verify(idp.mint(idp.claims(MCP)), MCP)).subject == "alice"
        token = idp.register_opaque(sub="bob", aud=MCP, exp=int(clock()) + 300)
        assert (await composite.verify(token, MCP)).subject == "bob"


# -- introspection ---------------------------------------------------------------------------------


def introspector(idp: TestIdp, clock: Clock, **overrides: Any) -> Introspector:
    config = config_for(idp, client_id=idp.client_id, client_secret_env="IDP_SECRET", **overrides)
    _, opaque = build_external_verifiers(
        [config], RESOURCES, environ={"IDP_SECRET": idp.client_secret}, clock=clock
    )
    assert isinstance(opaque, Introspector)
    return opaque


async def test_introspection_maps_an_active_token_and_refuses_the_rest() -> None:
    async with provider() as (idp, clock):
        check = introspector(idp, clock)
        exp = int(clock()) + 300
        active = idp.register_opaque(
            sub="bob",
            aud=[MCP, "other"],
            scope="mcp",
            client_id="agent-app",
            groups=["/finance"],
            exp=exp,
            iss=idp.issuer,
            roles=["idp-admins"],
        )
        principal = await check.verify(active, MCP)
        assert (principal.subject, principal.client_id, principal.scopes) == ("bob", "agent-app", ("mcp",))
        assert principal.teams == ("finance",)
        assert principal.roles == ("admin",)
        assert principal.issuer == idp.issuer
        assert principal.expires_at == exp

        cases = {
            idp.register_opaque(active=False): "inactive",
            "opq_never-issued": "inactive",
            idp.register_opaque(sub="bob", aud="https://other.example/mcp", exp=exp): "audience",
            idp.register_opaque(sub="bob", aud=GW + "/servers/calc/mcp", exp=exp): "audience",
            idp.register_opaque(sub="bob", exp=exp): "audience",
            idp.register_opaque(sub="bob", aud=MCP, exp=exp, iss="https://evil.example"): "issuer",
            idp.register_opaque(sub="bob", aud=MCP, exp=int(clock()) - 120): "expired",
            idp.register_opaque(aud=MCP, exp=exp): "claims",
        }
        for token, reason in cases.items():
            assert await reason_of(lambda t=token: check.verify(t, MCP)) == reason, token  # type: ignore[misc]


async def test_introspection_answers_are_cached_and_shared() -> None:
    async with provider() as (idp, clock):
        check = introspector(idp, clock)
        token = idp.register_opaque(sub="bob", aud=MCP, exp=int(clock()) + 300)
        for _ in range(5):
            await check.verify(token, MCP)
        assert idp.requests["introspect"] == 1
        clock.advance(61)  # positive answers live at most 60 s
        await check.verify(token, MCP)
        assert idp.requests["introspect"] == 2

        short = idp.register_opaque(sub="bob", aud=MCP, exp=int(clock()) + 10)
        await check.verify(short, MCP)
        clock.advance(11)  # ... and never past the token's expiry
        idp.opaque[short] = {"active": False}
        assert await reason_of(lambda: check.verify(short, MCP)) == "inactive"
        assert idp.requests["introspect"] == 4

        junk = "opq_junk"
        for _ in range(5):
            assert await reason_of(lambda: check.verify(junk, MCP)) == "inactive"
        assert idp.requests["introspect"] == 5
        clock.advance(6)
        assert await reason_of(lambda: check.verify(junk, MCP)) == "inactive"
        assert idp.requests["introspect"] == 6

        fresh = idp.register_opaque(sub="carol", aud=MCP, exp=int(clock()) + 300)
        subjects: list[str] = []

        async def one() -> None:
            subjects.append((await check.verify(fresh, MCP)).subject)

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(one)
        assert subjects == ["carol"] * 20
        assert idp.requests["introspect"] == 7


async def test_an_unreachable_or_unwilling_provider_means_refusal_not_a_crash(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with provider() as (idp, clock):
        check = introspector(idp, clock)
        token = idp.register_opaque(sub="bob", aud=MCP, exp=int(clock()) + 600)
        assert (await check.verify(token, MCP)).subject == "bob"
        idp.down = True
        clock.advance(61)
        with caplog.at_level(logging.DEBUG):
            assert await reason_of(lambda: check.verify(token, MCP)) == "introspection_unavailable"
        assert idp.requests["introspect"] == 2
        # A short back-off: a flood during an outage does not pile onto the provider.
        assert await reason_of(lambda: check.verify(token, MCP)) == "introspection_unavailable"
        assert idp.requests["introspect"] == 2
        idp.down = False
        clock.advance(2)
        assert (await check.verify(token, MCP)).subject == "bob"
        assert idp.requests["introspect"] == 3
        assert token not in caplog.text

        wrong_secret = introspector(idp, clock)
        wrong_secret._authorization = "Basic " + "d3Jvbmc6d3Jvbmc="  # "wrong:wrong"
        other = idp.register_opaque(sub="bob", aud=MCP, exp=int(clock()) + 300)
        assert await reason_of(lambda: wrong_secret.verify(other, MCP)) == "introspection_unavailable"

    # The provider is gone altogether.
    assert await reason_of(lambda: check.verify(idp.register_opaque(sub="x", aud=MCP), MCP)) == (
        "introspection_unavailable"
    )


async def test_an_introspection_endpoint_into_the_internal_network_is_refused() -> None:
    async with provider() as (idp, clock):
        check = introspector(idp, clock, introspection_endpoint="https://169.254.169.254/introspect")
        token = idp.register_opaque(sub="bob", aud=MCP)
        assert await reason_of(lambda: check.verify(token, MCP)) == "introspection_unavailable"
        assert idp.requests["introspect"] == 0


# -- settings --------------------------------------------------------------------------------------


def test_external_issuers_come_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    issuers: list[dict[str, Any]] = [
        {
            "issuer": "https://login.microsoftonline.com/tenant-id/v2.0",
            "audiences": ["api://tollhouse"],
            "team_map": {"5f1c7f3e": "finance"},
            "teams_from_map_only": True,
            "role_map": {"Tollhouse.Admin": "admin"},
        },
        {"issuer": "https://kc.example/realms/acme", "client_id": "gw", "client_secret_env": "KC_SECRET"},
    ]
    monkeypatch.setenv("TOLLHOUSE_AUTH__EXTERNAL_ISSUERS", orjson.dumps(issuers).decode())
    monkeypatch.setenv("TOLLHOUSE_AUTH__BUILTIN_SERVER", "false")
    auth = Settings().auth
    assert not auth.builtin_server
    assert auth.api_keys
    assert [c.issuer for c in auth.external_issuers] == [i["issuer"] for i in issuers]
    entra = auth.external_issuers[0]
    assert entra.audiences == ("api://tollhouse",)
    assert entra.role_map == {"Tollhouse.Admin": "admin"}
    assert auth.external_issuers[1].client_secret_env == "KC_SECRET"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"issuer": "http://idp.example"}, "https"),
        ({"issuer": "http://idp.example", "allow_loopback_http": True}, "https"),
        ({"issuer": "https://idp.example?x=1"}, "query"),
        ({"issuer": "https://idp.example", "algorithms": ["HS256"]}, "algorithms"),
        ({"issuer": "https://idp.example", "algorithms": ["none"]}, "algorithms"),
        ({"issuer": "https://idp.example", "role_map": {"g": "root"}}, "role_map"),
        ({"issuer": "https://idp.example", "client_id": "gw"}, "client_secret_env"),
        ({"issuer": "https://idp.example", "introspection_endpoint": "http://idp.example/i"}, "https"),
        ({"issuer": "https://idp.example", "surprise": 1}, "surprise"),
    ],
)
def test_bad_issuer_configuration_is_refused(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ExternalIssuerConfig(**entry)


def test_only_one_provider_may_introspect_and_issuers_are_unique() -> None:
    one = {"issuer": "https://a.example", "client_id": "gw", "client_secret_env": "A"}
    two = {"issuer": "https://b.example", "client_id": "gw", "client_secret_env": "B"}
    with pytest.raises(ValidationError, match="only one"):
        AuthSettings(external_issuers=[one, two])
    with pytest.raises(ValidationError, match="twice"):
        AuthSettings(external_issuers=[{"issuer": "https://a.example"}] * 2)
    with pytest.raises(ValueError, match="A"):
        build_external_verifiers([ExternalIssuerConfig(**one)], RESOURCES, environ={})


def test_the_config_files_gateway_auth_section_becomes_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOLLHOUSE_AUTH__ACCESS_TOKEN_TTL_SECONDS", "600")
    config = load_config(
        """
gateway:
  public_url: "https://gw.example"
  auth:
    builtin_server: false
    external_issuers:
      - issuer: "https://acme.okta.com/oauth2/default"
        team_claims: [groups]
        role_map: {tollhouse-admins: admin}
"""
    )
    settings = load_settings(config)
    assert not settings.auth.builtin_server
    assert settings.auth.access_token_ttl_seconds == 600  # the environment's, not overridden
    assert settings.auth.external_issuers[0].role_map == {"tollhouse-admins": "admin"}
    exported = config_to_dict(config.gateway, [], [])
    assert (
        exported["gateway"]["auth"]["external_issuers"][0]["issuer"] == "https://acme.okta.com/oauth2/default"
    )

    with pytest.raises(ConfigError, match=r"gateway\.auth\.external_issuers\[0\]\.role_map"):
        load_config(
            'gateway: {auth: {external_issuers: [{issuer: "https://x.example", role_map: {g: root}}]}}'
        )
    with pytest.raises(ConfigError, match=r"gateway\.auth\.bultin_server"):
        load_config("gateway: {auth: {bultin_server: false}}")


# -- end to end ------------------------------------------------------------------------------------


def _text(result: CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, TextContent))


@pytest.mark.parametrize("mode", MODES)
async def test_a_gateway_in_front_of_an_external_provider(
    tmp_path: Path, mode: Mode, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, _ = echo_upstream()
    recorder = HeaderRecorder(server.streamable_http_app())
    monkeypatch.setenv("E2E_IDP_SECRET", "introspection-secret")
    async with running_idp() as idp, serve(recorder, path="/mcp") as upstream_url:
        config = ExternalIssuerConfig(
            issuer=idp.issuer,
            allow_loopback_http=True,
            team_map={"platform-team": "platform"},
            client_id=idp.client_id,
            client_secret_env="E2E_IDP_SECRET",
        )
        async with running_gateway(tmp_path, auth=AuthSettings(external_issuers=[config])) as gw:
            await gw.add_server("echo", upstream_url)
            token = idp.mint(idp.claims(gw.mcp_url, groups=["platform-team"]))
            async with gw.client(token, mode) as client:
                names = [t.name for t in (await client.list_tools()).tools]
                assert "echo__echo" in names
                assert _text(await client.call_tool("echo__echo", {"text": "via the IdP"})) == "via the IdP"
            opaque = idp.register_opaque(sub="bob", aud=gw.mcp_url, scope="mcp", exp=int(idp.clock()) + 300)
            async with gw.client(opaque, mode) as client:
                assert _text(await client.call_tool("echo__echo", {"text": "opaque"})) == "opaque"
            # The upstream never sees the agent's credential.
            assert all(
                token not in str(r.headers) and opaque not in str(r.headers) for r in recorder.requests
            )

            seen = len(recorder.requests)
            now = int(idp.clock())
            bad = {
                "other endpoint": idp.mint(idp.claims(gw.base_url + "/servers/echo/mcp")),
                "foreign audience": idp.mint(idp.claims("https://elsewhere.example/mcp")),
                "expired": idp.mint(idp.claims(gw.mcp_url, exp=now - 120)),
                "alg none": idp.unsigned(idp.claims(gw.mcp_url)),
                "HS256 with the public key": idp.hs256_with_public_key(idp.claims(gw.mcp_url)),
                "unknown kid": idp.mint(idp.claims(gw.mcp_url), key=ec_key("ghost")),
                "inactive opaque": idp.register_opaque(active=False),
            }
            call = {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {"name": "echo__echo", "arguments": {"text": "x"}},
            }
            async with httpx2.AsyncClient(trust_env=False, timeout=30) as http:
                for name, credential in bad.items():
                    response = await http.post(
                        gw.mcp_url,
                        json=call,
                        headers={
                            "Authorization": f"Bearer {credential}",
                            "Accept": "application/json, text/event-stream",
                            "MCP-Protocol-Version": "2025-11-25",
                        },
                    )
                    assert response.status_code == 401, name
                    assert "invalid_token" in response.headers["www-authenticate"], name
                metadata = (await http.get(gw.base_url + "/.well-known/oauth-protected-resource/mcp")).json()
            assert len(recorder.requests) == seen
            assert idp.issuer in metadata["authorization_servers"]


async def test_a_gateway_starts_while_the_provider_is_down(tmp_path: Path) -> None:
    async with running_idp() as idp:
        idp.down = True
        config = ExternalIssuerConfig(issuer=idp.issuer, allow_loopback_http=True)
        async with running_gateway(tmp_path, auth=AuthSettings(external_issuers=[config])) as gw:
            token = idp.mint(idp.claims(gw.mcp_url))
            async with httpx2.AsyncClient(trust_env=False, timeout=30) as http:
                assert (await http.get(gw.base_url + "/healthz")).status_code == 200
                response = await http.post(
                    gw.mcp_url,
                    json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                    headers={
                        "Authorization": f"Bearer {token}",
                        "Accept": "application/json, text/event-stream",
                    },
                )
            assert response.status_code == 401
