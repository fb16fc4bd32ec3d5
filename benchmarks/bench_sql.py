"""SqlStorage on PostgreSQL, side by side with pharox 0.11's PostgresStorage.

    python benchmarks/bench_sql.py [--url URL] [--seconds 3] [--repeat 3]
                                   [--history 1000000]

Needs a PostgreSQL server (default: the tests' one, PHAROX_TEST_DATABASE_URL) and
``pip install -e '.[bench]'`` (pharox 0.11 imports its PostgreSQL adapter only
with greenlet). Everything runs in two fresh schemas of that database, one per
adapter, dropped at the end. In one run it measures:

1. round trips per acquire+release: for pharox, statements counted by a
   SQLAlchemy ``before_cursor_execute`` listener; for ours, which runs no
   statement through SQLAlchemy, Execute messages in libpq's trace of the
   storage's connections; round trips from that trace, for both;
2. acquire+release cycles per second in one process;
3. processes sharing 20 exclusive proxies: leases per second, acquires that came
   back empty, exceptions, from 1 to 2 to 8 processes;
4. the cost of a cycle once 1,000,000 released leases are in the history
   (inserted with one INSERT ... SELECT generate_series) against an empty one.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import uuid4

import psycopg
from psycopg.pq import Trace
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url

from scrapy_pharox import ProxyManager, SqlStorage, bootstrap_pool, bootstrap_proxy

DEFAULT_URL = os.environ.get(
    "PHAROX_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
PROXIES = 20
POOL = "bench"


# -- the two adapters, set up the same way --------------------------------------


def schema_url(url: str, schema: str) -> str:
    """``url`` with every connection's search_path set to ``schema``."""
    return (
        make_url(url)
        .update_query_dict({"options": f"-csearch_path={schema}"})
        .render_as_string(hide_password=False)
    )


def libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(False)


