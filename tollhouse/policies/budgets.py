"""Budgets and prepaid credits: reserve before a call, settle after, on one atomic ledger.

A budget rule caps what a team, a client or a user may spend per UTC day or month
(`name: "*"` gives each team/client/user its own budget of that size). Each (rule, name,
period) is an *account*; its key names the period's start, so a new period starts from zero
without any reset job. Prepaid credit grants belong to a budget and a name; they outlive
periods and are burned, once the period's allowance is used up, in OpenMeter's order:
lowest `priority` number first, then earliest expiry (none = last), then earliest grant.

The protocol, per call and per account:
- `reserve(estimate)` refuses (hard mode) when allowance left + credits left - reserved <
  estimate; reservations are atomic, so N concurrent callers cannot all squeeze through, and
  with estimates that cover a call a hard budget never ends more than one call's cost over.
  Soft mode always admits and flags the call when it goes over.
- `settle(cost)` drops the reservation and books the actual cost: allowance first, then
  credits in burn order, then overage (soft budgets, or what estimates missed).
- `release()` drops the reservation without cost (input_required rounds, refused calls).
- A reservation carries a deadline: one whose caller crashed expires and stops counting.

Two ledgers implement it: `MemoryLedger` (one process; nothing to run) and `RedisLedger`
(Lua scripts, one round trip per operation, for several replicas). When the ledger store
fails, a budget's `failure_mode` decides: `closed` (default, as spend caps should) refuses
with LedgerUnavailable, `open` admits and flags the call.

The ledger is the enforcement state only: what was spent is also in the usage events (each
carries its cost), which reports read, so reports never depend on Redis.
"""

from __future__ import annotations

import calendar
import logging
import math
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol, cast

__all__ = [
    "Account",
    "AccountStatus",
    "BudgetError",
    "BudgetRefused",
    "BudgetRule",
    "Budgets",
    "CreditGrant",
    "Hold",
    "Ledger",
    "LedgerUnavailable",
    "MemoryLedger",
    "Payer",
    "RedisLedger",
    "budget_from_dict",
    "budget_to_dict",
    "budgets_from_list",
    "period_bounds",
]

logger = logging.getLogger("tollhouse.budgets")

Scope = Literal["team", "client", "user"]
Period = Literal["day", "month"]
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_BUDGET_KEYS = frozenset(
    {"id", "scope", "name", "period", "amount_micro", "currency", "mode", "failure_mode", "credits"}
)
_GRANT_KEYS = frozenset({"id", "name", "amount_micro", "priority", "expires_at", "granted_at"})


class BudgetError(ValueError):
    """A budget or grant entry that is malformed; the message names the field."""


class BudgetRefused(Exception):
    """A hard budget has too little left for the call's estimate."""

    def __init__(self, budget: str, name: str, period: str, retry_after_seconds: int) -> None:
        super().__init__(f"budget {budget} exhausted for {name} in {period}")
        self.budget, self.name, self.period = budget, name, period
        self.retry_after_seconds = retry_after_seconds


class LedgerUnavailable(Exception):
    """The ledger store failed and the budget fails closed."""

    def __init__(self, budget: str) -> None:
        super().__init__(f"budget {budget}: ledger unavailable")
        self.budget = budget


@dataclass(frozen=True, slots=True)
class CreditGrant:
    """Prepaid credit for one name under a budget."""

    id: str
    name: str
    amount_micro: int
    priority: int = 1
    expires_at: datetime | None = None
    granted_at: datetime | None = None

    def live(self, now: float) -> bool:
        """Not yet expired at epoch second `now`."""
        return self.expires_at is None or self.expires_at.timestamp() > now


