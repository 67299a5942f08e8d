"""The usage service the admin API, the CLI and the app share: price book, budgets, reports.

Prices and budgets (with their credit grants) are configuration: stored as two JSON documents
in `settings_kv` (each write replaces one whole list, so a replica reads a consistent one),
validated by tollhouse.policies, and swapped into the running Metering; replicas notice a
change by re-reading the two documents on a timer.

Reports read the usage_events table (SQL GROUP BY over the period), after flushing this
replica's writer so a report includes every event this replica had accepted when it ran.
The chargeback CSV is the same query grouped by team and currency, so its totals are the
events' totals by construction.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.abc
import sqlalchemy as sa

from tollhouse.gateway.metering import Metering, UsageWriter
from tollhouse.gateway.settings import Settings
from tollhouse.gateway.usage_shipping import UsageShipper, build_sink
from tollhouse.policies.budgets import (
    BudgetError,
    BudgetRule,
    Budgets,
    Ledger,
    MemoryLedger,
    RedisLedger,
    budget_to_dict,
    budgets_from_list,
)
from tollhouse.policies.pricing import PriceBook, PriceError, PriceRule, price_to_dict, prices_from_list
from tollhouse.registry.store import RegistryStore
from tollhouse.registry.usage_store import DIMENSIONS, Bucket, SqlUsageStore
from tollhouse.telemetry import Telemetry

__all__ = [
    "BUDGETS_SETTING",
    "PRICES_SETTING",
    "UsageConfigError",
    "UsageService",
    "build_usage",
    "period_range",
]

logger = logging.getLogger("tollhouse.metering")
PRICES_SETTING = "usage.prices"
BUDGETS_SETTING = "usage.budgets"
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_DAY = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
CHARGEBACK_COLUMNS = ("period", "team", "currency", "calls", "billable_calls", "cost_micro", "cost")


class UsageConfigError(ValueError):
    """A price or budget the caller sent is invalid; the message names the field."""


def period_range(period: str) -> tuple[datetime, datetime]:
    """[start, end) in UTC of a month `YYYY-MM` or a day `YYYY-MM-DD`.

    Raises:
        ValueError: neither form.
    """
    if m := _MONTH.match(period):
        year, month = int(m[1]), int(m[2])
        start = datetime(year, month, 1, tzinfo=UTC)
        end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
        return start, end
    if m := _DAY.match(period):
        start = datetime(int(m[1]), int(m[2]), int(m[3]), tzinfo=UTC)
        return start, start + timedelta(days=1)
    raise ValueError("period must be YYYY-MM or YYYY-MM-DD")


def build_usage(
    settings: Settings, engine: sa.Engine, registry: RegistryStore, telemetry: Telemetry | None = None
) -> UsageService:
    """The metering the app runs: sinks from settings, the budget ledger in Redis when one is set."""
    store = SqlUsageStore(engine)
    sinks = [build_sink(spec) for spec in settings.usage.sinks]
    shipper = UsageShipper(store, sinks, settings.usage)
    writer = UsageWriter(
        store,
        [s.name for s in sinks],
        batch_size=settings.usage.write_batch,
        queue_limit=settings.usage.queue_limit,
        on_commit=shipper.wake,
    )
    ledger: Ledger = MemoryLedger()
    on_close: Callable[[], Awaitable[Any]] | None = None
    if settings.redis_url is not None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # No client-side retries: a budget check fails fast and its failure_mode decides.
        client = aioredis.Redis.from_url(
            settings.redis_url.get_secret_value(),
            socket_timeout=settings.quotas.redis_timeout_seconds,
            socket_connect_timeout=settings.quotas.redis_timeout_seconds,
            retry=Retry(NoBackoff(), 0),
        )
        ledger = RedisLedger(client, prefix=f"{settings.quotas.redis_prefix}:budget:")
        on_close = client.aclose
    budgets = Budgets(ledger, reservation_ttl_seconds=settings.usage.reservation_ttl_seconds)
    metering = Metering(writer, budgets, source=settings.public_url, telemetry=telemetry)
    return UsageService(registry, store, metering, shipper, on_close=on_close)


class UsageService:
    """Prices, budgets, reports and the outbox, for the admin API."""

    def __init__(
        self,
        registry: RegistryStore,
        store: SqlUsageStore,
        metering: Metering,
        shipper: UsageShipper,
        *,
        on_close: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        self._registry = registry
        self.store = store
        self.metering = metering
        self.shipper = shipper
        self._raw: dict[str, str | None] = {PRICES_SETTING: None, BUDGETS_SETTING: None}
        self._lock = anyio.Lock()
        self._on_close: Callable[[], Awaitable[Any]] | None = on_close

    # -- configuration ------------------------------------------------------------------------

    @property
    def prices(self) -> tuple[PriceRule, ...]:
        """The price rules in force."""
        return self.metering.prices.rules

    @property
    def budgets(self) -> tuple[BudgetRule, ...]:
        """The budget rules in force."""
        return self.metering.budgets.rules

    def export(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(prices, budgets) in the config file's shape."""
        return [price_to_dict(r) for r in self.prices], [budget_to_dict(b) for b in self.budgets]

    async def load(self) -> None:
        """Read both documents and apply them (at start, and when another replica changed them)."""
        for key in (PRICES_SETTING, BUDGETS_SETTING):
            raw = await self._registry.get_setting(key)
            if raw != self._raw[key]:
                self._apply(key, json.loads(raw) if raw else [])
                self._raw[key] = raw

    async def run(
        self, interval_seconds: float, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Load the configuration, run the writer and the shipper, follow other replicas' changes."""
        try:
            await self.load()
            async with anyio.create_task_group() as tg:
                await tg.start(self.metering.writer.run)
                await tg.start(self.metering.run_settlements)
                await tg.start(self.shipper.run)
                task_status.started()
                while True:
                    await anyio.sleep(interval_seconds)
                    try:
                        await self.load()
                    except Exception:  # a database hiccup must not end the loop; the next round retries
                        logger.exception("usage configuration refresh failed")
        finally:
            if self._on_close is not None:
                with anyio.CancelScope(shield=True):
                    await self._on_close()

    async def set_prices(self, items: Sequence[Mapping[str, Any]]) -> list[PriceRule]:
        """Replace the price book.

        Raises:
            UsageConfigError: an invalid rule; nothing changed.
        """
        return await self._store(PRICES_SETTING, items)

    async def set_budgets(self, items: Sequence[Mapping[str, Any]]) -> list[BudgetRule]:
        """Replace every budget (and their credit grants).

        Raises:
            UsageConfigError: an invalid budget; nothing changed.
        """
        return await self._store(BUDGETS_SETTING, items)

    async def _store(self, key: str, items: Sequence[Mapping[str, Any]]) -> list[Any]:
        async with self._lock:
            parsed = self._parse(key, list(items))
            canonical = (
                [price_to_dict(r) for r in parsed]
                if key == PRICES_SETTING
                else [budget_to_dict(b) for b in parsed]
            )
            raw = json.dumps(canonical, sort_keys=True)
            await self._registry.set_setting(key, raw)
            self._apply(key, canonical)
            self._raw[key] = raw
            return parsed

    def _parse(self, key: str, items: list[Any]) -> list[Any]:
        try:
            if key == PRICES_SETTING:
                return prices_from_list(items)
            return budgets_from_list(items)
        except (PriceError, BudgetError) as exc:
            raise UsageConfigError(str(exc)) from None

    def _apply(self, key: str, items: list[Any]) -> None:
        parsed = self._parse(key, items)
        if key == PRICES_SETTING:
            self.metering.prices = PriceBook(parsed)
        else:
            self.metering.budgets.set_rules(parsed)

    # -- reports ------------------------------------------------------------------------------

    async def report(self, by: Sequence[str], period: str, bucket: Bucket | None = None) -> dict[str, Any]:
        """Totals for `period` grouped by `by`; every event this replica accepted so far is in it.

        Raises:
            ValueError: an unknown dimension or a malformed period.
        """
        unknown = [d for d in by if d not in DIMENSIONS]
        if unknown:
            raise ValueError(f"unknown dimension '{unknown[0]}' (one of {', '.join(DIMENSIONS)})")
        start, end = period_range(period)
        await self.metering.writer.flush()
        rows = await self.store.aggregate(by, start, end, bucket)
        return {
            "period": period,
            "start": start.isoformat(),
            "end": end.isoformat(),
            "by": list(by),
            "bucket": bucket,
            "items": rows,
            "totals": _totals(rows),
        }

    async def chargeback_csv(self, period: str) -> str:
        """Per team and currency: calls and cost in `period` (CSV, header first)."""
        report = await self.report(["team", "currency"], period)
        billable = await self.store.aggregate(["team", "currency", "outcome"], *period_range(period))
        counted: dict[tuple[Any, Any], int] = {}
        for row in billable:
            if row["outcome"] in ("ok", "tool_error"):
                key = (row["team"], row["currency"])
                counted[key] = counted.get(key, 0) + row["calls"]
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CHARGEBACK_COLUMNS)
        for row in report["items"]:
            writer.writerow(
                [
                    period,
                    row["team"] or "",
                    row["currency"] or "",
                    row["calls"],
                    counted.get((row["team"], row["currency"]), 0),
                    row["cost_micro"],
                    _decimal(row["cost_micro"]),
                ]
            )
        return out.getvalue()

    async def outbox(self) -> dict[str, Any]:
        """Writer queue and per-sink backlog and delivery state."""
        return await self.shipper.outbox(self.metering.writer)

    async def budget_status(self, budget_id: str, name: str) -> dict[str, Any] | None:
        """The current period's counters of one budget for one name (None: no such budget)."""
        rule = self.metering.budgets.rule(budget_id)
        if rule is None:
            return None
        await self.metering.settled()  # this replica's own calls are booked before it answers
        return await self.metering.budgets.status(rule, name)


def _totals(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    totals: dict[str, Any] = {"calls": sum(r["calls"] for r in rows)}
    by_currency: dict[str, int] = {}
    for r in rows:
        if r.get("currency"):
            by_currency[r["currency"]] = by_currency.get(r["currency"], 0) + r["cost_micro"]
    totals["cost_micro"] = by_currency
    return totals


def _decimal(micro: int) -> str:
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), 1_000_000)
    return f"{sign}{whole}.{frac:06d}"
