"""Sessions shared through PostgreSQL by crawl processes: resumed by the next
one, and ended by their own expiry when a crawl dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from scrapy_pharox import open_storage
from scrapy_pharox.playground import ForwardProxy, TargetSite

pytestmark = [pytest.mark.crawl, pytest.mark.postgres]

WORKER = Path(__file__).resolve().parent / "session_worker.py"


def start_worker(
    site: TargetSite,
    storage_url: str,
    proxies: list[ForwardProxy],
    key: str,
    pages: tuple[int, int],
    **environ: str,
) -> subprocess.Popen[str]:
    """One crawl process walking pages ``pages`` of the flow in session ``key``."""
    return subprocess.Popen(
        [
            sys.executable,
            str(WORKER),
            site.url,
            storage_url,
            key,
            *(str(page) for page in pages),
            *(proxy.url for proxy in proxies),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **environ},
    )


def finished(worker: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = worker.communicate(timeout=90)
    assert worker.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_a_second_crawl_process_resumes_the_session_with_its_proxy_and_cookie(
    postgresql_url: str, start_proxy: Callable[..., ForwardProxy]
) -> None:
    proxies = [start_proxy() for _ in range(3)]
    with TargetSite(pages=1) as site:
        before = finished(start_worker(site, postgresql_url, proxies, "k", (1, 3)))
        after = finished(start_worker(site, postgresql_url, proxies, "k", (4, 6)))
        assert site.refused == []
    (port,) = {page["port"] for page in before["seen"]}
    assert [page["page"] for page in after["seen"]] == [4, 5, 6]
    assert {page["port"] for page in after["seen"]} == {port}
    assert {page["cookie"] for page in after["seen"]} == {before["seen"][-1]["cookie"]}
    assert before["stats"]["pharox/session/created"] == 1
    assert after["stats"]["pharox/session/resumed"] == 1
    for stats in (before["stats"], after["stats"]):
        assert stats["pharox/leases/active"] == 0


def test_the_sessions_of_a_killed_crawl_give_their_proxy_back_by_themselves(
    postgresql_url: str, start_proxy: Callable[..., ForwardProxy]
) -> None:
    proxies = [start_proxy()]
    idle = 2.0
    with TargetSite(pages=1, delay=60) as site:
        worker = start_worker(
            site,
            postgresql_url,
            proxies,
            "doomed",
            (1, 6),
            SESSION_HANG="1",
            SESSION_SETTINGS=json.dumps(
                {"PHAROX_SESSION_IDLE_SECONDS": idle, "DOWNLOAD_TIMEOUT": 1}
            ),
        )
        try:
            assert worker.stdout is not None
            first = json.loads(worker.stdout.readline())["first"]
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.communicate(timeout=30)
    storage = open_storage(postgresql_url)
    try:
        (session,) = storage.list_sessions("default")
        assert session.lease_id is not None
        assert session.proxy_id is not None
        (proxy,) = storage.list_proxies("default")
        assert proxy.current_leases == 1  # held by the dead crawl's session
        time.sleep(idle + 0.5)
        assert storage.cleanup_expired_leases() == 1
        lease = storage.acquire("default", "another-crawl", 10)
        assert lease is not None and lease.proxy_id == proxy.id
        assert first["port"] == proxies[0].port
    finally:
        storage.close()