@dataclass(frozen=True, slots=True)
class BudgetRule:
    """One entry of `budgets:`."""

    id: str
    scope: Scope
    name: str
    period: Period
    amount_micro: int
    currency: str = "USD"
    mode: Literal["hard", "soft"] = "hard"
    failure_mode: Literal["open", "closed"] = "closed"
    credits: tuple[CreditGrant, ...] = ()

    def burn_order(self, name: str, now: float) -> list[CreditGrant]:
        """`name`'s live grants in the order they burn."""
        listed = [(i, g) for i, g in enumerate(self.credits) if g.name == name and g.live(now)]
        listed.sort(
            key=lambda item: (
                item[1].priority,
                item[1].expires_at.timestamp() if item[1].expires_at else math.inf,
                item[1].granted_at.timestamp() if item[1].granted_at else math.inf,
                item[0],
            )
        )
        return [g for _, g in listed]


@dataclass(frozen=True, slots=True)
class Payer:
    """Who a call is billed to."""

    subject: str
    client_id: str | None = None
    teams: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Account:
    """One budget's counters for one name and period, with the credits it may burn."""

    key: str
    credit_key: str
    limit: int
    grants: tuple[tuple[str, int], ...]  # (grant id, amount), live ones, in burn order
    ends_at: float  # the period's end (epoch seconds): counters may be dropped some time after


@dataclass(frozen=True, slots=True)
class AccountStatus:
    """What an account holds now."""

    used: int  # allowance used this period
    spent: int  # all cost booked this period (allowance + credits + overage)
    reserved: int
    overage: int
    credits_used: dict[str, int]


@dataclass
class Hold:
    """The reservations one call holds, and what the budgets said about it."""

    reservation: str
    accounts: list[tuple[BudgetRule, str, Account]] = field(default_factory=list)
    currency: str | None = None
    flags: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Finish:
    """One reservation's end: book `cost` (settle) or, with cost 0, just drop it (release)."""

    account: Account
    reservation: str
    cost: int


class Ledger(Protocol):
    """Atomic reserve/settle/release over accounts (see the module docstring)."""

    remote: bool  # operations wait on a network round trip (worth overlapping and deferring)

    async def reserve(
        self, account: Account, reservation: str, amount: int, now: float, ttl: float, hard: bool
    ) -> tuple[bool, bool]:
        """(admitted, over): `over` when admitting took it past allowance and credits."""
        ...

    async def finish(self, ops: Sequence[Finish], now: float) -> list[BaseException | None]:
        """Settle (cost > 0) or release many reservations; one round trip on a remote ledger.

        Returns one entry per op: None, or the error that op met (the others still apply).
        """
        ...

    async def status(self, account: Account, now: float) -> AccountStatus:
        """The account's counters."""
        ...


def period_bounds(period: Period, now: float) -> tuple[datetime, datetime, str]:
    """(start, end, label) of the UTC day or month holding epoch second `now`."""
    moment = datetime.fromtimestamp(now, UTC)
    if period == "day":
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, start + timedelta(days=1), start.strftime("%Y-%m-%d")
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    days = calendar.monthrange(start.year, start.month)[1]
    return start, start + timedelta(days=days), start.strftime("%Y-%m")


