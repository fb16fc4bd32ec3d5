"""Leases of a process that died without releasing come back once they expire."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from conftest import process_context

from scrapy_pharox import (
    ProxyManager,
    SqlStorage,
    bootstrap_pool,
    bootstrap_proxy,
    open_storage,
)

LEASE_SECONDS = 2.0


def hold_leases_and_hang(url: str, count: int, out: str) -> None:
    """A worker that leases ``count`` proxies, says which, and never releases."""
    manager = ProxyManager(SqlStorage(url))
    leases = [
        manager.acquire_proxy("pool", "doomed", duration_seconds=LEASE_SECONDS)
        for _ in range(count)
    ]
    held = [str(lease.proxy_id) if lease else None for lease in leases]
    Path(out).write_text(json.dumps(held))
    time.sleep(3600)


def test_proxies_of_a_killed_worker_are_leased_again_after_expiry(
    sql_url: str, tmp_path: Path
) -> None:
    storage = open_storage(sql_url)
    manager = ProxyManager(storage)
    try:
        pool = bootstrap_pool(storage, name="pool")
        for port in (1, 2, 3):
            bootstrap_proxy(
                storage, pool=pool, host="127.0.0.1", port=port, max_concurrency=1
            )
        out = tmp_path / "held.json"
        worker = process_context().Process(
            target=hold_leases_and_hang, args=(sql_url, 3, str(out))
        )
        worker.start()
        deadline = time.monotonic() + 30
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(worker.pid, signal.SIGKILL)  # type: ignore[arg-type]
        worker.join(timeout=10)
        assert worker.exitcode == -signal.SIGKILL
        held = set(json.loads(out.read_text()))
        assert len(held) == 3 and None not in held
        assert manager.acquire_proxy("pool") is None

        time.sleep(LEASE_SECONDS + 0.2)
        leases = [manager.acquire_proxy("pool") for _ in range(3)]
        assert {str(lease.proxy_id) for lease in leases if lease} == held
    finally:
        storage.close()
