"""A2A agent cards: validate upstream cards (1.0 or 0.3) and rewrite them into the card tollhouse serves."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from a2a.compat.v0_3 import types as types_v03
from a2a.compat.v0_3.conversions import to_core_agent_card
from a2a.server.request_handlers.response_helpers import agent_card_to_dict
from a2a.types import AgentCard, AgentInterface, AgentSkill
from google.protobuf.json_format import ParseDict, ParseError
from pydantic import ValidationError

__all__ = [
    "SKILL_EXTENSION_URI",
    "SKILL_METADATA_KEY",
    "SUPPORTED_BINDINGS",
    "CardError",
    "CardInterface",
    "CardSkill",
    "CardVersion",
    "JSONObject",
    "ParsedCard",
    "card_etag",
    "etag_matches",
    "parse_card",
    "rewrite_card",
    "served_versions",
]

JSONObject = dict[str, Any]
CardVersion = Literal["1.0", "0.3"]

SKILL_METADATA_KEY = "tollhouse/skill"
SKILL_EXTENSION_URI = "urn:tollhouse:a2a:skill:v1"
SUPPORTED_BINDINGS = ("JSONRPC", "HTTP+JSON")

_SKILL_EXTENSION_DESCRIPTION = f"Name the skill in message metadata under {SKILL_METADATA_KEY!r}"
_HTTP_BINDINGS = frozenset(SUPPORTED_BINDINGS)
_SERVED_VERSIONS = ("1.0", "0.3")
_PARSE_ERROR_FIELD = re.compile(r"Failed to parse (\w+) field")
_UNSAFE_URL_CHARS = re.compile(r"[\x00-\x20\x7f]")


class CardError(ValueError):
    """The document is not a usable A2A agent card (message names the problem, never echoes the document)."""


@dataclass(frozen=True)
class CardInterface:
    """One place the agent can be reached: binding, URL, protocol version (and tenant)."""

    binding: str
    url: str
    protocol_version: str
    tenant: str | None = None


@dataclass(frozen=True)
class CardSkill:
    """A skill the card advertises."""

    id: str
    name: str
    description: str
    tags: tuple[str, ...] = ()
    examples: tuple[str, ...] = ()
    input_modes: tuple[str, ...] = ()
    output_modes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ParsedCard:
    """A validated upstream agent card: the document as received plus the SDK's 1.0 view of it."""

    document: JSONObject
    card: AgentCard
    version: CardVersion
    name: str
    description: str
    skills: tuple[CardSkill, ...]
    interfaces: tuple[CardInterface, ...]
    streaming: bool
    push_notifications: bool
    extended_card: bool

    def pinned(self) -> JSONObject:
        """The document without `signatures`: what a card pin approves."""
        return {key: copy.deepcopy(value) for key, value in self.document.items() if key != "signatures"}

    def preferred(self) -> CardInterface:
        """The first interface whose binding is in SUPPORTED_BINDINGS and whose version is 1.x or 0.3.

        Raises CardError if there is none.
        """
        for interface in self.interfaces:
            if interface.binding in _HTTP_BINDINGS and _is_spoken_version(interface.protocol_version):
                return interface
        raise CardError("the card offers no JSONRPC or HTTP+JSON interface for A2A 1.x or 0.3")

    def skill(self, skill_id: str) -> CardSkill | None:
        """The skill with this id, or None."""
        return next((skill for skill in self.skills if skill.id == skill_id), None)


def parse_card(document: Any) -> ParsedCard:
    """Validate `document` as an A2A 1.0 card (has `supportedInterfaces`) or a 0.3 card (has `url`).

    1.0 cards are parsed with protobuf's ParseDict into `a2a.types.AgentCard`; 0.3 cards are validated with
    the SDK's 0.3 pydantic model and converted with its compat conversion. Every interface URL must be an
    absolute http(s) URL without userinfo, and skill ids must be unique and non-empty. Raises CardError
    otherwise.
    """
    if not isinstance(document, dict):
        raise CardError("not an A2A agent card: expected a JSON object")
    document = copy.deepcopy(document)
    version: CardVersion
    if "supportedInterfaces" in document:
        version = "1.0"
        card = _parse_v1(document)
        interfaces = tuple(
            CardInterface(
                binding=interface.protocol_binding,
                url=interface.url,
                protocol_version=interface.protocol_version,
                tenant=interface.tenant or None,
            )
            for interface in card.supported_interfaces
        )
    elif "url" in document:
        version = "0.3"
        card, interfaces = _parse_v03(document)
    else:
        raise CardError("not an A2A agent card: missing 'supportedInterfaces' (A2A 1.0) or 'url' (A2A 0.3)")

    if not card.name.strip():
        raise CardError("not an A2A agent card: missing 'name'")
    for interface in interfaces:
        _check_interface(interface)
    skills = tuple(_card_skill(skill) for skill in card.skills)
    seen: set[str] = set()
    for skill in skills:
        if not skill.id:
            raise CardError("skill ids must be non-empty")
        if skill.id in seen:
            raise CardError(f"skill ids must be unique: {skill.id!r}")
        seen.add(skill.id)

    return ParsedCard(
        document=document,
        card=card,
        version=version,
        name=card.name,
        description=card.description,
        skills=skills,
        interfaces=interfaces,
        streaming=card.capabilities.streaming,
        push_notifications=card.capabilities.push_notifications,
        extended_card=card.capabilities.extended_agent_card,
    )


