"""Argument validation against pinned input schemas: rules, bounds, messages, no network."""

from __future__ import annotations

import socket
import urllib.request
from typing import Any

import pytest

from tollhouse.policies.validation import (
    ArgumentValidator,
    InvalidToolArguments,
    ToolNotCallable,
    ValidationLimits,
    ValidatorCache,
)

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "path": {"type": "string", "maxLength": 64},
        "mode": {"enum": ["r", "w"]},
        "tags": {"type": "array", "items": {"$ref": "#/$defs/tag"}},
        "when": {"type": "string", "format": "date-time"},
        "owner": {"type": "string", "format": "email"},
    },
    "required": ["path"],
    "additionalProperties": False,
    "$defs": {"tag": {"type": "string", "pattern": "^[a-z]+$"}},
}


def invalid(validator: ArgumentValidator, arguments: object) -> str:
    with pytest.raises(InvalidToolArguments) as exc:
        validator.validate(arguments)
    return exc.value.message


def test_valid_arguments_pass() -> None:
    validator = ArgumentValidator(SCHEMA)
    args = {
        "path": "/tmp/x",
        "mode": "r",
        "tags": ["a", "b"],
        "when": "2024-03-15T10:22:31Z",
        "owner": "a@b.c",
    }
    assert validator.validate(args) is args


def test_readable_messages() -> None:
    validator = ArgumentValidator(SCHEMA)
    assert invalid(validator, {"path": 42}) == "Invalid arguments: arguments.path: 42 is not of type 'string'"
    assert invalid(validator, {}) == "Invalid arguments: arguments: 'path' is a required property"
    assert "arguments.tags[1]:" in invalid(validator, {"path": "p", "tags": ["ok", "NO"]})
    assert "'extra' was unexpected" in invalid(validator, {"path": "p", "extra": 1})
    assert "arguments.when" in invalid(validator, {"path": "p", "when": "yesterday"})
    assert "arguments.mode" in invalid(validator, {"path": "p", "mode": "x"})


def test_messages_never_echo_strings() -> None:
    validator = ArgumentValidator(SCHEMA)
    secret = "hunter2-" + "s3cr3t" * 20
    message = invalid(validator, {"path": secret})
    assert "s3cr3t" not in message
    assert "a string (128 characters) is too long" in message
    message = invalid(validator, {"path": "p", "owner": "sensitive-no-at-sign"})
    assert "sensitive" not in message


def test_messages_are_bounded() -> None:
    schema = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(50)}}
    validator = ArgumentValidator(schema)
    message = invalid(validator, {f"p{i}": i for i in range(50)})
    assert message.count("is not of type") == 3
    assert message.endswith("…")
    assert len(message) <= 1000
    long_key = "k" * 5000
    message = invalid(ArgumentValidator({"additionalProperties": False}), {long_key: 1})
    assert len(message) < 400


def test_arguments_must_be_an_object() -> None:
    validator = ArgumentValidator(SCHEMA)
    assert invalid(validator, [1]) == "arguments must be an object, got an array (1 item)"
    assert invalid(validator, "x").startswith("arguments must be an object, got a string")
    assert ArgumentValidator(None).validate(None) == {}
    assert "must be an object" in invalid(ArgumentValidator(None), 3)


def test_no_schema_accepts_any_object() -> None:
    schemas: list[dict[str, Any] | bool | None] = [None, {}, True]
    for schema in schemas:
        assert ArgumentValidator(schema).validate({"anything": [1, {"x": None}]}) == {
            "anything": [1, {"x": None}]
        }


def test_instance_depth_bound() -> None:
    value: Any = 1
    for _ in range(70):
        value = {"a": value}
    assert "nested deeper than 64" in invalid(ArgumentValidator(None), value)
    ok: Any = 1
    for _ in range(60):
        ok = [ok]
    assert ArgumentValidator(None).validate({"a": ok})


def test_local_refs_and_defs() -> None:
    tree = {
        "type": "object",
        "properties": {"root": {"$ref": "#/$defs/node"}},
        "$defs": {
            "node": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}},
                },
                "required": ["name"],
            }
        },
    }
    validator = ArgumentValidator(tree)
    validator.validate({"root": {"name": "a", "kids": [{"name": "b", "kids": []}]}})
    assert "arguments.root.kids[0]" in invalid(validator, {"root": {"name": "a", "kids": [{}]}})
    anchored = {
        "$id": "urn:tool:x",
        "properties": {"a": {"$ref": "#pos"}},
        "$defs": {"p": {"$anchor": "pos", "minimum": 0}},
    }
    assert "arguments.a" in invalid(ArgumentValidator(anchored), {"a": -1})


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> Any:
        attempts.append(args)
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return attempts


@pytest.mark.parametrize(
    "schema",
    [
        {"$ref": "http://127.0.0.1:9/schema.json"},
        {"properties": {"a": {"$ref": "https://example.com/defs.json#/x"}}},
        {"$id": "https://example.com/tool.json", "properties": {"a": {"$ref": "other.json"}}},
        {"properties": {"a": {"$ref": "#/$defs/missing"}}},
        {"$ref": "https://json-schema.org/draft/2020-12/schema"},
        {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "properties": {"a": {"$ref": "file:///etc/passwd"}},
        },
    ],
)
def test_refs_outside_the_schema_are_refused_without_network(
    no_network: list[object], schema: dict[str, Any]
) -> None:
    with pytest.raises(ToolNotCallable) as exc:
        ArgumentValidator(schema)
    assert "does not resolve inside the schema" in exc.value.message
    assert no_network == []


