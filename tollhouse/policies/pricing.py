"""The price book: what one call costs, in integer micro-units of a currency.

Money is never a float here: every component is an integer number of micro-units (1 USD =
1,000,000 micro-USD) and fractional results round *up*, so a sum of prices never undercounts.

A rule matches calls by `server` and `tool` globs (fnmatch, case-sensitive). When several
rules match, the most specific wins: each field scores 2 for a literal, 1 for a glob with a
wildcard and 0 when absent or `*`; the highest total wins and ties go to the rule listed
first. So `{server: calc, tool: add}` beats `{server: calc}`, which beats `{tool: "a*"}`.

Components, summed by `price()` at settlement:
- `per_call_micro` for every billable call;
- `per_second_micro` per second of upstream time (prorated by the millisecond);
- `per_kib_micro` per KiB of request arguments plus response (prorated by the byte);
- `per_token_micro` per token the upstream *reports* (`tokens_of`); never estimated.

`estimate()` is what a call reserves against budgets before it runs: `per_call_micro` plus
the rule's `estimate_micro`, a configured allowance for the variable components. A hard
budget overshoots by at most one call's cost only when that estimate covers a call.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "DEFAULT_CURRENCY",
    "PriceBook",
    "PriceError",
    "PriceRule",
    "UsageFacts",
    "price_from_dict",
    "price_to_dict",
    "prices_from_list",
    "tokens_of",
]

DEFAULT_CURRENCY = "USD"
_COMPONENTS = ("per_call_micro", "per_second_micro", "per_kib_micro", "per_token_micro", "estimate_micro")
_KEYS = frozenset({"match", "currency", *_COMPONENTS})
_MATCH_KEYS = frozenset({"server", "tool"})
# Where upstreams put token counts (OpenAI and Anthropic spellings), in `_meta.usage` or `usage`.
_TOKENS_IN = ("input_tokens", "prompt_tokens")
_TOKENS_OUT = ("output_tokens", "completion_tokens")


class PriceError(ValueError):
    """A price rule that is malformed; the message names the field."""


@dataclass(frozen=True, slots=True)
class PriceRule:
    """One entry of `prices:`."""

    server: str | None = None
    tool: str | None = None
    per_call_micro: int = 0
    per_second_micro: int = 0
    per_kib_micro: int = 0
    per_token_micro: int = 0
    estimate_micro: int = 0
    currency: str = DEFAULT_CURRENCY

    def matches(self, server: str, tool: str) -> bool:
        """Whether this rule applies to `server`'s `tool`."""
        return _glob(self.server, server) and _glob(self.tool, tool)

    @property
    def specificity(self) -> int:
        """How narrowly the rule matches (see the module docstring)."""
        return _score(self.server) + _score(self.tool)

    @property
    def key(self) -> tuple[str, str]:
        """What identifies the rule in the book: its match."""
        return (self.server or "*", self.tool or "*")


@dataclass(frozen=True, slots=True)
class UsageFacts:
    """What a finished call measured, for `price()`."""

    upstream_ms: int = 0
    request_bytes: int = 0
    response_bytes: int = 0
    tokens: int = 0


class PriceBook:
    """An immutable list of rules; `rule_for` picks the most specific match."""

    def __init__(self, rules: Iterable[PriceRule] = ()) -> None:
        self.rules: tuple[PriceRule, ...] = tuple(rules)
        self._cache: dict[tuple[str, str], PriceRule | None] = {}

    def rule_for(self, server: str, tool: str) -> PriceRule | None:
        """The rule that prices `server`'s `tool`, or None (the call is free)."""
        key = (server, tool)
        if key not in self._cache:
            best: PriceRule | None = None
            for rule in self.rules:
                if rule.matches(server, tool) and (best is None or rule.specificity > best.specificity):
                    best = rule
            # Bounded by the catalog: only exposed (server, tool) pairs reach a price lookup.
            self._cache[key] = best
        return self._cache[key]

    def estimate(self, server: str, tool: str) -> tuple[int, str | None]:
        """(micro-units to reserve before the call, currency); (0, None) when free."""
        rule = self.rule_for(server, tool)
        if rule is None:
            return 0, None
        return rule.per_call_micro + rule.estimate_micro, rule.currency

    def price(self, server: str, tool: str, facts: UsageFacts) -> tuple[int, str | None]:
        """(the call's cost in micro-units, currency); (0, None) when free."""
        rule = self.rule_for(server, tool)
        if rule is None:
            return 0, None
        total = (
            rule.per_call_micro
            + _ceil_div(rule.per_second_micro * max(facts.upstream_ms, 0), 1000)
            + _ceil_div(rule.per_kib_micro * max(facts.request_bytes + facts.response_bytes, 0), 1024)
            + rule.per_token_micro * max(facts.tokens, 0)
        )
        return total, rule.currency