def served_versions(parsed: ParsedCard) -> tuple[str, ...]:
    """The A2A versions a rewritten card offers: always 1.0; 0.3 too when the agent's card offers it.

    A 1.0-only agent's card thus looks as it would directly (no 0.3 fields a strict 1.0 reader
    rejects), while a 0.3 agent is offered to both generations of clients.
    """
    legacy = any(
        i.binding in _HTTP_BINDINGS and i.protocol_version.startswith("0.") for i in parsed.interfaces
    )
    return _SERVED_VERSIONS if legacy else ("1.0",)


def rewrite_card(
    parsed: ParsedCard,
    *,
    endpoint_url: str,
    security_schemes: JSONObject,
    security_requirements: list[JSONObject],
    skills: Sequence[str] | None = None,
) -> JSONObject:
    """The card tollhouse serves for this agent, as JSON (1.0 shape plus the SDK's 0.3 compatibility fields).

    Interfaces become JSONRPC and HTTP+JSON for 1.0, then for 0.3 when the agent offers 0.3
    (`served_versions`), all at `endpoint_url` verbatim; security schemes
    and requirements are replaced by the given ones (1.0 JSON shape) and dropped from every skill; signatures
    are dropped; the tollhouse skill extension is declared; `skills`, when given, keeps only those skill ids
    (in card order). Everything else is kept as the upstream card said.
    """
    _check_endpoint_url(endpoint_url)
    if isinstance(skills, str):
        raise TypeError("skills must be a sequence of skill ids, not a string")

    card = AgentCard()
    card.CopyFrom(parsed.card)

    del card.supported_interfaces[:]
    # 1.0 entries first: 1.0 clients take the first interface they can speak, and the SDK derives the 0.3
    # `url`/`preferredTransport`/`additionalInterfaces` from the 0.3 entries alone.
    card.supported_interfaces.extend(
        AgentInterface(url=endpoint_url, protocol_binding=binding, protocol_version=version)
        for version in served_versions(parsed)
        for binding in SUPPORTED_BINDINGS
    )

    card.ClearField("security_schemes")
    for name, scheme in security_schemes.items():
        target = card.security_schemes[name]
        try:
            ParseDict(scheme, target)
        except (ParseError, TypeError, ValueError) as exc:
            raise ValueError(f"invalid security scheme {name!r}: {exc}") from exc
        if target.WhichOneof("scheme") is None:
            raise ValueError(f"security scheme {name!r} names no scheme type")
    card.ClearField("security_requirements")
    for requirement in security_requirements:
        target_requirement = card.security_requirements.add()
        try:
            ParseDict(requirement, target_requirement)
        except (ParseError, TypeError, ValueError) as exc:
            raise ValueError(f"invalid security requirement: {exc}") from exc
        unknown = sorted(set(target_requirement.schemes) - set(security_schemes))
        if unknown:
            raise ValueError(f"security requirement names undeclared schemes: {unknown}")

    card.ClearField("signatures")

    if skills is not None:
        wanted = set(skills)
        kept = []
        for skill in card.skills:
            if skill.id in wanted:
                kept_skill = AgentSkill()
                kept_skill.CopyFrom(skill)
                kept.append(kept_skill)
        del card.skills[:]
        card.skills.extend(kept)
    for skill in card.skills:
        skill.ClearField("security_requirements")

    extensions = card.capabilities.extensions
    if not any(extension.uri == SKILL_EXTENSION_URI for extension in extensions):
        extensions.add(uri=SKILL_EXTENSION_URI, description=_SKILL_EXTENSION_DESCRIPTION, required=False)

    return agent_card_to_dict(card)


def card_etag(card_json: JSONObject) -> str:
    """A weak ETag over the card without `signatures` (sorted-keys JSON SHA-256), as the SDK's card route."""
    unsigned = {key: value for key, value in card_json.items() if key != "signatures"}
    body = json.dumps(unsigned, sort_keys=True, separators=(",", ":"))
    return f'W/"{hashlib.sha256(body.encode("utf-8")).hexdigest()}"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 weak comparison for If-None-Match (comma lists, '*')."""
    if not if_none_match:
        return False
    wanted = _opaque_tag(etag)
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*":
            return True
        if candidate and _opaque_tag(candidate) == wanted:
            return True
    return False


def _opaque_tag(etag: str) -> str:
    return etag.strip().removeprefix("W/")


def _is_spoken_version(version: str) -> bool:
    parts = version.split(".")
    return parts[0] == "1" or parts[:2] == ["0", "3"]


