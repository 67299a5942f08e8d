"""Agent card parsing, rewriting and ETags (tollhouse.a2a.cards)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from a2a.client.card_resolver import parse_agent_card
from a2a.compat.v0_3 import types as types_v03
from a2a.server.request_handlers.response_helpers import agent_card_to_dict
from a2a.server.routes.agent_card_routes import _etag_for
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentCardSignature,
    AgentInterface,
    AgentProvider,
    AgentSkill,
    SecurityRequirement,
    SecurityScheme,
)
from google.protobuf.json_format import ParseDict

from tollhouse.a2a.cards import (
    SKILL_EXTENSION_URI,
    SKILL_METADATA_KEY,
    CardError,
    CardInterface,
    CardSkill,
    card_etag,
    etag_matches,
    parse_card,
    rewrite_card,
)

UPSTREAM_HOST = "10.20.30.40"
UPSTREAM_PORT = "9123"
UPSTREAM_PATH = "/upstream-agents/researcher"
UPSTREAM = f"http://{UPSTREAM_HOST}:{UPSTREAM_PORT}{UPSTREAM_PATH}"

ENDPOINTS = ["https://gw.example/a2a/researcher", "https://gw.example/tollhouse/a2a/researcher"]

TOLLHOUSE_SCHEMES: dict[str, Any] = {
    "tollhouse": {
        "oauth2SecurityScheme": {
            "flows": {
                "authorizationCode": {
                    "authorizationUrl": "https://gw.example/oauth/authorize",
                    "tokenUrl": "https://gw.example/oauth/token",
                    "scopes": {"a2a": "Call agents"},
                    "pkceRequired": True,
                }
            },
            "oauth2MetadataUrl": "https://gw.example/.well-known/oauth-authorization-server",
        }
    }
}
TOLLHOUSE_REQUIREMENTS: list[dict[str, Any]] = [{"schemes": {"tollhouse": {"list": ["a2a"]}}}]


def sdk_card() -> AgentCard:
    """A 1.0 card as an a2a-sdk agent builds it: upstream security, per-skill security, a signature."""
    card = AgentCard(
        name="Researcher",
        description="Finds things out.",
        version="2.1.0",
        provider=AgentProvider(organization="Example Org", url="https://example.org"),
        documentation_url="https://docs.example.org/researcher",
        icon_url="https://cdn.example.org/researcher.png",
        supported_interfaces=[
            AgentInterface(url=f"{UPSTREAM}/jsonrpc", protocol_binding="JSONRPC", protocol_version="1.0"),
            AgentInterface(
                url=f"{UPSTREAM}/rest", protocol_binding="HTTP+JSON", protocol_version="1.0", tenant="team-a"
            ),
            AgentInterface(url=f"{UPSTREAM}/jsonrpc", protocol_binding="JSONRPC", protocol_version="0.3"),
        ],
        capabilities=AgentCapabilities(streaming=True, push_notifications=True, extended_agent_card=True),
        default_input_modes=["text/plain", "application/json"],
        default_output_modes=["text/plain"],
        skills=[
            AgentSkill(
                id="search", name="Search", description="Search the web", tags=["web"], examples=["q"]
            ),
            AgentSkill(
                id="summarize",
                name="Summarize",
                description="Summarize a text",
                tags=["text"],
                input_modes=["text/plain"],
                output_modes=["text/markdown"],
            ),
            AgentSkill(id="admin", name="Admin", description="Administer", tags=["ops"]),
        ],
    )
    ParseDict(
        {"oauth2SecurityScheme": {"flows": {"clientCredentials": {"tokenUrl": f"{UPSTREAM}/token"}}}},
        card.security_schemes["upstream"],
    )
    ParseDict({"schemes": {"upstream": {"list": ["read"]}}}, card.security_requirements.add())
    card.skills[2].security_requirements.append(
        ParseDict({"schemes": {"upstream": {"list": ["admin"]}}}, SecurityRequirement())
    )
    card.signatures.append(AgentCardSignature(protected="eyJhbGciOiJFUzI1NiJ9", signature="c2ln"))
    return card


def v1_document() -> dict[str, Any]:
    """The JSON the SDK's card route serves for sdk_card() (1.0 plus 0.3 compatibility fields)."""
    return agent_card_to_dict(sdk_card())