class Budgets:
    """The budget rules in force and the ledger they are enforced on."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        rules: Iterable[BudgetRule] = (),
        clock: Callable[[], float] = time.time,
        reservation_ttl_seconds: float = 300.0,
    ) -> None:
        self.ledger = ledger
        self.rules: tuple[BudgetRule, ...] = tuple(rules)
        self._clock = clock
        self._ttl = reservation_ttl_seconds

    def set_rules(self, rules: Iterable[BudgetRule]) -> None:
        """Replace the rules (accounts of unchanged rules keep their counters)."""
        self.rules = tuple(rules)

    def rule(self, budget_id: str) -> BudgetRule | None:
        """The rule with id `budget_id`."""
        return next((r for r in self.rules if r.id == budget_id), None)

    def account(self, rule: BudgetRule, name: str, now: float | None = None) -> tuple[Account, str]:
        """(the account of `rule` for `name` in the period holding `now`, the period label)."""
        now = self._clock() if now is None else now
        _, end, label = period_bounds(rule.period, now)
        grants = tuple((g.id, g.amount_micro) for g in rule.burn_order(name, now))
        owner = f"{rule.id}|{name}"
        return Account(f"{owner}|{label}", owner, rule.amount_micro, grants, end.timestamp()), label

    def applicable(self, payer: Payer, currency: str) -> list[tuple[BudgetRule, str]]:
        """(rule, name) for every budget that `payer`'s spend in `currency` counts against."""
        out: list[tuple[BudgetRule, str]] = []
        for rule in self.rules:
            if rule.currency != currency:
                continue
            names: Sequence[str | None]
            if rule.scope == "team":
                names = payer.teams
            elif rule.scope == "client":
                names = (payer.client_id,)
            else:
                names = (payer.subject,)
            out.extend((rule, n) for n in names if n is not None and rule.name in ("*", n))
        return out

    async def reserve(self, payer: Payer, estimate: int, currency: str | None) -> Hold:
        """Reserve `estimate` on every applicable budget, or none of them.

        Raises:
            BudgetRefused: a hard budget has too little left.
            LedgerUnavailable: the ledger failed and a budget fails closed.
        """
        hold = Hold(reservation=secrets.token_hex(12), currency=currency)
        if currency is None:
            return hold
        now = self._clock()
        try:
            for rule, name in self.applicable(payer, currency):
                account, label = self.account(rule, name, now)
                try:
                    admitted, over = await self.ledger.reserve(
                        account, hold.reservation, estimate, now, self._ttl, rule.mode == "hard"
                    )
                except Exception:
                    if rule.failure_mode == "closed":
                        logger.warning("budget %s: ledger unavailable; refusing (fail closed)", rule.id)
                        raise LedgerUnavailable(rule.id) from None
                    logger.warning("budget %s: ledger unavailable; admitting (fail open)", rule.id)
                    hold.flags.append(f"budget_unenforced:{rule.id}")
                    continue
                if not admitted:
                    _, end, _ = period_bounds(rule.period, now)
                    raise BudgetRefused(rule.id, name, label, max(1, math.ceil(end.timestamp() - now)))
                if over:
                    logger.warning("budget %s: soft cap exceeded for %s in %s", rule.id, name, label)
                    hold.flags.append(f"budget_over:{rule.id}")
                hold.accounts.append((rule, name, account))
        except BaseException:
            await self.release(hold)
            raise
        return hold

    async def settle(self, hold: Hold, cost: int, currency: str | None) -> None:
        """Book the call's actual cost; a ledger failure is logged (the event still records the cost)."""
        await self.finish_all([(hold, cost, currency)])

    async def finish_all(self, ends: Sequence[tuple[Hold, int, str | None]]) -> None:
        """Settle many calls at once, each (hold, cost, currency): one round trip on Redis.

        A cost in another currency than a budget's, or of 0, only releases that reservation. A
        ledger failure is logged; the reservation then expires (the event still records the cost).
        """
        ops: list[Finish] = []
        rules: list[BudgetRule] = []
        for hold, cost, currency in ends:
            for rule, _, account in hold.accounts:
                booked = cost if cost > 0 and currency == rule.currency else 0
                ops.append(Finish(account, hold.reservation, booked))
                rules.append(rule)
            hold.accounts.clear()
        if not ops:
            return
        try:
            errors = await self.ledger.finish(ops, self._clock())
        except Exception as exc:
            errors = [exc] * len(ops)
        for rule, error in zip(rules, errors, strict=True):
            if error is not None:
                logger.warning("budget %s: settle/release failed; the reservation will expire", rule.id)

    async def release(self, hold: Hold) -> None:
        """Drop the call's reservations without cost."""
        await self.finish_all([(hold, 0, hold.currency)])

    async def status(self, rule: BudgetRule, name: str) -> dict[str, Any]:
        """The current period's counters for `rule` and `name`, as the admin API shows them."""
        now = self._clock()
        account, label = self.account(rule, name, now)
        state = await self.ledger.status(account, now)
        grants = {g.id: g for g in rule.credits if g.name == name}
        return {
            "budget": rule.id,
            "name": name,
            "period": label,
            "amount_micro": rule.amount_micro,
            "currency": rule.currency,
            "used_micro": state.used,
            "spent_micro": state.spent,
            "reserved_micro": state.reserved,
            "overage_micro": state.overage,
            "remaining_micro": max(0, rule.amount_micro - state.used),
            "credits": [
                {
                    "id": g.id,
                    "amount_micro": g.amount_micro,
                    "used_micro": state.credits_used.get(g.id, 0),
                    "remaining_micro": max(0, g.amount_micro - state.credits_used.get(g.id, 0))
                    if g.live(now)
                    else 0,
                    "expired": not g.live(now),
                }
                for g in sorted(grants.values(), key=lambda g: g.id)
            ],
        }


