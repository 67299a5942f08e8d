"""Rate limits, concurrency limits and the loop breaker, over the `limits` library.

A rule applies to a call when every key of its `match` matches (subject, client, server exact;
team exact against any of the caller's teams; tool a glob on the exposed name). Its counter
(the *bucket*) is keyed by the rule id and the values it matches on, plus the caller's value
for each dimension in `per`: a rule that does not name a client is one bucket shared by every
matching caller unless it says `per: [client]`. So one server's rule never counts another
server's calls (the pitfall in DESIGN.md).

Counters live in the `limits` library's storage: in memory for one process, in Redis for
several replicas. A fixed-window hit on Redis is one Lua script (INCRBY, EXPIRE on the first
hit, PTTL) so check-and-increment and the state for the RateLimit headers take one round trip
and never overshoot; it uses the same key as `limits`' FixedWindowRateLimiter. Sliding windows
use `limits`' SlidingWindowCounterRateLimiter (an approximation: the previous window's count
weighted by its remaining share). Several rules are hit in order and the first refusal stops the
call: a unit already taken from an earlier rule stays taken (no refund round trip, no test-then-
hit race), which never lets any single rule overshoot.

When Redis fails (an error or a timeout), each rule does what its `failure_mode` says: `open`
counts in a process-local fallback limiter (recorded: `fallbacks`, a rate-limited log line),
`closed` refuses. Redis is skipped for `retry_seconds` after a failure and retried on the next
call after that, so both recover by themselves.

Concurrency limits hold a slot for the duration of a call: an in-process counter, or in Redis a
sorted set of slot tokens scored by their lease expiry, so a replica that dies holding slots
cannot leak them beyond one lease. They fail fast: a call over the limit is refused, never queued.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import hashlib
import logging
import math
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

import orjson
from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import FixedWindowRateLimiter, RateLimiter, SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from tollhouse.registry.limits import PERIODS, RATE_RE, LimitSpec

__all__ = [
    "Caller",
    "Counters",
    "Quotas",
    "Rule",
    "Slot",
    "Verdict",
    "arguments_digest",
    "policy_field",
    "ratelimit_field",
]

logger = logging.getLogger("tollhouse.quotas")

# A Redis failure is any of these (limits wraps its own calls' errors in StorageError).
_STORAGE_ERRORS: tuple[type[BaseException], ...] = (StorageError, RedisError, OSError, TimeoutError)

# Fixed windows, several counters in one round trip: `limits`' keys and expiry rule (the window
# starts at the first hit). The first ARGV[1] keys (the loop breaker) always count; the rest are
# rate limits in order, and counting stops after the first one over its limit (as sequential
# hits would: a refused call takes no unit of the limits after the one that refused it).
_FIXED_HITS = """
local independent = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS do
  local expiry = tonumber(ARGV[2 * i])
  local c = redis.call('INCRBY', KEYS[i], 1)
  local ttl = redis.call('PTTL', KEYS[i])
  if c == 1 or ttl < 0 then
    redis.call('EXPIRE', KEYS[i], expiry)
    ttl = expiry * 1000
  end
  out[#out + 1] = c
  out[#out + 1] = ttl
  if i > independent and c > tonumber(ARGV[2 * i + 1]) then
    break
  end
end
return out
"""
# Slots are members of a sorted set scored by their lease's end (Redis's own clock, so replicas
# need not agree on time); expired leases are dropped before counting.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""


@dataclass(frozen=True, slots=True)
class Caller:
    """What a rule can match on for one call."""

    subject: str
    client: str | None
    teams: tuple[str, ...]
    server: str
    tool: str  # the exposed name, server__tool
    client_name: str | None = None


@dataclass(frozen=True)
class Rule:
    """A compiled limit: when it applies, its bucket, and its bounds."""

    id: str
    match: tuple[tuple[str, str], ...]
    per: tuple[str, ...]
    quota: int | None
    window_seconds: int | None
    sliding: bool
    concurrency: int | None
    failure_mode: Literal["open", "closed"]

    @classmethod
    def of(cls, spec: LimitSpec) -> Rule:
        """Compile a stored or configured limit."""
        quota = window = None
        if spec.rate is not None:
            parsed = RATE_RE.match(spec.rate)
            if parsed is None:
                raise ValueError(f"limit {spec.id}: bad rate {spec.rate!r}")
            quota, window = int(parsed.group(1)), PERIODS[parsed.group(2)]
        return cls(
            id=spec.id,
            match=tuple(sorted(spec.match.items())),
            per=spec.per,
            quota=quota,
            window_seconds=window,
            sliding=spec.window == "sliding",
            concurrency=spec.concurrency,
            failure_mode=spec.failure_mode,
        )

    @functools.cached_property
    def item(self) -> RateLimitItem | None:
        """The `limits` item for the rate part (None: a concurrency-only rule)."""
        if self.quota is None or self.window_seconds is None:
            return None
        return RateLimitItemPerSecond(self.quota, self.window_seconds, namespace="rate")

    def applies(self, caller: Caller) -> bool:
        """True when every match key matches the caller."""
        for key, want in self.match:
            if key == "tool":
                if not fnmatch.fnmatchcase(caller.tool, want):
                    return False
            elif key == "team":
                if want not in caller.teams:
                    return False
            elif key == "client":
                if want != caller.client and want != caller.client_name:
                    return False
            elif _value(caller, key) != want:
                return False
        return True

    def bucket(self, caller: Caller) -> str:
        """The counter's key: the rule, the values it matches on, and the caller's `per` values."""
        parts = [quote(self.id, safe="")]
        parts += [f"{k}={quote(v, safe='')}" for k, v in self.match]
        parts += [f"per-{k}={quote(_value(caller, k), safe='')}" for k in self.per]
        return "|".join(parts)


def _value(caller: Caller, key: str) -> str:
    if key == "subject":
        return caller.subject
    if key == "client":
        return caller.client or ""
    if key == "team":
        return ",".join(sorted(caller.teams))
    if key == "server":
        return caller.server
    return caller.tool


@dataclass(frozen=True, slots=True)
class Verdict:
    """One rule's answer for one call, consistent with its counter after the hit."""

    rule: Rule
    allowed: bool
    remaining: int
    reset_seconds: float
    fallback: bool = False  # counted by the local fallback limiter (storage unreachable, fail-open)
    unavailable: bool = False  # refused because the storage is unreachable (fail-closed)

    @property
    def retry_after(self) -> int:
        """Whole seconds until the window frees a unit (at least 1)."""
        return max(1, math.ceil(self.reset_seconds))


def _sf_string(value: str) -> str:
    """An RFC 8941 sf-string (ids are printable ASCII: see POLICY_ID_RE)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def policy_field(verdicts: Iterable[Verdict]) -> bytes:
    """`RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers-09+): `"id";q=100;w=60, …`."""
    return ", ".join(
        f"{_sf_string(v.rule.id)};q={v.rule.quota};w={v.rule.window_seconds}" for v in verdicts
    ).encode()


def ratelimit_field(verdicts: Iterable[Verdict]) -> bytes:
    """`RateLimit`: `"id";r=<remaining>;t=<seconds until the window resets>`, one item per policy."""
    return ", ".join(
        f"{_sf_string(v.rule.id)};r={v.remaining};t={math.ceil(v.reset_seconds)}" for v in verdicts
    ).encode()


def arguments_digest(arguments: Any) -> str:
    """SHA-256 of the canonical JSON of a call's arguments (sorted keys), for the loop breaker."""
    try:
        data = orjson.dumps(arguments, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        data = repr(arguments).encode()
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class Slot:
    """A held concurrency slot; give it back with `Counters.release`."""

    bucket: str
    token: str
    shared: bool  # held in Redis (else in the local counters)


class _Backend:
    """One `limits` storage and its strategies."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.fixed = FixedWindowRateLimiter(storage)
        self.sliding = SlidingWindowCounterRateLimiter(storage)

    def limiter(self, sliding: bool) -> RateLimiter:
        return self.sliding if sliding else self.fixed

    async def hit(self, item: RateLimitItem, bucket: str, sliding: bool) -> tuple[bool, int, float]:
        limiter = self.limiter(sliding)
        allowed = await limiter.hit(item, bucket)
        stats = await limiter.get_window_stats(item, bucket)
        return allowed, stats.remaining, max(0.0, stats.reset_time - time.time())


class _RedisBackend(_Backend):
    """Redis: fixed windows in one round trip (our script, `limits`' key); the rest through `limits`."""

    def __init__(self, storage: RedisStorage) -> None:
        super().__init__(storage)
        bridge: Any = storage.bridge
        self.bridge = bridge
        self.client: Any = bridge.get_connection()
        self._fixed_hits = self.client.register_script(_FIXED_HITS)
        self._acquire = self.client.register_script(_ACQUIRE)

    async def hit(self, item: RateLimitItem, bucket: str, sliding: bool) -> tuple[bool, int, float]:
        if sliding:
            return await super().hit(item, bucket, sliding)
        return (await self.hit_fixed([(item, bucket)], 0))[0]

    async def hit_fixed(
        self, hits: Sequence[tuple[RateLimitItem, str]], independent: int
    ) -> list[tuple[bool, int, float]]:
        """Fixed-window hits in one script call (see _FIXED_HITS); stops after a refused rate."""
        keys = [self.bridge.prefixed_key(item.key_for(bucket)) for item, bucket in hits]
        args: list[Any] = [independent]
        for item, _ in hits:
            args += [item.get_expiry(), item.amount]
        flat = await self._fixed_hits(keys=keys, args=args)
        return [
            (int(count) <= item.amount, max(0, item.amount - int(count)), int(ttl_ms) / 1000)
            for (item, _), count, ttl_ms in zip(hits, flat[::2], flat[1::2], strict=False)
        ]

    async def acquire(self, bucket: str, limit: int, lease_ms: int) -> str | None:
        token = secrets.token_hex(8)
        key = self.bridge.prefixed_key(f"conc/{bucket}")
        return token if await self._acquire(keys=[key], args=[limit, lease_ms, token]) else None

    async def release(self, bucket: str, token: str) -> None:
        await self.client.zrem(self.bridge.prefixed_key(f"conc/{bucket}"), token)


class Counters:
    """Counters in memory, or in Redis with a local fallback; knows whether Redis is answering."""

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        prefix: str = "tollhouse",
        timeout_seconds: float = 0.5,
        retry_seconds: float = 1.0,
        lease_seconds: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._local = _Backend(MemoryStorage())
        self._shared: _RedisBackend | None = None
        if redis_url is not None:
            scheme, _, rest = redis_url.partition("://")
            storage = RedisStorage(
                f"async+{scheme}://{rest}",
                implementation="redispy",
                key_prefix=prefix,
                wrap_exceptions=True,
                socket_timeout=timeout_seconds,
                socket_connect_timeout=timeout_seconds,
                retry=Retry(NoBackoff(), 0),  # type: ignore[arg-type]  # passed to redis.asyncio.Redis
            )
            self._shared = _RedisBackend(storage)
        self._retry_seconds = retry_seconds
        self._lease_ms = int(lease_seconds * 1000)
        self._clock = clock
        self._down_until = 0.0
        self._local_slots: Counter[str] = Counter()
        self._last_log = -math.inf
        # What happened while Redis was away: fallback decisions by rule, closed refusals, failures.
        self.stats: Counter[str] = Counter()

    @property
    def shared(self) -> bool:
        """True when counters are meant to live in Redis."""
        return self._shared is not None

    @property
    def available(self) -> bool:
        """False while Redis is considered unreachable (between a failure and the next retry)."""
        return self._shared is not None and self._clock() >= self._down_until

    def _failed(self, exc: BaseException) -> None:
        self._down_until = self._clock() + self._retry_seconds
        self.stats["storage_errors"] += 1
        now = self._clock()
        if now - self._last_log >= 10.0:  # one line per 10 s, whatever the call rate
            self._last_log = now
            logger.warning(
                "rate-limit storage unreachable (%s); applying each limit's failure_mode", type(exc).__name__
            )

    def _fell_back(self, what: str) -> None:
        self.stats["fallbacks"] += 1
        self.stats[f"fallback:{what}"] += 1

    async def hit(self, rule: Rule, bucket: str) -> Verdict:
        """Take one unit of `rule`'s rate in `bucket`."""
        item = rule.item
        assert item is not None
        if self._shared is not None:
            if self.available:
                try:
                    allowed, remaining, reset = await self._shared.hit(item, bucket, rule.sliding)
                    return Verdict(rule, allowed, remaining, reset)
                except _STORAGE_ERRORS as exc:
                    self._failed(exc)
            if rule.failure_mode == "closed":
                self.stats[f"unavailable:{rule.id}"] += 1
                return Verdict(rule, False, 0, self._retry_seconds, unavailable=True)
            self._fell_back(rule.id)
            allowed, remaining, reset = await self._local.hit(item, bucket, rule.sliding)
            return Verdict(rule, allowed, remaining, reset, fallback=True)
        allowed, remaining, reset = await self._local.hit(item, bucket, rule.sliding)
        return Verdict(rule, allowed, remaining, reset)

    async def hit_item(self, item: RateLimitItem, bucket: str) -> tuple[bool, float]:
        """A fixed-window hit that always fails open (the loop breaker): (allowed, seconds to reset)."""
        if self._shared is not None and self.available:
            try:
                allowed, _, reset = await self._shared.hit(item, bucket, False)
                return allowed, reset
            except _STORAGE_ERRORS as exc:
                self._failed(exc)
        allowed, _, reset = await self._local.hit(item, bucket, False)
        return allowed, reset

    async def hit_fixed(
        self, hits: Sequence[tuple[RateLimitItem, str]], independent: int
    ) -> list[tuple[bool, int, float]] | None:
        """Fixed-window hits in one Redis round trip, as (allowed, remaining, seconds to reset).

        The first `independent` hits always count; the rest stop after the first refusal (the
        answer is then shorter). None when Redis is not configured or not answering: the caller
        then hits one by one, which applies each limit's failure mode.
        """
        if self._shared is None or not self.available:
            return None
        try:
            return await self._shared.hit_fixed(hits, independent)
        except _STORAGE_ERRORS as exc:
            self._failed(exc)
            return None

    async def stats_for(self, rule: Rule, bucket: str) -> tuple[int, float]:
        """(remaining, seconds to reset) of a rule's bucket without taking a unit."""
        item = rule.item
        assert item is not None
        backend: _Backend = self._shared if self._shared is not None and self.available else self._local
        stats = await backend.limiter(rule.sliding).get_window_stats(item, bucket)
        return stats.remaining, max(0.0, stats.reset_time - time.time())

    async def acquire(self, rule: Rule, bucket: str) -> Slot | Literal["unavailable"] | None:
        """A slot under `rule.concurrency`, None when all are taken, or "unavailable" (fail-closed)."""
        limit = rule.concurrency
        assert limit is not None
        if self._shared is not None:
            if self.available:
                try:
                    token = await self._shared.acquire(bucket, limit, self._lease_ms)
                    return None if token is None else Slot(bucket, token, shared=True)
                except _STORAGE_ERRORS as exc:
                    self._failed(exc)
            if rule.failure_mode == "closed":
                self.stats[f"unavailable:{rule.id}"] += 1
                return "unavailable"
            self._fell_back(rule.id)
        if self._local_slots[bucket] >= limit:
            return None
        self._local_slots[bucket] += 1
        return Slot(bucket, "", shared=False)

    async def release(self, slot: Slot) -> None:
        """Give a slot back (a Redis slot that cannot be given back expires with its lease)."""
        if not slot.shared:
            self._local_slots[slot.bucket] -= 1
            if self._local_slots[slot.bucket] <= 0:
                del self._local_slots[slot.bucket]
            return
        assert self._shared is not None
        try:
            await self._shared.release(slot.bucket, slot.token)
        except _STORAGE_ERRORS as exc:
            self._failed(exc)

    async def aclose(self) -> None:
        """Close the Redis connections and the memory storage's expiry task."""
        await self._local.storage.reset()
        if self._shared is not None:
            with contextlib.suppress(*_STORAGE_ERRORS):
                await self._shared.client.aclose()


class Quotas:
    """The current rules, and the admission checks over them."""

    def __init__(self, counters: Counters, rules: Sequence[Rule] = ()) -> None:
        self.counters = counters
        self._rules: tuple[Rule, ...] = tuple(rules)

    @property
    def rules(self) -> tuple[Rule, ...]:
        """Every rule, in order."""
        return self._rules

    def set_rules(self, specs: Iterable[LimitSpec]) -> None:
        """Replace the rules (a swap: calls in flight keep the set they started with)."""
        self._rules = tuple(Rule.of(s) for s in specs)

    def applicable(self, caller: Caller) -> list[Rule]:
        """The rules that apply to a call."""
        return [r for r in self._rules if r.applies(caller)]

    async def hit(
        self, rules: Sequence[Rule], caller: Caller, loop: tuple[RateLimitItem, str] | None = None
    ) -> tuple[tuple[bool, float] | None, list[Verdict]]:
        """The loop breaker's hit (allowed, seconds to reset), if given, and the rate verdicts.

        With Redis and only fixed windows, everything is one round trip.
        """
        rates = [r for r in rules if r.quota is not None]
        if self.counters.shared and (loop is not None or rates) and not any(r.sliding for r in rates):
            hits = [loop] if loop is not None else []
            hits += [(r.item, r.bucket(caller)) for r in rates if r.item is not None]
            answers = await self.counters.hit_fixed(hits, 1 if loop is not None else 0)
            if answers is not None:
                looped = None
                if loop is not None:
                    allowed, _, reset = answers.pop(0)
                    looped = (allowed, reset)
                verdicts = [Verdict(r, *a) for r, a in zip(rates, answers, strict=False)]
                return looped, verdicts
        looped = await self.counters.hit_item(*loop) if loop is not None else None
        return looped, await self.hit_rates(rates, caller)

    async def hit_rates(self, rules: Sequence[Rule], caller: Caller) -> list[Verdict]:
        """Hit each rate rule in order; the last verdict is the refusal, if any."""
        verdicts: list[Verdict] = []
        for rule in rules:
            if rule.quota is None:
                continue
            verdict = await self.counters.hit(rule, rule.bucket(caller))
            verdicts.append(verdict)
            if not verdict.allowed:
                break
        return verdicts
