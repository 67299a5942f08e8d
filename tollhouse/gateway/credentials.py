"""The gateway's own credential for an HTTP upstream, resolved from the environment.

An `UpstreamAuth` names an environment variable, never a value; this turns it into the one
header to send. The agent's token is never involved (PROTOCOLS.md §2.5: no passthrough).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

from tollhouse.gateway.errors import UpstreamUnavailable
from tollhouse.registry.models import Upstream

__all__ = ["credential_headers"]

logger = logging.getLogger(__name__)

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 §5.6.2 field name
_HEADER_VALUE = re.compile(r"[\x20-\x7e]+")
_OWN_HEADERS = frozenset(
    {"accept", "content-type", "content-length", "host", "transfer-encoding", "connection"}
)


def credential_headers(upstream: Upstream, environ: Mapping[str, str]) -> dict[str, str]:
    """The configured credential as a header (empty for `none`); its value is never logged.

    Raises:
        UpstreamUnavailable: the reference is incomplete or its variable is unset or unusable.
    """
    auth = upstream.auth
    if auth.type == "none":
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