class MemoryLedger:
    """The ledger in this process (one replica); operations never await, so each is atomic."""

    remote = False

    def __init__(self) -> None:
        self._accounts: dict[str, dict[str, int]] = {}
        self._reservations: dict[str, dict[str, tuple[int, float]]] = {}
        self._credits: dict[str, dict[str, int]] = {}
        self._ends: dict[str, float] = {}

    def _purge(self, account: Account, now: float) -> dict[str, int]:
        counters = self._accounts.setdefault(
            account.key, {"used": 0, "spent": 0, "reserved": 0, "overage": 0}
        )
        held = self._reservations.setdefault(account.key, {})
        for reservation, (amount, deadline) in list(held.items()):
            if deadline <= now:
                counters["reserved"] -= amount
                del held[reservation]
        self._ends[account.key] = account.ends_at
        if len(self._ends) > 4 * len(self._credits) + 64:
            self._forget_ended(now)
        return counters

    def _forget_ended(self, now: float) -> None:
        # Counters of ended periods are dropped lazily, as Redis expires its keys.
        for key, ends_at in list(self._ends.items()):
            if ends_at + _KEEP_AFTER_PERIOD_SECONDS < now:
                del self._ends[key]
                self._accounts.pop(key, None)
                self._reservations.pop(key, None)

    async def reserve(
        self, account: Account, reservation: str, amount: int, now: float, ttl: float, hard: bool
    ) -> tuple[bool, bool]:
        counters = self._purge(account, now)
        available = (
            max(0, account.limit - counters["used"]) + self._credit_left(account) - counters["reserved"]
        )
        over = amount > available
        if hard and over:
            return False, True
        counters["reserved"] += amount
        self._reservations[account.key][reservation] = (amount, now + ttl)
        return True, over

    def _settle(self, account: Account, reservation: str, cost: int, now: float) -> None:
        counters = self._purge(account, now)
        self._drop(account, reservation, counters)
        take = min(cost, max(0, account.limit - counters["used"]))
        counters["used"] += take
        counters["spent"] += cost
        rest = cost - take
        used = self._credits.setdefault(account.credit_key, {})
        for grant, amount in account.grants:
            if rest <= 0:
                break
            burn = min(rest, max(0, amount - used.get(grant, 0)))
            used[grant] = used.get(grant, 0) + burn
            rest -= burn
        counters["overage"] += rest

    def _release(self, account: Account, reservation: str, now: float) -> None:
        counters = self._purge(account, now)
        self._drop(account, reservation, counters)

    async def finish(self, ops: Sequence[Finish], now: float) -> list[BaseException | None]:
        for op in ops:
            if op.cost > 0:
                self._settle(op.account, op.reservation, op.cost, now)
            else:
                self._release(op.account, op.reservation, now)
        return [None] * len(ops)

    async def status(self, account: Account, now: float) -> AccountStatus:
        counters = self._purge(account, now)
        return AccountStatus(
            used=counters["used"],
            spent=counters["spent"],
            reserved=counters["reserved"],
            overage=counters["overage"],
            credits_used=dict(self._credits.get(account.credit_key, {})),
        )

    def _drop(self, account: Account, reservation: str, counters: dict[str, int]) -> None:
        held = self._reservations.get(account.key, {}).pop(reservation, None)
        if held is not None:
            counters["reserved"] -= held[0]

    def _credit_left(self, account: Account) -> int:
        used = self._credits.get(account.credit_key, {})
        return sum(max(0, amount - used.get(grant, 0)) for grant, amount in account.grants)


