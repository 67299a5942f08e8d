"""Declarative configuration: the documented example, round trips, and every error's key path."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from tollhouse.registry.config import (
    PLANNED_SECTIONS,
    ClientSpec,
    ConfigError,
    GatewayConfig,
    LoadedConfig,
    config_from_dict,
    config_to_dict,
    dump_config,
    load_config,
    load_config_file,
    server_from_dict,
    toolset_from_dict,
    valid_tool_pattern,
)
from tollhouse.registry.models import (
    AgentOptions,
    ClientRecord,
    PolicyEntry,
    Team,
    Toolset,
    Upstream,
    UpstreamAuth,
)

# The example of DESIGN.md, "Declarative configuration", verbatim.
DESIGN_EXAMPLE = """\
gateway: {public_url: "https://gw.example"}
servers:
  - name: calc                      # [a-z0-9][a-z0-9-]{0,31}
    url: "http://127.0.0.1:9001/mcp"
    approval: first-use             # first-use (default): what is seen first is pinned; manual
    auth: {type: bearer, token_env: CALC_TOKEN}   # upstream credential, never the agent's
  - name: files
    command: ["python", "examples/servers/files.py"]
    env: {ROOT: "./data"}           # the only environment the child sees
toolsets:
  - name: support
    tools: ["calc__add", "files__read_*"]
agents:
  - name: researcher
    card_url: "http://127.0.0.1:9101/.well-known/agent-card.json"
teams: [{name: platform}, {name: finance}]
clients:
  - name: ci-bot
    team: platform
policies:
  - id: platform-calc
    cedar: 'permit(principal in Team::"platform", action == Action::"call_tool", resource in Server::"calc");'
limits:
  - match: {team: platform, server: calc}
    rate: "100/minute"
prices:
  - match: {server: calc}
    per_call_micro: 2000            # 0.002 in the currency below
    currency: USD
"""

FULL = """\
gateway: {public_url: "https://gw.example"}
servers:
  - name: calc
    url: "http://127.0.0.1:9001/mcp"
    approval: manual
    failure_mode: closed
    auth: {type: header, header: X-Api-Key, value_env: CALC_KEY}
    timeouts: {connect_seconds: 2, call_seconds: 7.5}
  - name: legacy
    url: "https://legacy.internal/sse"
    transport: sse
    enabled: false
  - name: files
    command: ["python", "examples/servers/files.py"]
    args: ["--root", "./data"]
    env: {ROOT: "./data", DEBUG: "1"}
    cwd: /srv/files
    auth: {type: bearer, token_env: FILES_TOKEN}
    call_timeout_seconds: 120
toolsets:
  - name: support
    description: "What the support agent may use."
    tools: ["calc__add", "files__read_*", "legacy__[a-c]?t*"]
    aliases: {plus: calc__add, list_files: files__list}
  - name: only-aliases
    aliases: {Search.v2: search__query}
clients:
  - name: ci-bot
    team: platform
  - name: nightly
"""


def error_of(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(text)
    return info.value


def test_design_example_loads_every_section() -> None:
    config = load_config(DESIGN_EXAMPLE)

    assert config.gateway == GatewayConfig(public_url="https://gw.example")
    assert config.servers == (
        Upstream(
            name="calc",
            transport="http",
            url="http://127.0.0.1:9001/mcp",
            approval="first-use",
            auth=UpstreamAuth(type="bearer", token_env="CALC_TOKEN"),
        ),
        Upstream(
            name="files",
            transport="stdio",
            command=("python", "examples/servers/files.py"),
            env={"ROOT": "./data"},
        ),
    )
    assert config.toolsets == (Toolset(name="support", tools=("calc__add", "files__read_*")),)
    assert config.clients == (ClientSpec(name="ci-bot", team="platform"),)
    assert config.teams == (Team(name="platform"), Team(name="finance"))
    assert config.policies == (
        PolicyEntry(
            id="platform-calc",
            cedar='permit(principal in Team::"platform", action == Action::"call_tool", '
            'resource in Server::"calc");',
        ),
    )
    assert config.agents == (
        Upstream(
            name="researcher",
            transport="a2a",
            url="http://127.0.0.1:9101/.well-known/agent-card.json",
            a2a=AgentOptions(),
        ),
    )
    assert config.warnings == ()
    assert PLANNED_SECTIONS == ()
    assert config.prices == ({"match": {"server": "calc"}, "per_call_micro": 2000, "currency": "USD"},)
    assert [(s.match, s.rate, s.window, s.failure_mode) for s in config.limits] == [
        ({"team": "platform", "server": "calc"}, "100/minute", "fixed", "open")
    ]


def test_policies_are_cedar_or_sugar_and_round_trip_as_written() -> None:
    text = """
