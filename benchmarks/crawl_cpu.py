"""CPU accounting: running one crawl and what it, the servers and the machine used."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crawl_child import (
    CRAWL_TIMEOUT,
    PHAROX_VARIANTS,
    RESULT_PREFIX,
)
from crawl_servers import Servers

BENCH_SCRIPT = str(Path(__file__).with_name("bench_crawl.py"))
#: How much longer a crawl may take under callgrind.
VALGRIND_SLOWDOWN = 100


@dataclass
class Crawl:
    """One crawl's figures, as the child printed them, and what ran beside it."""

    round_no: int
    figures: dict[str, Any]
    server_cpu_seconds: float
    #: CPU seconds the PostgreSQL server used meanwhile (whoever asked)
    postgres_seconds: float
    #: CPU cores other processes kept busy meanwhile (PostgreSQL included, except
    #: for pharox-pg, which keeps it busy itself)
    others: float
    disturbed: bool = False
    #: CPU seconds of the whole child process, start-up and imports included
    process_seconds: float = 0.0
    #: instructions the whole child process ran (--instructions), else None
    instructions: int | None = None

    @property
    def pages(self) -> int:
        return int(self.figures["responses"])

    @property
    def rate(self) -> float:
        seconds = self.figures["seconds"]
        return self.pages / seconds if seconds else 0.0

    @property
    def cpu_per_page(self) -> float:
        """Microseconds of the crawl process's CPU time per page."""
        return self.figures["cpu_seconds"] / max(1, self.pages) * 1e6

    @property
    def layer_per_page(self) -> float:
        """Microseconds of CPU per page in the proxy layer: its middleware methods
        on the reactor thread, plus every other thread (pharox's storage threads).
        """
        layer = self.figures["layer_seconds"] + self.figures["thread_seconds"]
        return layer / max(1, self.pages) * 1e6

    @property
    def cpu_share(self) -> float:
        seconds = self.figures["seconds"]
        return self.figures["cpu_seconds"] / seconds if seconds else 0.0


def machine_busy_seconds() -> float:
    """CPU seconds all processes of the machine used since boot (Linux), else 0."""
    try:
        with open("/proc/stat") as stat:
            ticks = [int(value) for value in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def postgres_seconds() -> float:
    """CPU seconds of the machine's PostgreSQL processes (Linux): the live ones,
    plus the exited backends their postmaster reaped. 0 when there is none."""
    found: dict[int, tuple[int, int, int]] = {}  # pid: (ppid, own, reaped) ticks
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            name, _, rest = stat.partition(" (")[2].rpartition(") ")
            if name == "postgres":
                fields = [int(value) for value in rest.split()[1:15]]
                found[int(entry.name)] = (
                    fields[0],
                    fields[10] + fields[11],
                    fields[12] + fields[13],
                )
    ticks = sum(
        own + (reaped if ppid not in found else 0)
        for ppid, own, reaped in found.values()
    )
    return ticks / os.sysconf("SC_CLK_TCK")


def own_seconds() -> float:
    """CPU seconds of this process and of its children waited for so far."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def children_seconds() -> float:
    """CPU seconds of this process's children waited for so far."""
    times = os.times()
    return times.children_user + times.children_system


def measure(
    name: str, servers: Servers, args: argparse.Namespace, crawl_cpus: set[int] | None
) -> Crawl | str:
    """Run one crawl in a fresh child process: its figures, or why it failed."""
    pool = f"bench-crawl-{os.getpid()}-{time.time_ns()}"  # a pool per crawl
    timeout = CRAWL_TIMEOUT * (VALGRIND_SLOWDOWN if args.instructions else 1)
    command = [
        sys.executable, BENCH_SCRIPT, "--child", name, "--start-url", servers.site_url,
        "--database-url", args.database_url, "--pool", pool,
        "--parent-pid", str(os.getpid()),
        "--concurrency", str(args.concurrency),
        "--proxy-max-concurrency", str(args.proxy_max_concurrency),
        *[arg for url in servers.proxy_urls for arg in ("--proxy", url)],
    ]  # fmt: skip
    if crawl_cpus:
        command += ["--cpus", ",".join(map(str, sorted(crawl_cpus)))]
    if args.marginal:
        # Its wrappers and clock reads cost a coroutine method more than a plain
        # one: they would weigh on the layers that the marginal mode compares.
        command.append("--no-layer-clock")
    if args.profile_dir:
        args.profile_dir.mkdir(parents=True, exist_ok=True)
        profile = args.profile_dir / f"{name}-{args.round_no + 1}.prof"
        command += ["--profile", str(profile)]
    counts = None
    if args.instructions:
        handle, name_of_counts = tempfile.mkstemp(prefix="bench-callgrind-")
        os.close(handle)  # callgrind writes it
        counts = Path(name_of_counts)
        command = [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={counts}",
            "--quiet", *command,
        ]  # fmt: skip
    children_before = children_seconds()
    before = (
        time.perf_counter(), machine_busy_seconds(), own_seconds(),
        servers.cpu_seconds(), postgres_seconds(),
    )  # fmt: skip
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
            start_new_session=True,  # Ctrl-C reaches this script, which kills it
        )
    except subprocess.TimeoutExpired:
        return f"no result within {timeout:.0f}s"
    finally:
        instructions = counted_instructions(counts) if counts else None
    wall, busy, own, server, postgres = (
        now - then
        for now, then in zip(
            (time.perf_counter(), machine_busy_seconds(), own_seconds(),
             servers.cpu_seconds(), postgres_seconds()),
            before,
            strict=True,
        )
    )  # fmt: skip
    # In the fallback the servers are threads of this process: counted in ``own``.
    ours = own + (server if servers.native else 0.0)
    if name == "pharox-pg":  # the server works for this crawl: not "others"
        ours += postgres
    others = max(0.0, busy - ours) / wall
    lines = [
        line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)
    ]
    if done.returncode != 0 or not lines:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        return f"exit {done.returncode}: {tail[0]}"
    figures = json.loads(lines[-1].removeprefix(RESULT_PREFIX))
    child = children_seconds() - children_before  # the crawl process: waited for
    return Crawl(
        args.round_no,
        figures,
        server,
        postgres,
        others,
        process_seconds=child,
        instructions=instructions,
    )


