"""Faults at the SQL adapter: lost connections, lost replies, bad URLs, errors.

Connections are cut for real: PostgreSQL is reached through a small TCP
forwarder that drops the wire at a chosen moment.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from conftest import sql_engine
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from loop_support import run_on_a_loop
from scrapy_pharox import (
    Lease,
    ProxyManager,
    SqlStorage,
    StorageError,
    UnsupportedStorageURLError,
    bootstrap_pool,
    bootstrap_proxy,
    open_storage,
)
from scrapy_pharox.storage.sql_schema import lease_history_table


class WireCutter:
    """A TCP forwarder to PostgreSQL that can drop its connections on cue."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._marker: bytes | None = None
        self._cut_reply = False
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def cut_request(self, marker: bytes) -> None:
        """Drop the connection that sends ``marker``, before the server sees it."""
        self._marker, self._cut_reply = marker, False

    def cut_reply(self, marker: bytes) -> None:
        """Let the server run the request holding ``marker``, drop its reply."""
        self._marker, self._cut_reply = marker, True

    def cut_all(self) -> None:
        """Drop every connection now, as a server restart or a network fault does."""
        with self._lock:
            for sock in self._open:
                _close(sock)
            self._open.clear()
            self.cuts += 1

    def close(self) -> None:
        self._listener.close()
        self.cut_all()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._target)
            with self._lock:
                self._open += [client, server]
            reply_cut = threading.Event()
            threading.Thread(
                target=self._requests, args=(client, server, reply_cut), daemon=True
            ).start()
            threading.Thread(
                target=self._replies, args=(server, client, reply_cut), daemon=True
            ).start()

    def _requests(
        self, client: socket.socket, server: socket.socket, reply_cut: threading.Event
    ) -> None:
        while data := _recv(client):
            if self._marker is not None and self._marker in data:
                self._marker = None
                if not self._cut_reply:
                    self._cut(client, server)
                    return
                reply_cut.set()
            if not _send(server, data):
                break
        self._cut_quietly(client, server)

    def _replies(
        self, server: socket.socket, client: socket.socket, reply_cut: threading.Event
    ) -> None:
        while data := _recv(server):
            if reply_cut.is_set():
                self._cut(client, server)
                return
            if not _send(client, data):
                break
        self._cut_quietly(client, server)

    def _cut(self, *socks: socket.socket) -> None:
        self.cuts += 1
        self._cut_quietly(*socks)

    def _cut_quietly(self, *socks: socket.socket) -> None:
        for sock in socks:
            _close(sock)


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def _send(sock: socket.socket, data: bytes) -> bool:
    try:
        sock.sendall(data)
    except OSError:  # the other side of the forwarder was cut meanwhile
        return False
    return True


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def cutter(postgresql_url: str) -> Iterator[WireCutter]:
    target = make_url(postgresql_url)
    wire = WireCutter(target.host or "127.0.0.1", target.port or 5432)
    try:
        yield wire
    finally:
        wire.close()


def storage_through(
    cutter: WireCutter, postgresql_url: str, **kwargs: object
) -> SqlStorage:
    """A storage on the test schema whose connections pass through ``cutter``."""
    url = (
        make_url(postgresql_url)
        .set(host="127.0.0.1", port=cutter.port)
        .update_query_dict({"sslmode": "disable"})  # plain bytes, to spot markers
    )
    storage = SqlStorage(url, **kwargs)  # type: ignore[arg-type]
    storage.create_schema()
    pool = bootstrap_pool(storage, name="pool")
    for port in (1, 2):
        bootstrap_proxy(
            storage, pool=pool, host="127.0.0.1", port=port, max_concurrency=1
        )
    return storage


def total_leases(storage: SqlStorage) -> int:
    stats = storage.get_pool_stats("pool")
    assert stats is not None
    return stats.total_leases


# -- lost connections and replies (PostgreSQL) -------------------------------------


