"""Identity: principals, token verification and the bearer middleware."""

from tollhouse.auth.middleware import BearerAuthMiddleware
from tollhouse.auth.principal import Principal
from tollhouse.auth.verifiers import ApiKeyVerifier, TokenVerifier, hash_secret, new_api_key

__all__ = [
    "ApiKeyVerifier",
    "BearerAuthMiddleware",
    "Principal",
    "TokenVerifier",
    "hash_secret",
    "new_api_key",
]