# KEYS: account hash, reservation deadlines (zset), reservation amounts (hash), credits used (hash).
# ARGV: op, now, reservation, amount, limit, ttl, hard, keep-until, then (grant id, amount) pairs.
_LUA = """
local op = ARGV[1]
local now = tonumber(ARGV[2])
local res = ARGV[3]
local amount = tonumber(ARGV[4])
local limit = tonumber(ARGV[5])
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2])
for _, id in ipairs(expired) do
  local held = tonumber(redis.call('HGET', KEYS[3], id) or '0')
  redis.call('HINCRBY', KEYS[1], 'reserved', -held)
  redis.call('HDEL', KEYS[3], id)
end
if #expired > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[2]) end
local function drop()
  local held = redis.call('HGET', KEYS[3], res)
  if held then
    redis.call('HINCRBY', KEYS[1], 'reserved', -tonumber(held))
    redis.call('HDEL', KEYS[3], res)
    redis.call('ZREM', KEYS[2], res)
  end
end
local function keep()
  local until_at = math.floor(tonumber(ARGV[8]))
  for i = 1, 3 do redis.call('EXPIREAT', KEYS[i], until_at) end
end
local c = redis.call('HMGET', KEYS[1], 'used', 'spent', 'reserved', 'overage')
local used = tonumber(c[1] or '0')
local reserved = tonumber(c[3] or '0')
if op == 'reserve' then
  local left = limit - used
  if left < 0 then left = 0 end
  for i = 9, #ARGV, 2 do
    local g = tonumber(ARGV[i + 1]) - tonumber(redis.call('HGET', KEYS[4], ARGV[i]) or '0')
    if g > 0 then left = left + g end
  end
  local available = left - reserved
  local over = 0
  if amount > available then over = 1 end
  if over == 1 and ARGV[7] == '1' then return {0, 1} end
  redis.call('HINCRBY', KEYS[1], 'reserved', amount)
  redis.call('HSET', KEYS[3], res, amount)
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[6]), res)
  keep()
  return {1, over}
elseif op == 'settle' then
  drop()
  local take = limit - used
  if take < 0 then take = 0 end
  if take > amount then take = amount end
  redis.call('HINCRBY', KEYS[1], 'used', take)
  redis.call('HINCRBY', KEYS[1], 'spent', amount)
  local rest = amount - take
  for i = 9, #ARGV, 2 do
    if rest <= 0 then break end
    local g = tonumber(ARGV[i + 1]) - tonumber(redis.call('HGET', KEYS[4], ARGV[i]) or '0')
    if g > 0 then
      local burn = g
      if burn > rest then burn = rest end
      redis.call('HINCRBY', KEYS[4], ARGV[i], burn)
      rest = rest - burn
    end
  end
  if rest > 0 then redis.call('HINCRBY', KEYS[1], 'overage', rest) end
  keep()
  return {1, 0}
elseif op == 'release' then
  drop()
  return {1, 0}
end
c = redis.call('HMGET', KEYS[1], 'used', 'spent', 'reserved', 'overage')
local out = {tonumber(c[1] or '0'), tonumber(c[2] or '0'), tonumber(c[3] or '0'), tonumber(c[4] or '0')}
for i = 9, #ARGV, 2 do
  table.insert(out, ARGV[i])
  table.insert(out, tonumber(redis.call('HGET', KEYS[4], ARGV[i]) or '0'))
end
return out
"""

# Counters outlive their period by this much, so a report or a late settle still finds them.
_KEEP_AFTER_PERIOD_SECONDS = 7 * 86400


