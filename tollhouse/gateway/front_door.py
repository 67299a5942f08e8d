"""The front door: how the gateway knows who is calling, assembled from the auth package.

`build_front_door` turns settings into the key ring, the built-in issuer, the verifier chain
(API keys, our own JWTs, external issuers), the revocation list and the failed-auth log;
`protected_resource_routes` serves RFC 9728 metadata for every endpoint; `poll_revocations`
keeps revocations made on other replicas (or by the admin API) in step within seconds.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import orjson
from anyio.abc import TaskStatus
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tollhouse.auth.external import build_external_verifiers
from tollhouse.auth.failures import AuthFailureLog
from tollhouse.auth.keyring import KeyRing
from tollhouse.auth.resources import DEFAULT_SCOPES, ResourceSpace
from tollhouse.auth.tokens import JwtVerifier, RevocationList, TokenIssuer
from tollhouse.auth.verifiers import ApiKeyVerifier, CompositeVerifier, LocalJwtVerifier, TokenVerifier
from tollhouse.gateway.settings import Settings
from tollhouse.registry.identity_store import SqlIdentityStore
from tollhouse.registry.store import RegistryStore

__all__ = [
    "FrontDoor",
    "build_front_door",
    "poll_revocations",
    "protected_resource_routes",
    "revoke_principal",
]

logger = logging.getLogger(__name__)
# The audience of subject tokens for token exchange: under public_url but no endpoint of ours.
TOKEN_EXCHANGE_AUDIENCE_PATH = "/oauth/token-exchange-subject"  # noqa: S105 - a path, not a secret


@dataclass
class FrontDoor:
    """Everything that authenticates callers, built once per app."""

    ring: KeyRing
    resources: ResourceSpace
    issuer: TokenIssuer
    api_keys: ApiKeyVerifier
    revocations: RevocationList
    verifier: CompositeVerifier
    failures: AuthFailureLog = field(default_factory=AuthFailureLog)
    authorization_servers: list[str] = field(default_factory=list)
    # External identity providers' verifiers by issuer; `start_all` loads their keys at start.
    external: dict[str, TokenVerifier] = field(default_factory=dict)

    def revoke(self, jti: str, expires_at: float) -> None:
        """Drop an access token in this process at once (other replicas follow by polling)."""
        self.revocations.add(jti, expires_at)

    def use_ring(self, ring: KeyRing) -> None:
        """After a rotation: sign with the new active key; every older key stays published."""
        self.ring = ring
        self.issuer.use(ring)

    async def subject_token(self, principal_key: str) -> str | None:
        """A subject token for RFC 8693 token exchange on behalf of one of our own principals.

        A short-lived assertion signed by the built-in issuer (the identity provider trusts our
        JWKS). Its audience is no resource of ours, so it cannot be replayed at the gateway.
        Principals of external issuers get None: the gateway keeps no copy of their tokens.
        """
        issuer, _, rest = principal_key.partition("|")
        subject, _, client_id = rest.partition("|")
        if issuer != self.resources.base or not subject:
            return None
        return self.issuer.mint(
            subject=subject,
            client_id=client_id or subject,
            audience=self.resources.base + TOKEN_EXCHANGE_AUDIENCE_PATH,
            scope="",
            kind="user" if client_id and client_id != subject else "client",
            ttl_seconds=300,
        ).token


def build_front_door(settings: Settings) -> FrontDoor:
    """The key ring, issuer and verifier chain the settings ask for."""
    secret = settings.secret_keys.get_secret_value() if settings.secret_keys else None
    key_file = Path(settings.data_dir) / "keys" / "master.json"
    generated = secret is None and not key_file.exists()
    ring = KeyRing.load(secret, settings.data_dir)
    if generated:
        # Said once, at the start that creates them (DESIGN.md: key material).
        print(
            f"tollhouse: generated master keys in {key_file}; replicas must share them "
            "(TOLLHOUSE_SECRET_KEYS)",
            file=sys.stderr,
        )
    resources = ResourceSpace(settings.public_url)
    issuer = TokenIssuer(resources.base, ring, ttl_seconds=settings.auth.access_token_ttl_seconds)
    revocations = RevocationList()
    api_keys = ApiKeyVerifier(enabled=settings.auth.api_keys)
    issuers: dict[str, TokenVerifier] = {}
    servers: list[str] = []
    if settings.auth.builtin_server:
        local = JwtVerifier(
            issuer=resources.base,
            keys=lambda: issuer.public_keys,
            accepted_audiences=resources.accepted_audiences,
            revoked=revocations,
            algorithms=("ES256",),
            require_typ="at+jwt",
            trust_roles_claim=True,
        )
        issuers[resources.base] = LocalJwtVerifier(local)
        servers.append(resources.base)
    external, opaque = build_external_verifiers(settings.auth.external_issuers, resources)
    issuers.update(external)
    servers.extend(external)
    verifier = CompositeVerifier(
        api_keys=api_keys if settings.auth.api_keys else None, issuers=issuers, opaque=opaque
    )
    return FrontDoor(
        ring=ring,
        resources=resources,
        issuer=issuer,
        api_keys=api_keys,
        revocations=revocations,
        verifier=verifier,
        authorization_servers=servers,
        external=external,
    )


def protected_resource_routes(
    door: FrontDoor,
    *,
    exists: Callable[[str, str], bool],
    step_up_scopes: Callable[[], frozenset[str]],
) -> list[BaseRoute]:
    """RFC 9728 documents: one per endpoint (path inserted after the well-known prefix), plus the root.

    `exists(kind, name)` tells whether a toolset / server / agent is registered, so metadata is
    served only for endpoints that exist.
    """
    prefix = "/.well-known/oauth-protected-resource"

    def document(path: str) -> Response:
        scopes = sorted(set(DEFAULT_SCOPES) | step_up_scopes())
        body = {
            "resource": door.resources.uri(path) if path else door.resources.base,
            "authorization_servers": door.authorization_servers,
            "scopes_supported": scopes,
            "bearer_methods_supported": ["header"],
            "resource_name": "tollhouse",
        }
        return Response(
            orjson.dumps(body),
            media_type="application/json",
            headers={"Cache-Control": "public, max-age=300"},
        )

    def not_found() -> Response:
        return Response(b'{"error":"not_found"}', status_code=404, media_type="application/json")

    async def root(request: Request) -> Response:
        return document("")

    async def mcp(request: Request) -> Response:
        return document("/mcp")

    async def toolset(request: Request) -> Response:
        name = request.path_params["name"]
        return document(f"/mcp/{name}") if exists("toolset", name) else not_found()

    async def server(request: Request) -> Response:
        name = request.path_params["name"]
        return document(f"/servers/{name}/mcp") if exists("server", name) else not_found()

    async def agent(request: Request) -> Response:
        name = request.path_params["name"]
        return document(f"/a2a/{name}") if exists("agent", name) else not_found()

    return [
        Route(prefix, root, methods=["GET"]),
        Route(prefix + "/mcp", mcp, methods=["GET"]),
        Route(prefix + "/mcp/{name}", toolset, methods=["GET"]),
        Route(prefix + "/servers/{name}/mcp", server, methods=["GET"]),
        Route(prefix + "/a2a/{name}", agent, methods=["GET"]),
    ]


PRINCIPAL_REVOCATION_SECONDS = 24 * 3600  # longer than any access token lives (settings cap)


async def revoke_principal(door: FrontDoor, identity: SqlIdentityStore, key: str) -> None:
    """Refuse every token of `user:<subject>` / `client:<id>` issued until now, on every replica."""
    now = time.time()
    until = now + PRINCIPAL_REVOCATION_SECONDS
    door.revocations.revoke_before(key, now, until)
    await identity.revoke_jti(key, datetime.fromtimestamp(until, UTC))


async def _apply(door: FrontDoor, identity: SqlIdentityStore, since: datetime | None) -> None:
    for jti, expires_at, revoked_at in await identity.revoked_jtis(since):
        if jti.startswith(("user:", "client:")):
            door.revocations.revoke_before(jti, revoked_at.timestamp(), expires_at.timestamp())
        else:
            door.revocations.add(jti, expires_at.timestamp())


async def poll_revocations(
    door: FrontDoor,
    identity: SqlIdentityStore,
    store: RegistryStore,
    interval_seconds: float,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Keep revocations (and the API-key index) in step with the database, for every replica."""
    mark = datetime.now(UTC)
    await _apply(door, identity, None)
    task_status.started()
    while True:
        await anyio.sleep(interval_seconds)
        try:
            # Overlap the window: a revocation committed just before the last mark but seen late.
            since, mark = mark - timedelta(seconds=5), datetime.now(UTC)
            await _apply(door, identity, since)
            door.api_keys.replace(await store.list_clients())
            door.revocations.purge(time.time())
        except Exception:  # a database hiccup must not end the poller; the next round retries
            logger.exception("revocation poll failed")