def _parse_v1(document: JSONObject) -> AgentCard:
    for key in ("name", "description", "version"):
        value = document.get(key)
        if value is None:
            raise CardError(f"not an A2A agent card: missing {key!r}")
        if not isinstance(value, str):
            raise CardError(f"not an A2A agent card: {key!r} must be a string")

    interfaces = document["supportedInterfaces"]
    if not isinstance(interfaces, list):
        raise CardError("not an A2A agent card: 'supportedInterfaces' must be a list")
    if not interfaces:
        raise CardError("not an A2A agent card: 'supportedInterfaces' is empty")
    for interface in interfaces:
        if not isinstance(interface, dict):
            raise CardError("not an A2A agent card: each of 'supportedInterfaces' must be an object")
        for key in ("url", "protocolBinding"):
            value = interface.get(key)
            if not isinstance(value, str) or not value:
                raise CardError(f"not an A2A agent card: an entry of 'supportedInterfaces' lacks {key!r}")

    capabilities = document.get("capabilities")
    if capabilities is None:
        raise CardError("not an A2A agent card: missing 'capabilities'")
    if not isinstance(capabilities, dict):
        raise CardError("not an A2A agent card: 'capabilities' must be an object")

    skills = document.get("skills")
    if skills is None:
        raise CardError("not an A2A agent card: missing 'skills'")
    if not isinstance(skills, list):
        raise CardError("not an A2A agent card: 'skills' must be a list")
    if not all(isinstance(skill, dict) for skill in skills):
        raise CardError("not an A2A agent card: each of 'skills' must be an object")

    for key in ("defaultInputModes", "defaultOutputModes"):
        if document.get(key) is not None and not isinstance(document[key], list):
            raise CardError(f"not an A2A agent card: {key!r} must be a list")

    try:
        card: AgentCard = ParseDict(document, AgentCard(), ignore_unknown_fields=True)
    except (ParseError, TypeError, ValueError) as exc:
        # ParseError messages quote the offending values; name only the field path.
        path = ".".join(_PARSE_ERROR_FIELD.findall(str(exc))) or "field"
        raise CardError(f"not an A2A agent card: invalid {path!r}") from None
    return card


def _parse_v03(document: JSONObject) -> tuple[AgentCard, tuple[CardInterface, ...]]:
    try:
        model = types_v03.AgentCard.model_validate(document)
    except ValidationError as exc:
        error = exc.errors(include_input=False, include_url=False, include_context=False)[0]
        where = ".".join(str(part) for part in error["loc"]) or "card"
        if error["type"] == "missing":
            raise CardError(f"not an A2A agent card: missing {where!r}") from None
        raise CardError(f"not an A2A agent card: invalid {where!r} ({error['msg']})") from None
    try:
        card = to_core_agent_card(model)
    except (ParseError, TypeError, ValueError):
        raise CardError("not an A2A agent card: the 0.3 card cannot be converted to A2A 1.0") from None

    # The 0.3 model defaults protocolVersion to "0.3.0"; report what the card itself said.
    protocol_version = model.protocol_version if "protocol_version" in model.model_fields_set else None
    protocol_version = protocol_version or "0.3"
    interfaces = (
        CardInterface(
            binding=model.preferred_transport or "JSONRPC", url=model.url, protocol_version=protocol_version
        ),
        *(
            CardInterface(binding=extra.transport, url=extra.url, protocol_version=protocol_version)
            for extra in model.additional_interfaces or ()
        ),
    )
    return card, interfaces


def _check_interface(interface: CardInterface) -> None:
    if interface.binding in _HTTP_BINDINGS:
        _check_http_url(interface.url, CardError, "interface URL")
        return
    # Other bindings (gRPC) may name a bare host:port target; tollhouse never dials them, but credentials in a
    # card are refused whatever the binding.
    if not interface.url or _UNSAFE_URL_CHARS.search(interface.url):
        raise CardError("interface URL must be a non-empty URL without whitespace")
    if "@" in (urlsplit(interface.url).netloc if "://" in interface.url else interface.url):
        raise CardError("interface URL must not carry userinfo")


def _check_endpoint_url(url: str) -> None:
    _check_http_url(url, ValueError, "endpoint_url")


def _check_http_url(url: str, error: type[ValueError], what: str) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError on a malformed port
    except ValueError:
        raise error(f"{what} must be an absolute http(s) URL") from None
    if _UNSAFE_URL_CHARS.search(url) or parts.scheme not in ("http", "https") or not parts.hostname:
        raise error(f"{what} must be an absolute http(s) URL")
    if "@" in parts.netloc:
        raise error(f"{what} must not carry userinfo")


def _card_skill(skill: AgentSkill) -> CardSkill:
    return CardSkill(
        id=skill.id,
        name=skill.name,
        description=skill.description,
        tags=tuple(skill.tags),
        examples=tuple(skill.examples),
        input_modes=tuple(skill.input_modes),
        output_modes=tuple(skill.output_modes),
    )
