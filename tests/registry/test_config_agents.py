"""The `agents:` section of the declarative configuration: parsing, errors by key path, export."""

from __future__ import annotations

from typing import Any

import pytest

from tollhouse.registry.config import (
    AGENT_KEYS,
    ConfigError,
    agent_from_dict,
    agent_secrets_from_dict,
    agent_to_dict,
    config_from_dict,
    config_to_dict,
    dump_config,
    expand_secret_refs,
    load_config,
    server_from_dict,
)
from tollhouse.registry.models import AgentOptions, Upstream, UpstreamAuth

CARD_URL = "http://127.0.0.1:9101/.well-known/agent-card.json"
CARD: dict[str, Any] = {
    "name": "Researcher",
    "description": "Finds things out.",
    "version": "1.0.0",
    "supportedInterfaces": [
        {"url": "https://agent.example/a2a", "protocolBinding": "JSONRPC", "protocolVersion": "1.0"}
    ],
    "capabilities": {"streaming": True},
    "defaultInputModes": ["text/plain"],
    "defaultOutputModes": ["text/plain"],
    "skills": [{"id": "search", "name": "Search", "description": "Search", "tags": ["web"]}],
}
JWKS: dict[str, Any] = {"keys": [{"kty": "EC", "crv": "P-256", "x": "eA", "y": "eQ", "kid": "k1"}]}

FULL = f"""\
servers:
  - name: calc
    url: "http://127.0.0.1:9001/mcp"
agents:
  - name: researcher
    card_url: "{CARD_URL}"
  - name: signed
    card_url: "https://agents.example/signed/.well-known/agent-card.json"
    approval: manual
    enabled: false
    require_signature: true
    jwks: {{keys: [{{kty: EC, crv: P-256, x: eA, y: eQ, kid: k1}}]}}
    tools: none
    auth: {{type: bearer, token_env: SIGNED_TOKEN}}
    connect_timeout_seconds: 2
    call_timeout_seconds: 7.5
    description: Signs its card.
    tags: [research, signed]
  - name: inline
    card:
      name: Researcher
      description: Finds things out.
      version: "1.0.0"
      supportedInterfaces:
        - {{url: "https://agent.example/a2a", protocolBinding: JSONRPC, protocolVersion: "1.0"}}
      capabilities: {{streaming: true}}
      defaultInputModes: [text/plain]
      defaultOutputModes: [text/plain]
      skills:
        - {{id: search, name: Search, description: Search, tags: [web]}}
"""


