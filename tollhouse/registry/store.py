"""RegistryStore: the persistence seam of the registry.

The protocol is what the gateway uses; `SqlRegistryStore` implements it over SQLAlchemy
(SQLite by default, PostgreSQL in production). Calls are off the request path: the gateway
reads the store at start and on changes, then serves from an in-memory snapshot.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol, TypeVar

import anyio.to_thread
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from tollhouse.registry.migrate import create_engine_for, database_url_for, upgrade, with_write_lock
from tollhouse.registry.models import CatalogEntry, ClientRecord, Health, Toolset, Upstream, UpstreamCatalog
from tollhouse.registry.tables import (
    CATALOG_ENTRIES,
    CLIENTS,
    TOOL_PINS,
    TOOLSETS,
    UPSTREAM_META,
    UPSTREAM_SECRETS,
    UPSTREAMS,
    USER_UPSTREAM_TOKENS,
    CatalogEntryRow,
    ClientRow,
    SettingRow,
    ToolPinRow,
    ToolsetRow,
    UpstreamMetaRow,
    UpstreamRow,
    UpstreamSecretRow,
    UserUpstreamTokenRow,
    catalog_of,
    utc,
)

__all__ = ["RegistryStore", "SqlRegistryStore", "StoreConflictError", "open_sql_store"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
Clock = Callable[[], datetime]


class StoreConflictError(Exception):
    """A unique name is already taken."""


class RegistryStore(Protocol):
    """Registry persistence: upstreams, their catalogs, API clients and small settings."""

    async def upsert_upstream(self, upstream: Upstream) -> Upstream:
        """Insert or replace an upstream by name; returns it with timestamps set."""
        ...

    async def create_upstream(self, upstream: Upstream) -> Upstream:
        """Insert a new upstream.

        Raises:
            StoreConflictError: the name is taken.
        """
        ...

    async def get_upstream(self, name: str) -> Upstream | None:
        """One upstream by name, or None."""
        ...

    async def list_upstreams(self) -> list[Upstream]:
        """All upstreams, ordered by name."""
        ...

    async def delete_upstream(self, name: str) -> bool:
        """Delete an upstream and its catalog; False if it did not exist."""
        ...

    async def set_health(self, name: str, health: Health) -> None:
        """Record the last observed health of an upstream."""
        ...

    async def get_health(self) -> dict[str, Health]:
        """Health of every upstream by name."""
        ...

    async def save_catalog(self, catalog: UpstreamCatalog) -> None:
        """Replace the stored catalog of one upstream (tools, resources, templates, prompts)."""
        ...

    async def load_catalogs(self) -> dict[str, UpstreamCatalog]:
        """The last stored catalog of every upstream, by server name, items in upstream order."""
        ...

    async def create_client(self, client: ClientRecord) -> ClientRecord:
        """Insert a client.

        Raises:
            StoreConflictError: the name or id is taken.
        """
        ...

    async def get_client(self, client_id: str) -> ClientRecord | None:
        """One client by id, or None."""
        ...

    async def get_client_by_name(self, name: str) -> ClientRecord | None:
        """One client by name, or None."""
        ...

    async def list_clients(self) -> list[ClientRecord]:
        """All clients, revoked ones included, ordered by name."""
        ...

    async def revoke_client(self, client_id: str) -> ClientRecord | None:
        """Mark a client revoked (idempotent); None if unknown."""
        ...

    async def list_toolsets(self) -> list[Toolset]:
        """All toolsets, ordered by name."""
        ...

    async def get_toolset(self, name: str) -> Toolset | None:
        """One toolset by name, or None."""
        ...

    async def upsert_toolset(self, toolset: Toolset) -> Toolset:
        """Insert or replace a toolset by name; returns it with timestamps set."""
        ...

    async def delete_toolset(self, name: str) -> bool:
        """Delete a toolset; False if it did not exist."""
        ...

    async def get_setting(self, key: str) -> str | None:
        """A small persisted gateway setting (e.g. the admin token hash)."""
        ...

    async def set_setting(self, key: str, value: str) -> None:
        """Persist a small gateway setting."""
        ...

    async def close(self) -> None:
        """Release the engine."""
        ...


def _utcnow() -> datetime:
    return datetime.now(UTC)


class SqlRegistryStore:
    """RegistryStore over a sync SQLAlchemy engine; each call is one transaction in a worker thread."""

    def __init__(self, engine: sa.Engine, *, clock: Clock = _utcnow) -> None:
        self._engine = engine
        self._clock = clock
        self._reads = sessionmaker(engine, expire_on_commit=False)
        self._writes = sessionmaker(with_write_lock(engine), expire_on_commit=False)

    async def _run(self, work: Callable[[Session], T], *, write: bool = False, retry: bool = False) -> T:
        """Run `work` in one transaction off the event loop.

        `retry` runs it once more after a unique-key clash: an insert-or-update that lost a race
        for a new key finds the winner's row on the second pass.
        """

        def transaction() -> T:
            with (self._writes if write else self._reads).begin() as session:
                return work(session)

        try:
            return await anyio.to_thread.run_sync(transaction)
        except IntegrityError:
            if not retry:
                raise
        return await anyio.to_thread.run_sync(transaction)

    def _now(self) -> datetime:
        return utc(self._clock())

    async def upsert_upstream(self, upstream: Upstream) -> Upstream:
        """Insert or replace an upstream by name; returns it with timestamps set."""

        def work(session: Session) -> Upstream:
            now = self._now()
            row = session.get(UpstreamRow, upstream.name, with_for_update=True)
            if row is None:
                row = UpstreamRow.of(upstream, upstream.created_at or now, now)
                session.add(row)
            else:
                row.assign(upstream, now)
            session.flush()
            return row.to_upstream()

        return await self._run(work, write=True, retry=True)

    async def create_upstream(self, upstream: Upstream) -> Upstream:
        """Insert a new upstream.

        Raises:
            StoreConflictError: the name is taken.
        """

        def work(session: Session) -> Upstream:
            now = self._now()
            row = UpstreamRow.of(upstream, upstream.created_at or now, now)
            session.add(row)
            session.flush()
            return row.to_upstream()

        try:
            return await self._run(work, write=True)
        except IntegrityError as exc:
            raise StoreConflictError(f"upstream {upstream.name!r} exists") from exc

    async def get_upstream(self, name: str) -> Upstream | None:
        """One upstream by name, or None."""

        def work(session: Session) -> Upstream | None:
            row = session.get(UpstreamRow, name)
            return None if row is None else row.to_upstream()

        return await self._run(work)

    async def list_upstreams(self) -> list[Upstream]:
        """All upstreams, ordered by name."""

        def work(session: Session) -> list[Upstream]:
            rows = session.scalars(sa.select(UpstreamRow).order_by(UPSTREAMS.c.name))
            return [row.to_upstream() for row in rows]

        return await self._run(work)

    async def delete_upstream(self, name: str) -> bool:
        """Delete an upstream, its catalog and its sealed credentials; False if it did not exist."""

        def work(session: Session) -> bool:
            row = session.get(UpstreamRow, name, with_for_update=True)
            if row is None:
                return False
            # ON DELETE CASCADE covers this, but not on a SQLite connection without foreign_keys=ON.
            session.execute(sa.delete(CatalogEntryRow).where(CATALOG_ENTRIES.c.server == name))
            session.execute(sa.delete(UpstreamSecretRow).where(UPSTREAM_SECRETS.c.upstream == name))
            session.execute(sa.delete(UserUpstreamTokenRow).where(USER_UPSTREAM_TOKENS.c.upstream == name))
            session.execute(sa.delete(ToolPinRow).where(TOOL_PINS.c.server == name))
            meta = session.get(UpstreamMetaRow, name)
            if meta is not None:
                session.delete(meta)
            session.flush()
            session.delete(row)
            return True

        return await self._run(work, write=True)

    async def set_health(self, name: str, health: Health) -> None:
        """Record the last observed health of an upstream; ignored if it has been deleted meanwhile."""

        def work(session: Session) -> None:
            row = session.get(UpstreamRow, name, with_for_update=True)
            if row is None:
                return
            row.health_status = health.status
            row.last_error = health.last_error
            row.checked_at = self._now() if health.checked_at is None else utc(health.checked_at)

        await self._run(work, write=True)

    async def get_health(self) -> dict[str, Health]:
        """Health of every upstream by name."""

        def work(session: Session) -> dict[str, Health]:
            rows = session.scalars(sa.select(UpstreamRow).order_by(UPSTREAMS.c.name))
            return {row.name: row.to_health() for row in rows}

        return await self._run(work)

    async def save_catalog(self, catalog: UpstreamCatalog) -> None:
        """Replace the stored catalog of one upstream; ignored if the upstream has been deleted meanwhile.

        An upstream listing the same name (or URI) twice under one kind keeps the first.
        """
        entries = _first_of_each_key(catalog.entries())

        def work(session: Session) -> None:
            # Locking the upstream row serialises concurrent saves of one catalog.
            if session.get(UpstreamRow, catalog.server, with_for_update=True) is None:
                return
            now = self._now()
            session.execute(sa.delete(CatalogEntryRow).where(CATALOG_ENTRIES.c.server == catalog.server))
            session.merge(UpstreamMetaRow.of(catalog, catalog.synced_at or now))
            session.add_all(
                CatalogEntryRow.of(entry, position, now) for position, entry in enumerate(entries)
            )

        await self._run(work, write=True)

    async def load_catalogs(self) -> dict[str, UpstreamCatalog]:
        """The last stored catalog of every upstream, by server name, items in upstream order."""

        def work(session: Session) -> dict[str, UpstreamCatalog]:
            # One statement, so one snapshot even under READ COMMITTED while a save commits.
            query = (
                sa.select(UpstreamMetaRow, CatalogEntryRow)
                .outerjoin(CatalogEntryRow, CATALOG_ENTRIES.c.server == UPSTREAM_META.c.server)
                .order_by(UPSTREAM_META.c.server, CATALOG_ENTRIES.c.position)
            )
            found: dict[str, tuple[UpstreamMetaRow, list[CatalogEntryRow]]] = {}
            for meta, entry in session.execute(query):
                _, entries = found.setdefault(meta.server, (meta, []))
                if entry is not None:  # an empty catalog joins to one row of NULLs
                    entries.append(entry)
            return {server: catalog_of(meta, entries) for server, (meta, entries) in found.items()}

        return await self._run(work)

    async def list_catalog_entries(self, server: str) -> list[CatalogEntry]:
        """The stored entries of one upstream with their stored hashes, in upstream order."""

        def work(session: Session) -> list[CatalogEntry]:
            query = (
                sa.select(CatalogEntryRow)
                .where(CATALOG_ENTRIES.c.server == server)
                .order_by(CATALOG_ENTRIES.c.position)
            )
            return [row.to_entry() for row in session.scalars(query)]

        return await self._run(work)

    async def create_client(self, client: ClientRecord) -> ClientRecord:
        """Insert a client.

        Raises:
            StoreConflictError: the name, id or key hash is taken.
        """

        def work(session: Session) -> ClientRecord:
            row = ClientRow.of(client, client.created_at or self._now())
            session.add(row)
            session.flush()
            return row.to_client()

        try:
            return await self._run(work, write=True)
        except IntegrityError as exc:
            raise StoreConflictError(f"client {client.name!r} or its id or key exists") from exc

    async def get_client(self, client_id: str) -> ClientRecord | None:
        """One client by id, or None."""

        def work(session: Session) -> ClientRecord | None:
            row = session.get(ClientRow, client_id)
            return None if row is None else row.to_client()

        return await self._run(work)

    async def get_client_by_name(self, name: str) -> ClientRecord | None:
        """One client by name, or None."""
        return await self._client_where(CLIENTS.c.name == name)

    async def get_client_by_key_hash(self, key_hash: str) -> ClientRecord | None:
        """The client whose API key hashes to `key_hash` (revoked or not), or None."""
        return await self._client_where(CLIENTS.c.key_hash == key_hash)

    async def _client_where(self, condition: sa.ColumnElement[bool]) -> ClientRecord | None:
        def work(session: Session) -> ClientRecord | None:
            row = session.scalars(sa.select(ClientRow).where(condition)).one_or_none()
            return None if row is None else row.to_client()

        return await self._run(work)

    async def list_clients(self) -> list[ClientRecord]:
        """All clients, revoked ones included, ordered by name."""

        def work(session: Session) -> list[ClientRecord]:
            rows = session.scalars(sa.select(ClientRow).order_by(CLIENTS.c.name))
            return [row.to_client() for row in rows]

        return await self._run(work)

    async def revoke_client(self, client_id: str) -> ClientRecord | None:
        """Mark a client revoked (idempotent: the first revocation time stays); None if unknown."""

        def work(session: Session) -> ClientRecord | None:
            row = session.get(ClientRow, client_id, with_for_update=True)
            if row is None:
                return None
            if row.revoked_at is None:
                row.revoked_at = self._now()
            return row.to_client()

        return await self._run(work, write=True)

    async def list_toolsets(self) -> list[Toolset]:
        """All toolsets, ordered by name."""

        def work(session: Session) -> list[Toolset]:
            rows = session.scalars(sa.select(ToolsetRow).order_by(TOOLSETS.c.name))
            return [row.to_toolset() for row in rows]

        return await self._run(work)

    async def get_toolset(self, name: str) -> Toolset | None:
        """One toolset by name, or None."""

        def work(session: Session) -> Toolset | None:
            row = session.get(ToolsetRow, name)
            return None if row is None else row.to_toolset()

        return await self._run(work)

    async def upsert_toolset(self, toolset: Toolset) -> Toolset:
        """Insert or replace a toolset by name; returns it with timestamps set (created_at kept)."""

        def work(session: Session) -> Toolset:
            now = self._now()
            row = session.get(ToolsetRow, toolset.name, with_for_update=True)
            if row is None:
                row = ToolsetRow.of(toolset, toolset.created_at or now, now)
                session.add(row)
            else:
                row.assign(toolset, now)
            session.flush()
            return row.to_toolset()

        return await self._run(work, write=True, retry=True)

    async def delete_toolset(self, name: str) -> bool:
        """Delete a toolset; False if it did not exist."""

        def work(session: Session) -> bool:
            row = session.get(ToolsetRow, name, with_for_update=True)
            if row is None:
                return False
            session.delete(row)
            return True

        return await self._run(work, write=True)

    async def get_setting(self, key: str) -> str | None:
        """A small persisted gateway setting (e.g. the admin token hash)."""

        def work(session: Session) -> str | None:
            row = session.get(SettingRow, key)
            return None if row is None else row.value

        return await self._run(work)

    async def set_setting(self, key: str, value: str) -> None:
        """Persist a small gateway setting."""

        def work(session: Session) -> None:
            row = session.get(SettingRow, key, with_for_update=True)
            if row is None:
                session.add(SettingRow(key=key, value=value))
            else:
                row.value = value

        await self._run(work, write=True, retry=True)

    async def close(self) -> None:
        """Release the engine."""
        await anyio.to_thread.run_sync(self._engine.dispose)


def _first_of_each_key(entries: list[CatalogEntry]) -> list[CatalogEntry]:
    seen: set[tuple[str, str]] = set()
    kept: list[CatalogEntry] = []
    for entry in entries:
        if (entry.kind, entry.key) in seen:
            logger.warning(
                "upstream %s lists %s %r twice; keeping the first", entry.server, entry.kind, entry.key
            )
            continue
        seen.add((entry.kind, entry.key))
        kept.append(entry)
    return kept


async def open_sql_store(url: str | None, data_dir: str, *, clock: Clock = _utcnow) -> SqlRegistryStore:
    """Migrate the database (SQLite under `data_dir` when `url` is None) and open a store on it."""

    def prepare() -> sa.Engine:
        resolved = database_url_for(url, data_dir)
        upgrade(resolved)
        return create_engine_for(resolved)

    engine = await anyio.to_thread.run_sync(prepare)
    return SqlRegistryStore(engine, clock=clock)
