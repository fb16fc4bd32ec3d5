"""A fleet on PostgreSQL: our adapter beside a raw psycopg loop of its statements.

    python benchmarks/bench_fleet.py [--url URL] [--processes 8] [--seconds 5]
                                     [--repeat 3]

``--processes`` processes share 20 exclusive proxies (max_concurrency=1) and
loop acquire -> release as fast as they can, for ``--seconds``:

  ours  ``ProxyManager(SqlStorage(url))``: acquire_proxy, release_proxy
  raw   one autocommit psycopg connection per process executing the two
        statements our adapter runs (``storage/statements/
        acquire_first_available.sql`` and ``release.sql``, as the code compiles
        them) with bound parameters and ``prepare=True``, reading the rows as
        tuples: the floor a PostgreSQL adapter of these statements can reach

The two take turns, ``--repeat`` times, who goes first changing every time.
Printed: leases per second of each (the median of the runs), their ratio (and
the ratio within each turn), acquires that came back empty, errors (exceptions,
releases of a lease that was not active) and overlaps: two leases of one
exclusive proxy held at once, found from every lease's times on the machine's
monotonic clock as tests/test_sql_concurrency.py does. Needs PostgreSQL and
``.[bench]``; works in a fresh schema, dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import traceback
from collections import defaultdict
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any
from uuid import uuid4

import psycopg
from bench_sql import (
    DEFAULT_URL,
    POOL,
    PROXIES,
    fill_ours,
    fresh_schema,
    libpq,
    run_workers,
)

from scrapy_pharox import ProxyManager, SqlStorage
from scrapy_pharox.models import SelectorStrategy
from scrapy_pharox.storage import sql_leasing, sql_release
from scrapy_pharox.storage.sql_clauses import NO_DOMAIN

LEASE_SECONDS = 300.0  # ProxyManager.acquire_proxy's default

#: One lease: [proxy id, acquire called, acquire returned, release called,
#: release returned] (monotonic seconds), or [None, called, returned, None, None]
#: for an acquire that came back empty.
Attempt = list[Any]
#: One cycle: the attempt, or a string saying what went wrong.
Cycle = Callable[[], "Attempt | str"]


def ours(url: str, consumer: str) -> tuple[Cycle, Callable[[], None]]:
    """A cycle through our adapter, and how to close it."""
    storage = SqlStorage(url)
    manager = ProxyManager(storage)

    def cycle() -> Attempt | str:
        called = time.monotonic()
        lease = manager.acquire_proxy(POOL, consumer_name=consumer)
        acquired = time.monotonic()
        if lease is None:
            return [None, called, acquired, None, None]
        releasing = time.monotonic()
        released = manager.release_proxy(lease)
        done = time.monotonic()
        if not released:
            return f"release of {lease.id} found no active lease"
        return [str(lease.proxy_id), called, acquired, releasing, done]

    return cycle, storage.close


def raw(url: str, consumer: str) -> tuple[Cycle, Callable[[], None]]:
    """The same two statements through one psycopg connection, prepared."""
    storage = SqlStorage(url)
    consumer_id = storage.ensure_consumer(consumer)  # as ours registers it
    storage.close()
    acquire = sql_leasing.pg_acquire(SelectorStrategy.FIRST_AVAILABLE, None, NO_DOMAIN)
    release = sql_release.pg_release()
    conn = psycopg.connect(libpq(url), autocommit=True)

    def cycle() -> Attempt | str:
        called = time.monotonic()
        lease_id = uuid4()
        params = acquire.parameters(
            {
                "pool_name": POOL,
                "lease_id": lease_id,
                "consumer_id": consumer_id,
                "seconds": LEASE_SECONDS,
                "target_domain": None,
            }
        )
        row = conn.execute(acquire.sql, params, prepare=True).fetchone()
        acquired = time.monotonic()
        if row is None or row[0] is None:
            return [None, called, acquired, None, None]
        releasing = time.monotonic()
        params = release.parameters({"lease_id": lease_id, "pool_name": POOL})
        released = conn.execute(release.sql, params, prepare=True).fetchone()
        done = time.monotonic()
        if not released or not released[0]:
            return f"release of {lease_id} found no active lease"
        return [str(row[0]), called, acquired, releasing, done]

    return cycle, conn.close


KINDS = {"ours": ours, "raw": raw}


def worker(
    kind: str, url: str, index: int, start_at: float, seconds: float, out: str
) -> None:
    """One process: cycle until the time is up; write every attempt and error."""
    attempts: list[Attempt] = []
    errors: list[str] = []
    cycle, close = KINDS[kind](url, f"worker-{index}")
    try:
        cycle()  # warm up: consumer registered, connection open
        time.sleep(max(0.0, start_at - time.time()))
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                outcome = cycle()
            except Exception as exc:
                outcome = f"{type(exc).__name__}: {exc}"
            if isinstance(outcome, str):
                errors.append(outcome)
            else:
                attempts.append(outcome)
    except BaseException:
        errors.append(traceback.format_exc())
    finally:
        close()
        Path(out).write_text(json.dumps({"attempts": attempts, "errors": errors}))


def overlaps(attempts: list[Attempt]) -> list[tuple[str, Attempt, Attempt]]:
    """Pairs of holding intervals of one proxy that overlap (acquire returned ..
    release called lies inside the real lease): tests/test_sql_concurrency.py's
    check."""
    by_proxy: dict[str, list[Attempt]] = defaultdict(list)
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


def fleet(kind: str, url: str, processes: int, seconds: float) -> dict[str, Any]:
    """``processes`` workers of ``kind`` at once: leases/s, empty, errors, overlaps."""
    preload = ["psycopg", "sqlalchemy", "scrapy_pharox"]
    logs = run_workers(worker, (kind, url), processes, seconds, preload)
    attempts = [attempt for log in logs for attempt in log["attempts"]]
    errors = [error for log in logs for error in log["errors"]]
    leases = sum(attempt[0] is not None for attempt in attempts)
    return {
        "leases_per_second": leases / seconds,
        "empty": len(attempts) - leases,
        "errors": errors,
        "overlaps": len(overlaps(attempts)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    with fresh_schema(args.url, "bench_fleet") as url:
        fill_ours(url)
        for turn in range(args.repeat):
            order = list(KINDS)[:: 1 if turn % 2 == 0 else -1]
            for kind in order:
                runs[kind].append(fleet(kind, url, args.processes, args.seconds))
            rates = {kind: runs[kind][-1]["leases_per_second"] for kind in KINDS}
            print(
                f"turn {turn + 1}: ours {rates['ours']:,.0f} leases/s, raw "
                f"{rates['raw']:,.0f} ({rates['ours'] / rates['raw']:.2f})",
                flush=True,
            )
    print()
    print(
        f"{args.processes} processes on {PROXIES} exclusive proxies, "
        f"{args.seconds:g} s per run, {args.repeat} turns"
    )
    print("| loop | leases/s | empty acquires | errors | overlaps |")
    print("|---|---|---|---|---|")
    labels = {"ours": "scrapy-pharox (SqlStorage)", "raw": "raw psycopg, prepared"}
    median = {}
    for kind, label in labels.items():
        found = runs[kind]
        median[kind] = statistics.median(r["leases_per_second"] for r in found)
        print(
            f"| {label} | {median[kind]:,.0f} | {sum(r['empty'] for r in found)} | "
            f"{sum(len(r['errors']) for r in found)} | "
            f"{sum(r['overlaps'] for r in found)} |"
        )
    turns = [
        mine["leases_per_second"] / theirs["leases_per_second"]
        for mine, theirs in zip(runs["ours"], runs["raw"], strict=True)
    ]
    print(
        f"ours / raw: {median['ours'] / median['raw']:.2f} (medians); per turn "
        + ", ".join(f"{ratio:.2f}" for ratio in turns)
    )
    for kind in KINDS:
        for error in dict.fromkeys(e for r in runs[kind] for e in r["errors"]):
            print(f"{kind} error: {error.strip().splitlines()[-1]}")


if __name__ == "__main__":
    main()