def tokens_of(result: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """(input tokens, output tokens) an upstream reported in its result, else None for each.

    Recognised: an object at `_meta.usage` or at `usage` with `input_tokens`/`output_tokens`
    (or `prompt_tokens`/`completion_tokens`); a bare `total_tokens` counts as output.
    """
    meta = result.get("_meta")
    for usage in (meta.get("usage") if isinstance(meta, Mapping) else None, result.get("usage")):
        if not isinstance(usage, Mapping):
            continue
        tokens_in = _first_int(usage, _TOKENS_IN)
        tokens_out = _first_int(usage, _TOKENS_OUT)
        if tokens_in is None and tokens_out is None:
            tokens_out = _first_int(usage, ("total_tokens",))
        if tokens_in is not None or tokens_out is not None:
            return tokens_in, tokens_out
    return None, None


def price_from_dict(data: Any, path: str = "prices[]") -> PriceRule:
    """Validate one `prices:` entry.

    Raises:
        PriceError: an unknown key, a negative or non-integer amount, a bad currency.
    """
    if not isinstance(data, Mapping):
        raise PriceError(f"{path}: expected a mapping")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise PriceError(f"{path}.{unknown[0]}: unknown key")
    match = data.get("match", {})
    if not isinstance(match, Mapping) or set(match) - _MATCH_KEYS:
        raise PriceError(f"{path}.match: expected a mapping with 'server' and/or 'tool'")
    for key in _MATCH_KEYS:
        if key in match and (not isinstance(match[key], str) or not match[key]):
            raise PriceError(f"{path}.match.{key}: expected a non-empty string")
    amounts: dict[str, int] = {}
    for key in _COMPONENTS:
        value = data.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise PriceError(f"{path}.{key}: expected a whole number of micro-units >= 0")
        amounts[key] = value
    currency = data.get("currency", DEFAULT_CURRENCY)
    if not isinstance(currency, str) or not (3 <= len(currency) <= 8) or not currency.isalnum():
        raise PriceError(f"{path}.currency: expected a currency code such as USD")
    return PriceRule(server=match.get("server"), tool=match.get("tool"), currency=currency.upper(), **amounts)


def price_to_dict(rule: PriceRule) -> dict[str, Any]:
    """The config form of `rule` (zero components omitted)."""
    fields = asdict(rule)
    match = {k: fields[k] for k in ("server", "tool") if fields[k] is not None}
    out: dict[str, Any] = {"match": match}
    out.update({k: fields[k] for k in _COMPONENTS if fields[k]})
    out["currency"] = rule.currency
    return out


def prices_from_list(data: Sequence[Any], path: str = "prices") -> list[PriceRule]:
    """Validate a `prices:` list; two rules with the same match are an error."""
    rules = [price_from_dict(item, f"{path}[{i}]") for i, item in enumerate(data)]
    seen: set[tuple[str, str]] = set()
    for i, rule in enumerate(rules):
        if rule.key in seen:
            raise PriceError(f"{path}[{i}].match: another rule has the same match")
        seen.add(rule.key)
    return rules


def _glob(pattern: str | None, value: str) -> bool:
    return pattern is None or pattern == "*" or fnmatch.fnmatchcase(value, pattern)


def _score(pattern: str | None) -> int:
    if pattern is None or pattern == "*":
        return 0
    return 1 if any(c in pattern for c in "*?[") else 2


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _first_int(data: Mapping[str, Any], keys: Sequence[str]) -> int | None:
    for key in keys:
        value = data.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None