policies:
  - id: calc-for-platform
    description: "platform may use calc"
    cedar: 'permit(principal in Team::"platform", action, resource in Server::"calc");'
  - id: support-read
    allow: {team: support, tools: ["files__read_*"]}
    guardrails: {results: {secrets: block}}
"""
    config = load_config(text)
    cedar, sugar = config.policies
    assert cedar.description == "platform may use calc" and cedar.sugar is None
    assert sugar.cedar == "" and sugar.sugar == {
        "allow": {"team": "support", "tools": ["files__read_*"]},
        "guardrails": {"results": {"secrets": "block"}},
    }
    data = config_to_dict(None, [], [], policies=config.policies)
    assert config_from_dict(data).policies == config.policies
    for bad, where in (
        ("policies: [{cedar: 'permit(principal, action, resource);'}]", "policies[0].id"),
        ("policies: [{id: 'has space', cedar: x}]", "policies[0].id"),
        ("policies: [{id: a}]", "policies[0]"),
        ("policies: [{id: a, cedar: x, allow: {}}]", "policies[0]"),
        ("policies: [{id: a, cedar: x, guardrails: {}}]", "policies[0].guardrails"),
        ("policies: [{id: a, cedar: x}, {id: a, cedar: y}]", "policies[1].id"),
        ("policies: [{id: a, alow: {}}]", "policies[0].alow"),
    ):
        with pytest.raises(ConfigError) as caught:
            load_config(bad)
        assert caught.value.path == where, (bad, caught.value)


def test_teams_and_client_scopes_load_validate_and_round_trip() -> None:
    text = """
teams:
  - platform
  - {name: finance, description: "Pays for it"}
clients:
  - {name: ci-bot, team: platform, scopes: ["calc:write"]}
"""
    config = load_config(text)
    assert config.teams == (Team("platform"), Team("finance", "Pays for it"))
    assert config.clients == (ClientSpec("ci-bot", "platform", ("calc:write",)),)
    data = config_to_dict(None, [], config.clients, teams=config.teams)
    assert data["teams"] == [{"name": "platform"}, {"name": "finance", "description": "Pays for it"}]
    assert data["clients"] == [{"name": "ci-bot", "team": "platform", "scopes": ["calc:write"]}]
    assert config_from_dict(data) == config
    for bad, where in (
        ("teams: [{name: Bad Team}]", "teams[0].name"),
        ("teams: [{name: a, colour: red}]", "teams[0].colour"),
        ("teams: [a, a]", "teams[1].name"),
        ('clients: [{name: x, scopes: ["has space"]}]', "clients[0].scopes"),
    ):
        with pytest.raises(ConfigError) as caught:
            load_config(bad)
        assert caught.value.path == where, (bad, caught.value)


def test_every_field_is_read() -> None:
    config = load_config(FULL)

    calc, legacy, files = config.servers
    assert calc.auth == UpstreamAuth(type="header", header="X-Api-Key", value_env="CALC_KEY")
    assert (calc.approval, calc.connect_timeout_seconds, calc.call_timeout_seconds) == ("manual", 2.0, 7.5)
    assert (calc.failure_mode, legacy.failure_mode, files.failure_mode) == ("closed", "open", "open")
    assert (legacy.transport, legacy.enabled) == ("sse", False)
    assert files.transport == "stdio"
    assert files.command == ("python", "examples/servers/files.py", "--root", "./data")
    assert files.env == {"ROOT": "./data", "DEBUG": "1"}
    assert files.cwd == "/srv/files"
    assert files.call_timeout_seconds == 120.0
    assert config.clients == (ClientSpec("ci-bot", "platform"), ClientSpec("nightly", None))
    assert config.toolsets == (
        Toolset(
            name="support",
            tools=("calc__add", "files__read_*", "legacy__[a-c]?t*"),
            aliases={"plus": "calc__add", "list_files": "files__list"},
            description="What the support agent may use.",
        ),
        Toolset(name="only-aliases", aliases={"Search.v2": "search__query"}),
    )
    assert config.warnings == ()


def test_dump_round_trips_to_equal_values() -> None:
    config = load_config(FULL)

    text = dump_config(config.gateway, config.servers, config.clients, config.toolsets)

    assert load_config(text) == config
    data = config_to_dict(config.gateway, config.servers, config.clients, config.toolsets)
    assert config_from_dict(data) == config
    assert list(data["toolsets"][0]["aliases"]) == ["plus", "list_files"]


def test_catalog_and_cache_keys_load_and_round_trip() -> None:
    text = """