def v03_document() -> dict[str, Any]:
    """A 0.3 card as a 0.3 agent serves it."""
    return {
        "name": "Researcher",
        "description": "Finds things out.",
        "version": "2.1.0",
        "protocolVersion": "0.3.0",
        "url": f"{UPSTREAM}/jsonrpc",
        "preferredTransport": "JSONRPC",
        "additionalInterfaces": [
            {"url": f"{UPSTREAM}/rest", "transport": "HTTP+JSON"},
            {"url": f"{UPSTREAM_HOST}:9124", "transport": "GRPC"},
        ],
        "provider": {"organization": "Example Org", "url": "https://example.org"},
        "documentationUrl": "https://docs.example.org/researcher",
        "capabilities": {"streaming": True, "pushNotifications": False},
        "supportsAuthenticatedExtendedCard": True,
        "securitySchemes": {"upstream": {"type": "apiKey", "in": "header", "name": "X-Upstream-Key"}},
        "security": [{"upstream": []}],
        "defaultInputModes": ["text/plain"],
        "defaultOutputModes": ["text/plain"],
        "skills": [
            {"id": "search", "name": "Search", "description": "Search the web", "tags": ["web"]},
            {
                "id": "admin",
                "name": "Admin",
                "description": "Administer",
                "tags": ["ops"],
                "security": [{"upstream": ["admin"]}],
            },
        ],
        "signatures": [{"protected": "eyJhbGciOiJFUzI1NiJ9", "signature": "c2ln"}],
    }


def all_urls(served: dict[str, Any]) -> list[str]:
    """Every interface URL a 1.0 or 0.3 client could read from a served card."""
    urls = [interface["url"] for interface in served["supportedInterfaces"]]
    urls.append(served["url"])
    urls.extend(interface["url"] for interface in served.get("additionalInterfaces", []))
    return urls


def test_parse_sdk_v1_card() -> None:
    document = v1_document()
    parsed = parse_card(document)

    assert parsed.version == "1.0"
    assert isinstance(parsed.card, AgentCard)
    assert parsed.document == document
    assert (parsed.name, parsed.description) == ("Researcher", "Finds things out.")
    assert parsed.interfaces == (
        CardInterface("JSONRPC", f"{UPSTREAM}/jsonrpc", "1.0"),
        CardInterface("HTTP+JSON", f"{UPSTREAM}/rest", "1.0", tenant="team-a"),
        CardInterface("JSONRPC", f"{UPSTREAM}/jsonrpc", "0.3"),
    )
    assert parsed.preferred() == parsed.interfaces[0]
    assert [skill.id for skill in parsed.skills] == ["search", "summarize", "admin"]
    assert parsed.skill("summarize") == CardSkill(
        id="summarize",
        name="Summarize",
        description="Summarize a text",
        tags=("text",),
        input_modes=("text/plain",),
        output_modes=("text/markdown",),
    )
    assert parsed.skill("nope") is None
    assert (parsed.streaming, parsed.push_notifications, parsed.extended_card) == (True, True, True)


def test_pinned_is_the_document_without_signatures() -> None:
    document = v1_document()
    parsed = parse_card(document)

    pinned = parsed.pinned()
    assert "signatures" not in pinned
    assert pinned == {key: value for key, value in document.items() if key != "signatures"}
    pinned["name"] = "changed"
    document["name"] = "changed too"
    assert parsed.document["name"] == "Researcher"


