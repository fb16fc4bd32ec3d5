"""Acquire+release throughput of the in-memory core, side by side with pharox 0.11.

    python benchmarks/bench_core.py [--cycles 20000]
    valgrind --tool=callgrind python benchmarks/bench_core.py --only-cycles --cycles N

Runs, in this one process:
1. the single-thread acquire -> release loop on a pool of 100 exclusive proxies,
   ours and (when ``pharox`` is installed) pharox's InMemoryStorage, and the ratio;
2. ours again on 10,000 proxies: the cost per cycle must not grow with the pool;
3. a contention run: 8 threads sharing 20 exclusive proxies for 3 s, checking that
   no proxy ever has two holders and that no thread saw an exception.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from typing import Any

from scrapy_pharox import InMemoryStorage, ProxyManager, bootstrap_pool, bootstrap_proxy


def our_manager(proxies: int) -> Any:
    storage = InMemoryStorage()
    pool = bootstrap_pool(storage, name="bench")
    for index in range(proxies):
        bootstrap_proxy(
            storage, pool=pool, host="127.0.0.1", port=1024 + index, max_concurrency=1
        )
    return ProxyManager(storage)


def pharox_manager(proxies: int) -> Any | None:
    try:
        import pharox
        from pharox.utils.bootstrap import bootstrap_pool as ph_pool
        from pharox.utils.bootstrap import bootstrap_proxy as ph_proxy
    except ImportError:
        return None
    storage = pharox.InMemoryStorage()
    pool = ph_pool(storage, name="bench")
    for index in range(proxies):
        ph_proxy(
            storage, pool=pool, host="127.0.0.1", port=1024 + index, max_concurrency=1
        )
    return pharox.ProxyManager(storage)


def cycles_per_second(manager: Any, cycles: int) -> float:
    """Run acquire -> release ``cycles`` times on one thread; cycles per second."""
    manager.release_proxy(manager.acquire_proxy("bench"))  # warm up
    started = time.perf_counter()
    for _ in range(cycles):
        lease = manager.acquire_proxy("bench")
        if lease is None:
            raise RuntimeError("a free pool gave no lease")
        manager.release_proxy(lease)
    return cycles / (time.perf_counter() - started)


def contention(manager: Any, threads: int, seconds: float) -> dict[str, Any]:
    """Threads loop acquire -> hold -> release; count leases, errors, overlaps."""
    holders: dict[Any, int] = {}
    guard = threading.Lock()
    totals = {"leases": 0, "empty": 0, "errors": 0, "overlaps": 0}
    deadline = time.monotonic() + seconds

    def work() -> None:
        while time.monotonic() < deadline:
            try:
                lease = manager.acquire_proxy("bench")
                if lease is None:
                    with guard:
                        totals["empty"] += 1
                    continue
                with guard:
                    holders[lease.proxy_id] = holders.get(lease.proxy_id, 0) + 1
                    if holders[lease.proxy_id] > 1:
                        totals["overlaps"] += 1
                    totals["leases"] += 1
                time.sleep(0.0001)
                with guard:
                    holders[lease.proxy_id] -= 1
                manager.release_proxy(lease)
            except Exception:
                with guard:
                    totals["errors"] += 1

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return {**totals, "leases_per_s": totals["leases"] / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20_000)
    parser.add_argument(
        "--only-cycles",
        action="store_true",
        help="only ours on 100 proxies, printing nothing: run it under callgrind "
        "at two --cycles and divide the difference of the totals",
    )
    args = parser.parse_args()
    cycles: int = args.cycles
    if args.only_cycles:
        cycles_per_second(our_manager(100), cycles)
        return

    def row(name: str, make: Callable[[int], Any], proxies: int, count: int) -> float:
        manager = make(proxies)
        rate = cycles_per_second(manager, count)
        print(
            f"{name:<28} {proxies:>6} proxies  {rate:>10,.0f} cycles/s  "
            f"{1e6 / rate:>8.1f} us/cycle"
        )
        return rate

    print(f"acquire+release, 1 thread, exclusive proxies, {cycles:,} cycles")
    ours_100 = row("scrapy-pharox memory", our_manager, 100, cycles)
    ours_10k = row("scrapy-pharox memory", our_manager, 10_000, cycles)
    theirs_100 = None
    if pharox_manager(1) is not None:
        theirs_100 = row("pharox 0.11 memory", pharox_manager, 100, cycles)
        row("pharox 0.11 memory", pharox_manager, 10_000, max(50, cycles // 100))
    else:
        print("pharox is not installed: pip install -e '.[bench]' to compare")
    print()
    if theirs_100:
        print(f"ours / pharox at 100 proxies:        {ours_100 / theirs_100:6.1f}x")
    print(f"our cost at 10,000 / at 100 proxies: {ours_100 / ours_10k:6.2f}x")
    print()
    result = contention(our_manager(20), threads=8, seconds=3.0)
    print("contention, 8 threads, 20 exclusive proxies, 3 s:")
    print(
        f"  leases/s {result['leases_per_s']:,.0f}  empty acquires "
        f"{result['empty']:,}  errors {result['errors']}  "
        f"over-leases {result['overlaps']}"
    )
    if result["errors"] or result["overlaps"]:
        raise SystemExit("contention run broke the lease invariant")


if __name__ == "__main__":
    main()
