"""Principal: who is calling, as established by a verified credential. Never from the payload."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Principal"]


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: a person or a client acting for a team."""

    subject: str
    client_id: str | None = None
    teams: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    issuer: str = "tollhouse"
    kind: str = "client"  # "client" (acts for itself) or "user" (a person, through a client)
    roles: tuple[str, ...] = ()  # admin-API roles: admin, approver, auditor, viewer
    token_id: str | None = None  # the access token's `jti`, for revocation and audit
    expires_at: float | None = None  # the credential's expiry (epoch seconds), if it has one
    issued_at: float | None = None  # when the credential was issued (epoch seconds), if known

    @property
    def key(self) -> str:
        """A stable identity key for binding sessions and state to this principal."""
        return f"{self.issuer}|{self.subject}|{self.client_id or ''}"
