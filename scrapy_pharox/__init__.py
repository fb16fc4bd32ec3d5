"""scrapy-pharox: a leased proxy per Scrapy request, from a pool shared by a fleet."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .aio import (
    acquire_proxy_async,
    acquire_proxy_with_retry_async,
    release_proxy_async,
    with_lease_async,
    with_retrying_lease_async,
)
from .backoff import Backoff
from .bootstrap import bootstrap_pool, bootstrap_proxy
from .exceptions import (
    InvalidArgumentError,
    InvalidLeaseError,
    InvalidProxyURLError,
    PharoxError,
    PharoxSettingError,
    PoolNotFoundError,
    ProxyNotFoundError,
    ProxyUnavailableError,
    StorageError,
    UnsupportedStorageURLError,
)
from .manager import ProxyManager
from .models import (
    AcquireEventPayload,
    CooldownPolicy,
    DomainCooldown,
    Lease,
    LeaseOutcome,
    LeaseStatus,
    OutcomeReport,
    Paced,
    PoolStatsSnapshot,
    Proxy,
    ProxyCredentials,
    ProxyFilters,
    ProxyPool,
    ProxyProtocol,
    ProxySession,
    ProxyStatus,
    ReleaseEventPayload,
    SelectorStrategy,
    SessionBinding,
)
from .storage import InMemoryStorage, IStorage, open_storage

if TYPE_CHECKING:
    from .addon import Addon
    from .config import HealthCheckConfig, PharoxConfig
    from .extension import PharoxStatsExtension
    from .health import (
        CheckResult,
        CheckSummary,
        PharoxCheckSpider,
        run_health_check,
        start_health_check,
    )
    from .middleware import PharoxProxyMiddleware
    from .session_middlewares import (
        PharoxSessionCookiesMiddleware,
        PharoxSessionSpiderMiddleware,
    )
    from .storage.sql import SqlStorage

# Names whose modules import Scrapy, Twisted or SQLAlchemy load on first use, so
# the core (manager, storage, models) imports alone.
_LAZY = {
    "Addon": "addon",
    "CheckResult": "health",
    "CheckSummary": "health",
    "HealthCheckConfig": "config",
    "PharoxCheckSpider": "health",
    "PharoxConfig": "config",
    "PharoxProxyMiddleware": "middleware",
    "PharoxSessionCookiesMiddleware": "session_middlewares",
    "PharoxSessionSpiderMiddleware": "session_middlewares",
    "PharoxStatsExtension": "extension",
    "SqlStorage": "storage.sql",
    "run_health_check": "health",
    "start_health_check": "health",
}

__all__ = [
    "AcquireEventPayload",
    "Addon",
    "Backoff",
    "CheckResult",
    "CheckSummary",
    "CooldownPolicy",
    "DomainCooldown",
    "HealthCheckConfig",
    "IStorage",
    "InMemoryStorage",
    "InvalidArgumentError",
    "InvalidLeaseError",
    "InvalidProxyURLError",
    "Lease",
    "LeaseOutcome",
    "LeaseStatus",
    "OutcomeReport",
    "Paced",
    "PharoxCheckSpider",
    "PharoxConfig",
    "PharoxError",
    "PharoxProxyMiddleware",
    "PharoxSessionCookiesMiddleware",
    "PharoxSessionSpiderMiddleware",
    "PharoxSettingError",
    "PharoxStatsExtension",
    "PoolNotFoundError",
    "PoolStatsSnapshot",
    "Proxy",
    "ProxyCredentials",
    "ProxyFilters",
    "ProxyManager",
    "ProxyNotFoundError",
    "ProxyPool",
    "ProxyProtocol",
    "ProxySession",
    "ProxyStatus",
    "ProxyUnavailableError",
    "ReleaseEventPayload",
    "SelectorStrategy",
    "SessionBinding",
    "SqlStorage",
    "StorageError",
    "UnsupportedStorageURLError",
    "acquire_proxy_async",
    "acquire_proxy_with_retry_async",
    "bootstrap_pool",
    "bootstrap_proxy",
    "open_storage",
    "release_proxy_async",
    "run_health_check",
    "start_health_check",
    "with_lease_async",
    "with_retrying_lease_async",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