@contextmanager
def fresh_schema(url: str, prefix: str) -> Iterator[str]:
    schema = f"{prefix}_{uuid4().hex[:8]}"
    with psycopg.connect(libpq(url), autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    try:
        yield schema_url(url, schema)
    finally:
        with psycopg.connect(libpq(url), autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


def ours(url: str) -> tuple[Any, Engine | None]:
    return ProxyManager(SqlStorage(url)), None


def pharox_manager(url: str) -> tuple[Any, Engine]:
    import pharox
    from pharox.storage.postgres import PostgresStorage

    engine = create_engine(url)
    return pharox.ProxyManager(PostgresStorage(engine)), engine


def fill_ours(url: str) -> None:
    storage = SqlStorage(url)
    storage.create_schema()
    pool = bootstrap_pool(storage, name=POOL)
    for index in range(PROXIES):
        bootstrap_proxy(
            storage, pool=pool, host="127.0.0.1", port=20000 + index, max_concurrency=1
        )
    storage.close()


def fill_pharox(url: str) -> None:
    import pharox
    from pharox.storage.postgres import PostgresStorage
    from pharox.storage.postgres.tables import metadata

    engine = create_engine(url)
    metadata.create_all(engine)
    storage = PostgresStorage(engine)
    pool = pharox.ProxyPool(name=POOL)
    storage.save_pool(pool)
    for index in range(PROXIES):
        storage.save_proxy(
            pharox.Proxy(
                host="127.0.0.1",
                port=20000 + index,
                protocol=pharox.ProxyProtocol.HTTP,
                pool_id=pool.id,
                status=pharox.ProxyStatus.ACTIVE,
                max_concurrency=1,
            )
        )
    engine.dispose()


MAKERS: dict[str, Callable[[str], tuple[Any, Engine | None]]] = {
    "ours": ours,
    "pharox": pharox_manager,
}


# -- measurements -----------------------------------------------------------------


def cycle(manager: Any, consumer: str) -> bool:
    lease = manager.acquire_proxy(POOL, consumer_name=consumer)
    if lease is None:
        return False
    manager.release_proxy(lease)
    return True


def round_trips(manager: Any, engine: Engine, cycles: int = 200) -> dict[str, float]:
    """Per acquire+release: statements the listener sees, and the wire's count.

    The wire's count comes from libpq's protocol trace: every round trip ends
    with the server's ReadyForQuery, whether it answered a statement, a BEGIN,
    a COMMIT or a pool's ping.
    """
    for _ in range(20):
        cycle(manager, "counter")  # warm up: consumer registered, caches filled
    statements = 0
    traced: list[Any] = []

    def count_statement(*args: Any) -> None:
        nonlocal statements
        statements += 1

    with tempfile.TemporaryFile(mode="w+") as trace:

        def trace_wire(dbapi_connection: Any, record: Any, proxy: Any) -> None:
            if dbapi_connection not in traced:
                traced.append(dbapi_connection)
                dbapi_connection.pgconn.trace(trace.fileno())
                dbapi_connection.pgconn.set_trace_flags(Trace.SUPPRESS_TIMESTAMPS)

        event.listen(engine, "before_cursor_execute", count_statement)
        event.listen(engine, "checkout", trace_wire)
        try:
            for _ in range(cycles):
                cycle(manager, "counter")
        finally:
            event.remove(engine, "before_cursor_execute", count_statement)
            event.remove(engine, "checkout", trace_wire)
            for dbapi_connection in traced:
                dbapi_connection.pgconn.untrace()  # flushes the trace
        trace.seek(0)
        ready = sum(line.startswith("B") and "ReadyForQuery" in line for line in trace)
    return {"statements": statements / cycles, "wire": ready / cycles}


def lane_round_trips(manager: Any, cycles: int = 200) -> dict[str, float]:
    """``round_trips`` for SqlStorage, which has no engine: statements and
    round trips both read off libpq's trace of the storage's connections (a
    statement is an Execute message of ours, a round trip ends with the
    server's ReadyForQuery)."""
    opened: list[Any] = []
    manager.storage.connection_hooks.append(opened.append)
    for _ in range(20):
        cycle(manager, "counter")  # warm up: consumer registered, caches filled
    with tempfile.TemporaryFile(mode="w+") as trace:

        def follow(connection: Any) -> None:
            connection.pgconn.trace(trace.fileno())
            connection.pgconn.set_trace_flags(Trace.SUPPRESS_TIMESTAMPS)

        for connection in opened:
            follow(connection)
        manager.storage.connection_hooks.append(follow)
        try:
            for _ in range(cycles):
                cycle(manager, "counter")
        finally:
            for connection in opened:
                connection.pgconn.untrace()  # flushes the trace
        trace.seek(0)
        lines = trace.readlines()
    executes = sum(line.startswith("F") and "\tExecute" in line for line in lines)
    ready = sum(line.startswith("B") and "ReadyForQuery" in line for line in lines)
    return {"statements": executes / cycles, "wire": ready / cycles}


def cycles_per_second(manager: Any, seconds: float) -> float:
    for _ in range(20):
        cycle(manager, "solo")
    done = 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        if not cycle(manager, "solo"):
            raise RuntimeError("a free pool gave no lease")
        done += 1
    return done / (time.perf_counter() - started)


def best_rates(
    managers: dict[str, Any], seconds: float, repeat: int
) -> dict[str, float]:
    """Cycles per second of each manager: the best of ``repeat`` windows, taken
    in turns so a busy moment of the machine does not favour one of them."""
    best = dict.fromkeys(managers, 0.0)
    for _ in range(repeat):
        for name, manager in managers.items():
            best[name] = max(best[name], cycles_per_second(manager, seconds))
    return best


def worker(
    kind: str, url: str, index: int, start_at: float, seconds: float, out: str
) -> None:
    """One process of the shared-pool run: cycle until the time is up, count."""
    manager, engine = MAKERS[kind](url)
    totals = {"leases": 0, "empty": 0}
    errors = Counter[str]()
    consumer = f"worker-{index}"
    try:
        cycle(manager, consumer)  # warm up: consumer registered, connection open
    except Exception as exc:
        errors[type(exc).__name__] += 1
    time.sleep(max(0.0, start_at - time.time()))
    # One window for every worker: a late starter counts only what it did in it.
    while time.time() < start_at + seconds:
        try:
            totals["leases" if cycle(manager, consumer) else "empty"] += 1
        except Exception as exc:
            errors[type(exc).__name__] += 1
    if engine is None:
        manager.storage.close()
    else:
        engine.dispose()
    Path(out).write_text(json.dumps({**totals, "errors": dict(errors)}))


def run_workers(
    worker: Callable[..., None],
    args: tuple[Any, ...],
    processes: int,
    seconds: float,
    preload: list[str],
) -> list[dict[str, Any]]:
    """``processes`` of ``worker(*args, index, start_at, seconds, out)`` started
    together; what each wrote to its ``out`` (JSON)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(preload)
    with tempfile.TemporaryDirectory() as folder:
        outs = [str(Path(folder) / f"{index}.json") for index in range(processes)]
        start_at = time.time() + 3.0  # every worker started and warmed up
        workers = [
            context.Process(target=worker, args=(*args, index, start_at, seconds, out))
            for index, out in enumerate(outs)
        ]
        for process in workers:
            process.start()
        for process in workers:
            process.join()
        return [json.loads(Path(out).read_text()) for out in outs]


def shared_pool(kind: str, url: str, processes: int, seconds: float) -> dict[str, Any]:
    preload = ["psycopg", "sqlalchemy", "scrapy_pharox", "pharox.storage.postgres"]
    logs = run_workers(worker, (kind, url), processes, seconds, preload)
    errors = Counter[str]()
    for log in logs:
        errors.update(log["errors"])
    return {
        "leases_per_second": sum(log["leases"] for log in logs) / seconds,
        "empty": sum(log["empty"] for log in logs),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
    }


def clear_history(url: str, kind: str) -> None:
    """Forget every released lease, so the history is empty."""
    statement = {
        "ours": "TRUNCATE pharox_lease_history",
        "pharox": "DELETE FROM lease WHERE status = 'released'",
    }[kind]
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(statement))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
    engine.dispose()


def add_released_history(url: str, kind: str, rows: int) -> None:
    """``rows`` released leases of the pool's proxies, in one INSERT ... SELECT."""
    if kind == "ours":
        statement = f"""
            INSERT INTO pharox_lease_history
                (id, proxy_id, pool_id, consumer_id, acquired_at, expires_at,
                 released_at, outcome)
            SELECT gen_random_uuid(), p.id, p.pool_id, gen_random_uuid(),
                   now() - interval '1 hour', now(), now() - interval '30 minutes',
                   'released'
            FROM generate_series(1, {rows}) AS n
            JOIN pharox_proxy AS p ON p.port = 20000 + n % {PROXIES}
        """
    else:
        statement = f"""
            INSERT INTO lease
                (id, proxy_id, pool_id, consumer_id, pool_name, status,
                 acquired_at, expires_at, released_at)
            SELECT gen_random_uuid(), p.id, p.pool_id,
                   (SELECT id FROM consumer LIMIT 1), '{POOL}', 'released',
                   now() - interval '1 hour', now(), now() - interval '30 minutes'
            FROM generate_series(1, {rows}) AS n
            JOIN proxy AS p ON p.port = 20000 + n % {PROXIES}
        """
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(statement))
        conn.execute(text("ANALYZE"))
    engine.dispose()


# -- the run ---------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--history", type=int, default=1_000_000)
    args = parser.parse_args()
    rows: list[tuple[str, str, str, str]] = []

    def report(metric: str, mine: float | str, theirs: float | str, ratio: str) -> None:
        def shown(value: float | str) -> str:
            return value if isinstance(value, str) else f"{value:,.1f}"

        rows.append((metric, shown(mine), shown(theirs), ratio))
        print(
            f"  {metric}: ours {shown(mine)}, pharox {shown(theirs)}", file=sys.stderr
        )

    with psycopg.connect(libpq(args.url)) as conn:
        version = conn.execute("SHOW server_version").fetchone()
    setting = (
        f"PostgreSQL {version[0] if version else '?'} at "
        f"{make_url(args.url).render_as_string(hide_password=True)}; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start; "
        f"{PROXIES} proxies with max_concurrency=1; {args.seconds:g} s per figure, "
        f"single-process figures the best of {args.repeat}"
    )
    with (
        fresh_schema(args.url, "bench_ours") as our_url,
        fresh_schema(args.url, "bench_pharox") as their_url,
    ):
        fill_ours(our_url)
        fill_pharox(their_url)
        urls = {"ours": our_url, "pharox": their_url}

        print("round trips ...", file=sys.stderr)
        counted = {
            "ours": lane_round_trips(ours(our_url)[0]),
            "pharox": round_trips(*pharox_manager(their_url)),
        }
        for key, label in (
            ("statements", "statements per acquire+release"),
            ("wire", "round trips per acquire+release (wire)"),
        ):
            mine, theirs = counted["ours"][key], counted["pharox"][key]
            report(label, mine, theirs, f"{theirs / mine:.1f}x fewer")

        print("single process ...", file=sys.stderr)
        managers = {kind: MAKERS[kind](url)[0] for kind, url in urls.items()}
        single = best_rates(managers, args.seconds, args.repeat)
        mine, theirs = single["ours"], single["pharox"]
        report("cycles/s, 1 process", mine, theirs, f"{mine / theirs:.1f}x")

        for processes in (1, 2, 8):
            print(f"{processes} processes ...", file=sys.stderr)
            runs = {
                kind: shared_pool(kind, url, processes, args.seconds)
                for kind, url in urls.items()
            }
            mine, theirs = runs["ours"], runs["pharox"]
            label = f"{processes} processes on {PROXIES} exclusive proxies"
            report(
                f"{label}: leases/s",
                mine["leases_per_second"],
                theirs["leases_per_second"],
                f"{mine['leases_per_second'] / theirs['leases_per_second']:.1f}x",
            )
            report(
                f"{label}: errors / empty acquires",
                f"{mine['errors']} / {mine['empty']}",
                f"{theirs['errors']} / {theirs['empty']}",
                ", ".join(f"{k} {v}" for k, v in theirs["error_kinds"].items()),
            )

        print(f"{args.history:,} released leases in history ...", file=sys.stderr)
        for kind, url in urls.items():
            clear_history(url, kind)
        managers = {kind: MAKERS[kind](url)[0] for kind, url in urls.items()}
        before = {
            kind: 1e6 / rate
            for kind, rate in best_rates(managers, args.seconds, args.repeat).items()
        }
        for kind, url in urls.items():
            add_released_history(url, kind, args.history)
        after = {
            kind: 1e6 / rate
            for kind, rate in best_rates(managers, args.seconds, args.repeat).items()
        }
        report("µs per cycle, empty history", before["ours"], before["pharox"], "")
        report(
            f"µs per cycle, {args.history:,} released in history",
            after["ours"],
            after["pharox"],
            f"ours {after['ours'] / before['ours']:.2f}x, "
            f"pharox {after['pharox'] / before['pharox']:.1f}x of empty",
        )

    print()
    print(setting)
    width = max(len(row[0]) for row in rows)
    header = ("", "scrapy-pharox", "pharox 0.11", "")
    print(f"{header[0]:<{width}}  {header[1]:>14}  {header[2]:>14}  {header[3]}")
    for metric, mine_text, theirs_text, ratio in rows:
        print(f"{metric:<{width}}  {mine_text:>14}  {theirs_text:>14}  {ratio}")


if __name__ == "__main__":
    main()