def test_parse_v03_card() -> None:
    parsed = parse_card(v03_document())

    assert parsed.version == "0.3"
    assert isinstance(parsed.card, AgentCard)
    assert parsed.interfaces == (
        CardInterface("JSONRPC", f"{UPSTREAM}/jsonrpc", "0.3.0"),
        CardInterface("HTTP+JSON", f"{UPSTREAM}/rest", "0.3.0"),
        CardInterface("GRPC", f"{UPSTREAM_HOST}:9124", "0.3.0"),
    )
    assert parsed.preferred() == parsed.interfaces[0]
    assert [skill.id for skill in parsed.skills] == ["search", "admin"]
    assert parsed.skill("search") == CardSkill("search", "Search", "Search the web", tags=("web",))
    assert (parsed.streaming, parsed.push_notifications, parsed.extended_card) == (True, False, True)
    assert [interface.url for interface in parsed.card.supported_interfaces] == [
        interface.url for interface in parsed.interfaces
    ]


def test_parse_v03_defaults() -> None:
    document = v03_document()
    for key in ("protocolVersion", "preferredTransport", "additionalInterfaces"):
        del document[key]
    parsed = parse_card(document)

    assert parsed.interfaces == (CardInterface("JSONRPC", f"{UPSTREAM}/jsonrpc", "0.3"),)


def test_preferred_skips_unusable_interfaces() -> None:
    document = v1_document()
    document["supportedInterfaces"] = [
        {"url": f"{UPSTREAM_HOST}:50051", "protocolBinding": "GRPC", "protocolVersion": "1.0"},
        {"url": f"{UPSTREAM}/old", "protocolBinding": "JSONRPC", "protocolVersion": "0.2.5"},
        {"url": f"{UPSTREAM}/rest", "protocolBinding": "HTTP+JSON", "protocolVersion": "1.0"},
    ]
    assert parse_card(document).preferred() == CardInterface("HTTP+JSON", f"{UPSTREAM}/rest", "1.0")

    document["supportedInterfaces"] = document["supportedInterfaces"][:2]
    with pytest.raises(CardError, match="no JSONRPC or HTTP\\+JSON interface"):
        parse_card(document).preferred()


def _without(document: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in document.items() if k != key}


def _with(document: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**document, **changes}


def _v1_interfaces(url: str) -> list[dict[str, str]]:
    return [{"url": url, "protocolBinding": "JSONRPC", "protocolVersion": "1.0"}]