class RedisLedger:
    """The ledger in Redis, shared by every replica: each operation is one Lua script call.

    Keys carry a hash tag of (budget, name), so one call's keys live on one cluster slot.
    """

    remote = True

    def __init__(self, redis: Any, *, prefix: str = "tollhouse:budget:") -> None:
        self._redis = redis
        self._prefix = prefix
        self._script = redis.register_script(_LUA)

    def _keys(self, account: Account) -> list[str]:
        tag = "{" + account.credit_key + "}"
        period = account.key.rsplit("|", 1)[1]
        base = f"{self._prefix}{tag}:{period}"
        return [f"{base}:a", f"{base}:rd", f"{base}:ra", f"{self._prefix}{tag}:credits"]

    def _args(
        self, op: str, account: Account, reservation: str, amount: int, now: float, **kw: Any
    ) -> list[Any]:
        args: list[Any] = [
            op,
            repr(now),
            reservation,
            amount,
            account.limit,
            repr(float(kw.get("ttl", 0.0))),
            "1" if kw.get("hard") else "0",
            int(account.ends_at + _KEEP_AFTER_PERIOD_SECONDS),
        ]
        for grant, grant_amount in account.grants:
            args += [grant, grant_amount]
        return args

    async def _run(
        self, op: str, account: Account, reservation: str, amount: int, now: float, **kw: Any
    ) -> Any:
        args = self._args(op, account, reservation, amount, now, **kw)
        return await self._script(keys=self._keys(account), args=args)

    async def finish(self, ops: Sequence[Finish], now: float) -> list[BaseException | None]:
        if len(ops) == 1:
            one = ops[0]
            try:
                op = "settle" if one.cost > 0 else "release"
                await self._run(op, one.account, one.reservation, one.cost, now)
            except Exception as exc:
                return [exc]
            return [None]
        pipe = self._redis.pipeline(transaction=False)
        for one in ops:
            op = "settle" if one.cost > 0 else "release"
            args = self._args(op, one.account, one.reservation, one.cost, now)
            await self._script(keys=self._keys(one.account), args=args, client=pipe)
        try:
            answers = await pipe.execute(raise_on_error=False)
        except Exception as exc:
            return [exc] * len(ops)
        return [a if isinstance(a, BaseException) else None for a in answers]

    async def reserve(
        self, account: Account, reservation: str, amount: int, now: float, ttl: float, hard: bool
    ) -> tuple[bool, bool]:
        admitted, over = await self._run("reserve", account, reservation, amount, now, ttl=ttl, hard=hard)
        return bool(admitted), bool(over)

    async def status(self, account: Account, now: float) -> AccountStatus:
        out = cast(list[Any], await self._run("status", account, "", 0, now))
        pairs = out[4:]
        credits = {
            (k.decode() if isinstance(k, bytes) else str(k)): int(v)
            for k, v in zip(pairs[::2], pairs[1::2], strict=True)
        }
        return AccountStatus(
            used=int(out[0]),
            spent=int(out[1]),
            reserved=int(out[2]),
            overage=int(out[3]),
            credits_used=credits,
        )


def budget_from_dict(data: Any, path: str = "budgets[]") -> BudgetRule:
    """Validate one `budgets:` entry (with its `credits`).

    Raises:
        BudgetError: an unknown key or a bad value; the message names it.
    """
    if not isinstance(data, Mapping):
        raise BudgetError(f"{path}: expected a mapping")
    unknown = sorted(set(data) - _BUDGET_KEYS)
    if unknown:
        raise BudgetError(f"{path}.{unknown[0]}: unknown key")
    budget_id = _ident(data.get("id"), f"{path}.id")
    scope = _choice(data.get("scope"), ("team", "client", "user"), f"{path}.scope")
    name = data.get("name", "*")
    if not isinstance(name, str) or not name:
        raise BudgetError(f"{path}.name: expected a name or '*'")
    period = _choice(data.get("period", "month"), ("day", "month"), f"{path}.period")
    amount = _micro(data.get("amount_micro"), f"{path}.amount_micro")
    currency = data.get("currency", "USD")
    if not isinstance(currency, str) or not (3 <= len(currency) <= 8) or not currency.isalnum():
        raise BudgetError(f"{path}.currency: expected a currency code such as USD")
    mode = _choice(data.get("mode", "hard"), ("hard", "soft"), f"{path}.mode")
    failure_mode = _choice(data.get("failure_mode", "closed"), ("open", "closed"), f"{path}.failure_mode")
    raw_credits = data.get("credits", [])
    if not isinstance(raw_credits, list):
        raise BudgetError(f"{path}.credits: expected a list")
    credits = tuple(_grant(item, name, f"{path}.credits[{i}]") for i, item in enumerate(raw_credits))
    ids = [g.id for g in credits]
    if len(ids) != len(set(ids)):
        raise BudgetError(f"{path}.credits: grant ids must be unique")
    return BudgetRule(
        id=budget_id,
        scope=cast(Scope, scope),
        name=name,
        period=cast(Period, period),
        amount_micro=amount,
        currency=currency.upper(),
        mode=cast(Literal["hard", "soft"], mode),
        failure_mode=cast(Literal["open", "closed"], failure_mode),
        credits=credits,
    )


