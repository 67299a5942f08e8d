"""The price book: most specific rule wins, integer micro-units, reported tokens only."""

from __future__ import annotations

import pytest

from tollhouse.policies.pricing import (
    PriceBook,
    PriceError,
    UsageFacts,
    price_from_dict,
    price_to_dict,
    prices_from_list,
    tokens_of,
)


def test_the_most_specific_rule_wins_and_ties_go_to_the_first_listed() -> None:
    book = PriceBook(
        prices_from_list(
            [
                {"match": {"tool": "a*"}, "per_call_micro": 1},
                {"match": {"server": "calc"}, "per_call_micro": 2},
                {"match": {"server": "calc", "tool": "add"}, "per_call_micro": 3},
                {"match": {"server": "c*"}, "per_call_micro": 4},
            ]
        )
    )

    assert book.price("calc", "add", UsageFacts()) == (3, "USD")
    assert book.price("calc", "sub", UsageFacts()) == (2, "USD")
    assert book.price("cube", "sub", UsageFacts()) == (4, "USD")
    assert book.price("files", "append", UsageFacts()) == (1, "USD")
    assert book.price("files", "read", UsageFacts()) == (0, None)


def test_components_are_prorated_and_round_up() -> None:
    rule = price_from_dict(
        {
            "match": {"server": "llm"},
            "per_call_micro": 1000,
            "per_second_micro": 300,
            "per_kib_micro": 10,
            "per_token_micro": 2,
            "estimate_micro": 5000,
            "currency": "eur",
        }
    )
    book = PriceBook([rule])
    facts = UsageFacts(upstream_ms=1501, request_bytes=1000, response_bytes=1049, tokens=7)

    # 1000 + ceil(300*1.501) + ceil(10*2049/1024) + 2*7
    assert book.price("llm", "chat", facts) == (1000 + 451 + 21 + 14, "EUR")
    assert book.estimate("llm", "chat") == (6000, "EUR")
    assert price_from_dict(price_to_dict(rule)) == rule


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"match": {"server": "x"}, "per_call_micro": 1.5}, "per_call_micro"),
        ({"match": {"server": "x"}, "per_call_micro": -1}, "per_call_micro"),
        ({"match": {"server": "x"}, "per_cal_micro": 1}, "per_cal_micro"),
        ({"match": {"servr": "x"}}, "match"),
        ({"match": {"server": "x"}, "currency": "$"}, "currency"),
    ],
)
def test_bad_rules_name_the_field(entry: dict[str, object], field: str) -> None:
    with pytest.raises(PriceError, match=field):
        price_from_dict(entry)


def test_duplicate_matches_are_refused() -> None:
    with pytest.raises(PriceError, match="same match"):
        prices_from_list([{"match": {"server": "x"}}, {"match": {"server": "x", "tool": "*"}}])


def test_tokens_are_read_from_meta_usage_or_usage() -> None:
    assert tokens_of({"_meta": {"usage": {"input_tokens": 3, "output_tokens": 4}}}) == (3, 4)
    assert tokens_of({"usage": {"prompt_tokens": 5, "completion_tokens": 6}}) == (5, 6)
    assert tokens_of({"usage": {"total_tokens": 9}}) == (None, 9)
    assert tokens_of({"content": [], "usage": {"input_tokens": "7"}}) == (None, None)
    assert tokens_of({"content": []}) == (None, None)
