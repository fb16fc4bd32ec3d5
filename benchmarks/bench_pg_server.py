"""The PostgreSQL server's work per lease, in instructions, which hold still.

    python benchmarks/bench_pg_server.py [--rounds 50,150] [--batch 14]

Needs valgrind and PostgreSQL's server programs (``/usr/lib/postgresql/*/bin``);
as root, the ``postgres`` OS user. It makes a throwaway cluster in a temporary
directory on a free port of 127.0.0.1 (never the shared server), runs its
postmaster under callgrind (which follows every backend it forks), and removes
it all at the end.

Each measurement opens a storage on that cluster (5 proxies allowing 64 leases
each, as bench_crawl.py's pools), then runs rounds of ``--batch`` acquires at
once through ``acquire_async`` (they share round trips, as a crawl's do) and
then their releases, each with a success report: a crawl's page. It runs
twice, ``--rounds`` small and large; callgrind writes a backend's count when it
exits, and the difference of the two counts of the storage's own connection,
over the difference in leases, is the server's **instructions per lease**
(acquire and release), start-up and the first runs left out.

The CPU time of the server per page (bench_crawl.py --marginal) moves by
+-30% on a shared 2-core machine: caches go cold while the crawl and the web
servers run, and it depends on how many statements share a round. The count
does not move (two runs agree within 0.1%), so it tells one statement's cost
from another's. Instructions are not time: read them as ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
from bench_sql import libpq, schema_url

from scrapy_pharox import SqlStorage, bootstrap_pool, bootstrap_proxy
from scrapy_pharox.models import (
    CooldownPolicy,
    Lease,
    LeaseOutcome,
    OutcomeReport,
    SelectorStrategy,
)

PROXIES, LIMIT, POOL, CONSUMER = 5, 64, "bench-pg-server", "bench"
#: Runs before the measured ones: plans cached, the pool's pages warm.
WARM_ROUNDS = 20


@contextlib.contextmanager
def counted_cluster() -> Iterator[tuple[str, Path]]:
    """A throwaway cluster's URL, its postmaster under callgrind, and the
    directory where each backend's count lands (``cg.<pid>``)."""
    bin_dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not bin_dirs or shutil.which("valgrind") is None:
        sys.exit("needs valgrind and /usr/lib/postgresql/*/bin (initdb, postgres)")
    bin_dir = Path(bin_dirs[-1])
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="pharox-bench-pg-"))
    if os.geteuid() == 0:
        pwd.getpwnam("postgres")  # KeyError: no postgres OS user to run it as
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, user="postgres")
    counts = root / "counts"
    counts.mkdir()
    if as_user:
        shutil.chown(counts, user="postgres")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = root / "data"
    initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres"]
    subprocess.run(
        [*as_user, *initdb, "-A", "trust", "--no-sync"], check=True, capture_output=True
    )
    log = (root / "server.log").open("w")
    valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={counts}/cg.%p"]
    server = [str(bin_dir / "postgres"), "-D", str(data), "-p", str(port)]
    options = ["-k", str(root), "-c", "listen_addresses=127.0.0.1"]
    postmaster = subprocess.Popen(
        [*as_user, *valgrind, *server, *options, "-c", "autovacuum=off"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    try:
        deadline = time.monotonic() + 180  # a server under valgrind starts slowly
        while True:
            try:
                psycopg.connect(libpq(url)).close()
                break
            except psycopg.OperationalError as exc:
                if postmaster.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"no cluster: see {log.name}") from exc
                time.sleep(1)
        yield url, counts
    finally:
        subprocess.run(
            [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "stop", "-m", "fast"],
            capture_output=True,
        )
        with contextlib.suppress(subprocess.TimeoutExpired):
            postmaster.wait(timeout=60)
        if postmaster.poll() is None:
            postmaster.kill()
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def backend_count(counts: Path, pid: int) -> int:
    """The instructions callgrind counted in backend ``pid``, once it exited."""
    path = counts / f"cg.{pid}"
    for _ in range(600):
        if path.exists() and path.stat().st_size:
            with contextlib.suppress(OSError):
                for line in path.read_text().splitlines():
                    if line.startswith(("summary:", "totals:")):
                        return int(line.split()[1])
        time.sleep(0.1)
    raise RuntimeError(f"no count from backend {pid} in {path}")


def leases(
    url: str, counts: Path, selector: SelectorStrategy, rounds: int, batch: int
) -> int:
    """The server instructions of one storage connection that ran ``rounds``
    rounds (after the warm ones)."""
    schema = f"bench_{selector.value}_{rounds}"
    with psycopg.connect(libpq(url), autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    storage = SqlStorage(schema_url(url, schema))
    storage.create_schema()
    pool = bootstrap_pool(storage, name=POOL)
    for index in range(PROXIES):
        bootstrap_proxy(
            storage,
            pool=pool,
            host="127.0.0.1",
            port=20000 + index,
            max_concurrency=LIMIT,
        )
    storage.ensure_consumer(CONSUMER)
    backends: set[int] = set()
    storage.connection_hooks.append(lambda conn: backends.add(conn.info.backend_pid))
    report = OutcomeReport(
        outcome=LeaseOutcome.SUCCESS, latency_ms=5.0, policy=CooldownPolicy()
    )

    async def page_round() -> None:
        got = await asyncio.gather(
            *(
                storage.acquire_async(POOL, CONSUMER, 300.0, None, selector)
                for _ in range(batch)
            )
        )
        leased = [lease for lease in got if isinstance(lease, Lease)]
        assert len(leased) == batch, "an acquire came back empty"
        released = await asyncio.gather(
            *(storage.release_lease_async(lease, report) for lease in leased)
        )
        assert all(released), "a release found no active lease"

    async def run() -> None:
        for _ in range(WARM_ROUNDS + rounds):
            await page_round()

    try:
        asyncio.run(run())
    finally:
        storage.close()
    # The rounds' connection: the one opened on the loop (the set-up ran on
    # another, before the hook was in).
    return sum(backend_count(counts, pid) for pid in backends)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", default="50,150", help="SMALL,LARGE")
    parser.add_argument("--batch", type=int, default=14, help="acquires per round")
    args = parser.parse_args()
    small, large = (int(part) for part in args.rounds.split(","))
    with counted_cluster() as (url, counts):
        print(
            f"a throwaway cluster under callgrind: rounds of {args.batch} leases, "
            f"{small} and {large} rounds"
        )
        for selector in (
            SelectorStrategy.ROUND_ROBIN,
            SelectorStrategy.FIRST_AVAILABLE,
        ):
            few = leases(url, counts, selector, small, args.batch)
            many = leases(url, counts, selector, large, args.batch)
            per_lease = (many - few) / ((large - small) * args.batch)
            print(
                f"{selector.value:16} {per_lease:12,.0f} server instructions per lease"
            )


if __name__ == "__main__":
    main()
