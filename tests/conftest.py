"""Shared fixtures: the storage contract suite runs over every adapter here."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from scrapy_pharox import InMemoryStorage, IStorage, ProxyManager

StorageFactory = Callable[[], IStorage]

STORAGE_KINDS: dict[str, StorageFactory] = {"memory": InMemoryStorage}


@pytest.fixture(params=sorted(STORAGE_KINDS))
def storage(request: pytest.FixtureRequest) -> Iterator[IStorage]:
    """A fresh, empty storage of each kind the contract suite covers."""
    store = STORAGE_KINDS[request.param]()
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def manager(storage: IStorage) -> ProxyManager:
    """A manager over the parametrized storage."""
    return ProxyManager(storage)


# Local servers and the crawl helper of the end-to-end Scrapy tests.
pytest_plugins = ["crawl_support"]
