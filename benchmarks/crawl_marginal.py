"""bench_crawl's marginal mode: CPU per page as the difference of two crawls.

Every round runs each variant twice, a small and a large crawl. What a crawl
costs once (the process's start-up and imports, opening the pool, the first
requests' caches, the slow start and the tail of the crawl) is in both; the
difference over the page difference is what one more page costs:

    marginal = (cpu_large - cpu_small) / (pages_large - pages_small)

for the crawl process's CPU, for PostgreSQL's (``pharox-pg``) and for the wall
time (pages/s). Medians over the rounds; "over trivial" is a variant's median
over the trivial baseline's median.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import statistics
from dataclasses import dataclass

from crawl_child import PROXIES
from crawl_cpu import Crawl, _load, measure_quietly, problems
from crawl_servers import Servers

#: The rows in the order the table shows them (others follow, as named).
LABELS = {
    "trivial": "trivial round robin",
    "rotating": "scrapy-rotating-proxies",
    "pharox-mem": "scrapy-pharox, memory",
    "pharox-pg": "scrapy-pharox, PostgreSQL (client)",
}
SERVER_LABEL = "PostgreSQL server, per page"


def parse_sizes(text: str) -> tuple[int, int]:
    """``"300,3000"`` -> (300, 3000): the pages of the small and the large crawl."""
    try:
        small, large = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--marginal takes SMALL,LARGE page counts, got {text!r}"
        ) from None
    if not 0 < small < large:
        raise argparse.ArgumentTypeError(
            f"--marginal needs 0 < SMALL < LARGE, got {small},{large}"
        )
    return small, large


@dataclass(frozen=True)
class Marginal:
    """What the large crawl of a round cost beyond the small one, per page."""

    round_no: int
    #: microseconds of the crawl process's CPU, spider_opened to spider_closed
    cpu_us: float
    #: the same over the whole process (start-up and imports cancel out)
    process_us: float
    #: microseconds of CPU of every PostgreSQL process (whoever asked)
    postgres_us: float
    #: extra pages over the extra wall time, spider_opened to spider_closed
    pages_per_second: float
    #: instructions of the whole crawl process (--instructions), else None
    instructions: float | None = None


def marginal(small: Crawl, large: Crawl) -> Marginal:
    """The difference of two crawls of one variant, over their page difference."""
    pages = large.pages - small.pages
    if pages <= 0:
        raise ValueError(f"the large crawl has {pages} pages more than the small")
    seconds = large.figures["seconds"] - small.figures["seconds"]
    cpu = large.figures["cpu_seconds"] - small.figures["cpu_seconds"]
    return Marginal(
        round_no=large.round_no,
        cpu_us=cpu / pages * 1e6,
        process_us=(large.process_seconds - small.process_seconds) / pages * 1e6,
        postgres_us=(large.postgres_seconds - small.postgres_seconds) / pages * 1e6,
        pages_per_second=pages / seconds if seconds > 0 else 0.0,
        instructions=(
            (large.instructions - small.instructions) / pages
            if large.instructions is not None and small.instructions is not None
            else None
        ),
    )


def _us(value: float) -> str:
    return f"{value:,.0f} us"


def _over(value: float, base: float) -> str:
    return f"{value / base - 1:+.1%}"


def _ordered(variants: list[str]) -> list[str]:
    return [name for name in LABELS if name in variants] + [
        name for name in variants if name not in LABELS
    ]


def table(
    variants: list[str],
    rows: dict[str, list[Marginal]],
    labels: dict[str, str] | None = None,
) -> list[str]:
    """The Markdown table: median marginal CPU per page, over trivial, pages/s;
    after ``pharox-pg``, PostgreSQL's CPU per page."""
    labels = {**LABELS, **(labels or {})}
    base_rows = rows.get("trivial", [])
    base = statistics.median(m.cpu_us for m in base_rows) if base_rows else 0.0
    counted = _instructions(base_rows)
    lines = ["| variant | CPU per page | over trivial | pages/s |", "|---|---|---|---|"]
    if counted is not None:  # with --instructions, two columns more
        lines = [
            lines[0] + " instructions per page | over trivial |",
            lines[1] + "---|---|",
        ]
    for name in _ordered(variants):
        label, found = labels.get(name, name), rows.get(name, [])
        if not found:
            lines.append(
                f"| {label} | - | - | - |" + " - | - |" * (counted is not None)
            )
            continue
        cpu = statistics.median(m.cpu_us for m in found)
        over = "-" if name == "trivial" or not base else _over(cpu, base)
        rate = statistics.median(m.pages_per_second for m in found)
        line = f"| {label} | {_us(cpu)} | {over} | {rate:,.0f} |"
        if counted is not None:
            mine = _instructions(found)
            if mine is None:
                line += " - | - |"
            else:
                over = "-" if name == "trivial" else _over(mine, counted)
                line += f" {mine / 1e6:,.2f} M | {over} |"
        lines.append(line)
        if name == "pharox-pg":
            server = statistics.median(m.postgres_us for m in found)
            lines.append(
                f"| {SERVER_LABEL} | {_us(server)} | | |"
                + " | |" * (counted is not None)
            )
    return lines


