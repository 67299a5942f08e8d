"""Authorization server metadata: RFC 8414 and the OpenID Connect discovery document.

MCP clients must try both (PROTOCOLS.md §2.1), and refuse an issuer that does not match the
one they derived, or metadata without `code_challenge_methods_supported`. The OIDC document
is the same plus the two fields OIDC requires; tollhouse issues no ID tokens.
"""

from __future__ import annotations

from typing import Any

__all__ = ["authorization_server_metadata", "openid_configuration"]


def authorization_server_metadata(public_url: str, scopes: list[str]) -> dict[str, Any]:
    """The RFC 8414 document for issuer `public_url`."""
    base = public_url.rstrip("/")
    return {
        "issuer": base,
        "authorization_endpoint": f"{base}/oauth/authorize",
        "token_endpoint": f"{base}/oauth/token",
        "registration_endpoint": f"{base}/oauth/register",
        "revocation_endpoint": f"{base}/oauth/revoke",
        "jwks_uri": f"{base}/oauth/jwks.json",
        "scopes_supported": scopes,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "authorization_response_iss_parameter_supported": True,
        "client_id_metadata_document_supported": True,
    }


def openid_configuration(public_url: str, scopes: list[str]) -> dict[str, Any]:
    """The OpenID Connect discovery document (the same, plus what OIDC makes mandatory)."""
    return {
        **authorization_server_metadata(public_url, scopes),
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
    }
