"""Statistics over the rounds and the table bench_crawl prints."""

from __future__ import annotations

import statistics

from crawl_cpu import Crawl


def _paired_ratios(crawls: list[Crawl], base_by_round: dict[int, float]) -> list[float]:
    """Each crawl's pages/s over that of the trivial crawl of its own round."""
    return [
        crawl.rate / base_by_round[crawl.round_no]
        for crawl in crawls
        if crawl.round_no in base_by_round
    ]


def _mean_and_error(values: list[float]) -> str:
    error = statistics.stdev(values) / len(values) ** 0.5
    return f"{statistics.mean(values):.3f} +- {error:.3f}"


def _paired(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def report(
    variants: list[str], results: dict[str, list[Crawl]], notes: dict[str, list[str]]
) -> None:
    base = results.get("trivial", [])
    base_rate = statistics.median(c.rate for c in base) if base else 0.0
    base_cpu = statistics.median(c.cpu_per_page for c in base) if base else 0.0
    base_by_round = {b.round_no: b.rate for b in base}
    base_layer = statistics.median(c.layer_per_page for c in base) if base else 0.0
    header = (
        f"{'variant':<13}{'pages/s':>8}{'min-max':>10}{'spread':>7}{'vs trivial':>11}"
        f"{'paired':>17}{'cpu us/pg':>10}{'cpu%':>5}{'layer us/pg':>12}"
        f"{'layer est':>10}{'others':>7}  notes"
    )
    print(header)
    print("-" * len(header))
    for name in variants:
        crawls = results.get(name, [])
        extra = []
        if disturbed := sum(c.disturbed for c in crawls):
            extra.append(f"{disturbed}/{len(crawls)} crawls disturbed")
        per_page = [c.figures["thread_seconds"] / max(1, c.pages) for c in crawls]
        threads = statistics.median(per_page) * 1e6 if per_page else 0.0
        if threads >= 50:
            extra.append(f"of which other threads {threads:.0f} us/pg")
        if name == "pharox-pg" and crawls:
            postgres = statistics.median(
                c.postgres_seconds / max(1, c.pages) * 1e6 for c in crawls
            )
            extra.append(f"PostgreSQL (all clients) {postgres:.0f} CPU us/pg")
        note = "; ".join(dict.fromkeys([*notes.get(name, []), *extra]))
        if not crawls:
            print(f"{name:<13}{'-':>8}{'':>28}{'-':>11}{'':>61}  {note}")
            continue
        rates = [c.rate for c in crawls]
        rate = statistics.median(rates)
        cpu = statistics.median(c.cpu_per_page for c in crawls)
        layer = statistics.median(c.layer_per_page for c in crawls)
        # the ratio to expect if the crawl is CPU-bound and only the layer differs
        estimate = base_cpu / (base_cpu - base_layer + layer) if base_cpu else 0.0
        paired = _paired_ratios(crawls, base_by_round)
        cells = [
            f"{name:<13}{rate:>8.0f}",
            f"{f'{min(rates):.0f}-{max(rates):.0f}':>10}",
            f"{(max(rates) - min(rates)) / rate:>7.0%}",
            f"{f'{rate / base_rate:.2f}x' if base_rate else '-':>11}",
            f"{_paired(paired) if name != 'trivial' else '':>17}",
            f"{cpu:>10.0f}",
            f"{statistics.median(c.cpu_share for c in crawls):>5.0%}",
            f"{layer:>12.0f}",
            f"{f'{estimate:.3f}x' if estimate else '-':>10}",
            f"{statistics.median(c.others for c in crawls):>7.2f}",
            f"  {note}",
        ]
        print("".join(cells).rstrip())
    crawls = [c for runs in results.values() for c in runs if c.pages]
    if not crawls:
        return
    server_us = statistics.median(c.server_cpu_seconds / c.pages * 1e6 for c in crawls)
    print(
        "pages/s: median over the rounds, min-max, spread = (max-min)/median; vs "
        "trivial: ratio of the medians;\npaired: median (min-max) of the ratios to "
        "the trivial crawl of the same round; cpu us/pg: CPU time of the\ncrawl "
        "process per page; cpu%: its CPU time / wall time; layer us/pg: CPU per page "
        "inside the proxy\nlayer's middleware methods (reactor thread) plus in other "
        "threads (pharox's storage threads);\nlayer est: trivial's CPU per page / "
        "(that - trivial's layer + this layer), the ratio a CPU-bound crawl\nwould "
        "show; others: CPU cores other processes kept busy (PostgreSQL too, but for "
        f"pharox-pg).\nMedians over the rounds. Servers: {server_us:.0f} CPU us/page."
    )
    means = [
        f"{name} {_mean_and_error(ratios)}"
        for name in variants
        if name != "trivial"
        and len(ratios := _paired_ratios(results.get(name, []), base_by_round)) > 1
    ]
    if means:
        print("Paired ratios, mean +- standard error: " + ", ".join(means) + ".")
    disturbed = sum(c.disturbed for c in crawls)
    if disturbed:
        print(
            f"WARNING: {disturbed} of {len(crawls)} crawls ran while other processes "
            "were busy (others above --max-others, even after retries): trust the "
            "paired and cpu columns more than pages/s, or rerun on a quiet machine."
        )