REJECTED: list[tuple[str, Any, str]] = [
    ("list", [v1_document()], "expected a JSON object"),
    ("string", "not a card", "expected a JSON object"),
    ("none", None, "expected a JSON object"),
    (
        "neither shape",
        _without(_without(v1_document(), "supportedInterfaces"), "url"),
        "missing 'supportedInt",
    ),
    ("1.0 missing name", _without(v1_document(), "name"), "missing 'name'"),
    ("1.0 empty name", _with(v1_document(), name=" "), "missing 'name'"),
    ("0.3 missing name", _without(v03_document(), "name"), "missing 'name'"),
    ("1.0 name not a string", _with(v1_document(), name=7), "'name' must be a string"),
    ("1.0 no interfaces", _with(v1_document(), supportedInterfaces=[]), "'supportedInterfaces' is empty"),
    ("1.0 interfaces garbage", _with(v1_document(), supportedInterfaces="x"), "must be a list"),
    (
        "1.0 interface no binding",
        _with(v1_document(), supportedInterfaces=[{"url": UPSTREAM}]),
        "protocolBinding",
    ),
    ("1.0 missing capabilities", _without(v1_document(), "capabilities"), "missing 'capabilities'"),
    ("1.0 missing skills", _without(v1_document(), "skills"), "missing 'skills'"),
    ("1.0 skills garbage", _with(v1_document(), skills=5), "'skills' must be a list"),
    ("0.3 skills garbage", _with(v03_document(), skills=5), "invalid 'skills'"),
    (
        "1.0 skill field garbage",
        _with(v1_document(), skills=[{"id": "a", "tags": 5}]),
        "invalid 'skills.tags'",
    ),
    ("1.0 capabilities garbage", _with(v1_document(), capabilities={"streaming": "yes"}), "invalid 'capab"),
    (
        "duplicate skill ids",
        _with(v1_document(), skills=[{"id": "x", "name": "X", "description": "x"}] * 2),
        "skill ids must be unique: 'x'",
    ),
    ("empty skill id", _with(v1_document(), skills=[{"name": "X", "description": "x"}]), "non-empty"),
    (
        "0.3 duplicate skill ids",
        _with(v03_document(), skills=[{"id": "x", "name": "X", "description": "x", "tags": []}] * 2),
        "skill ids must be unique: 'x'",
    ),
    (
        "userinfo",
        _with(v1_document(), supportedInterfaces=_v1_interfaces("https://user:hunter2@agent.example/a2a")),
        "must not carry userinfo",
    ),
    (
        "0.3 userinfo",
        _with(v03_document(), url="http://hunter2@agent.example/a2a"),
        "must not carry userinfo",
    ),
    (
        "non-http scheme",
        _with(v1_document(), supportedInterfaces=_v1_interfaces("ftp://agent.example/a2a")),
        "absolute http\\(s\\) URL",
    ),
    ("relative url", _with(v03_document(), url="/a2a/jsonrpc"), "absolute http\\(s\\) URL"),
    (
        "bad port",
        _with(v1_document(), supportedInterfaces=_v1_interfaces("http://agent.example:99999/a2a")),
        "absolute http\\(s\\) URL",
    ),
    (
        "0.3 additional userinfo",
        _with(
            v03_document(),
            additionalInterfaces=[{"url": "http://a:b@agent.example/x", "transport": "HTTP+JSON"}],
        ),
        "must not carry userinfo",
    ),
    (
        "grpc userinfo",
        _with(
            v03_document(), additionalInterfaces=[{"url": "a:hunter2@agent.example:1", "transport": "GRPC"}]
        ),
        "must not carry userinfo",
    ),
]


@pytest.mark.parametrize(
    ("document", "message"), [case[1:] for case in REJECTED], ids=[c[0] for c in REJECTED]
)
def test_parse_rejects(document: Any, message: str) -> None:
    with pytest.raises(CardError, match=message) as caught:
        parse_card(document)
    assert "hunter2" not in str(caught.value)


def test_parse_error_does_not_echo_values() -> None:
    with pytest.raises(CardError) as caught:
        parse_card(_with(v1_document(), skills=[{"id": "a", "name": "secret-value-123", "tags": {"k": 1}}]))
    assert "secret-value-123" not in str(caught.value)
    assert caught.value.__cause__ is None


