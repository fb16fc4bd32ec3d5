"""Pages per second of one crawl through five local proxies, per proxy layer.

    python benchmarks/bench_crawl.py [--pages 2000] [--rounds 5] [--database-url URL]

The site is static HTML served by nginx and the five forward proxies are tinyproxy
instances, all child processes of this script on 127.0.0.1, configured in a
temporary directory and stopped on exit. Without ``nginx`` and ``tinyproxy`` on
PATH, the pure-Python servers of ``scrapy_pharox/playground/`` stand in (slow
and noisy: the output says so). Each crawl runs in a fresh child process (one
Twisted reactor per crawl); the variants take turns round by round:

  trivial      a ten-line round-robin ``meta["proxy"]`` middleware (the baseline)
  pharox-mem   scrapy-pharox on the in-memory default, no per-proxy limit
  pharox-mem-4 scrapy-pharox on memory, at most 4 requests at once per proxy
  pharox-pg    scrapy-pharox on PostgreSQL (skipped when none answers)
  rotating     scrapy-rotating-proxies (skipped when not installed)
  trivial-import  only with --variants: the baseline in a process that imported
               scrapy-pharox and leased once, so pydantic and the models are in
               memory but no request sees them (what the import alone costs)

Per variant: the median pages/s over the rounds, its min-max, the ratio of medians
to the trivial baseline, the per-round (paired) ratios, the crawl process's CPU
time per page, and the CPU per page spent in the proxy layer itself (its
middleware methods, timed inside the crawl), with the ratio that cost alone
implies. Crawls wait for, and are run again after, other processes keeping the
machine busy. Every crawl must fetch every page, and a pharox crawl must end with
no lease out. See benchmarks/README.md for how to read the table.

With ``--marginal 300,3000`` every variant crawls a small and a large site each
round and the table shows the CPU per page of the difference, so that what a
crawl costs once drops out (crawl_marginal); with ``--concurrency 32
--proxy-max-concurrency 64``, the setting of issue 18.

Its parts sit beside it: crawl_child (one crawl), crawl_servers (nginx and
tinyproxy), crawl_cpu (running crawls, CPU accounting), crawl_report (statistics
and the table), crawl_marginal (the marginal mode).
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import signal
import sys
from pathlib import Path

from crawl_child import (
    CONCURRENCY,
    DEFAULT_DATABASE_URL,
    DEFAULT_VARIANTS,
    PROXIES,
    VARIANTS,
    run_child,
)
from crawl_cpu import (
    Crawl,
    _load,
    _on_sigterm,
    cpu_split,
    measure_quietly,
    postgres_answers,
    problems,
)
from crawl_marginal import parse_sizes
from crawl_marginal import run as marginal_run
from crawl_report import report
from crawl_servers import Servers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument(
        "--marginal",
        type=parse_sizes,
        metavar="SMALL,LARGE",
        help="instead of --pages: a SMALL and a LARGE crawl per variant and round, "
        "and the CPU per page of the difference (e.g. 300,3000)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=CONCURRENCY,
        help=f"CONCURRENT_REQUESTS of every crawl (default: {CONCURRENCY})",
    )
    parser.add_argument(
        "--proxy-max-concurrency",
        type=int,
        default=0,
        help="PHAROX_PROXY_MAX_CONCURRENCY of the pharox variants but pharox-mem-4 "
        "(default: 0, no limit)",
    )
    parser.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help=f"comma-separated subset of {','.join(VARIANTS)} (trivial always runs)",
    )
    parser.add_argument(
        "--pin",
        choices=("on", "off"),
        default="off",
        help="crawl on the first CPU, servers on the others (default: off, it did "
        "not lower the spread on a 2-CPU machine; see benchmarks/README.md)",
    )
    parser.add_argument(
        "--max-others",
        type=float,
        default=0.25,
        help="a crawl during which other processes kept more CPU cores than this "
        "busy is run again (default: 0.25)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=2,
        help="how often a disturbed crawl is run again (default: 2)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=20.0,
        help="seconds to wait, before each crawl, for the other processes to calm "
        "down below --max-others (default: 20)",
    )
    parser.add_argument(
        "--profile-dir",
        type=Path,
        help="run every crawl under cProfile and write .prof files here",
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="with --marginal: run every crawl under valgrind's callgrind and add "
        "the instructions per page of the crawl process, which the machine's load "
        "and clock do not move (some 50x slower)",
    )
    # internal: the child process
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--start-url", help=argparse.SUPPRESS)
    parser.add_argument("--proxy", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--pool", default="bench-crawl", help=argparse.SUPPRESS)
    parser.add_argument("--parent-pid", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--cpus", help=argparse.SUPPRESS)
    parser.add_argument("--profile", help=argparse.SUPPRESS)
    parser.add_argument("--no-layer-clock", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args)
        return

    variants = ["trivial"] + [
        name
        for name in dict.fromkeys(args.variants.split(","))
        if name and name != "trivial"
    ]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGHUP, _on_sigterm)
    notes: dict[str, list[str]] = {}
    if "pharox-pg" in variants:
        why = postgres_answers(args.database_url)
        if why is not None:
            notes["pharox-pg"] = [f"skipped: PostgreSQL does not answer ({why})"]
    if "rotating" in variants and importlib.util.find_spec("rotating_proxies") is None:
        notes["rotating"] = ["skipped: scrapy-rotating-proxies not installed"]
    runnable = [name for name in variants if name not in notes]
    crawl_cpus, server_cpus, pinning = cpu_split(args.pin)
    if args.instructions and not args.marginal:
        parser.error("--instructions goes with --marginal")
    if args.instructions and shutil.which("valgrind") is None:
        parser.error("--instructions needs valgrind on PATH")
    if args.marginal:
        marginal_run(args, variants, runnable, notes, crawl_cpus, server_cpus, pinning)
        return
    results: dict[str, list[Crawl]] = {}
    with Servers(args.pages, cpus=server_cpus) as servers:
        print(
            f"{args.pages} pages (+ the index), {PROXIES} proxies, {args.concurrency} "
            f"concurrent requests, {args.rounds} rounds, variants in turn"
        )
        print(f"servers: {servers.description}")
        print(f"pinning: {pinning}; load average at the start: {_load()}", flush=True)
        for round_no in range(args.rounds):
            args.round_no = round_no
            shift = round_no % len(runnable)  # who goes first changes every round
            order = runnable[shift:] + runnable[:shift]
            line = []
            for name in order:
                outcome = measure_quietly(name, servers, args, crawl_cpus)
                if isinstance(outcome, str):
                    notes.setdefault(name, []).append(f"failed: {outcome}")
                    line.append(f"{name} failed")
                    continue
                notes.setdefault(name, []).extend(problems(name, outcome, args.pages))
                results.setdefault(name, []).append(outcome)
                line.append(
                    f"{name} {outcome.rate:.0f}" + ("(disturbed)" * outcome.disturbed)
                )
            print(f"round {round_no + 1}: " + ", ".join(line), flush=True)
    if getattr(args, "vacuum_note", None):
        notes.setdefault("pharox-pg", []).append(args.vacuum_note)
    print(f"load average at the end: {_load()}")
    print()
    report(variants, results, notes)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # the servers are already stopped
        print("interrupted", file=sys.stderr)
        sys.exit(130)