@pytest.mark.postgres
def test_an_acquire_on_a_connection_dropped_while_idle_takes_a_new_one_at_once(
    cutter: WireCutter, postgresql_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    storage = storage_through(cutter, postgresql_url)
    manager = ProxyManager(storage)
    try:
        manager.release_proxy(manager.acquire_proxy("pool"))  # type: ignore[arg-type]
        cutter.cut_all()
        assert manager.acquire_proxy("pool") is not None
        assert "trying again" not in caplog.text
        assert total_leases(storage) == 1
    finally:
        storage.close()


@pytest.mark.postgres
def test_an_async_acquire_on_a_connection_dropped_while_idle_takes_a_new_one(
    cutter: WireCutter, postgresql_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    storage = storage_through(cutter, postgresql_url)
    manager = ProxyManager(storage)

    async def scenario() -> Lease | None:
        first = await manager.acquire_proxy_async("pool")
        assert first is not None
        assert await manager.release_proxy_async(first)
        cutter.cut_all()
        return await manager.acquire_proxy_async("pool")

    try:
        assert run_on_a_loop(scenario()) is not None
        assert "trying again" not in caplog.text
        assert total_leases(storage) == 1
    finally:
        storage.close()


@pytest.mark.postgres
def test_a_read_on_a_connection_dropped_while_idle_takes_a_new_one_at_once(
    cutter: WireCutter, postgresql_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    storage = storage_through(cutter, postgresql_url)
    try:
        cutter.cut_all()
        assert total_leases(storage) == 0
        assert "trying again" not in caplog.text
    finally:
        storage.close()


@pytest.mark.postgres
def test_an_acquire_whose_request_was_lost_is_sent_again(
    cutter: WireCutter, postgresql_url: str
) -> None:
    storage = storage_through(cutter, postgresql_url)
    try:
        cutter.cut_request(b"INSERT INTO pharox_lease")
        lease = ProxyManager(storage).acquire_proxy("pool")
        assert cutter.cuts == 1
        assert lease is not None
        assert total_leases(storage) == 1
    finally:
        storage.close()


@pytest.mark.postgres
def test_an_acquire_whose_reply_was_lost_returns_the_lease_it_took_and_leaks_none(
    cutter: WireCutter, postgresql_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    storage = storage_through(cutter, postgresql_url)
    manager = ProxyManager(storage)
    try:
        cutter.cut_reply(b"INSERT INTO pharox_lease")
        lease = manager.acquire_proxy("pool")
        assert cutter.cuts == 1
        assert lease is not None
        assert (
            f"lease {lease.id} was taken by a try whose reply was lost" in caplog.text
        )
        assert total_leases(storage) == 1
        assert manager.release_proxy(lease) is True
        assert total_leases(storage) == 0
    finally:
        storage.close()


@pytest.mark.postgres
def test_an_async_acquire_whose_reply_was_lost_returns_the_lease_it_took(
    cutter: WireCutter, postgresql_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    storage = storage_through(cutter, postgresql_url)
    manager = ProxyManager(storage)
    try:
        cutter.cut_reply(b"INSERT INTO pharox_lease")
        lease = run_on_a_loop(manager.acquire_proxy_async("pool"))
        assert cutter.cuts == 1
        assert lease is not None
        assert "acquiring a proxy on" in caplog.text
        assert (
            f"lease {lease.id} was taken by a try whose reply was lost" in caplog.text
        )
        assert total_leases(storage) == 1
        assert run_on_a_loop(manager.release_proxy_async(lease)) is True
        assert total_leases(storage) == 0
    finally:
        storage.close()


@pytest.mark.postgres
def test_a_release_whose_request_was_lost_is_sent_again(
    cutter: WireCutter, postgresql_url: str
) -> None:
    storage = storage_through(cutter, postgresql_url)
    manager = ProxyManager(storage)
    try:
        lease = manager.acquire_proxy("pool")
        assert lease is not None
        cutter.cut_request(b"DELETE FROM pharox_lease")
        assert manager.release_proxy(lease) is True
        assert cutter.cuts == 1
        assert total_leases(storage) == 0
    finally:
        storage.close()


# -- releases ----------------------------------------------------------------------


def test_a_lease_released_from_two_threads_at_once_is_released_once(
    sql_url: str,
) -> None:
    storage = open_storage(sql_url)
    try:
        pool = bootstrap_pool(storage, name="pool")
        bootstrap_proxy(storage, pool=pool, host="127.0.0.1", port=1, max_concurrency=1)
        lease = ProxyManager(storage).acquire_proxy("pool")
        assert lease is not None
        barrier = threading.Barrier(2)
        results: list[bool] = []

        def release() -> None:
            barrier.wait()
            results.append(storage.release_lease(lease))

        threads = [threading.Thread(target=release) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(results) == [False, True]
        assert storage.list_proxies("pool")[0].current_leases == 0
    finally:
        storage.close()


def test_ended_leases_are_kept_in_the_history_with_how_they_ended(
    sql_url: str,
) -> None:
    storage = open_storage(sql_url)
    assert isinstance(storage, SqlStorage)
    manager = ProxyManager(storage)
    try:
        pool = bootstrap_pool(storage, name="pool")
        for port in (1, 2):
            bootstrap_proxy(storage, pool=pool, host="127.0.0.1", port=port)
        released = manager.acquire_proxy("pool")
        expired = manager.acquire_proxy("pool", duration_seconds=0.2)
        assert released is not None and expired is not None
        manager.release_proxy(released)
        manager.release_proxy(released)
        time.sleep(0.4)
        assert manager.cleanup_expired_leases() == 1
        history = lease_history_table.c
        with sql_engine(sql_url) as engine, engine.connect() as conn:
            rows = conn.execute(select(history.id, history.outcome)).all()
        assert sorted(rows) == sorted(
            [(released.id, "released"), (expired.id, "expired")]
        )
    finally:
        storage.close()


# -- errors ------------------------------------------------------------------------


def test_an_unreachable_database_gives_one_error_naming_host_and_port() -> None:
    port = free_port()
    url = f"postgresql+psycopg://pharox:s3cret-pw@127.0.0.1:{port}/pharox"
    with pytest.raises(StorageError) as raised:
        open_storage(url)
    message = str(raised.value)
    assert f"cannot reach the database at 127.0.0.1:{port}" in message
    assert "pharox:***@127.0.0.1" in message
    assert "s3cret-pw" not in message


@pytest.mark.parametrize(
    "url",
    [
        "mysql://pharox:s3cret-pw@db/pharox",
        "postgresql+asyncpg://pharox:s3cret-pw@db/x",
    ],
)
def test_an_unsupported_storage_url_is_refused_with_its_password_masked(
    url: str,
) -> None:
    with pytest.raises(UnsupportedStorageURLError) as raised:
        open_storage(url)
    assert "pharox:***@db" in str(raised.value)
    assert "s3cret-pw" not in str(raised.value)


def test_a_driver_error_reaches_the_caller_as_a_storage_error(sql_url: str) -> None:
    storage = open_storage(sql_url)
    assert isinstance(storage, SqlStorage)
    try:
        pool = bootstrap_pool(storage, name="pool")
        bootstrap_proxy(storage, pool=pool, host="127.0.0.1", port=1)
        with sql_engine(sql_url) as engine, engine.begin() as conn:
            conn.execute(text("DROP TABLE pharox_lease"))
        with pytest.raises(StorageError, match="acquiring a proxy failed on") as raised:
            ProxyManager(storage).acquire_proxy("pool")
        assert isinstance(raised.value.__cause__, (sqlite3.Error, psycopg.Error))
    finally:
        storage.close()


def test_proxy_passwords_reach_no_log_and_no_error(
    sql_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    storage = SqlStorage(sql_url)
    manager = ProxyManager(storage)
    try:
        storage.create_schema()
        pool = bootstrap_pool(storage, name="pool")
        bootstrap_proxy(
            storage,
            pool=pool,
            host="127.0.0.1",
            port=3128,
            credentials={"user": "user", "password": "pw-SECRET-7"},
        )
        lease = manager.acquire_proxy("pool")
        assert lease is not None and lease.proxy is not None
        assert lease.proxy.url == "http://user:pw-SECRET-7@127.0.0.1:3128"
        manager.release_proxy(lease)
        with sql_engine(sql_url) as engine, engine.begin() as conn:
            conn.execute(text("DROP TABLE pharox_lease"))
        with pytest.raises(StorageError) as raised:
            manager.acquire_proxy("pool")
    finally:
        storage.close()
    assert "pw-SECRET-7" not in caplog.text
    assert "pw-SECRET-7" not in str(raised.value)
    assert "pw-SECRET-7" not in str(raised.value.__cause__)
