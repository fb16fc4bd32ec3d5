"""What importing scrapy-pharox adds to every full garbage collection of a crawl.

    python benchmarks/bench_import.py [--rounds 5] [--collections 40]

A full collection walks every object the garbage collector tracks, and a
2,000-page crawl runs ~18 of them; whatever an import leaves in memory is walked
each time, though no request touches it. Each step runs in a fresh process that
imports Scrapy's crawler first, as a crawl process does, then:

  scrapy          nothing more (the baseline)
  pydantic        pydantic, and one model defined and validated
  scrapy-pharox   ``import scrapy_pharox`` (pydantic, the models, the middleware)

and prints the tracked objects and the CPU time of one full collection (the
median of ``--collections``), the steps taking turns over ``--rounds`` rounds.
Those times move by 2-3x between processes on a virtual machine; instruction
counts do not. For them run one step under callgrind and read the inclusive
count of ``gc_collect`` (``--collections`` of them, plus two):

    valgrind --tool=callgrind --callgrind-out-file=cg.out \\
        python benchmarks/bench_import.py --step pydantic --collections 20
    callgrind_annotate --inclusive=yes cg.out | grep -m1 gc_collect
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time

STEPS = ("scrapy", "pydantic", "scrapy-pharox")


def import_step(step: str) -> None:
    import scrapy.crawler  # noqa: F401  (what every crawl process holds)

    if step == "pydantic":
        import pydantic

        class One(pydantic.BaseModel):
            value: int

        One(value=1)
    elif step == "scrapy-pharox":
        import scrapy_pharox  # noqa: F401
    elif step != "scrapy":
        raise SystemExit(f"unknown step {step!r}, expected one of {STEPS}")


def measure(step: str, collections: int) -> dict[str, float]:
    """Import ``step``, then time ``collections`` full collections in this process."""
    import_step(step)
    gc.collect()
    gc.collect()
    gc.disable()  # only the collections timed here run
    times = []
    for _ in range(collections):
        started = time.process_time()
        gc.collect()
        times.append(time.process_time() - started)
    return {"objects": len(gc.get_objects()), "ms": statistics.median(times) * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--collections", type=int, default=40)
    parser.add_argument(
        "--step", choices=STEPS, help="measure this step in this process only"
    )
    args = parser.parse_args()
    if args.step:
        print(json.dumps(measure(args.step, args.collections)))
        return
    results: dict[str, list[dict[str, float]]] = {step: [] for step in STEPS}
    for round_number in range(args.rounds):
        order = STEPS[round_number % len(STEPS) :] + STEPS[: round_number % len(STEPS)]
        for step in order:
            command = [sys.executable, __file__, "--step", step]
            command += ["--collections", str(args.collections)]
            output = subprocess.run(command, capture_output=True, check=True, text=True)
            results[step].append(json.loads(output.stdout))
    base = results["scrapy"]
    base_objects = base[0]["objects"]
    base_ms = statistics.median(run["ms"] for run in base)
    print(
        f"{'step':15} {'objects':>8} {'added':>7} {'full gc ms':>10} {'vs scrapy':>9}"
    )
    for step, runs in results.items():
        objects = runs[0]["objects"]
        ms = statistics.median(run["ms"] for run in runs)
        print(
            f"{step:15} {objects:8d} {objects - base_objects:+7d} {ms:10.2f} "
            f"{ms / base_ms:8.2f}x"
        )
    print(
        f"full gc ms: median over {args.rounds} processes of each one's median "
        f"of {args.collections} collections (CPU time)"
    )


if __name__ == "__main__":
    main()
