"""``scrapy pharox-sessions``, end to end as the other commands
(test_commands.py): ``python -m scrapy`` in a subprocess, against a SQLite file
and a PostgreSQL schema."""

from __future__ import annotations

from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from crawl_support import one_error_line, run_scrapy
from scrapy_pharox import (
    IStorage,
    ProxyCredentials,
    bootstrap_pool,
    bootstrap_proxy,
    open_storage,
)

COOKIE_VALUE, PASSWORD = "c00kie-s3cret", "pr0xy-pw"


@pytest.fixture(scope="module", autouse=True)
def registered() -> None:
    names = {entry_point.name for entry_point in entry_points(group="scrapy.commands")}
    if "pharox-sessions" not in names:
        pytest.fail(
            "the scrapy.commands entry point pharox-sessions is not installed in "
            "this environment: run pip install -e . again"
        )


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def storage_url(request: pytest.FixtureRequest) -> str:
    """A database the command and the test share, empty."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgresql_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture
def storage(storage_url: str) -> Iterator[IStorage]:
    """The test's own connection to the command's storage, with pool "web":
    session "login" used once with two cookies, session "cart" parked, on
    proxies with a password; and pool "empty"."""
    store = open_storage(storage_url)
    web = bootstrap_pool(store, name="web")
    bootstrap_pool(store, name="empty")
    for port in (8001, 8002):
        bootstrap_proxy(
            store,
            pool=web,
            host="10.0.1.1",
            port=port,
            max_concurrency=1,
            credentials=ProxyCredentials(user="alice", password=PASSWORD),
        )
    login = store.bind_session("web", "login", "tests", 60, 3000)
    cart = store.bind_session("web", "cart", "tests", 60, 3000)
    assert login is not None and cart is not None
    cookies = [
        {"name": "sid", "value": COOKIE_VALUE},
        {"name": "csrf", "value": COOKIE_VALUE + "-2"},
    ]
    assert store.renew_session(login.session, login.lease, 60, cookies)
    assert store.park_session(cart.session, cart.lease)
    yield store
    store.close()


def test_sessions_lists_each_with_its_masked_proxy_and_counts_no_secret(
    storage_url: str, storage: IStorage, tmp_path: Path
) -> None:
    result = run_scrapy(
        "pharox-sessions", "--pool", "web", "--storage", storage_url, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "key", "proxy", "generation", "uses", "age", "(s)", "idle", "(s)", "cookies",
    ]  # fmt: skip
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert list(rows) == ["cart", "login"]
    proxies = {"http://alice:***@10.0.1.1:8001", "http://alice:***@10.0.1.1:8002"}
    assert {rows["cart"][0], rows["login"][0]} == proxies
    assert rows["login"][1:3] == ["1", "1"] and rows["login"][5] == "2"
    assert rows["cart"][1:3] == ["1", "0"] and rows["cart"][5] == "0"
    for age, idle in (rows["cart"][3:5], rows["login"][3:5]):
        assert 0 <= int(idle) <= int(age) < 60
    for text in (result.stdout, result.stderr):
        assert COOKIE_VALUE not in text and PASSWORD not in text
        assert "sid" not in text and "csrf" not in text


def test_a_pool_without_sessions_says_so(
    storage_url: str, storage: IStorage, tmp_path: Path
) -> None:
    result = run_scrapy(
        "pharox-sessions", "--pool", "empty", "--storage", storage_url, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Pool 'empty' has no sessions"


def test_end_ends_the_session_gives_its_lease_back_and_says_so(
    storage_url: str, storage: IStorage, tmp_path: Path
) -> None:
    result = run_scrapy(
        "pharox-sessions", "--pool", "web", "--end", "login", "--storage",
        storage_url, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Session 'login' of pool 'web' ended"
    assert [session.key for session in storage.list_sessions("web")] == ["cart"]
    stats = storage.get_pool_stats("web")
    assert stats is not None and stats.total_leases == 0


def test_ending_an_unknown_session_is_an_error_naming_it(
    storage_url: str, storage: IStorage, tmp_path: Path
) -> None:
    result = run_scrapy(
        "pharox-sessions", "--pool", "web", "--end", "checkout", "--storage",
        storage_url, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1
    assert one_error_line(result) == (
        "scrapy pharox-sessions: error: no session 'checkout' in pool 'web'"
    )
    assert len(storage.list_sessions("web")) == 2


def test_sessions_of_an_unknown_pool_is_an_error_naming_the_pools(
    storage_url: str, storage: IStorage, tmp_path: Path
) -> None:
    result = run_scrapy(
        "pharox-sessions", "--pool", "nowhere", "--storage", storage_url, cwd=tmp_path
    )
    assert "no pool named 'nowhere' (pools: empty, web)" in one_error_line(result)
