"""bench_fleet's two loops run what they say, on a real PostgreSQL server."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from bench_fleet import KINDS
from bench_sql import fill_ours

pytestmark = pytest.mark.postgres


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_fleet_loop_leases_and_releases_a_proxy(
    postgresql_url: str, kind: str
) -> None:
    fill_ours(postgresql_url)
    cycle, close = KINDS[kind](postgresql_url, "fleet-test")
    try:
        attempt = cycle()
    finally:
        close()

    # [proxy id, and four monotonic times], not a string saying what failed.
    assert isinstance(attempt, list), attempt
    proxy_id, *times = attempt
    assert proxy_id is not None
    assert times == sorted(times)
