"""Several processes leasing exclusive proxies from one SQL storage at once.

Each worker loops acquire -> hold ~1 ms -> release and writes down, on the
machine-wide monotonic clock, when each call started and returned. A holding
interval (acquire returned .. release called) lies inside the real lease, so two
that overlap on one proxy are an over-lease. A proxy counts as free during an
acquire that got None only if no lease of it, widened to (acquire called ..
release returned), touches that attempt.
"""

from __future__ import annotations

import json
import threading
import time
import traceback
from collections import defaultdict
from itertools import pairwise
from pathlib import Path
from typing import Any
from uuid import UUID

from conftest import process_context

from scrapy_pharox import ProxyManager, SqlStorage, bootstrap_pool, bootstrap_proxy
from scrapy_pharox.storage import open_storage

HOLD_SECONDS = 0.001


def lease_loop(
    url: str, worker: int, start_at: float, seconds: float, out: str
) -> None:
    """One worker process: lease, hold, release until the time is up; log it all."""
    attempts: list[list[Any]] = []
    errors: list[str] = []
    storage = SqlStorage(url)
    manager = ProxyManager(storage)
    try:
        time.sleep(max(0.0, start_at - time.time()))
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            called = time.monotonic()
            lease = manager.acquire_proxy(
                "pool", consumer_name=f"worker-{worker}", duration_seconds=30
            )
            acquired = time.monotonic()
            if lease is None:
                attempts.append([None, called, acquired, None, None])
                continue
            time.sleep(HOLD_SECONDS)
            releasing = time.monotonic()
            released = manager.release_proxy(lease)
            done = time.monotonic()
            if not released:
                errors.append(f"release of {lease.id} returned False")
            attempts.append([str(lease.proxy_id), called, acquired, releasing, done])
    except BaseException:
        errors.append(traceback.format_exc())
    finally:
        storage.close()
        Path(out).write_text(json.dumps({"attempts": attempts, "errors": errors}))


def run_workers(
    url: str, workers: int, proxies: int, seconds: float, tmp_path: Path
) -> tuple[list[list[Any]], list[str]]:
    """Fill the pool, run the workers together, return every attempt and error."""
    storage = open_storage(url)
    try:
        pool = bootstrap_pool(storage, name="pool")
        for index in range(proxies):
            bootstrap_proxy(
                storage,
                pool=pool,
                host="127.0.0.1",
                port=20000 + index,
                max_concurrency=1,
            )
    finally:
        storage.close()
    context = process_context()
    start_at = time.time() + 1.0  # time for every worker to start
    outputs = [tmp_path / f"worker-{index}.json" for index in range(workers)]
    processes = [
        context.Process(
            target=lease_loop, args=(url, index, start_at, seconds, str(out))
        )
        for index, out in enumerate(outputs)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    attempts: list[list[Any]] = []
    errors: list[str] = []
    for out in outputs:
        log = json.loads(out.read_text())
        attempts.extend(log["attempts"])
        errors.extend(log["errors"])
    return attempts, errors


def overlaps(attempts: list[list[Any]]) -> list[tuple[str, list[Any], list[Any]]]:
    """Pairs of holding intervals of one proxy that overlap."""
    by_proxy: dict[str, list[list[Any]]] = defaultdict(list)
    for attempt in attempts:
        if attempt[0] is not None:
            by_proxy[attempt[0]].append(attempt)
    found = []
    for proxy_id, leases in by_proxy.items():
        leases.sort(key=lambda attempt: attempt[2])
        for before, after in pairwise(leases):
            if after[2] < before[3]:
                found.append((proxy_id, before, after))
    return found


def empty_handed_while_free(
    attempts: list[list[Any]], proxy_ids: set[str]
) -> list[list[Any]]:
    """Acquires that got None although some proxy was free for the whole attempt."""
    busy: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for attempt in attempts:
        if attempt[0] is not None:
            busy[attempt[0]].append((attempt[1], attempt[4]))
    missed = []
    for attempt in attempts:
        if attempt[0] is not None:
            continue
        start, end = attempt[1], attempt[2]
        for proxy_id in proxy_ids:
            if not any(s < end and start < e for s, e in busy[proxy_id]):
                missed.append(attempt)
                break
    return missed


def all_proxy_ids(url: str) -> set[str]:
    storage = SqlStorage(url)
    try:
        return {str(proxy.id) for proxy in storage.list_proxies("pool")}
    finally:
        storage.close()


def test_eight_processes_on_twenty_exclusive_proxies_never_share_or_miss_one(
    sql_url: str, tmp_path: Path
) -> None:
    attempts, errors = run_workers(
        sql_url, workers=8, proxies=20, seconds=3.0, tmp_path=tmp_path
    )
    assert errors == []
    assert overlaps(attempts) == []
    # Fewer workers than proxies: a free proxy always exists, so every acquire
    # must succeed.
    assert [attempt for attempt in attempts if attempt[0] is None] == []
    assert len(attempts) > 100


def test_more_processes_than_proxies_get_none_only_when_every_proxy_was_taken(
    sql_url: str, tmp_path: Path
) -> None:
    attempts, errors = run_workers(
        sql_url, workers=8, proxies=4, seconds=2.0, tmp_path=tmp_path
    )
    assert errors == []
    assert overlaps(attempts) == []
    assert empty_handed_while_free(attempts, all_proxy_ids(sql_url)) == []
    assert len(attempts) > 100


def test_threads_sharing_one_storage_never_share_an_exclusive_proxy(
    sql_url: str,
) -> None:
    storage = open_storage(sql_url)
    manager = ProxyManager(storage)
    holders: dict[UUID, int] = defaultdict(int)
    guard = threading.Lock()
    problems: list[str] = []
    deadline = time.monotonic() + 1.0

    def work() -> None:
        while time.monotonic() < deadline:
            try:
                lease = manager.acquire_proxy("pool")
            except Exception as exc:
                problems.append(repr(exc))
                return
            if lease is None:
                problems.append("no lease while 4 of 8 proxies were free")
                continue
            with guard:
                holders[lease.proxy_id] += 1
                if holders[lease.proxy_id] > 1:
                    problems.append(f"{lease.proxy_id} leased twice")
            time.sleep(HOLD_SECONDS)
            with guard:
                holders[lease.proxy_id] -= 1
            manager.release_proxy(lease)

    try:
        pool = bootstrap_pool(storage, name="pool")
        for port in range(1, 9):
            bootstrap_proxy(
                storage, pool=pool, host="127.0.0.1", port=port, max_concurrency=1
            )
        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        storage.close()
    assert problems == []
