"""A PostgreSQL restart in the middle of a run, on a throwaway cluster.

The tests create their own cluster (``pg_cluster``) so restarting it disturbs
nobody.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from pg_cluster import Cluster, throwaway_cluster
from scrapy_pharox import (
    ProxyManager,
    SqlStorage,
    StorageError,
    bootstrap_pool,
    bootstrap_proxy,
)

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with throwaway_cluster() as server:
        yield server


@pytest.fixture
def manager(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[ProxyManager]:
    """A manager on the cluster, with a pool of its own named after the test."""
    storage = SqlStorage(cluster.url, retry_seconds=15)
    storage.create_schema()
    pool = bootstrap_pool(storage, name=request.node.name)
    bootstrap_proxy(storage, pool=pool, host="127.0.0.1", port=1, max_concurrency=1)
    try:
        yield ProxyManager(storage)
    finally:
        storage.close()


def test_the_first_acquire_after_a_restart_succeeds(
    cluster: Cluster, manager: ProxyManager, request: pytest.FixtureRequest
) -> None:
    pool_name = request.node.name
    manager.release_proxy(manager.acquire_proxy(pool_name))  # type: ignore[arg-type]
    cluster.restart()
    lease = manager.acquire_proxy(pool_name)
    assert lease is not None


def test_an_acquire_made_while_the_server_restarts_succeeds_once_it_is_back(
    cluster: Cluster, manager: ProxyManager, request: pytest.FixtureRequest
) -> None:
    pool_name = request.node.name
    manager.release_proxy(manager.acquire_proxy(pool_name))  # type: ignore[arg-type]
    cluster.stop()
    restart = threading.Timer(1.0, cluster.start)
    restart.start()
    started = time.monotonic()
    try:
        lease = manager.acquire_proxy(pool_name)
    finally:
        restart.join()
    assert lease is not None
    assert time.monotonic() - started >= 1.0


def test_an_acquire_while_the_server_stays_down_raises_a_storage_error_naming_it(
    cluster: Cluster, request: pytest.FixtureRequest
) -> None:
    storage = SqlStorage(cluster.url, retry_seconds=0.5)
    storage.create_schema()
    cluster.stop()
    try:
        with pytest.raises(
            StorageError, match=f"cannot reach the database at 127.0.0.1:{cluster.port}"
        ):
            ProxyManager(storage).acquire_proxy(request.node.name)
    finally:
        cluster.start()
        storage.close()
