"""SqlRegistryStore on SQLite and PostgreSQL: every test runs on both (see conftest.database_url)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import anyio
import pytest

from tests.registry.conftest import START, StepClock
from tollhouse.registry.models import (
    ClientRecord,
    Health,
    Toolset,
    Upstream,
    UpstreamAuth,
    UpstreamCatalog,
    definition_sha256,
)
from tollhouse.registry.store import RegistryStore, SqlRegistryStore, StoreConflictError, open_sql_store

pytestmark = pytest.mark.anyio


def tool(name: str, **extra: object) -> dict[str, object]:
    return {"name": name, "inputSchema": {"type": "object"}, **extra}


def client(name: str, *, client_id: str | None = None, key_hash: str | None = None) -> ClientRecord:
    return ClientRecord(client_id=client_id or f"id-{name}", name=name, team="platform", key_hash=key_hash)


async def test_a_fresh_store_is_an_empty_registry_store(store: SqlRegistryStore) -> None:
    seam: RegistryStore = store  # mypy checks that the implementation matches the protocol

    assert await seam.list_upstreams() == []
    assert await seam.load_catalogs() == {}
    assert await seam.list_clients() == []
    assert await seam.list_toolsets() == []


async def test_upsert_inserts_then_replaces_keeping_created_at_and_bumping_updated_at(
    store: SqlRegistryStore,
) -> None:
    first = await store.upsert_upstream(Upstream(name="calc", url="http://127.0.0.1:9001/mcp"))
    second = await store.upsert_upstream(
        Upstream(name="calc", url="http://127.0.0.1:9002/mcp", enabled=False)
    )

    assert first.created_at is not None and first.updated_at is not None
    assert second.created_at == first.created_at
    assert second.updated_at is not None and second.updated_at > first.updated_at
    assert await store.get_upstream("calc") == second
    assert second.url == "http://127.0.0.1:9002/mcp" and not second.enabled


async def test_every_upstream_field_round_trips(store: SqlRegistryStore) -> None:
    upstream = Upstream(
        name="files",
        transport="stdio",
        command=("python", "examples/servers/files.py"),
        env={"ROOT": "./data", "MODE": "ro"},
        cwd="/srv",
        auth=UpstreamAuth(type="header", header="X-Api-Key", value_env="FILES_KEY"),
        enabled=False,
        approval="manual",
        failure_mode="closed",
        connect_timeout_seconds=2.5,
        call_timeout_seconds=30.0,
    )

    stored = await store.create_upstream(upstream)

    assert await store.get_upstream("files") == stored
    assert stored == Upstream(
        **{**vars(upstream), "created_at": stored.created_at, "updated_at": stored.updated_at}
    )


async def test_an_upstream_created_at_given_by_the_caller_is_kept(store: SqlRegistryStore) -> None:
    created = datetime(2025, 6, 1, 8, 30, tzinfo=timezone(timedelta(hours=2)))

    stored = await store.upsert_upstream(Upstream(name="calc", url="http://x/mcp", created_at=created))

    assert stored.created_at == created and stored.created_at.tzinfo is UTC


async def test_upstreams_are_listed_by_name_and_unknown_names_are_none(store: SqlRegistryStore) -> None:
    for name in ("zeta", "alpha", "mid"):
        await store.upsert_upstream(Upstream(name=name, url=f"http://{name}/mcp"))

    assert [u.name for u in await store.list_upstreams()] == ["alpha", "mid", "zeta"]
    assert await store.get_upstream("nope") is None


async def test_create_upstream_refuses_a_taken_name(store: SqlRegistryStore) -> None:
    await store.create_upstream(Upstream(name="calc", url="http://one/mcp"))

    with pytest.raises(StoreConflictError):
        await store.create_upstream(Upstream(name="calc", url="http://two/mcp"))
    stored = await store.get_upstream("calc")
    assert stored is not None and stored.url == "http://one/mcp"


async def test_concurrent_upserts_of_one_new_name_all_succeed(store: SqlRegistryStore) -> None:
    urls = [f"http://127.0.0.1:{9000 + i}/mcp" for i in range(8)]

    async with anyio.create_task_group() as tg:
        for url in urls:
            tg.start_soon(store.upsert_upstream, Upstream(name="calc", url=url))

    listed = await store.list_upstreams()
    assert len(listed) == 1 and listed[0].url in urls


async def test_delete_upstream_reports_whether_it_existed(store: SqlRegistryStore) -> None:
    await store.upsert_upstream(Upstream(name="calc", url="http://x/mcp"))

    assert await store.delete_upstream("calc") is True
    assert await store.delete_upstream("calc") is False
    assert await store.get_upstream("calc") is None


async def test_deleting_an_upstream_removes_its_catalog_and_health(store: SqlRegistryStore) -> None:
    for name in ("calc", "files"):
        await store.upsert_upstream(Upstream(name=name, url=f"http://{name}/mcp"))
        await store.save_catalog(UpstreamCatalog(server=name, tools=(tool("add"),)))

    await store.delete_upstream("calc")

    assert set(await store.load_catalogs()) == {"files"}
    assert await store.list_catalog_entries("calc") == []
    assert set(await store.get_health()) == {"files"}


async def test_health_is_unknown_until_set_and_survives_an_upsert(store: SqlRegistryStore) -> None:
    await store.upsert_upstream(Upstream(name="calc", url="http://x/mcp"))
    assert await store.get_health() == {"calc": Health()}

    checked = START - timedelta(minutes=5)
    await store.set_health("calc", Health(status="down", last_error="connect refused", checked_at=checked))
    await store.upsert_upstream(Upstream(name="calc", url="http://y/mcp"))

    assert await store.get_health() == {"calc": Health("down", "connect refused", checked)}


async def test_health_without_a_check_time_is_stamped_by_the_clock(
    store: SqlRegistryStore, clock: StepClock
) -> None:
    await store.upsert_upstream(Upstream(name="calc", url="http://x/mcp"))

    await store.set_health("calc", Health(status="healthy"))

    assert (await store.get_health())["calc"] == Health("healthy", None, clock.now)


async def test_health_of_an_unknown_upstream_is_ignored(store: SqlRegistryStore) -> None:
    await store.set_health("ghost", Health(status="down"))

    assert await store.get_health() == {}


async def test_a_saved_catalog_loads_in_upstream_order_with_its_metadata(store: SqlRegistryStore) -> None:
    await store.upsert_upstream(Upstream(name="calc", url="http://x/mcp"))
    catalog = UpstreamCatalog(
        server="calc",
        tools=(tool("zeta"), tool("alpha"), tool("mid", description="middle")),
        resources=({"uri": "file:///b", "name": "b"}, {"uri": "file:///a", "name": "a"}),
        resource_templates=({"uriTemplate": "file:///{path}", "name": "file"},),
        prompts=({"name": "greet", "arguments": [{"name": "who"}]},),
        capabilities={"tools": {"listChanged": True}},
        server_info={"name": "calc", "version": "1.0"},
        instructions="Add numbers.",
        protocol_version="2025-11-25",
        synced_at=START,
    )

    await store.save_catalog(catalog)

    assert await store.load_catalogs() == {"calc": catalog}


async def test_definitions_keep_their_key_order_and_stored_hash(store: SqlRegistryStore) -> None:
    await store.upsert_upstream(Upstream(name="calc", url="http://x/mcp"))
    schema = {"type": "object", "properties": {"b": {"type": "number"}, "a": {"type": "number"}}}
    definition = {"name": "add", "inputSchema": schema, "title": "Add"}

    await store.save_catalog(UpstreamCatalog(server="calc", tools=(definition,)))

    (loaded,) = (await store.load_catalogs())["calc"].tools
    assert list(loaded) == ["name", "inputSchema", "title"]
    assert list(loaded["inputSchema"]["properties"]) == ["b", "a"]
    (entry,) = await store.list_catalog_entries("calc")
    assert (entry.kind, entry.key, entry.sha256) == ("tool", "add", definition_sha256(definition))


async def test_saving_a_catalog_replaces_the_previous_one(store: SqlRegistryStore, clock: StepClock) -> None:
    await store.upsert_upstream(Upstream(name="calc", url="http://x/mcp"))
    await store.save_catalog(
        UpstreamCatalog(server="calc", tools=(tool("add"), tool("sub")), prompts=({"name": "p"},))
    )

    await store.save_catalog(UpstreamCatalog(server="calc", tools=(tool("mul"), tool("add", title="Add"))))

    loaded = (await store.load_catalogs())["calc"]
    assert loaded.tools == (tool("mul"), tool("add", title="Add"))
    assert loaded.prompts == ()
    assert loaded.synced_at is not None and loaded.synced_at <= clock.now
    assert [e.key for e in await store.list_catalog_entries("calc")] == ["mul", "add"]


async def test_an_empty_catalog_is_stored_as_synced(store: SqlRegistryStore) -> None:
    await store.upsert_upstream(Upstream(name="calc", url="http://x/mcp"))

    await store.save_catalog(UpstreamCatalog(server="calc"))

    assert (await store.load_catalogs())["calc"].tools == ()


async def test_a_catalog_of_an_unknown_upstream_is_not_saved(store: SqlRegistryStore) -> None:
    await store.save_catalog(UpstreamCatalog(server="ghost", tools=(tool("add"),)))

    assert await store.load_catalogs() == {}


async def test_a_name_listed_twice_keeps_its_first_definition(store: SqlRegistryStore) -> None:
    await store.upsert_upstream(Upstream(name="calc", url="http://x/mcp"))

    await store.save_catalog(
        UpstreamCatalog(
            server="calc", tools=(tool("add", title="first"), tool("sub"), tool("add", title="2"))
        )
    )

    assert (await store.load_catalogs())["calc"].tools == (tool("add", title="first"), tool("sub"))


async def test_naive_datetimes_are_refused(store: SqlRegistryStore) -> None:
    await store.upsert_upstream(Upstream(name="calc", url="http://x/mcp"))

    with pytest.raises(ValueError, match="naive"):
        await store.set_health("calc", Health(status="healthy", checked_at=datetime(2026, 1, 1)))


async def test_clients_are_found_by_id_name_and_key_hash(store: SqlRegistryStore) -> None:
    created = await store.create_client(
        ClientRecord(client_id="c-1", name="ci-bot", team="platform", key_hash="h1", key_prefix="th_ab")
    )

    assert created.created_at is not None and created.created_at.tzinfo is UTC and created.active
    assert await store.get_client("c-1") == created
    assert await store.get_client_by_name("ci-bot") == created
    assert await store.get_client_by_key_hash("h1") == created
    assert await store.get_client("c-2") is None
    assert await store.get_client_by_name("nobody") is None
    assert await store.get_client_by_key_hash("h2") is None


async def test_clients_are_listed_by_name_with_revoked_ones(store: SqlRegistryStore) -> None:
    for name in ("zed", "amy"):
        await store.create_client(client(name))
    await store.create_client(ClientRecord(client_id="id-keyless", name="keyless", team=None, key_hash=None))
    await store.revoke_client("id-zed")

    listed = await store.list_clients()

    assert [(c.name, c.active) for c in listed] == [("amy", True), ("keyless", True), ("zed", False)]


@pytest.mark.parametrize(
    "duplicate",
    [client("ci-bot", client_id="other"), client("other", client_id="id-ci-bot"), client("o", key_hash="h")],
    ids=["name", "id", "key-hash"],
)
async def test_create_client_refuses_a_taken_name_id_or_key(
    store: SqlRegistryStore, duplicate: ClientRecord
) -> None:
    await store.create_client(client("ci-bot", key_hash="h"))

    with pytest.raises(StoreConflictError):
        await store.create_client(duplicate)
    assert [c.name for c in await store.list_clients()] == ["ci-bot"]


async def test_revoking_is_idempotent_and_keeps_the_first_time(store: SqlRegistryStore) -> None:
    await store.create_client(client("ci-bot"))

    first = await store.revoke_client("id-ci-bot")
    again = await store.revoke_client("id-ci-bot")

    assert first is not None and not first.active
    assert again == first == await store.get_client("id-ci-bot")
    assert await store.revoke_client("unknown") is None


async def test_a_toolset_round_trips_with_its_alias_order(store: SqlRegistryStore) -> None:
    toolset = Toolset(
        name="support",
        tools=("calc__add", "files__read_*"),
        aliases={"zz_sum": "calc__add", "aa_list": "files__list"},
        description="What the support agent may use.",
    )

    stored = await store.upsert_toolset(toolset)

    assert stored.created_at is not None and stored.created_at.tzinfo is UTC
    assert stored == Toolset(
        **{**vars(toolset), "created_at": stored.created_at, "updated_at": stored.updated_at}
    )
    loaded = await store.get_toolset("support")
    assert loaded == stored
    assert loaded is not None and list(loaded.aliases) == ["zz_sum", "aa_list"]


async def test_upserting_a_toolset_replaces_it_keeping_created_at(store: SqlRegistryStore) -> None:
    first = await store.upsert_toolset(Toolset(name="support", tools=("calc__*",), description="old"))

    second = await store.upsert_toolset(Toolset(name="support", aliases={"add": "calc__add"}))

    assert second.created_at == first.created_at
    assert second.updated_at is not None and first.updated_at is not None
    assert second.updated_at > first.updated_at
    assert (second.tools, dict(second.aliases), second.description) == ((), {"add": "calc__add"}, None)
    assert await store.list_toolsets() == [second]


async def test_toolsets_are_listed_by_name_and_unknown_names_are_none(store: SqlRegistryStore) -> None:
    for name in ("zeta", "alpha", "mid"):
        await store.upsert_toolset(Toolset(name=name, tools=("*",)))

    assert [t.name for t in await store.list_toolsets()] == ["alpha", "mid", "zeta"]
    assert await store.get_toolset("nope") is None


async def test_delete_toolset_reports_whether_it_existed(store: SqlRegistryStore) -> None:
    await store.upsert_toolset(Toolset(name="support", tools=("*",)))
    await store.upsert_toolset(Toolset(name="other", tools=("*",)))

    assert await store.delete_toolset("support") is True
    assert await store.delete_toolset("support") is False
    assert [t.name for t in await store.list_toolsets()] == ["other"]


async def test_concurrent_upserts_of_one_new_toolset_all_succeed(store: SqlRegistryStore) -> None:
    patterns = [f"calc__tool_{i}" for i in range(8)]

    async with anyio.create_task_group() as tg:
        for pattern in patterns:
            tg.start_soon(store.upsert_toolset, Toolset(name="support", tools=(pattern,)))

    listed = await store.list_toolsets()
    assert len(listed) == 1 and listed[0].tools[0] in patterns


async def test_settings_are_absent_until_set_and_then_overwritten(store: SqlRegistryStore) -> None:
    assert await store.get_setting("admin_token_hash") is None

    await store.set_setting("admin_token_hash", "one")
    await store.set_setting("admin_token_hash", "two")
    await store.set_setting("other", "x")

    assert await store.get_setting("admin_token_hash") == "two"
    assert await store.get_setting("other") == "x"


async def test_without_a_url_the_store_is_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    store = await open_sql_store(None, str(tmp_path / "data"))
    try:
        await store.set_setting("k", "v")
        assert await store.get_setting("k") == "v"
    finally:
        await store.close()

    assert (tmp_path / "data" / "tollhouse.db").is_file()
