"""Limit rules: matching, bucket keys, the RateLimit fields, counters in memory and in Redis."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest

from tollhouse.policies.quotas import (
    Caller,
    Counters,
    Quotas,
    Rule,
    Verdict,
    arguments_digest,
    policy_field,
    ratelimit_field,
)
from tollhouse.registry.config import ConfigError, limit_from_dict
from tollhouse.registry.limits import LimitSpec

pytestmark = pytest.mark.anyio

ALICE = Caller(subject="alice", client="c_1", teams=("platform", "ops"), server="calc", tool="calc__add")
BOB = Caller(subject="bob", client="c_2", teams=("finance",), server="calc", tool="calc__add")


def rule(**fields: object) -> Rule:
    return Rule.of(limit_from_dict({"id": "r", "rate": "10/minute", **fields}))


@pytest.mark.parametrize(
    ("match", "applies"),
    [
        ({}, True),
        ({"team": "ops"}, True),  # any of the caller's teams
        ({"team": "finance"}, False),
        ({"server": "calc", "tool": "calc__a*"}, True),  # all keys must match
        ({"server": "calc", "tool": "files__*"}, False),
        ({"client": "c_1"}, True),
        ({"subject": "bob"}, False),
    ],
)
def test_a_rule_applies_when_every_match_key_matches(match: dict[str, str], applies: bool) -> None:
    assert rule(match=match).applies(ALICE) is applies


def test_a_client_may_be_named_by_id_or_by_name() -> None:
    named = rule(match={"client": "alice-bot"})
    assert not named.applies(ALICE)
    assert named.applies(Caller("alice", "c_1", (), "calc", "calc__add", client_name="alice-bot"))


def test_the_bucket_is_the_rule_and_its_values_shared_unless_split_per_caller() -> None:
    shared = rule(match={"server": "calc"})
    assert shared.bucket(ALICE) == shared.bucket(BOB) == "r|server=calc"
    split = rule(match={"server": "calc"}, per=["client"])
    assert split.bucket(ALICE) == "r|server=calc|per-client=c_1"
    assert split.bucket(ALICE) != split.bucket(BOB)
    # Values cannot forge another bucket with separators.
    odd = Caller("a|per-client=c_2", "c_2", (), "calc", "calc__add")
    assert rule(per=["subject"]).bucket(odd) == "r|per-subject=a%7Cper-client%3Dc_2"


def test_the_fields_follow_the_ietf_draft() -> None:
    r = rule(match={}, id="per-min")
    verdicts = [Verdict(Rule.of(LimitSpec(id="per-min", rate="100/minute")), True, 37, 11.2)]
    assert policy_field(verdicts) == b'"per-min";q=100;w=60'
    assert ratelimit_field(verdicts) == b'"per-min";r=37;t=12'
    assert r.window_seconds == 60
    two = [*verdicts, Verdict(Rule.of(LimitSpec(id="day", rate="5/day")), False, 0, 0.2)]
    assert policy_field(two) == b'"per-min";q=100;w=60, "day";q=5;w=86400'
    assert two[1].retry_after == 1


@pytest.mark.parametrize(
    "entry",
    [
        {"match": {"colour": "red"}, "rate": "1/minute"},
        {"rate": "often"},
        {"rate": "0/minute"},
        {"match": {}},
        {"rate": "1/minute", "window": "rolling"},
        {"rate": "1/minute", "failure_mode": "maybe"},
        {"concurrency": 0},
        {"rate": "1/minute", "per": ["colour"]},
    ],
)
def test_bad_limits_are_refused(entry: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        limit_from_dict(entry)


def test_a_limit_without_id_gets_a_stable_one() -> None:
    entry = {"match": {"team": "platform", "server": "calc"}, "rate": "100/minute"}
    assert limit_from_dict(entry).id == limit_from_dict(dict(entry)).id
    assert limit_from_dict(entry).id.startswith("limit-")


def test_the_arguments_digest_ignores_key_order() -> None:
    assert arguments_digest({"a": 1, "b": [1, 2]}) == arguments_digest({"b": [1, 2], "a": 1})
    assert arguments_digest({"a": 1}) != arguments_digest({"a": 2})


@pytest.fixture(params=["memory", "redis"])
async def counters(request: pytest.FixtureRequest) -> AsyncIterator[Counters]:
    if request.param == "memory":
        made = Counters()
        yield made
        await made.aclose()
        return
    url = request.getfixturevalue("redis_url")
    prefix = f"th-test-{secrets.token_hex(6)}"
    made = Counters(url, prefix=prefix)
    try:
        yield made
    finally:
        client = made._shared.client if made._shared is not None else None
        if client is not None:
            keys = [k async for k in client.scan_iter(f"{prefix}*")]
            if keys:
                await client.delete(*keys)
        await made.aclose()


async def test_several_rules_are_hit_in_order_and_the_first_refusal_stops(counters: Counters) -> None:
    quotas = Quotas(counters)
    quotas.set_rules(
        [
            LimitSpec(id="wide", rate="100/minute"),
            LimitSpec(id="narrow", match={"server": "calc"}, rate="2/minute"),
            LimitSpec(id="other", match={"server": "files"}, rate="1/minute"),
        ]
    )
    rules = quotas.applicable(ALICE)
    assert [r.id for r in rules] == ["wide", "narrow"]
    seen = []
    for _ in range(3):
        verdicts = await quotas.hit_rates(rules, ALICE)
        seen.append([(v.rule.id, v.allowed, v.remaining) for v in verdicts])
    assert seen == [
        [("wide", True, 99), ("narrow", True, 1)],
        [("wide", True, 98), ("narrow", True, 0)],
        [("wide", True, 97), ("narrow", False, 0)],
    ]
    assert 0 < verdicts[-1].reset_seconds <= 60


async def test_concurrency_slots_fail_fast_and_come_back(counters: Counters) -> None:
    conc = Rule.of(LimitSpec(id="c", match={"server": "calc"}, concurrency=2))
    first, second = await counters.acquire(conc, "b"), await counters.acquire(conc, "b")
    assert await counters.acquire(conc, "b") is None
    assert first is not None and first != "unavailable"
    await counters.release(first)
    again = await counters.acquire(conc, "b")
    assert again is not None and again != "unavailable" and second is not None


async def test_an_unreachable_redis_falls_back_or_refuses_by_failure_mode() -> None:
    counters = Counters("redis://127.0.0.1:1/0", timeout_seconds=0.2, retry_seconds=60)
    try:
        opened = Rule.of(LimitSpec(id="o", rate="1/minute", failure_mode="open"))
        closed = Rule.of(LimitSpec(id="c", rate="1/minute", failure_mode="closed"))
        first = await counters.hit(opened, "k")
        assert first.allowed and first.fallback
        assert not (await counters.hit(opened, "k")).allowed  # the fallback still limits
        refused = await counters.hit(closed, "k")
        assert refused.unavailable and not refused.allowed
        assert counters.stats["fallback:o"] == 2 and counters.stats["storage_errors"] == 1
        assert not counters.available
    finally:
        await counters.aclose()


async def test_the_loop_breaker_and_the_rates_are_counted_together(counters: Counters) -> None:
    """`Quotas.hit` (one Redis round trip for fixed windows) agrees with hitting one by one."""
    from limits import RateLimitItemPerSecond

    quotas = Quotas(counters)
    quotas.set_rules(
        [
            LimitSpec(id="wide", rate="100/minute"),
            LimitSpec(id="narrow", match={"server": "calc"}, rate="2/minute"),
        ]
    )
    rules = quotas.applicable(ALICE)
    loop = (RateLimitItemPerSecond(3, 60, namespace="loop"), "alice|calc__add|digest")
    seen = []
    for _ in range(4):
        looped, verdicts = await quotas.hit(rules, ALICE, loop)
        assert looped is not None
        seen.append((looped[0], [(v.rule.id, v.allowed, v.remaining) for v in verdicts]))
    # The loop breaker counts every call; the rates stop at the first refusal, as before.
    assert seen == [
        (True, [("wide", True, 99), ("narrow", True, 1)]),
        (True, [("wide", True, 98), ("narrow", True, 0)]),
        (True, [("wide", True, 97), ("narrow", False, 0)]),
        (False, [("wide", True, 96), ("narrow", False, 0)]),
    ]
    assert looped is not None and 0 < looped[1] <= 60
    remaining, reset = await counters.stats_for(rules[0], rules[0].bucket(ALICE))
    assert remaining == 96 and 0 < reset <= 60
    none, only = await quotas.hit([], ALICE, None)
    assert none is None and only == []
