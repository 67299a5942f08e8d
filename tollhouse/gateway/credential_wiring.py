"""Composition of the upstream-credential pieces, so `create_app` wires them in a few lines.

The key ring (auth/keyring.py) gives the credential-encryption keys; the sealed store lives
on the registry's engine; `UpstreamCredentials` builds each connector's provider; the
connect flow is mounted at `/oauth/upstreams`. Who a browser user is comes from `identify`
(by default: a bearer token verified for the gateway's public URL, as an agent would send).
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.requests import Request

from tollhouse.auth.keyring import KeyRing
from tollhouse.auth.ssrf import UrlPolicy
from tollhouse.auth.tokens import InvalidTokenError
from tollhouse.auth.vault import CredentialCipher
from tollhouse.auth.verifiers import TokenVerifier
from tollhouse.gateway.settings import Settings
from tollhouse.gateway.upstream_credentials import SubjectTokenSource, UpstreamCredentials
from tollhouse.gateway.upstream_oauth import Identify, Lookup, UpstreamConnectFlow, upstream_oauth_app
from tollhouse.registry.secrets_store import SqlSecretStore

__all__ = ["CredentialServices", "bearer_identify", "build_credential_services"]


@dataclass
class CredentialServices:
    """The key ring, the sealed store and the provider factory of one app."""

    keyring: KeyRing
    secrets: SqlSecretStore
    credentials: UpstreamCredentials

    def use_keyring(self, ring: KeyRing) -> None:
        """Seal with `ring`'s active key from now on (after a rotation)."""
        self.keyring = ring
        self.secrets.use_cipher(CredentialCipher.from_keyring(ring))

    def connect_app(self, lookup: Lookup, identify: Identify) -> Starlette:
        """The connect flow, to mount at `/oauth/upstreams`."""
        return upstream_oauth_app(UpstreamConnectFlow(self.credentials, lookup, identify))


def build_credential_services(
    settings: Settings,
    engine: sa.Engine,
    *,
    keyring: KeyRing | None = None,
    subject_token_for: SubjectTokenSource | None = None,
) -> CredentialServices:
    """Load the key ring (from TOLLHOUSE_SECRET_KEYS or the data directory) and build the rest."""
    if keyring is None:
        secret = settings.secret_keys.get_secret_value() if settings.secret_keys is not None else None
        keyring = KeyRing.load(secret, settings.data_dir)
    secrets = SqlSecretStore(engine, CredentialCipher.from_keyring(keyring))
    policy = UrlPolicy(
        allow_loopback_http=settings.upstreams.oauth_allow_loopback_http,
        allow_private=settings.upstreams.oauth_allow_private,
    )
    credentials = UpstreamCredentials(
        secrets=secrets, public_url=settings.public_url, policy=policy, subject_token_for=subject_token_for
    )
    return CredentialServices(keyring, secrets, credentials)


def bearer_identify(verifier: TokenVerifier, public_url: str) -> Identify:
    """`identify` from the request's bearer token: the vault subject `issuer|subject`, or None."""

    async def identify(request: Request) -> str | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        try:
            principal = await verifier.verify(token.strip(), public_url)
        except InvalidTokenError:
            return None
        return f"{principal.issuer}|{principal.subject}"

    return identify