@pytest.mark.parametrize("endpoint_url", ENDPOINTS)
@pytest.mark.parametrize("make_document", [v1_document, v03_document], ids=["1.0", "0.3"])
def test_rewrite(make_document: Any, endpoint_url: str) -> None:
    document = make_document()
    parsed = parse_card(document)

    served = rewrite_card(
        parsed,
        endpoint_url=endpoint_url,
        security_schemes=copy.deepcopy(TOLLHOUSE_SCHEMES),
        security_requirements=copy.deepcopy(TOLLHOUSE_REQUIREMENTS),
    )

    assert [(i["protocolBinding"], i["protocolVersion"]) for i in served["supportedInterfaces"]] == [
        ("JSONRPC", "1.0"),
        ("HTTP+JSON", "1.0"),
        ("JSONRPC", "0.3"),
        ("HTTP+JSON", "0.3"),
    ]
    assert all("tenant" not in interface for interface in served["supportedInterfaces"])
    urls = all_urls(served)
    assert len(urls) == 6
    assert set(urls) == {endpoint_url}
    text = json.dumps(served)
    for trace in (UPSTREAM_HOST, UPSTREAM_PORT, UPSTREAM_PATH, "upstream", "X-Upstream-Key"):
        assert trace not in text

    assert (
        served["securitySchemes"]["tollhouse"]["oauth2SecurityScheme"]
        == (TOLLHOUSE_SCHEMES["tollhouse"]["oauth2SecurityScheme"])
    )
    assert list(served["securitySchemes"]) == ["tollhouse"]
    assert served["securityRequirements"] == TOLLHOUSE_REQUIREMENTS
    assert served["security"] == [{"tollhouse": ["a2a"]}]
    assert "signatures" not in served
    for skill in served["skills"]:
        assert "securityRequirements" not in skill
        assert "security" not in skill

    extensions = served["capabilities"]["extensions"]
    assert [e["uri"] for e in extensions] == [SKILL_EXTENSION_URI]
    assert extensions[0]["required"] is False
    assert SKILL_METADATA_KEY in extensions[0]["description"]
    assert served["capabilities"]["streaming"] is True
    assert served["capabilities"].get("pushNotifications", False) is parsed.push_notifications

    for key in ("name", "description", "version", "provider", "documentationUrl", "defaultInputModes"):
        assert served[key] == document[key]
    assert [s["id"] for s in served["skills"]] == [s["id"] for s in document["skills"]]
    assert served["skills"][0]["tags"] == document["skills"][0]["tags"]

    # tollhouse itself reads it back as a 1.0 card.
    reparsed = parse_card(served)
    assert reparsed.version == "1.0"
    assert reparsed.preferred() == CardInterface("JSONRPC", endpoint_url, "1.0")
    assert reparsed.skills == parsed.skills
    assert reparsed.extended_card is parsed.extended_card

    # An a2a-sdk 1.x client reads the same card.
    sdk_view = parse_agent_card(copy.deepcopy(served))
    assert [i.url for i in sdk_view.supported_interfaces] == [endpoint_url] * 4
    assert sdk_view.supported_interfaces[0].protocol_binding == "JSONRPC"
    assert sdk_view.supported_interfaces[0].protocol_version == "1.0"
    assert list(sdk_view.security_schemes) == ["tollhouse"]
    assert sdk_view.security_schemes["tollhouse"].WhichOneof("scheme") == "oauth2_security_scheme"
    assert not sdk_view.signatures
    strict_view = ParseDict(served, AgentCard(), ignore_unknown_fields=True)
    assert strict_view.security_schemes["tollhouse"] == ParseDict(
        TOLLHOUSE_SCHEMES["tollhouse"], SecurityScheme()
    )

    # And an a2a-sdk 0.3 client reads the compatibility fields.
    legacy = types_v03.AgentCard.model_validate(served)
    assert legacy.url == endpoint_url
    assert legacy.preferred_transport == "JSONRPC"
    assert [(i.transport, i.url) for i in legacy.additional_interfaces or []] == [("HTTP+JSON", endpoint_url)]
    assert legacy.security == [{"tollhouse": ["a2a"]}]


def test_rewrite_is_the_same_for_both_versions() -> None:
    def served(document: dict[str, Any]) -> dict[str, Any]:
        return rewrite_card(
            parse_card(document),
            endpoint_url=ENDPOINTS[0],
            security_schemes=TOLLHOUSE_SCHEMES,
            security_requirements=TOLLHOUSE_REQUIREMENTS,
        )

    v1 = v1_document()
    v03 = v03_document()
    # Align the few fields the fixtures intentionally differ on.
    v1["skills"] = [{"id": "search", "name": "Search", "description": "Search the web", "tags": ["web"]}]
    v03["skills"] = v1["skills"]
    for key in ("iconUrl",):
        v1.pop(key)
    v1["defaultInputModes"] = v03["defaultInputModes"]
    v1["capabilities"] = {"streaming": True, "pushNotifications": False, "extendedAgentCard": True}
    assert served(v1) == served(v03)


