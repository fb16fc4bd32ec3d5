"""Processes of a fleet renewing one gateway exit at once, on one database:
every id is renewed into at most one new id, so the renewals that won form one
chain from the first id to the one stored."""

from __future__ import annotations

import json
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

from conftest import process_context

from scrapy_pharox import ProxyPool
from scrapy_pharox.models import gateway_identities, new_session_id
from scrapy_pharox.storage import open_storage

SECONDS = 2.0


def renew_loop(url: str, start_at: float, out: str) -> None:
    """One process: read the exit, renew it from the id it read, note the try."""
    tries: list[list[Any]] = []
    errors: list[str] = []
    storage = open_storage(url)
    try:
        time.sleep(max(0.0, start_at - time.time()))
        deadline = time.monotonic() + SECONDS
        while time.monotonic() < deadline:
            [exit_] = storage.list_proxies("gateway")
            assert exit_.session_id is not None
            new = new_session_id()
            stored = storage.renew_identity(exit_.id, exit_.session_id, new)
            tries.append([exit_.session_id, new, stored.session_id == new])
    except BaseException:
        errors.append(traceback.format_exc())
    finally:
        storage.close()
        Path(out).write_text(json.dumps({"tries": tries, "errors": errors}))


def test_processes_renewing_one_exit_at_once_never_turn_an_id_into_two(
    sql_url: str, tmp_path: Path
) -> None:
    storage = open_storage(sql_url)
    try:
        pool = storage.add_pool(ProxyPool(name="gateway"))
        [exit_] = gateway_identities(
            "http://cust-{session}:pw@127.0.0.1:7000", 1, pool_id=pool.id
        )
        storage.add_proxy(exit_)
    finally:
        storage.close()
    context = process_context()
    start_at = time.time() + 1.0
    outputs = [tmp_path / f"renewer-{index}.json" for index in range(4)]
    processes = [
        context.Process(target=renew_loop, args=(sql_url, start_at, str(out)))
        for out in outputs
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    tries, errors = [], []
    for out in outputs:
        log = json.loads(out.read_text())
        tries.extend(log["tries"])
        errors.extend(log["errors"])
    assert errors == []
    won = [(old, new) for old, new, ok in tries if ok]
    lost = [old for old, _, ok in tries if not ok]
    assert lost, "the processes never met on one id: the test proves nothing"
    assert all(count == 1 for count in Counter(old for old, _ in won).values())
    next_of = dict(won)
    chain = [exit_.session_id]
    while chain[-1] in next_of:
        chain.append(next_of[chain[-1]])
    assert len(chain) == len(won) + 1  # every win is a link of the one chain
    storage = open_storage(sql_url)
    try:
        [stored] = storage.list_proxies("gateway")
        assert stored.session_id == chain[-1]
        assert stored.credentials is not None
        assert stored.credentials.user == f"cust-{chain[-1]}"
    finally:
        storage.close()
