"""The gateway's own credential for an HTTP upstream, and the provider seam connectors use.

An `UpstreamAuth` names an environment variable or a stored (encrypted) secret, never holds
a value; this turns it into the one header to send. The agent's token is never involved
(PROTOCOLS.md §2.5: no passthrough).

Connectors ask a `CredentialProvider` for headers. A static one (`bearer`/`header`) is asked
once at `start()` and its header rides in the connector's base headers, so the hot path does
no extra work; a per-request one (the OAuth types, upstream_credentials.py) is asked on
every request with the caller's principal key, caches what it fetched, and is told about an
upstream 401 so it can drop that token and fetch a fresh one once.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Protocol

from tollhouse.gateway.errors import GatewayError, UpstreamUnavailable
from tollhouse.registry.models import Upstream

__all__ = [
    "CredentialProvider",
    "SecretSource",
    "StaticCredentials",
    "credential_headers",
    "header_for",
    "vault_subject",
]

logger = logging.getLogger(__name__)

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 §5.6.2 field name
_HEADER_VALUE = re.compile(r"[\x20-\x7e]+")
_OWN_HEADERS = frozenset(
    {"accept", "content-type", "content-length", "host", "transfer-encoding", "connection"}
)


class CredentialProvider(Protocol):
    """Headers carrying the gateway's credential for one upstream."""

    per_request: bool
    """False: `headers(None)` at start is the credential for every request of that connection."""

    async def headers(self, principal_key: str | None) -> dict[str, str]:
        """The credential headers for a request on behalf of `principal_key` (None: the gateway's own).

        Raises:
            GatewayError: no credential can be had (UpstreamUnavailable, or an
                UpstreamAuthorizationRequired that tells the user where to connect).
        """
        ...

    async def on_unauthorized(self, principal_key: str | None) -> None:
        """The upstream answered 401 to what `headers(principal_key)` gave: forget or refresh it."""
        ...

    def refused(self, principal_key: str | None) -> GatewayError:
        """The error for a request the upstream still refuses after a fresh credential."""
        ...


class SecretSource(Protocol):
    """Where stored secrets are read (registry/secrets_store.py)."""

    async def get_secret(self, upstream: str, field: str) -> str | None:
        """The plaintext of `upstream`'s secret `field`, or None."""
        ...


class StaticCredentials:
    """`none`, `bearer` and `header`: one header from the environment or the secret store."""

    per_request = False

    def __init__(
        self, upstream: Upstream, environ: Mapping[str, str], secrets: SecretSource | None = None
    ) -> None:
        self._upstream = upstream
        self._environ = environ
        self._secrets = secrets

    async def headers(self, principal_key: str | None) -> dict[str, str]:
        """The header (read at each connector start, so a changed secret applies on reconnect).

        Raises:
            UpstreamUnavailable: the credential is missing or unusable.
        """
        field = self._upstream.auth.stored_secret_field
        if field is None or self._upstream.auth.type not in ("bearer", "header"):
            return credential_headers(self._upstream, self._environ)
        value = None
        if self._secrets is not None:
            try:
                value = await self._secrets.get_secret(self._upstream.name, field)
            except ValueError:  # VaultError: the row's key is gone, or it was altered
                logger.warning("upstream %s: the stored %s cannot be decrypted", self._upstream.name, field)
                raise UpstreamUnavailable(self._upstream.name) from None
        if not value:
            logger.warning("upstream %s: no stored %s", self._upstream.name, field)
            raise UpstreamUnavailable(self._upstream.name)
        return header_for(self._upstream, value)

    async def on_unauthorized(self, principal_key: str | None) -> None:
        """Nothing to refresh: a static credential is what it is."""

    def refused(self, principal_key: str | None) -> GatewayError:
        """The upstream refuses the gateway's credential: it is unavailable."""
        return UpstreamUnavailable(self._upstream.name)


def vault_subject(principal_key: str) -> str:
    """The per-user vault key of a principal: `issuer|subject`, without the client it acts through.

    `Principal.key` is `issuer|subject|client_id`; a person's upstream consent holds for
    every agent acting for them, so the client id is dropped.
    """
    head, sep, _ = principal_key.rpartition("|")
    return head if sep else principal_key


def header_for(upstream: Upstream, value: str) -> dict[str, str]:
    """The credential header of `upstream` carrying `value` (a stored secret or a fetched token).

    Raises:
        UpstreamUnavailable: the header name or the value cannot be sent.
    """
    auth = upstream.auth
    header, prefix = (auth.header, "") if auth.type == "header" else ("Authorization", "Bearer ")
    if not header or not _TOKEN.fullmatch(header) or _is_own_header(header):
        logger.warning("upstream %s: the %s credential is misconfigured", upstream.name, auth.type)
        raise UpstreamUnavailable(upstream.name)
    if not _HEADER_VALUE.fullmatch(value):
        logger.warning("upstream %s: the credential is not a valid header value", upstream.name)
        raise UpstreamUnavailable(upstream.name)
    return {header: prefix + value}


def credential_headers(upstream: Upstream, environ: Mapping[str, str]) -> dict[str, str]:
    """The configured credential as a header (empty for `none`); its value is never logged.

    Raises:
        UpstreamUnavailable: the reference is incomplete or its variable is unset or unusable.
    """
    auth = upstream.auth
    if auth.type not in ("bearer", "header"):
        return {}
    header: str | None
    if auth.type == "bearer":
        header, variable, prefix = "Authorization", auth.token_env, "Bearer "
    else:
        header, variable, prefix = auth.header, auth.value_env, ""
    if not header or not variable or not _TOKEN.fullmatch(header) or _is_own_header(header):
        logger.warning("upstream %s: the %s credential is misconfigured", upstream.name, auth.type)
        raise UpstreamUnavailable(upstream.name)
    value = environ.get(variable)
    if not value:
        logger.warning("upstream %s: credential variable %s is not set", upstream.name, variable)
        raise UpstreamUnavailable(upstream.name)
    if not _HEADER_VALUE.fullmatch(value):
        logger.warning(
            "upstream %s: credential variable %s is not a valid header value", upstream.name, variable
        )
        raise UpstreamUnavailable(upstream.name)
    return {header: prefix + value}


def _is_own_header(name: str) -> bool:
    lower = name.lower()
    return lower in _OWN_HEADERS or lower.startswith("mcp-")
