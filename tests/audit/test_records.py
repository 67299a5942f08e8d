"""The arguments digest: canonical JSON's SHA-256, and None (never an exception) when there is none."""

from __future__ import annotations

from typing import Any

from tollhouse.audit.records import args_digest


def test_equal_arguments_in_any_key_order_have_one_digest() -> None:
    assert args_digest({"a": 1, "b": [1, 2]}) == args_digest({"b": [1, 2], "a": 1})
    assert args_digest({"a": 1}) != args_digest({"a": 2})


def test_arguments_nested_past_pythons_recursion_have_no_digest_instead_of_an_error() -> None:
    deep: Any = "leaf"
    for _ in range(5000):
        deep = [deep]
    assert args_digest({"x": deep}) is None
    assert args_digest({"x": float("nan")}) is None
