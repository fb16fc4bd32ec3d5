"""The leasing core on its own: a pool, three exclusive proxies, five workers.

python example_spider/manager_demo.py
"""

from __future__ import annotations

from scrapy_pharox import (
    InMemoryStorage,
    ProxyFilters,
    ProxyManager,
    ReleaseEventPayload,
    SelectorStrategy,
    bootstrap_pool,
    bootstrap_proxy,
)


def main() -> None:
    storage = InMemoryStorage()
    pool = bootstrap_pool(storage, name="demo", description="three local proxies")
    for port, country in ((8081, "DE"), (8082, "FR"), (8083, "DE")):
        bootstrap_proxy(
            storage,
            pool=pool,
            host="127.0.0.1",
            port=port,
            country=country,
            max_concurrency=1,
        )
    manager = ProxyManager(storage)

    def on_release(event: ReleaseEventPayload) -> None:
        stats = event.pool_stats
        free = stats.available_proxies if stats else "?"
        print(f"  released after {event.lease_duration_ms} ms, {free} free")

    manager.register_release_callback(on_release)

    leases = [
        manager.acquire_proxy(
            "demo", f"worker-{n}", selector=SelectorStrategy.ROUND_ROBIN
        )
        for n in range(5)
    ]
    for number, lease in enumerate(leases):
        where = lease.proxy.address if lease and lease.proxy else "nothing free"
        print(f"worker-{number}: {where}")
    for lease in leases:
        if lease is not None:
            manager.release_proxy(lease)

    with manager.with_lease("demo", filters=ProxyFilters(country="FR")) as lease:
        assert lease is not None and lease.proxy is not None
        print(f"a French proxy: {lease.proxy.address}")
    print(storage.get_pool_stats("demo"))


if __name__ == "__main__":
    main()