def test_rewrite_filters_skills_in_card_order() -> None:
    parsed = parse_card(v1_document())

    def skill_ids(skills: list[str] | tuple[str, ...] | None) -> list[str]:
        served = rewrite_card(
            parsed,
            endpoint_url=ENDPOINTS[0],
            security_schemes=TOLLHOUSE_SCHEMES,
            security_requirements=TOLLHOUSE_REQUIREMENTS,
            skills=skills,
        )
        return [skill["id"] for skill in served.get("skills", [])]

    assert skill_ids(None) == ["search", "summarize", "admin"]
    assert skill_ids(["admin", "search"]) == ["search", "admin"]
    assert skill_ids(("summarize", "unknown")) == ["summarize"]
    assert skill_ids([]) == []
    with pytest.raises(TypeError):
        skill_ids("search")  # type: ignore[arg-type]


def test_rewrite_does_not_duplicate_the_skill_extension() -> None:
    first = rewrite_card(
        parse_card(v1_document()),
        endpoint_url=ENDPOINTS[0],
        security_schemes=TOLLHOUSE_SCHEMES,
        security_requirements=TOLLHOUSE_REQUIREMENTS,
    )
    second = rewrite_card(
        parse_card(first),
        endpoint_url=ENDPOINTS[1],
        security_schemes=TOLLHOUSE_SCHEMES,
        security_requirements=TOLLHOUSE_REQUIREMENTS,
    )
    assert [e["uri"] for e in second["capabilities"]["extensions"]] == [SKILL_EXTENSION_URI]
    assert set(all_urls(second)) == {ENDPOINTS[1]}


def test_rewrite_keeps_upstream_extensions() -> None:
    document = v1_document()
    document["capabilities"]["extensions"] = [{"uri": "urn:example:ext", "required": True}]
    served = rewrite_card(
        parse_card(document),
        endpoint_url=ENDPOINTS[0],
        security_schemes=TOLLHOUSE_SCHEMES,
        security_requirements=TOLLHOUSE_REQUIREMENTS,
    )
    assert [e["uri"] for e in served["capabilities"]["extensions"]] == [
        "urn:example:ext",
        SKILL_EXTENSION_URI,
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"endpoint_url": "/a2a/researcher"}, "endpoint_url must be an absolute"),
        ({"endpoint_url": "https://u:p@gw.example/a2a/r"}, "userinfo"),
        ({"security_requirements": [{"schemes": {"other": {"list": []}}}]}, "undeclared schemes"),
        ({"security_schemes": {"tollhouse": {}}}, "names no scheme type"),
        ({"security_schemes": {"tollhouse": {"oauth2SecurityScheme": 5}}}, "invalid security scheme"),
    ],
)
def test_rewrite_rejects_bad_configuration(kwargs: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {
        "endpoint_url": ENDPOINTS[0],
        "security_schemes": TOLLHOUSE_SCHEMES,
        "security_requirements": TOLLHOUSE_REQUIREMENTS,
        **kwargs,
    }
    with pytest.raises(ValueError, match=message):
        rewrite_card(parse_card(v1_document()), **arguments)


def test_card_etag() -> None:
    card = v1_document()
    etag = card_etag(card)

    assert etag.startswith('W/"') and etag.endswith('"')
    assert etag == _etag_for(card)
    assert card_etag(dict(reversed(list(card.items())))) == etag
    assert card_etag(_without(card, "signatures")) == etag
    assert card_etag({**card, "signatures": [{"protected": "x", "signature": "y"}]}) == etag
    assert card_etag({**card, "description": "other"}) != etag


def test_etag_matches() -> None:
    etag = 'W/"abc"'
    assert etag_matches('W/"abc"', etag)
    assert etag_matches('"abc"', etag)
    assert etag_matches('"abc"', '"abc"')
    assert etag_matches('W/"abc"', '"abc"')
    assert etag_matches('"x", W/"abc"', etag)
    assert etag_matches(' "x" ,W/"abc" ', etag)
    assert etag_matches("*", etag)
    assert not etag_matches(None, etag)
    assert not etag_matches("", etag)
    assert not etag_matches('"abd"', etag)
    assert not etag_matches('W/"ab"', etag)
    assert not etag_matches("abc", etag)