def budgets_from_list(data: Sequence[Any], path: str = "budgets") -> list[BudgetRule]:
    """Validate a `budgets:` list; ids must be unique."""
    rules = [budget_from_dict(item, f"{path}[{i}]") for i, item in enumerate(data)]
    seen: set[str] = set()
    for i, rule in enumerate(rules):
        if rule.id in seen:
            raise BudgetError(f"{path}[{i}].id: duplicate budget id '{rule.id}'")
        seen.add(rule.id)
    return rules


def budget_to_dict(rule: BudgetRule) -> dict[str, Any]:
    """The config form of `rule`."""
    out: dict[str, Any] = {
        "id": rule.id,
        "scope": rule.scope,
        "name": rule.name,
        "period": rule.period,
        "amount_micro": rule.amount_micro,
        "currency": rule.currency,
        "mode": rule.mode,
        "failure_mode": rule.failure_mode,
    }
    if rule.credits:
        out["credits"] = [_grant_to_dict(g) for g in rule.credits]
    return out


def _grant_to_dict(grant: CreditGrant) -> dict[str, Any]:
    out: dict[str, Any] = {"id": grant.id, "name": grant.name, "amount_micro": grant.amount_micro}
    out["priority"] = grant.priority
    if grant.expires_at is not None:
        out["expires_at"] = grant.expires_at.isoformat()
    if grant.granted_at is not None:
        out["granted_at"] = grant.granted_at.isoformat()
    return out


def _grant(data: Any, budget_name: str, path: str) -> CreditGrant:
    if not isinstance(data, Mapping):
        raise BudgetError(f"{path}: expected a mapping")
    unknown = sorted(set(data) - _GRANT_KEYS)
    if unknown:
        raise BudgetError(f"{path}.{unknown[0]}: unknown key")
    name = data.get("name", budget_name)
    if not isinstance(name, str) or not name or name == "*":
        raise BudgetError(f"{path}.name: a grant names whom it is for (the budget's name is '*')")
    priority = data.get("priority", 1)
    if isinstance(priority, bool) or not isinstance(priority, int) or priority < 0:
        raise BudgetError(f"{path}.priority: expected a whole number >= 0 (lower burns first)")
    return CreditGrant(
        id=_ident(data.get("id"), f"{path}.id"),
        name=name,
        amount_micro=_micro(data.get("amount_micro"), f"{path}.amount_micro"),
        priority=priority,
        expires_at=_when(data.get("expires_at"), f"{path}.expires_at"),
        granted_at=_when(data.get("granted_at"), f"{path}.granted_at"),
    )


def _ident(value: Any, path: str) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise BudgetError(f"{path}: expected an id of letters, digits, '.', '_' or '-'")
    return value


def _choice(value: Any, choices: Sequence[str], path: str) -> str:
    if value not in choices:
        raise BudgetError(f"{path}: expected one of {', '.join(choices)}")
    return str(value)


def _micro(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BudgetError(f"{path}: expected a whole number of micro-units >= 0")
    return value


def _when(value: Any, path: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise BudgetError(f"{path}: expected an ISO 8601 time") from None
    else:
        raise BudgetError(f"{path}: expected an ISO 8601 time")
    if moment.tzinfo is None:
        raise BudgetError(f"{path}: give a time zone (e.g. 2026-12-31T00:00:00Z)")
    return moment.astimezone(UTC)
