"""Shared fixtures: the storage contract suite runs over every adapter here.

PostgreSQL is found through ``PHAROX_TEST_DATABASE_URL``; each test gets a fresh
schema there (reached through ``search_path``), dropped afterwards. When no
server answers, PostgreSQL tests skip, saying why, unless
``PHAROX_REQUIRE_POSTGRES=1`` (CI), where they fail.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import os
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timezone
from functools import cache
from uuid import uuid4

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine, make_url

from async_path import AsyncPath
from scrapy_pharox import InMemoryStorage, IStorage, ProxyManager, open_storage

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

StorageFactory = Callable[[pytest.FixtureRequest], AbstractContextManager[IStorage]]


def database_url() -> str:
    """The PostgreSQL server the tests use."""
    return os.environ.get("PHAROX_TEST_DATABASE_URL", DEFAULT_DATABASE_URL)


@contextmanager
def sql_engine(url: str) -> Iterator[Engine]:
    """A SQLAlchemy engine on a storage's database, for a test to read or change
    its tables behind the storage's back."""
    engine = create_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def libpq_url(url: str) -> str:
    """A SQLAlchemy URL as psycopg.connect takes it."""
    return make_url(url).set(drivername="postgresql").render_as_string(False)


@cache
def postgres_unreachable_reason() -> str | None:
    """Why the PostgreSQL server cannot be used, or None when it can."""
    import psycopg

    shown = make_url(database_url()).render_as_string(hide_password=True)
    try:
        with psycopg.connect(libpq_url(database_url()), connect_timeout=3):
            return None
    except psycopg.Error as exc:
        first_line = str(exc).strip().splitlines()[0]
        return f"no PostgreSQL at {shown} (PHAROX_TEST_DATABASE_URL): {first_line}"


def require_postgres() -> None:
    """Skip the test without a server; fail it instead when CI requires one."""
    reason = postgres_unreachable_reason()
    if reason is None:
        return
    if os.environ.get("PHAROX_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"{reason}; PHAROX_REQUIRE_POSTGRES=1 makes this an error")
    pytest.skip(reason)


@contextmanager
def fresh_postgres_schema() -> Iterator[str]:
    """The URL of a new, empty schema on the test server; dropped on exit."""
    import psycopg

    require_postgres()
    schema = f"pharox_test_{uuid4().hex[:16]}"
    admin_url = libpq_url(database_url())
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    url = make_url(database_url()).update_query_dict(
        {"options": f"-csearch_path={schema}"}
    )
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute("SET lock_timeout = '20s'")
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def postgresql_url() -> Iterator[str]:
    """A PostgreSQL storage URL whose schema is empty and this test's alone."""
    with fresh_postgres_schema() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite storage URL of a new file."""
    return f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'pharox.db'}"


@pytest.fixture(
    params=[pytest.param("postgresql", marks=pytest.mark.postgres), "sqlite"]
)
def sql_url(request: pytest.FixtureRequest) -> str:
    """A new SQL storage URL of each kind, that several processes can share."""
    return str(request.getfixturevalue(f"{request.param}_url"))


def process_context() -> multiprocessing.context.BaseContext:
    """Where tests start worker processes: forked from a clean server process that
    imported the package once, so eight workers start in milliseconds."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["pytest", "psycopg", "scrapy_pharox"])
    return context


class FakeClock:
    """Epoch seconds: the real time, plus however far the test moved it on (so
    stamps stay after any taken from the real clock before)."""

    def __init__(self) -> None:
        self.moved = 0.0

    def __call__(self) -> float:
        return time.time() + self.moved

    def advance(self, seconds: float) -> None:
        self.moved += seconds


#: The fake clock of each storage that takes one (memory).
CLOCKS: weakref.WeakKeyDictionary[IStorage, FakeClock] = weakref.WeakKeyDictionary()

Wait = Callable[[float], None]
Now = Callable[[], datetime]


@pytest.fixture
def wait(storage: IStorage) -> Wait:
    """Let ``seconds`` pass for the storage: its fake clock moves where it has
    one (memory), else the test sleeps (a database keeps its own time)."""
    clock = CLOCKS.get(storage)
    return clock.advance if clock is not None else time.sleep


@pytest.fixture
def now(storage: IStorage) -> Now:
    """The storage's time now, as an aware UTC datetime (see ``wait``)."""
    clock = CLOCKS.get(storage, time.time)
    return lambda: datetime.fromtimestamp(clock(), timezone.utc)


@contextmanager
def memory_storage(request: pytest.FixtureRequest) -> Iterator[IStorage]:
    store = InMemoryStorage(clock=(clock := FakeClock()))
    CLOCKS[store] = clock
    try:
        yield store
    finally:
        store.close()


@contextmanager
def sql_storage(url: str) -> Iterator[IStorage]:
    store = open_storage(url)
    try:
        yield store
    finally:
        store.close()


@contextmanager
def postgresql_storage(request: pytest.FixtureRequest) -> Iterator[IStorage]:
    with fresh_postgres_schema() as url, sql_storage(url) as store:
        yield store


@contextmanager
def postgresql_async_storage(request: pytest.FixtureRequest) -> Iterator[IStorage]:
    """PostgreSQL, acquire and release through the pipelined async path."""
    with fresh_postgres_schema() as url:
        store = AsyncPath(open_storage(url))
        try:
            yield store
        finally:
            store.close()


@contextmanager
def sqlite_storage(request: pytest.FixtureRequest) -> Iterator[IStorage]:
    with sql_storage(request.getfixturevalue("sqlite_url")) as store:
        yield store


STORAGE_KINDS: dict[str, StorageFactory] = {
    "memory": memory_storage,
    "postgresql": postgresql_storage,
    "postgresql-async": postgresql_async_storage,
    "sqlite": sqlite_storage,
}


@pytest.fixture(
    params=[
        pytest.param(
            kind, marks=[pytest.mark.postgres] if kind.startswith("postgresql") else []
        )
        for kind in sorted(STORAGE_KINDS)
    ]
)
def storage(request: pytest.FixtureRequest) -> Iterator[IStorage]:
    """A fresh, empty storage of each kind the contract suite covers."""
    with STORAGE_KINDS[request.param](request) as store:
        yield store


@pytest.fixture
def manager(storage: IStorage) -> ProxyManager:
    """A manager over the parametrized storage."""
    return ProxyManager(storage)


# Local servers and the crawl helper of the end-to-end Scrapy tests.
pytest_plugins = ["crawl_support"]
