"""What importing scrapy-pharox costs: SQLAlchemy only for those who use SQL."""

from __future__ import annotations

import subprocess
import sys

MEMORY_CRAWL_IMPORTS = """
import sys
import scrapy_pharox
from scrapy_pharox import PharoxProxyMiddleware, PharoxStatsExtension, open_storage
open_storage("memory://").close()
print(sorted(name for name in sys.modules if name.split(".")[0] == "sqlalchemy"))
"""


def test_a_memory_storage_crawl_setup_does_not_import_sqlalchemy() -> None:
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_CRAWL_IMPORTS],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "[]"


def test_sql_storage_is_still_exported_by_the_package_and_storage() -> None:
    import scrapy_pharox
    import scrapy_pharox.storage
    from scrapy_pharox.storage.sql import SqlStorage

    assert scrapy_pharox.SqlStorage is SqlStorage
    assert scrapy_pharox.storage.SqlStorage is SqlStorage
    assert "SqlStorage" in scrapy_pharox.__all__


CORE_IMPORTS = """
import sys
import scrapy_pharox.aio
import scrapy_pharox.storage
from scrapy_pharox import (
    AcquireEventPayload, CooldownPolicy, DomainCooldown, IStorage, InMemoryStorage,
    InvalidArgumentError, InvalidLeaseError, InvalidProxyURLError, Lease,
    LeaseOutcome, LeaseStatus, OutcomeReport, PharoxError, PharoxSettingError,
    PoolNotFoundError, PoolStatsSnapshot, Proxy, ProxyCredentials, ProxyFilters,
    ProxyManager, ProxyNotFoundError, ProxyPool, ProxyProtocol, ProxySession,
    ProxyStatus, ProxyUnavailableError, ReleaseEventPayload, SelectorStrategy,
    SessionBinding, StorageError, UnsupportedStorageURLError, acquire_proxy_async,
    acquire_proxy_with_retry_async, bootstrap_pool, bootstrap_proxy, open_storage,
    release_proxy_async, with_lease_async, with_retrying_lease_async,
)
open_storage("memory://").close()
print(sorted({name.split(".")[0] for name in sys.modules} & {"scrapy", "twisted"}))
"""


def test_the_core_imports_without_scrapy_or_twisted() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CORE_IMPORTS],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "[]"


def test_each_scrapy_name_resolves_on_first_use_to_its_object() -> None:
    import scrapy_pharox
    from scrapy_pharox import (
        addon,
        config,
        extension,
        health,
        middleware,
        session_middlewares,
    )

    lazy = {
        "Addon": addon.Addon,
        "CheckResult": health.CheckResult,
        "CheckSummary": health.CheckSummary,
        "HealthCheckConfig": config.HealthCheckConfig,
        "PharoxCheckSpider": health.PharoxCheckSpider,
        "PharoxConfig": config.PharoxConfig,
        "PharoxProxyMiddleware": middleware.PharoxProxyMiddleware,
        "PharoxSessionCookiesMiddleware": (
            session_middlewares.PharoxSessionCookiesMiddleware
        ),
        "PharoxSessionSpiderMiddleware": (
            session_middlewares.PharoxSessionSpiderMiddleware
        ),
        "PharoxStatsExtension": extension.PharoxStatsExtension,
        "run_health_check": health.run_health_check,
        "start_health_check": health.start_health_check,
    }
    for name, value in lazy.items():
        assert getattr(scrapy_pharox, name) is value, name
        assert name in scrapy_pharox.__all__
    assert config.PharoxSettingError is scrapy_pharox.PharoxSettingError
    assert scrapy_pharox.__all__ == sorted(scrapy_pharox.__all__)
    assert set(scrapy_pharox.__all__) <= set(dir(scrapy_pharox)) | set(lazy) | {
        "SqlStorage"
    }


def test_an_unknown_name_is_an_attribute_error() -> None:
    import pytest

    import scrapy_pharox

    with pytest.raises(AttributeError, match="Consumer"):
        scrapy_pharox.Consumer  # noqa: B018


def test_the_command_entry_points_load() -> None:
    from importlib.metadata import entry_points

    commands = entry_points(group="scrapy.commands")
    names = {entry.name for entry in commands if entry.value.startswith("scrapy_")}
    assert names >= {"pharox-check", "pharox-import", "pharox-pools"}
    for entry in commands:
        if entry.value.startswith("scrapy_pharox."):
            assert entry.load().__name__ == "Command"