def test_embedded_id_resolves_locally(no_network: list[object]) -> None:
    schema = {
        "$id": "https://example.com/tool.json",
        "properties": {"a": {"$ref": "item.json"}},
        "$defs": {"item": {"$id": "item.json", "type": "integer"}},
    }
    validator = ArgumentValidator(schema)
    assert "arguments.a" in invalid(validator, {"a": "x"})
    assert no_network == []


def test_ref_loops_without_progress_are_refused() -> None:
    schemas: list[dict[str, Any]] = [
        {"$ref": "#"},
        {
            "allOf": [{"$ref": "#/$defs/a"}],
            "$defs": {"a": {"anyOf": [{"$ref": "#/$defs/b"}]}, "b": {"$ref": "#/$defs/a"}},
        },
    ]
    for schema in schemas:
        with pytest.raises(ToolNotCallable, match="loops"):
            ArgumentValidator(schema)


def test_exponential_ref_expansion_is_refused() -> None:
    defs: dict[str, Any] = {"a0": {"type": "string"}}
    for i in range(1, 25):
        defs[f"a{i}"] = {"allOf": [{"$ref": f"#/$defs/a{i - 1}"}, {"$ref": f"#/$defs/a{i - 1}"}]}
    with pytest.raises(ToolNotCallable, match="too complex"):
        ArgumentValidator({"$defs": defs, "$ref": "#/$defs/a24"})


def test_depth_bound() -> None:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(20):
        schema = {"type": "object", "properties": {"x": schema}}
    with pytest.raises(ToolNotCallable, match="nested deeper than 32"):
        ArgumentValidator(schema)
    ArgumentValidator(schema, ValidationLimits(max_schema_depth=64))


def test_composition_bound() -> None:
    schema = {"anyOf": [{"const": i} for i in range(300)]}
    with pytest.raises(ToolNotCallable, match="300 composition branches"):
        ArgumentValidator(schema)
    ArgumentValidator({"anyOf": [{"const": i} for i in range(200)]})
    nested = {"not": {"if": {"type": "string"}, "then": {"minLength": 1}, "else": {"allOf": [{}] * 254}}}
    with pytest.raises(ToolNotCallable, match="258 composition"):
        ArgumentValidator(nested)


def test_size_bound() -> None:
    schema = {"description": "x" * 300_000}
    with pytest.raises(ToolNotCallable, match="larger than"):
        ArgumentValidator(schema)


def test_invalid_schema_and_dialects() -> None:
    with pytest.raises(ToolNotCallable, match="not a valid schema"):
        ArgumentValidator({"type": "nonsense"})
    with pytest.raises(ToolNotCallable, match="unsupported"):
        ArgumentValidator({"$schema": "https://example.com/my-dialect"})
    with pytest.raises(ToolNotCallable, match="must be an object"):
        ArgumentValidator([1, 2])  # type: ignore[arg-type]


def test_draft07_semantics_are_honoured() -> None:
    # draft-07: "items" as an array is tuple validation and "additionalItems" applies after it;
    # "definitions" is where draft-07 keeps its definitions.
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {
            "pair": {
                "type": "array",
                "items": [{"type": "string"}, {"type": "integer"}],
                "additionalItems": False,
            },
            "n": {"$ref": "#/definitions/n"},
        },
        "definitions": {"n": {"type": "integer", "exclusiveMinimum": 0}},
    }
    validator = ArgumentValidator(schema)
    validator.validate({"pair": ["a", 1], "n": 1})
    assert "arguments.pair" in invalid(validator, {"pair": ["a", 1, 2]})
    assert "arguments.pair[1]" in invalid(validator, {"pair": ["a", "b"]})
    assert "arguments.n" in invalid(validator, {"n": 0})
    for uri in ("http://json-schema.org/draft-07/schema", "https://json-schema.org/draft-07/schema#"):
        ArgumentValidator({"$schema": uri, "type": "object"})
    ArgumentValidator({"$schema": "http://json-schema.org/draft-04/schema#", "type": "object"})


def test_formats_are_checked_offline() -> None:
    schema = {
        "type": "object",
        "properties": {
            "ip": {"format": "ipv4"},
            "id": {"format": "uuid"},
            "day": {"format": "date"},
            "host": {"format": "hostname"},
            "uri": {"format": "uri"},
        },
    }
    validator = ArgumentValidator(schema)
    validator.validate({"ip": "10.0.0.1", "id": "3f2504e0-4f89-11d3-9a0c-0305e82c3301", "day": "2024-03-15"})
    assert "arguments.ip" in invalid(validator, {"ip": "300.1.1.1"})
    assert "arguments.day" in invalid(validator, {"day": "2024-13-45"})
    # formats without a standard-library check are annotations only
    validator.validate({"host": "not a host!", "uri": "not a uri"})


def test_cache_compiles_once_and_caches_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = ValidatorCache(maxsize=2)
    first = cache.get("h1", SCHEMA)
    assert cache.get("h1", SCHEMA) is first
    with pytest.raises(ToolNotCallable):
        cache.get("bad", {"$ref": "https://example.com/x"})
    calls: list[object] = []
    monkeypatch.setattr(ArgumentValidator, "__init__", lambda *a: calls.append(a))
    with pytest.raises(ToolNotCallable):
        cache.get("bad", {"$ref": "https://example.com/x"})
    assert calls == []
    assert cache.validate("h1", SCHEMA, {"path": "p"}) == {"path": "p"}
    cache.get("h3", None)  # evicts the least recently used ("bad")
    assert len(cache) == 2
    with pytest.raises(ValueError):
        ValidatorCache(maxsize=0)
