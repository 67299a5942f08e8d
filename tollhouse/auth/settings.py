"""`Settings.auth`: which credentials the gateway accepts and who issues them.

Kept apart from gateway/settings.py because the external-issuer model carries its own
validation (URLs, algorithms, role names) and belongs with the code that uses it. Set through
the environment (`TOLLHOUSE_AUTH__BUILTIN_SERVER=false`, `TOLLHOUSE_AUTH__EXTERNAL_ISSUERS='[…]'`
as JSON) or the config file's `gateway.auth` mapping.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tollhouse.auth.external import ExternalIssuerConfig

__all__ = ["AuthSettings", "ExternalIssuerConfig"]


class AuthSettings(BaseModel):
    """Credentials the gateway accepts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # The built-in authorization server (`/oauth/*`, its discovery documents and its JWTs);
    # off when an external identity provider issues every token.
    builtin_server: bool = True
    api_keys: bool = True
    access_token_ttl_seconds: int = Field(default=900, gt=0, le=86_400)
    refresh_token_ttl_seconds: int = Field(default=30 * 86_400, ge=300)
    # How often each replica re-reads revocations (DESIGN.md: every replica within 5 s).
    revocation_poll_seconds: float = Field(default=2.0, gt=0, le=5.0)
    external_issuers: list[ExternalIssuerConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> AuthSettings:
        issuers = [c.issuer for c in self.external_issuers]
        duplicates = sorted({i for i in issuers if issuers.count(i) > 1})
        if duplicates:
            raise ValueError(f"external issuers configured twice: {duplicates}")
        # Opaque tokens name no issuer, so only one provider can be asked about them.
        if sum(c.client_id is not None for c in self.external_issuers) > 1:
            raise ValueError("only one external issuer may introspect opaque tokens (client_id)")
        return self