def error_of(data: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    return info.value


def test_every_key_of_an_agent_entry_is_read() -> None:
    config = load_config(FULL)
    assert [s.name for s in config.servers] == ["calc"]
    researcher, signed, inline = config.agents
    assert researcher == Upstream(name="researcher", transport="a2a", url=CARD_URL, a2a=AgentOptions())
    assert researcher.is_agent
    assert signed == Upstream(
        name="signed",
        transport="a2a",
        url="https://agents.example/signed/.well-known/agent-card.json",
        approval="manual",
        enabled=False,
        auth=UpstreamAuth(type="bearer", token_env="SIGNED_TOKEN"),
        connect_timeout_seconds=2.0,
        call_timeout_seconds=7.5,
        a2a=AgentOptions(require_signature=True, jwks=JWKS, tools="none"),
        description="Signs its card.",
        tags=("research", "signed"),
    )
    assert inline.url is None
    assert inline.a2a == AgentOptions(card=CARD)
    assert "agents" in config.sections
    assert config.warnings == ()
    assert set(AGENT_KEYS) == {
        "name",
        "card_url",
        "card",
        "approval",
        "enabled",
        "auth",
        "require_signature",
        "jwks",
        "tools",
        "connect_timeout_seconds",
        "call_timeout_seconds",
        "description",
        "tags",
    }


def test_export_writes_agents_back_and_reads_back_equal() -> None:
    config = load_config(FULL)
    text = dump_config(None, config.servers, (), agents=config.agents)
    again = load_config(text)
    assert again.agents == config.agents
    assert again.servers == config.servers
    # Agents given among the servers (the pool's one list) still go to the agents section.
    mixed = config_to_dict(None, [*config.servers, *config.agents], ())
    assert [s["name"] for s in mixed["servers"]] == ["calc"]
    assert [a["name"] for a in mixed["agents"]] == ["researcher", "signed", "inline"]
    assert agent_to_dict(config.agents[0]) == {"name": "researcher", "card_url": CARD_URL}
    assert agent_to_dict(config.agents[2]) == {"name": "inline", "card": CARD}


def test_a_stored_agent_secret_is_exported_as_a_reference() -> None:
    agent, secrets = agent_secrets_from_dict(
        {"name": "paid-agent", "card_url": CARD_URL, "auth": {"type": "bearer", "token": "s3cret"}}
    )
    assert secrets == {"token": "s3cret"}
    assert "s3cret" not in repr(agent)
    exported = agent_to_dict(agent, ["token"])
    assert exported["auth"] == {"type": "bearer", "token": "${PAID_AGENT_TOKEN}"}
    # A file gives the value again from the variable it names; a literal is refused.
    raw = {"agents": [exported]}
    expanded = expand_secret_refs(raw, {"PAID_AGENT_TOKEN": "s3cret"})
    assert config_from_dict(expanded).secrets == {"paid-agent": {"token": "s3cret"}}
    with pytest.raises(ConfigError) as info:
        expand_secret_refs({"agents": [{**exported, "auth": {"type": "bearer", "token": "hunter2"}}]}, {})
    assert info.value.path == "agents[0].auth.token"
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("entry", "path", "words"),
    [
        ({"name": "a", "card_url": CARD_URL, "cardurl": "x"}, "agents[0].cardurl", "unknown key"),
        ({"name": "a", "url": CARD_URL}, "agents[0].url", "card_url"),
        ({"name": "a", "card_url": CARD_URL, "transport": "a2a"}, "agents[0].transport", "unknown key"),
        ({"name": "a"}, "agents[0]", "exactly one"),
        ({"name": "a", "card_url": CARD_URL, "card": CARD}, "agents[0]", "exactly one"),
        ({"card_url": CARD_URL}, "agents[0].name", "required"),
        ({"name": "A_b", "card_url": CARD_URL}, "agents[0].name", "not a valid name"),
        ({"name": "tollhouse", "card_url": CARD_URL}, "agents[0].name", "reserved"),
        ({"name": "a", "card_url": "ftp://x/card"}, "agents[0].card_url", "http"),
        ({"name": "a", "card_url": "http://u:p@x/card"}, "agents[0].card_url", "credentials"),
        ({"name": "a", "card": "inline"}, "agents[0].card", "mapping"),
        ({"name": "a", "card": {}}, "agents[0].card", "empty"),
        ({"name": "a", "card_url": CARD_URL, "approval": "auto"}, "agents[0].approval", "manual"),
        ({"name": "a", "card_url": CARD_URL, "tools": "all"}, "agents[0].tools", "skills"),
        ({"name": "a", "card_url": CARD_URL, "enabled": "yes"}, "agents[0].enabled", "true or false"),
        ({"name": "a", "card_url": CARD_URL, "require_signature": True}, "agents[0].jwks", "required"),
        ({"name": "a", "card_url": CARD_URL, "jwks": {"keys": []}}, "agents[0].jwks.keys", "non-empty"),
        (
            {"name": "a", "card_url": CARD_URL, "jwks": {"keys": [{}]}},
            "agents[0].jwks.keys[0].kty",
            "key type",
        ),
        (
            {"name": "a", "card_url": CARD_URL, "jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}},
            "agents[0].jwks.keys[0]",
            "public keys only",
        ),
        (
            {"name": "a", "card_url": CARD_URL, "call_timeout_seconds": 0},
            "agents[0].call_timeout_seconds",
            "positive",
        ),
        ({"name": "a", "card_url": CARD_URL, "auth": {"type": "magic"}}, "agents[0].auth.type", "one of"),
    ],
)
def test_an_invalid_agent_entry_names_its_key(entry: dict[str, Any], path: str, words: str) -> None:
    error = error_of({"agents": [entry]})
    assert error.path == path
    assert words in error.message
    assert "c2VjcmV0" not in str(error)


def test_servers_and_agents_share_one_name_space_and_stay_apart() -> None:
    error = error_of(
        {
            "servers": [{"name": "x", "url": "http://127.0.0.1:1/mcp"}],
            "agents": [{"name": "x", "card_url": CARD_URL}],
        }
    )
    assert error.path == "agents[0].name"
    assert "servers[0]" in error.message
    error = error_of({"agents": [{"name": "x", "card_url": CARD_URL}, {"name": "x", "card_url": CARD_URL}]})
    assert error.path == "agents[1].name" and "duplicate" in error.message
    # A server entry cannot be an agent: the error points at the agents section.
    with pytest.raises(ConfigError) as info:
        server_from_dict({"name": "x", "url": CARD_URL, "transport": "a2a"}, path="servers[0]")
    assert info.value.path == "servers[0].transport"
    assert "agents" in info.value.message
    error = error_of({"agents": "researcher"})
    assert error.path == "agents"


def test_agent_from_dict_is_the_post_agents_body() -> None:
    agent = agent_from_dict({"name": "r", "card": CARD, "auth": {"type": "bearer", "token": "t0k"}})
    assert agent.transport == "a2a" and agent.url is None
    assert agent.a2a is not None and agent.a2a.card == CARD
    assert agent.auth == UpstreamAuth(type="bearer")