def _instructions(found: list[Marginal]) -> float | None:
    """The median instructions per page, None when they were not counted."""
    counts = [m.instructions for m in found if m.instructions is not None]
    return statistics.median(counts) if counts else None


def paired(variants: list[str], rows: dict[str, list[Marginal]]) -> str:
    """Each variant's CPU per page over trivial's of the same round: the median
    and the range of those ratios (empty without two variants)."""
    base = {m.round_no: m.cpu_us for m in rows.get("trivial", [])}
    found = []
    for name in _ordered(variants):
        ratios = [
            m.cpu_us / base[m.round_no] - 1
            for m in rows.get(name, [])
            if name != "trivial" and base.get(m.round_no)
        ]
        if ratios:
            found.append(
                f"{name} {statistics.median(ratios):+.1%} "
                f"({min(ratios):+.1%} to {max(ratios):+.1%})"
            )
    return (
        "Paired, over trivial of the same round: " + ", ".join(found) if found else ""
    )


def whole_process(variants: list[str], rows: dict[str, list[Marginal]]) -> str:
    """The same arithmetic on the whole process's CPU (a cross-check)."""
    found = [
        f"{name} {_us(statistics.median(m.process_us for m in rows[name]))}"
        for name in _ordered(variants)
        if rows.get(name)
    ]
    return "Whole process CPU, same arithmetic: " + ", ".join(found) if found else ""


def rotating_label() -> str:
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        version = importlib.metadata.version("scrapy-rotating-proxies")
        return f"{LABELS['rotating']} {version}"
    return LABELS["rotating"]


def run(
    args: argparse.Namespace,
    variants: list[str],
    runnable: list[str],
    notes: dict[str, list[str]],
    crawl_cpus: set[int] | None,
    server_cpus: set[int] | None,
    pinning: str,
) -> None:
    """The rounds of small and large crawls, then the table and its notes."""
    small, large = args.marginal
    rows: dict[str, list[Marginal]] = {}
    crawls: list[Crawl] = []
    with (
        Servers(small, cpus=server_cpus) as few,
        Servers(large, cpus=server_cpus) as many,
    ):
        print(
            f"marginal: {small} and {large} pages (+ the index), {PROXIES} proxies, "
            f"{args.concurrency} concurrent requests, per-proxy limit "
            f"{args.proxy_max_concurrency or 'none'} (pharox), {args.rounds} rounds"
        )
        print(f"servers: {many.description} (one set per size)")
        print(f"pinning: {pinning}; load average at the start: {_load()}", flush=True)
        for round_no in range(args.rounds):
            args.round_no = round_no
            shift = round_no % len(runnable)  # who goes first changes every round
            sizes = [(small, few), (large, many)][:: 1 if round_no % 2 == 0 else -1]
            line = []
            for name in runnable[shift:] + runnable[:shift]:
                pair: dict[int, Crawl] = {}
                for pages, servers in sizes:
                    outcome = measure_quietly(name, servers, args, crawl_cpus)
                    if isinstance(outcome, str):
                        notes.setdefault(name, []).append(f"failed: {outcome}")
                        break
                    notes.setdefault(name, []).extend(problems(name, outcome, pages))
                    pair[pages] = outcome
                    crawls.append(outcome)
                if len(pair) == 2:
                    found = marginal(pair[small], pair[large])
                    rows.setdefault(name, []).append(found)
                    line.append(
                        f"{name} {found.cpu_us:,.0f} us/pg"
                        + (
                            f" {found.instructions / 1e6:,.2f} M instructions/pg"
                            if found.instructions is not None
                            else ""
                        )
                    )
                else:
                    line.append(f"{name} failed")
            print(f"round {round_no + 1}: " + ", ".join(line), flush=True)
    if getattr(args, "vacuum_note", None):
        notes.setdefault("pharox-pg", []).append(args.vacuum_note)
    print(f"load average at the end: {_load()}")
    print()
    for line in table(variants, rows, {"rotating": rotating_label()}):
        print(line)
    print()
    print(
        f"CPU per page: (CPU of the {large}-page crawl - CPU of the {small}-page one) "
        "/ the page difference,\nthe crawl process from spider_opened to "
        "spider_closed, all threads; pages/s the same way from the wall time;\n"
        "medians over the rounds. The PostgreSQL row counts every PostgreSQL "
        "process, so other clients too."
    )
    if args.instructions:
        print(
            "Instructions per page: the same difference of the instructions "
            "callgrind counted in the\nwhole crawl process. The crawls ran under "
            "callgrind: their CPU and pages/s are callgrind's\n(and the other "
            "processes' CPU, PostgreSQL's too, is read beside a busy machine): "
            "read the instructions."
        )
    for extra in (paired(variants, rows), whole_process(variants, rows)):
        if extra:
            print(extra + ".")
    for name in _ordered(variants):
        if notes.get(name):
            print(f"{name}: " + "; ".join(dict.fromkeys(notes[name])))
    if disturbed := sum(c.disturbed for c in crawls):
        print(
            f"WARNING: {disturbed} of {len(crawls)} crawls ran while other processes "
            "were busy (others above --max-others, even after retries)."
        )
