"""Budgets and credits on both ledgers: hard caps under concurrency, soft overage, burn order,
period resets, expiring reservations, and the fail-closed / fail-open choice."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import anyio
import pytest
import redis.asyncio as aioredis

from tollhouse.policies.budgets import (
    BudgetError,
    BudgetRefused,
    BudgetRule,
    Budgets,
    Finish,
    Ledger,
    LedgerUnavailable,
    MemoryLedger,
    Payer,
    RedisLedger,
    budget_from_dict,
    budget_to_dict,
    period_bounds,
)

pytestmark = pytest.mark.anyio

NOV_10 = datetime(2026, 11, 10, 12, tzinfo=UTC).timestamp()
DEC_01 = datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC).timestamp()
ALICE = Payer("alice", "cli_1", ("platform",))


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
async def ledger(request: pytest.FixtureRequest) -> AsyncIterator[Ledger]:
    if request.param == "memory":
        yield MemoryLedger()
        return
    url = request.getfixturevalue("redis_url")
    client = aioredis.Redis.from_url(url)
    prefix = f"test-budgets-{secrets.token_hex(6)}:"
    try:
        yield RedisLedger(client, prefix=prefix)
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


def rules(**extra: object) -> list[BudgetRule]:
    return [
        budget_from_dict(
            {
                "id": "team-cap",
                "scope": "team",
                "name": "*",
                "period": "month",
                "amount_micro": 10_000,
                **extra,
            }
        )
    ]


async def test_a_hard_budget_under_32_concurrent_callers_overshoots_by_at_most_one_call(
    ledger: Ledger,
) -> None:
    clock = Clock(NOV_10)
    budgets = Budgets(ledger, rules=rules(), clock=clock)
    cost = 700  # 10,000 is not a multiple: the last admitted call may not fit exactly
    admitted: list[int] = []
    refused: list[BudgetRefused] = []

    async def caller() -> None:
        for _ in range(10):
            try:
                hold = await budgets.reserve(ALICE, cost, "USD")
            except BudgetRefused as exc:
                refused.append(exc)
                return
            await anyio.lowlevel.checkpoint()
            await budgets.settle(hold, cost, "USD")
            admitted.append(cost)

    async with anyio.create_task_group() as tg:
        for _ in range(32):
            tg.start_soon(caller)

    status = await budgets.status(budgets.rules[0], "platform")
    assert status["spent_micro"] == sum(admitted)
    assert 10_000 - cost < sum(admitted) <= 10_000 + cost
    assert status["reserved_micro"] == 0
    assert refused and refused[0].retry_after_seconds == int(DEC_01 - 1 - NOV_10)
    assert refused[0].period == "2026-11"


async def test_estimates_that_miss_go_to_overage_and_the_next_period_starts_afresh(ledger: Ledger) -> None:
    clock = Clock(NOV_10)
    budgets = Budgets(ledger, rules=rules(), clock=clock)
    hold = await budgets.reserve(ALICE, 9_000, "USD")
    await budgets.settle(hold, 12_000, "USD")  # the call cost more than estimated

    with pytest.raises(BudgetRefused):
        await budgets.reserve(ALICE, 1, "USD")
    status = await budgets.status(budgets.rules[0], "platform")
    assert (status["used_micro"], status["overage_micro"]) == (10_000, 2_000)

    clock.now = DEC_01
    hold = await budgets.reserve(ALICE, 1, "USD")
    await budgets.settle(hold, 1, "USD")
    status = await budgets.status(budgets.rules[0], "platform")
    assert (status["period"], status["used_micro"], status["overage_micro"]) == ("2026-12", 1, 0)


async def test_a_soft_budget_admits_flags_and_records_overage(ledger: Ledger) -> None:
    budgets = Budgets(ledger, rules=rules(mode="soft"), clock=Clock(NOV_10))
    for _ in range(3):
        hold = await budgets.reserve(ALICE, 4_000, "USD")
        await budgets.settle(hold, 4_000, "USD")

    assert hold.flags == ["budget_over:team-cap"]
    status = await budgets.status(budgets.rules[0], "platform")
    assert (status["spent_micro"], status["used_micro"], status["overage_micro"]) == (12_000, 10_000, 2_000)


async def test_credits_burn_by_priority_then_expiry_then_grant_time(ledger: Ledger) -> None:
    grants = [
        {
            "id": "late",
            "name": "platform",
            "amount_micro": 1_000,
            "priority": 1,
            "granted_at": "2026-11-02T00:00:00Z",
        },
        {
            "id": "early",
            "name": "platform",
            "amount_micro": 1_000,
            "priority": 1,
            "granted_at": "2026-11-01T00:00:00Z",
        },
        {
            "id": "expiring",
            "name": "platform",
            "amount_micro": 1_000,
            "priority": 1,
            "expires_at": "2026-11-20T00:00:00Z",
            "granted_at": "2026-11-05T00:00:00Z",
        },
        {"id": "first", "name": "platform", "amount_micro": 1_000, "priority": 0},
        {
            "id": "gone",
            "name": "platform",
            "amount_micro": 1_000,
            "priority": 0,
            "expires_at": "2026-11-01T00:00:00Z",
        },
    ]
    budgets = Budgets(ledger, rules=rules(amount_micro=500, credits=grants), clock=Clock(NOV_10))
    rule = budgets.rules[0]
    assert [g.id for g in rule.burn_order("platform", NOV_10)] == ["first", "expiring", "early", "late"]

    burned: list[dict[str, int]] = []
    for _ in range(4):
        hold = await budgets.reserve(ALICE, 1_000, "USD")
        await budgets.settle(hold, 1_000, "USD")
        status = await budgets.status(rule, "platform")
        burned.append({c["id"]: c["used_micro"] for c in status["credits"] if c["used_micro"]})

    # 500 of allowance, then credits in order: first, expiring, early (late untouched so far).
    assert burned == [
        {"first": 500},
        {"first": 1_000, "expiring": 500},
        {"first": 1_000, "expiring": 1_000, "early": 500},
        {"first": 1_000, "expiring": 1_000, "early": 1_000, "late": 500},
    ]
    hold = await budgets.reserve(ALICE, 500, "USD")  # exactly what is left
    with pytest.raises(BudgetRefused):
        await budgets.reserve(ALICE, 1, "USD")
    await budgets.release(hold)


async def test_a_crashed_callers_reservation_expires(ledger: Ledger) -> None:
    clock = Clock(NOV_10)
    budgets = Budgets(ledger, rules=rules(), clock=clock, reservation_ttl_seconds=30)
    await budgets.reserve(ALICE, 10_000, "USD")  # never settled: its caller died
    with pytest.raises(BudgetRefused):
        await budgets.reserve(ALICE, 1, "USD")

    clock.now += 31
    hold = await budgets.reserve(ALICE, 10_000, "USD")
    assert (await budgets.status(budgets.rules[0], "platform"))["reserved_micro"] == 10_000
    await budgets.release(hold)


async def test_budgets_apply_by_scope_name_and_currency(ledger: Ledger) -> None:
    budgets = Budgets(
        ledger,
        rules=[
            budget_from_dict({"id": "u", "scope": "user", "name": "bob", "amount_micro": 0}),
            budget_from_dict(
                {"id": "c", "scope": "client", "name": "*", "amount_micro": 0, "currency": "EUR"}
            ),
        ],
        clock=Clock(NOV_10),
    )
    await budgets.reserve(ALICE, 5, "USD")  # neither applies
    await budgets.reserve(ALICE, 0, "EUR")  # free calls pass an empty budget
    with pytest.raises(BudgetRefused) as refused:
        await budgets.reserve(ALICE, 5, "EUR")
    assert (refused.value.budget, refused.value.name) == ("c", "cli_1")
    with pytest.raises(BudgetRefused):
        await budgets.reserve(Payer("bob"), 5, "USD")


class BrokenLedger(MemoryLedger):
    async def reserve(self, *args: object, **kwargs: object) -> tuple[bool, bool]:
        raise ConnectionError("redis is down")


async def test_a_ledger_failure_refuses_when_closed_and_flags_when_open() -> None:
    closed = Budgets(BrokenLedger(), rules=rules(), clock=Clock(NOV_10))
    with pytest.raises(LedgerUnavailable):
        await closed.reserve(ALICE, 1, "USD")
    opened = Budgets(BrokenLedger(), rules=rules(failure_mode="open"), clock=Clock(NOV_10))
    hold = await opened.reserve(ALICE, 1, "USD")
    assert hold.flags == ["budget_unenforced:team-cap"]


def test_periods_are_utc_days_and_months() -> None:
    assert period_bounds("month", NOV_10)[2] == "2026-11"
    assert period_bounds("day", NOV_10)[2] == "2026-11-10"
    start, end, _ = period_bounds("month", datetime(2026, 12, 31, 23, tzinfo=UTC).timestamp())
    assert (start.month, end.year, end.month) == (12, 2027, 1)


def test_budget_entries_round_trip_and_name_bad_fields() -> None:
    entry = {
        "id": "b1",
        "scope": "team",
        "name": "*",
        "period": "day",
        "amount_micro": 5,
        "currency": "USD",
        "mode": "soft",
        "failure_mode": "open",
        "credits": [
            {
                "id": "g",
                "name": "platform",
                "amount_micro": 3,
                "priority": 2,
                "expires_at": "2027-01-01T00:00:00+00:00",
            }
        ],
    }
    assert budget_to_dict(budget_from_dict(entry)) == entry
    with pytest.raises(BudgetError, match=r"credits\[0\]\.name"):
        budget_from_dict({**entry, "credits": [{"id": "g", "amount_micro": 3}]})
    with pytest.raises(BudgetError, match="scope"):
        budget_from_dict({**entry, "scope": "org"})


async def test_many_settlements_go_out_together_and_a_failed_one_spares_the_rest(ledger: Ledger) -> None:
    budgets = Budgets(ledger, rules=rules(), clock=Clock(NOV_10))
    holds = [await budgets.reserve(ALICE, 1_000, "USD") for _ in range(4)]
    assert (await budgets.status(budgets.rules[0], "platform"))["reserved_micro"] == 4_000
    await budgets.finish_all([(holds[0], 700, "USD"), (holds[1], 0, "USD"), (holds[2], 900, "EUR")])
    status = await budgets.status(budgets.rules[0], "platform")
    # 700 booked; the free call and the call priced in another currency only release.
    assert (status["spent_micro"], status["reserved_micro"]) == (700, 1_000)
    assert all(not h.accounts for h in holds[:3])
    account = holds[3].accounts[0][2]
    answers = await ledger.finish(
        [Finish(account, holds[3].reservation, 300), Finish(account, "gone", 0)], NOV_10
    )
    assert answers == [None, None]  # releasing an unknown reservation is harmless
    status = await budgets.status(budgets.rules[0], "platform")
    assert (status["spent_micro"], status["reserved_micro"]) == (1_000, 0)
