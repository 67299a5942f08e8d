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
    kind: str = "client"

    @property
    def key(self) -> str:
        """A stable identity key for binding sessions and state to this principal."""
        return f"{self.issuer}|{self.subject}|{self.client_id or ''}"