def counted_instructions(path: Path) -> int | None:
    """The instructions callgrind counted (its ``totals:`` line), the file removed;
    None when it wrote none."""
    try:
        text = path.read_text()
    except OSError:
        return None
    finally:
        path.unlink(missing_ok=True)
    for line in text.splitlines():
        if line.startswith(("totals:", "summary:")):
            return int(line.split()[1])
    return None


def others_busy(seconds: float) -> float:
    """CPU cores that processes other than this one keep busy, sampled over
    ``seconds`` (between crawls, when the servers are idle)."""
    before = machine_busy_seconds() - own_seconds()
    time.sleep(seconds)
    return max(0.0, machine_busy_seconds() - own_seconds() - before) / seconds


def wait_until_quiet(limit: float, patience: float) -> bool:
    """Wait up to ``patience`` seconds for other processes to use at most ``limit``
    CPU cores (sampled every second); True when they did."""
    deadline = time.monotonic() + patience
    while True:
        if others_busy(1.0) <= limit:
            return True
        if time.monotonic() >= deadline:
            return False


def measure_quietly(
    name: str, servers: Servers, args: argparse.Namespace, crawl_cpus: set[int] | None
) -> Crawl | str:
    """``measure``, once the machine is quiet, again if others disturbed it."""
    outcome: Crawl | str = "not run"
    for _ in range(args.retries + 1):
        if name == "pharox-pg":
            args.vacuum_note = vacuum_pharox_tables(args.database_url)
        wait_until_quiet(args.max_others, args.quiet_wait)
        outcome = measure(name, servers, args, crawl_cpus)
        if (
            isinstance(outcome, str)
            or outcome.others <= args.max_others
            or args.instructions  # what it counts, others do not move
        ):
            return outcome
        outcome.disturbed = True
    return outcome


def problems(name: str, crawl: Crawl, pages: int) -> list[str]:
    """What went wrong in a crawl that ended: missing pages, errors, leaked leases."""
    figures, expected = crawl.figures, pages + 1  # the index and every page
    found = []
    if figures["responses"] != expected or figures["status_200"] != expected:
        found.append(
            f"{figures['status_200']}/{expected} pages with status 200 "
            f"({figures['responses']} responses)"
        )
    if figures["download_errors"]:
        found.append(f"{figures['download_errors']} download errors")
    if figures["log_errors"]:
        found.append(f"{figures['log_errors']} errors logged")
    if name in PHAROX_VARIANTS:
        if figures["leased"] is None:
            found.append("no pharox stats")
        elif figures["active_leases"] or figures["leased"] != figures["released"]:
            found.append(
                f"leases leaked: {figures['active_leases']} active, "
                f"{figures['leased']} leased, {figures['released']} released"
            )
    return found


def postgres_answers(database_url: str) -> str | None:
    """None when PostgreSQL answers, else why not."""
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(
            database_url, connect_args={"connect_timeout": 3}
        )
        try:
            with engine.connect():
                pass
        finally:
            engine.dispose()
    except Exception as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        return reason[0][:100] if reason else type(exc).__name__
    return None


def vacuum_pharox_tables(database_url: str) -> str:
    """VACUUM the pharox tables, so that every pharox-pg crawl starts alike.

    Each lease leaves a dead row behind; where autovacuum is off (as on some test
    servers) they pile up from crawl to crawl and every acquire gets slower. A
    plain VACUUM takes no lock that stops readers or writers. Returns a note.
    """
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(
            database_url,
            connect_args={"connect_timeout": 3},
            isolation_level="AUTOCOMMIT",
        )
        try:
            with engine.connect() as conn:
                autovacuum = conn.exec_driver_sql("SHOW autovacuum").scalar()
                tables = conn.execute(
                    sqlalchemy.text(
                        "SELECT tablename FROM pg_tables WHERE schemaname = "
                        "current_schema() AND tablename LIKE :pattern"
                    ),
                    {"pattern": "pharox\\_%"},
                ).scalars()
                for table in list(tables):
                    conn.exec_driver_sql(f'VACUUM "{table}"')
        finally:
            engine.dispose()
    except Exception as exc:
        return f"could not vacuum: {str(exc).strip().splitlines()[0][:80]}"
    return f"pharox tables vacuumed before each crawl (autovacuum {autovacuum})"


def cpu_split(pin: str) -> tuple[set[int] | None, set[int] | None, str]:
    """(crawl CPUs, server CPUs, how) for --pin."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return None, None, "off (no sched_setaffinity here)"
    if pin == "off":
        return None, None, f"off (all on CPUs {_cpus(set(cpus))})"
    if len(cpus) < 2:
        return None, None, "off (a single CPU)"
    crawl, server = {cpus[0]}, set(cpus[1:])
    return crawl, server, f"crawl on CPU {_cpus(crawl)}, servers on CPU {_cpus(server)}"


def _cpus(cpus: set[int]) -> str:
    return ",".join(map(str, sorted(cpus)))


def _load() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "?"


def _on_sigterm(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds: the servers are stopped on the way out
