"""The arithmetic and the tables of the issue-18 benchmarks (no crawl, no timing)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from bench_fleet import overlaps
from crawl_cpu import Crawl, counted_instructions
from crawl_marginal import (
    Marginal,
    marginal,
    paired,
    parse_sizes,
    table,
)


def crawl(
    pages: int,
    cpu: float,
    seconds: float,
    *,
    postgres: float = 0.0,
    process: float = 0.0,
    round_no: int = 0,
    instructions: int | None = None,
) -> Crawl:
    figures: dict[str, Any] = {
        "responses": pages,
        "cpu_seconds": cpu,
        "seconds": seconds,
    }
    return Crawl(
        round_no,
        figures,
        0.0,
        postgres,
        0.0,
        process_seconds=process,
        instructions=instructions,
    )


def row(
    round_no: int,
    cpu_us: float,
    postgres_us: float = 0.0,
    instructions: float | None = None,
) -> Marginal:
    return Marginal(round_no, cpu_us, cpu_us, postgres_us, 1000.0, instructions)


def test_marginal_cpu_per_page_is_the_difference_of_two_crawls_over_the_pages() -> None:
    small = crawl(301, cpu=1.5, seconds=1.0, postgres=0.2, process=3.0)
    large = crawl(3001, cpu=10.5, seconds=4.0, postgres=1.55, process=12.45)

    found = marginal(small, large)

    assert found.cpu_us == pytest.approx(9.0 / 2700 * 1e6)
    assert found.process_us == pytest.approx(9.45 / 2700 * 1e6)
    assert found.postgres_us == pytest.approx(1.35 / 2700 * 1e6)
    assert found.pages_per_second == pytest.approx(900.0)


def test_a_large_crawl_with_no_more_pages_than_the_small_one_is_refused() -> None:
    with pytest.raises(ValueError, match="0 pages more"):
        marginal(crawl(301, 1.0, 1.0), crawl(301, 2.0, 2.0))


def test_the_table_gives_medians_over_trivial_and_postgresql_on_a_row_of_its_own() -> (
    None
):
    rows = {
        "trivial": [row(0, 3000), row(1, 3127), row(2, 3300)],
        "pharox-mem": [row(0, 3322), row(1, 3100), row(2, 3500)],
        "pharox-pg": [row(0, 4062, 481), row(1, 4000, 470), row(2, 4100, 500)],
    }
    variants = ["trivial", "pharox-pg", "rotating", "pharox-mem"]

    lines = table(variants, rows, {"rotating": "scrapy-rotating-proxies 0.6.2"})

    assert lines == [
        "| variant | CPU per page | over trivial | pages/s |",
        "|---|---|---|---|",
        "| trivial round robin | 3,127 us | - | 1,000 |",
        "| scrapy-rotating-proxies 0.6.2 | - | - | - |",
        "| scrapy-pharox, memory | 3,322 us | +6.2% | 1,000 |",
        "| scrapy-pharox, PostgreSQL (client) | 4,062 us | +29.9% | 1,000 |",
        "| PostgreSQL server, per page | 481 us | | |",
    ]


def test_marginal_instructions_per_page_are_the_difference_of_the_counts() -> None:
    small = crawl(301, 1.0, 1.0, instructions=5_000_000_000)
    large = crawl(3001, 2.0, 2.0, instructions=42_800_000_000)

    assert marginal(small, large).instructions == pytest.approx(14e6)
    assert marginal(crawl(301, 1.0, 1.0), large).instructions is None


def test_counted_instructions_take_callgrinds_totals_line_and_remove_the_file(
    tmp_path: Path,
) -> None:
    counts = tmp_path / "callgrind.out"
    counts.write_text("version: 1\ncmd: python\nevents: Ir\ntotals: 123456789\n")

    assert counted_instructions(counts) == 123_456_789
    assert not counts.exists()
    assert counted_instructions(counts) is None


def test_with_instructions_the_table_adds_them_per_page_and_over_trivial() -> None:
    rows = {
        "trivial": [row(0, 3000, instructions=14.0e6)],
        "pharox-mem": [row(0, 3100, instructions=14.49e6)],
        "pharox-pg": [row(0, 4000, 300)],
    }

    lines = table(["trivial", "pharox-mem", "pharox-pg"], rows)

    assert lines == [
        "| variant | CPU per page | over trivial | pages/s |"
        " instructions per page | over trivial |",
        "|---|---|---|---|---|---|",
        "| trivial round robin | 3,000 us | - | 1,000 | 14.00 M | - |",
        "| scrapy-pharox, memory | 3,100 us | +3.3% | 1,000 | 14.49 M | +3.5% |",
        "| scrapy-pharox, PostgreSQL (client) | 4,000 us | +33.3% | 1,000 | - | - |",
        "| PostgreSQL server, per page | 300 us | | | | |",
    ]


def test_paired_ratios_set_each_round_against_trivial_of_the_same_round() -> None:
    rows = {
        "trivial": [row(0, 2000), row(1, 4000)],
        "pharox-mem": [row(0, 2200), row(1, 4040)],
    }

    assert paired(["trivial", "pharox-mem"], rows) == (
        "Paired, over trivial of the same round: pharox-mem +5.5% (+1.0% to +10.0%)"
    )


@pytest.mark.parametrize("text", ["3000,300", "300", "0,300", "a,b"])
def test_the_sizes_are_a_small_then_a_larger_page_count(text: str) -> None:
    assert parse_sizes("300,3000") == (300, 3000)
    with pytest.raises(argparse.ArgumentTypeError):
        parse_sizes(text)


def test_two_leases_of_one_exclusive_proxy_held_at_once_are_an_overlap() -> None:
    first = ["p1", 0.0, 1.0, 2.0, 2.1]
    second = ["p1", 0.5, 1.5, 3.0, 3.1]  # acquired before the first was released
    later = ["p1", 2.0, 2.5, 4.0, 4.1]  # after the first, before the second ended
    other = ["p2", 0.0, 1.0, 2.0, 2.1]
    empty = [None, 0.0, 1.0, None, None]

    found = overlaps([first, second, later, other, empty])

    assert found == [("p1", first, second), ("p1", second, later)]
    assert overlaps([first, other, empty]) == []
