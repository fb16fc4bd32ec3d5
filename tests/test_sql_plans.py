"""The hot PostgreSQL statements' generic plans: what a crawl runs, once a
prepared statement's plan is cached, reads no table through in full."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from conftest import libpq_url
from test_sql_text import HOT_STATEMENTS

from scrapy_pharox import SqlStorage
from scrapy_pharox.storage.sql_batch import ServerStatement

pytestmark = pytest.mark.postgres

#: The table every lease is inserted into and deleted from: until a vacuum,
#: it holds a dead row for every request, and a scan reads them all.
CHURNED_TABLE = "pharox_lease"


@pytest.fixture
def connection(postgresql_url: str) -> Iterator[psycopg.Connection]:
    storage = SqlStorage(postgresql_url)
    storage.create_schema()
    storage.close()
    with psycopg.connect(libpq_url(postgresql_url), autocommit=True) as conn:
        conn.execute("SET plan_cache_mode = force_generic_plan")
        yield conn


def generic_plan(conn: psycopg.Connection, sql: str) -> str:
    """EXPLAIN of the statement's cached plan (not run: NULLs for arguments)."""
    statement = ServerStatement(sql, "planned")
    conn.execute(statement.prepare)
    nulls = ", ".join("NULL" for _ in statement.names)
    explain = (
        f"EXPLAIN {statement.execute}{nulls})"
        if statement.names
        else (f"EXPLAIN {statement.execute}")
    )
    try:
        return "\n".join(row[0] for row in conn.execute(explain))
    finally:
        conn.execute("DEALLOCATE planned")


ACQUIRES = sorted(name for name in HOT_STATEMENTS if name.startswith("acquire"))


@pytest.mark.parametrize("name", ACQUIRES)
def test_an_acquire_scans_no_table_in_full(
    connection: psycopg.Connection, name: str
) -> None:
    # Every pool's proxies, or a dead row per request in the lease table.
    plan = generic_plan(connection, HOT_STATEMENTS[name]().sql)

    assert "Seq Scan" not in plan


@pytest.mark.parametrize("name", ACQUIRES)
def test_an_acquire_finds_expired_leases_through_the_expiry_index(
    connection: psycopg.Connection, name: str
) -> None:
    plan = generic_plan(connection, HOT_STATEMENTS[name]().sql)

    assert f"Seq Scan on {CHURNED_TABLE}" not in plan
    assert "pharox_lease_expiry" in plan


UNPACED_ACQUIRES = [name for name in ACQUIRES if "paced" not in name]


@pytest.mark.parametrize("name", UNPACED_ACQUIRES)
def test_an_acquire_asks_why_it_missed_only_after_a_miss(
    connection: psycopg.Connection, name: str
) -> None:
    # The server sets up every node of a plan on every run, hit or miss: the
    # flags of a miss (an expired lease? a free proxy held locked?) are asked
    # by a statement of their own, and the acquire reads the expiry index once
    # (round robin in its pool row, for both of its searches).
    plan = generic_plan(connection, HOT_STATEMENTS[name]().sql)

    assert plan.count("pharox_lease_expiry") == 1


@pytest.mark.parametrize("name", UNPACED_ACQUIRES)
def test_an_acquire_is_the_update_of_its_proxy_row_with_nothing_around_it(
    connection: psycopg.Connection, name: str
) -> None:
    # Every node is set up on every run: the claim is the statement, not a
    # CTE that a one-row join scans again.
    plan = generic_plan(connection, HOT_STATEMENTS[name]().sql)

    assert plan.startswith("Update on pharox_proxy")


RELEASES = sorted(name for name in HOT_STATEMENTS if name.startswith("release"))


@pytest.mark.parametrize("name", RELEASES)
def test_a_release_reads_no_pool_row_for_its_notice(
    connection: psycopg.Connection, name: str
) -> None:
    # The notice of a freed slot names the lease's pool, which the caller
    # knows: no join of the pool row in every release's plan for it.
    plan = generic_plan(connection, HOT_STATEMENTS[name]().sql)

    assert "pharox_pool " not in plan


@pytest.mark.parametrize("name", RELEASES)
def test_a_release_is_the_insert_of_its_history_row_with_nothing_around_it(
    connection: psycopg.Connection, name: str
) -> None:
    # Whether the lease was active is whether the history row came back: no
    # scan of the removed lease again, no whole row of it joined to its proxy.
    plan = generic_plan(connection, HOT_STATEMENTS[name]().sql)

    assert plan.startswith("Insert on pharox_lease_history")
    freed = plan.split("\n  CTE freed\n")[1].split("\n  CTE ")[0]
    assert "Update on pharox_proxy" in freed
    assert not any(join in freed for join in ("Nested Loop", "Hash Join", "Merge Join"))
