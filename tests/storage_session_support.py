"""What the session tests of the storage contract share: a pool of proxies
with passwords, a bind that must succeed, the leases out, a response's cookies."""

from __future__ import annotations

from typing import Any

from scrapy_pharox import (
    IStorage,
    Proxy,
    ProxyCredentials,
    ProxySession,
    SessionBinding,
    bootstrap_pool,
    bootstrap_proxy,
)

IDLE, MAX_AGE = 60.0, 3000.0
PROXY_PASSWORD = "pr0xy-pw"
COOKIES = [{"name": "sid", "value": "c00kie-s3cret", "domain": "shop.example"}]


def add_proxies(
    storage: IStorage, count: int, pool_name: str = "pool", **fields: Any
) -> list[Proxy]:
    """``count`` proxies on ports 10000.., with a password, exclusive unless
    ``fields`` say otherwise."""
    pool = bootstrap_pool(storage, name=pool_name)
    fields.setdefault("max_concurrency", 1)
    return [
        bootstrap_proxy(
            storage,
            pool=pool,
            host="127.0.0.1",
            port=10000 + index,
            credentials=ProxyCredentials(user="user", password=PROXY_PASSWORD),
            **fields,
        )
        for index in range(count)
    ]


def bind(storage: IStorage, key: str = "login", **options: Any) -> SessionBinding:
    binding = storage.bind_session(
        "pool", key, "worker", options.pop("idle", IDLE), MAX_AGE, **options
    )
    assert binding is not None
    return binding


def leases_out(storage: IStorage, pool_name: str = "pool") -> int:
    stats = storage.get_pool_stats(pool_name)
    assert stats is not None
    return stats.total_leases


def used_once(storage: IStorage, binding: SessionBinding) -> ProxySession:
    """The binding's session after a response that set ``COOKIES``."""
    renewed = storage.renew_session(binding.session, binding.lease, IDLE, COOKIES)
    assert renewed is not None
    return renewed