servers:
  - name: weather
    url: "https://weather.example/mcp"
    trusted: true
    description: Forecasts and observations.
    tags: [weather, forecast, weather]
    cache_ttl_seconds: 30
    cache_scope: public
    registry: {name: io.github.example/weather, version: "1.2.0"}
"""
    (server,) = load_config(text).servers
    assert server.description == "Forecasts and observations."
    assert server.tags == ("weather", "forecast")  # duplicates dropped, order kept
    assert (server.cache_ttl_seconds, server.cache_scope) == (30.0, "public")
    assert server.registry == {"name": "io.github.example/weather", "version": "1.2.0"}
    assert load_config(dump_config(None, [server], ())).servers == (server,)


def test_dump_omits_defaults_and_writes_secrets_as_references() -> None:
    servers = [
        Upstream(name="calc", url="http://127.0.0.1:9001/mcp"),
        Upstream(
            name="gh", url="https://gh.example/mcp", auth=UpstreamAuth(type="bearer", token_env="GH_TOKEN")
        ),
        Upstream(name="pay", url="https://pay.example/mcp", failure_mode="closed"),
    ]

    data = config_to_dict(None, servers, [])

    assert data == {
        "servers": [
            {"name": "calc", "url": "http://127.0.0.1:9001/mcp"},
            {
                "name": "gh",
                "url": "https://gh.example/mcp",
                "auth": {"type": "bearer", "token_env": "GH_TOKEN"},
            },
            {"name": "pay", "url": "https://pay.example/mcp", "failure_mode": "closed"},
        ]
    }


def test_dump_takes_registry_records_drops_timestamps_and_revoked_clients() -> None:
    moment = datetime(2026, 11, 3, tzinfo=UTC)
    server = Upstream(name="calc", url="http://127.0.0.1:9001/mcp", created_at=moment, updated_at=moment)
    clients = [
        ClientRecord("c_1", "ci-bot", "platform", "hash", created_at=moment),
        ClientRecord("c_2", "old-bot", None, "hash", created_at=moment, revoked_at=moment),
    ]
    toolset = Toolset(name="support", tools=("calc__*",), created_at=moment, updated_at=moment)

    config = load_config(dump_config(None, [server], clients, [toolset]))

    assert config == LoadedConfig(
        servers=(Upstream(name="calc", url="http://127.0.0.1:9001/mcp"),),
        clients=(ClientSpec("ci-bot", "platform"),),
        toolsets=(Toolset(name="support", tools=("calc__*",)),),
    )


def test_dump_layout_matches_the_documentation() -> None:
    config = load_config(DESIGN_EXAMPLE)

    text = dump_config(config.gateway, config.servers, config.clients, config.toolsets)

    assert text == (
        "gateway: {public_url: 'https://gw.example'}\n"
        "servers:\n"
        "  - name: calc\n"
        "    url: http://127.0.0.1:9001/mcp\n"
        "    auth: {type: bearer, token_env: CALC_TOKEN}\n"
        "  - name: files\n"
        "    command: [python, examples/servers/files.py]\n"
        "    env: {ROOT: ./data}\n"
        "toolsets:\n"
        "  - name: support\n"
        "    tools: [calc__add, files__read_*]\n"
        "clients:\n"
        "  - name: ci-bot\n"
        "    team: platform\n"
    )


@pytest.mark.parametrize("text", ["", "# nothing yet\n", "{}", "servers:\nclients: []\n"])
def test_an_empty_file_is_an_empty_configuration(text: str) -> None:
    assert load_config(text) == LoadedConfig()


def test_unknown_top_level_section_is_ignored_with_a_warning_naming_it() -> None:
    config = load_config("serverz: []\nobservability: {otlp: x}\nservers: []\n")

    assert config.warnings == (
        "unknown section 'serverz' was ignored (did you mean 'servers'?)",
        "unknown section 'observability' was ignored",
    )


@pytest.mark.parametrize(
    ("text", "path", "fragment"),
    [
        (
            "servers:\n  - {name: a, url: 'http://x'}\n  - {name: b, urll: 'http://x'}",
            "servers[1].urll",
            "unknown key",
        ),
        ("servers: {name: a}", "servers", "expected a list"),
        ("servers: [calc]", "servers[0]", "expected a mapping"),
        ("servers: [{url: 'http://x'}]", "servers[0].name", "required"),
        ("servers: [{name: 7, url: 'http://x'}]", "servers[0].name", "expected a string"),
        ("servers: [{name: a}]", "servers[0]", "needs 'url'"),
        ("servers: [{name: a, url: 'ftp://x'}]", "servers[0].url", "not an http:// or https:// URL"),
        ("servers: [{name: a, url: 'http://x:port'}]", "servers[0].url", "not a valid URL"),
        ("servers: [{name: a, url: 'http://u:p@x'}]", "servers[0].url", "credentials in the URL"),
        (
            "servers: [{name: a, url: 'http://x', transport: stdio}]",
            "servers[0].transport",
            "'http' or 'sse'",
        ),
        ("servers: [{name: a, command: [x], transport: sse}]", "servers[0].transport", "'stdio'"),
        ("servers: [{name: a, command: 'python x.py'}]", "servers[0].command", "expected a list of strings"),
        ("servers: [{name: a, command: [python, 3]}]", "servers[0].command[1]", "expected a string"),
        ("servers: [{name: a, command: []}]", "servers[0].command", "program name"),
        (
            "servers: [{name: a, url: 'http://x', args: [y]}]",
            "servers[0].args",
            "'command' (stdio) servers only",
        ),
        (
            "servers: [{name: a, url: 'http://x', env: {A: b}}]",
            "servers[0].env",
            "'command' (stdio) servers only",
        ),
        ("servers: [{name: a, command: [x], env: {PORT: 8080}}]", "servers[0].env.PORT", "quote it"),
        ("servers: [{name: a, command: [x], env: {'A-B': c}}]", "servers[0].env.A-B", "environment variable"),
        ("servers: [{name: a, command: [x], cwd: ''}]", "servers[0].cwd", "must not be empty"),
        ("servers: [{name: a, url: 'http://x', approval: always}]", "servers[0].approval", "'first-use' or"),
        ("servers: [{name: a, url: 'http://x', failure_mode: shut}]", "servers[0].failure_mode", "'open' or"),
        ("servers: [{name: a, url: 'http://x', failure_mode: 1}]", "servers[0].failure_mode", "string"),
        ("servers: [{name: a, url: 'http://x', enabled: 'yes'}]", "servers[0].enabled", "true or false"),
        ("servers: [{name: a, url: 'http://x', auth: bearer}]", "servers[0].auth", "expected a mapping"),
        ("servers: [{name: a, url: 'http://x', auth: {token_env: T}}]", "servers[0].auth.type", "required"),
        ("servers: [{name: a, url: 'http://x', auth: {type: basic}}]", "servers[0].auth.type", "'bearer'"),
        (
            "servers: [{name: a, url: 'http://x', auth: {type: bearer}}]",
            "servers[0].auth.token_env",
            "required",
        ),
        (
            "servers: [{name: a, url: 'http://x', auth: {type: bearer, token_env: T, header: X}}]",
            "servers[0].auth.header",
            "does not apply",
        ),
        (
            "servers: [{name: a, url: 'http://x', auth: {type: header, header: 'X Y', value_env: V}}]",
            "servers[0].auth.header",
            "HTTP header name",
        ),
        (
            "servers: [{name: a, url: 'http://x', auth: {type: bearer, token_env: 'A B'}}]",
            "servers[0].auth.token_env",
            "environment variable name",
        ),
        (
            "servers: [{name: a, url: 'http://x', auth: {type: none, via: x}}]",
            "servers[0].auth.via",
            "unknown key",
        ),
        (
            "servers: [{name: a, url: 'http://x', timeouts: {call_seconds: 0}}]",
            "servers[0].timeouts.call_seconds",
            "positive",
        ),
        (
            "servers: [{name: a, url: 'http://x', timeouts: {call: 5}}]",
            "servers[0].timeouts.call",
            "unknown key",
        ),
        (
            "servers: [{name: a, url: 'http://x', connect_timeout_seconds: -1}]",
            "servers[0].connect_timeout_seconds",
            "positive",
        ),
        (
            "servers: [{name: a, url: 'http://x', call_timeout_seconds: true}]",
            "servers[0].call_timeout_seconds",
            "number",
        ),
        (
            "servers: [{name: a, url: 'http://x', call_timeout_seconds: .inf}]",
            "servers[0].call_timeout_seconds",
            "positive",
        ),
        (
            "servers: [{name: a, url: 'http://x', call_timeout_seconds: 5, timeouts: {call_seconds: 5}}]",
            "servers[0].timeouts.call_seconds",
            "keep one",
        ),
        (
            "servers: [{name: a, url: 'http://x'}, {name: b, url: 'http://x'}, {name: a, command: [x]}]",
            "servers[2].name",
            "duplicate name 'a' (also servers[0])",
        ),
        ("gateway: {public_url: 'https://gw', listen: 1}", "gateway.listen", "unknown key"),
        ("gateway: [x]", "gateway", "expected a mapping"),
        ("gateway: {public_url: 'gw.example'}", "gateway.public_url", "http:// or https://"),
        ("gateway: {public_url: 'https://gw/?a=b'}", "gateway.public_url", "query or fragment"),
        ("clients: [{team: p}]", "clients[0].name", "required"),
        ("clients: [{name: ci-bot, tema: p}]", "clients[0].tema", "unknown key (did you mean 'team'?)"),
        ("clients: [{name: 'ci bot'}]", "clients[0].name", "not a valid name"),
        ("clients: [{name: ci-bot, team: 'a/b'}]", "clients[0].team", "not a valid team"),
        ("clients: [{name: x}, {name: x}]", "clients[1].name", "duplicate name"),
        ("clients: ci-bot", "clients", "expected a list"),
        ("toolsets: {name: s}", "toolsets", "expected a list"),
        ("toolsets: [{tools: ['a__b']}]", "toolsets[0].name", "required"),
        ("toolsets: [{name: S, tools: ['a__b']}]", "toolsets[0].name", "not a valid name"),
        ("toolsets: [{name: tollhouse, tools: ['a__b']}]", "toolsets[0].name", "'tollhouse' is reserved"),
        ("toolsets: [{name: s, tool: ['a__b']}]", "toolsets[0].tool", "unknown key (did you mean 'tools'?)"),
        ("toolsets: [{name: s}]", "toolsets[0]", "at least one entry in 'tools' or 'aliases'"),
        ("toolsets: [{name: s, tools: []}]", "toolsets[0]", "at least one entry"),
        ("toolsets: [{name: s, tools: 'a__*'}]", "toolsets[0].tools", "expected a list of strings"),
        ("toolsets: [{name: s, tools: [a__b, 3]}]", "toolsets[0].tools[1]", "expected a string"),
        ("toolsets: [{name: s, tools: [a__b, '']}]", "toolsets[0].tools[1]", "must not be empty"),
        ("toolsets: [{name: s, tools: [add]}]", "toolsets[0].tools[0]", "not an exposed tool name"),
        ("toolsets: [{name: s, tools: ['a__{b,c}']}]", "toolsets[0].tools[0]", "wildcards"),
        ("toolsets: [{name: s, tools: ['a__[bc']}]", "toolsets[0].tools[0]", "wildcards"),
        ("toolsets: [{name: s, tools: ['a__*', 'b__c', 'a__*']}]", "toolsets[0].tools[2]", "(also"),
        ("toolsets: [{name: s, tools: ['a__b'], description: 3}]", "toolsets[0].description", "a string"),
        ("toolsets: [{name: s, aliases: [a__b]}]", "toolsets[0].aliases", "expected a mapping"),
        ("toolsets: [{name: s, aliases: {'a b': c__d}}]", "toolsets[0].aliases.a b", "not a valid tool name"),
        ("toolsets: [{name: s, aliases: {x__y: c__d}}]", "toolsets[0].aliases.x__y", "could hide one"),
        ("toolsets: [{name: s, aliases: {add: 'c__*'}}]", "toolsets[0].aliases.add", "exactly one tool"),
        ("toolsets: [{name: s, aliases: {add: add}}]", "toolsets[0].aliases.add", "not an exposed tool"),
        ("toolsets: [{name: s, aliases: {add: 7}}]", "toolsets[0].aliases.add", "expected a string"),
        (
            "toolsets: [{name: s, aliases: {one: c__d, two: c__d}}]",
            "toolsets[0].aliases.two",
            "'c__d' already has the alias 'one'",
        ),
        ("servers: [{name: a, url: 'http://x/', tags: [ok, '']}]", "servers[0].tags[1]", "1-64 letters"),
        ("servers: [{name: a, url: 'http://x/', tags: 'x'}]", "servers[0].tags", "expected a list"),
        ("servers: [{name: a, url: 'http://x/', description: 3}]", "servers[0].description", "a string"),
        ("servers: [{name: a, url: 'http://x/', registry: [1]}]", "servers[0].registry", "a mapping"),
        (
            "servers: [{name: a, url: 'http://x/', cache_ttl_seconds: -1}]",
            "servers[0].cache_ttl_seconds",
            "0 to",
        ),
        (
            "servers: [{name: a, url: 'http://x/', cache_ttl_seconds: yes}]",
            "servers[0].cache_ttl_seconds",
            "seconds",
        ),
        ("servers: [{name: a, url: 'http://x/', cache_scope: all}]", "servers[0].cache_scope", "'private'"),
        (
            "toolsets: [{name: s, tools: ['*']}, {name: s, tools: ['*']}]",
            "toolsets[1].name",
            "duplicate name 's' (also toolsets[0])",
        ),
    ],
)
def test_every_error_names_its_key_path(text: str, path: str, fragment: str) -> None:
    error = error_of(text)

    assert error.path == path
    assert fragment in error.message
    assert str(error) == f"<config>: {path}: {error.message}"
    assert "\n" not in str(error)


@pytest.mark.parametrize(("key", "reference"), [("token", "token_env"), ("value", "value_env")])
def test_a_literal_secret_is_refused_with_the_reference_to_use(key: str, reference: str) -> None:
    error = error_of(f"servers: [{{name: a, url: 'http://x', auth: {{type: bearer, {key}: s3cret}}}}]")

    assert error.path == f"servers[0].auth.{key}"
    assert f"use {reference}" in error.message
    assert "s3cret" not in str(error)


@pytest.mark.parametrize("name", ["Calc", "my_server", "a" * 33, "-calc", "", "calc.v2"])
def test_server_names_follow_the_name_rule(name: str) -> None:
    error = error_of(f"servers: [{{name: '{name}', url: 'http://x'}}]")

    assert error.path == "servers[0].name"
    assert "not a valid name" in error.message


def test_the_name_tollhouse_is_reserved() -> None:
    error = error_of("servers: [{name: tollhouse, url: 'http://x'}]")

    assert (error.path, error.message) == ("servers[0].name", "'tollhouse' is reserved")


@pytest.mark.parametrize("name", ["a", "0", "a" * 32, "calc-2"])
def test_valid_server_names_load(name: str) -> None:
    assert load_config(f"servers: [{{name: '{name}', url: 'http://x'}}]").servers[0].name == name


@pytest.mark.parametrize(
    ("pattern", "valid"),
    [
        ("calc__add", True),
        ("my-server__Tool.v2_x", True),
        ("files__read_*", True),
        ("*", True),
        ("*__search", True),
        ("calc__?dd", True),
        ("calc__[as]*", True),
        ("calc__[!a-c]*", True),
        ("calc" + "__" + "x" * 122, True),
        ("calc" + "__" + "x" * 123, False),  # 129 characters: never an exposed name
        ("add", False),
        ("Calc__add", False),
        ("calc__", False),
        ("__add", False),
        ("calc__add tool", False),
        ("calc__a/b", False),
        ("calc__**/x", False),
        ("calc__[]", False),
        ("calc__[a", False),
        ("calc__a]", False),
        ("calc__{a,b}", False),
        ("calc__a\\*", False),
        ("calc__" + "*" * 251, False),
    ],
)
def test_tool_patterns_are_exposed_names_or_simple_globs(pattern: str, valid: bool) -> None:
    assert valid_tool_pattern(pattern) is valid


def test_a_toolset_entry_validates_on_its_own_for_the_admin_api() -> None:
    body = {"name": "support", "tools": ["calc__*"], "aliases": {"plus": "calc__add"}, "description": "d"}

    assert toolset_from_dict(body) == Toolset(
        name="support", tools=("calc__*",), aliases={"plus": "calc__add"}, description="d"
    )
    with pytest.raises(ConfigError) as info:
        toolset_from_dict({"name": "support", "tools": ["calc"]})
    assert str(info.value).startswith("tools[0]: 'calc' is not an exposed tool name (server__tool)")


def test_url_and_command_are_mutually_exclusive() -> None:
    error = error_of("servers: [{name: a, url: 'http://x', command: [python]}]")

    assert (error.path, error.message) == ("servers[0]", "give either 'url' or 'command', not both")


def test_not_yaml_is_one_line_with_its_position() -> None:
    error = error_of("servers: [\n  {name: a\n")

    assert error.path == ""
    assert error.message.startswith("not valid YAML at line ")
    assert "\n" not in str(error)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text", "42"])
def test_the_top_level_must_be_a_mapping(text: str) -> None:
    error = error_of(text)

    assert (error.path, error.message.split(",")[0]) == ("", "the top level must be a mapping")


def test_a_server_entry_validates_on_its_own_for_the_admin_api() -> None:
    assert server_from_dict({"name": "calc", "url": "http://x/mcp"}) == Upstream(
        name="calc", url="http://x/mcp"
    )
    with pytest.raises(ConfigError) as info:
        server_from_dict({"name": "calc", "urll": "http://x/mcp"})
    assert str(info.value) == "urll: unknown key (did you mean 'url'?)"


def test_config_from_dict_names_its_source_only_when_given() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"servers": [{"name": "A", "url": "http://x"}]})
    assert str(info.value).startswith("servers[0].name: ")
    with pytest.raises(ConfigError) as info:
        config_from_dict([], source="request")
    assert str(info.value) == "request: the top level must be a mapping, got a list"


def test_load_config_file_reads_a_file_and_names_it_in_errors(tmp_path: Path) -> None:
    good = tmp_path / "tollhouse.yaml"
    good.write_text(DESIGN_EXAMPLE, encoding="utf-8")
    bad = tmp_path / "bad.yaml"
    bad.write_text("servers: [{name: a, urll: x}]\n", encoding="utf-8")

    assert load_config_file(good) == load_config(DESIGN_EXAMPLE)
    with pytest.raises(ConfigError) as info:
        load_config_file(bad)
    assert str(info.value) == f"{bad}: servers[0].urll: unknown key (did you mean 'url'?)"
    with pytest.raises(ConfigError) as info:
        load_config_file(tmp_path / "missing.yaml")
    assert str(info.value) == f"{tmp_path / 'missing.yaml'}: cannot read the file: No such file or directory"
