"""The ``scrapy pharox-*`` commands, end to end: ``python -m scrapy`` in a
subprocess, against a SQLite file and a PostgreSQL schema.

The commands are found through the ``scrapy.commands`` entry points, which exist
once the package is installed (``pip install -e .``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

from crawl_support import one_error_line, run_scrapy
from scrapy_pharox import (
    IStorage,
    Lease,
    LeaseOutcome,
    OutcomeReport,
    Proxy,
    ProxyManager,
    ProxyPool,
    ProxyStatus,
    bootstrap_pool,
    bootstrap_proxy,
    open_storage,
)
from scrapy_pharox.playground import ForwardProxy, TargetSite, free_port

COMMANDS = ("pharox-check", "pharox-import", "pharox-pools", "pharox-proxies",
            "pharox-sessions", "pharox-set")  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def registered() -> None:
    names = {entry_point.name for entry_point in entry_points(group="scrapy.commands")}
    missing = sorted(set(COMMANDS) - names)
    if missing:
        pytest.fail(
            f"the scrapy.commands entry points {', '.join(missing)} are not "
            "installed in this environment: run pip install -e . again"
        )


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def storage_url(request: pytest.FixtureRequest) -> str:
    """A database the commands and the test share, empty."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgresql_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture
def storage(storage_url: str) -> Iterator[IStorage]:
    """The test's own connection to the commands' storage."""
    store = open_storage(storage_url)
    yield store
    store.close()


def rows_of(output: str) -> dict[str, list[str]]:
    """A table's rows by their first cell, split on runs of two spaces or more."""
    rows = {}
    for line in output.strip().splitlines()[1:]:
        cells = [cell.strip() for cell in line.split("  ") if cell.strip()]
        if cells:
            rows[cells[0]] = cells[1:]
    return rows


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


PROXIES_FILE = """\
# two good lines, one twice, and three bad ones
http://10.0.0.5:3128 country=FR city=Lyon
http://alice:s3cret-pw@10.0.0.6:3128   # with a password
http://10.0.0.5:3128
http://bob:hunter2-pw@10.0.0.7
socks5://10.0.0.8:1080 asn=many
http://10.0.0.9:3128 colour=blue
"""


# -- pharox-import ---------------------------------------------------------------


def test_import_reports_added_present_and_rejected_lines(
    storage_url: str, storage: IStorage, tmp_path: Path
) -> None:
    proxies_file = write(tmp_path / "proxies.txt", PROXIES_FILE)

    first = run_scrapy(
        "pharox-import", "proxies.txt", "--pool", "res", "--country", "de",
        "--max-concurrency", "0", "--storage", storage_url, cwd=tmp_path,
    )  # fmt: skip
    again = run_scrapy(
        "pharox-import", str(proxies_file), "--pool", "res", "--storage",
        storage_url, cwd=tmp_path,
    )  # fmt: skip

    assert first.returncode == 1, first.stderr  # a line was rejected
    assert first.stderr == ""
    report = first.stdout.splitlines()
    assert report[0].split() == ["result", "line", "proxy"]
    assert report[1].split() == ["added", "2", "http://10.0.0.5:3128"]
    assert report[2].split() == ["added", "3", "http://alice:***@10.0.0.6:3128"]
    assert report[3].split() == ["present", "4", "http://10.0.0.5:3128"]
    assert report[4].startswith("rejected")
    assert "'http://bob:***@10.0.0.7': no port" in report[4]
    assert "asn" in report[5] and "integer" in report[5]
    assert "'colour=blue' is not one of" in report[6]
    assert report[7] == (
        "Pool 'res': 2 added, 1 already present, 3 rejected; 2 proxies in the pool now"
    )
    assert "s3cret-pw" not in first.stdout and "hunter2-pw" not in first.stdout

    assert again.returncode == 1
    assert "Pool 'res': 0 added, 3 already present, 3 rejected" in again.stdout

    stored = {proxy.host: proxy for proxy in storage.list_proxies("res")}
    assert sorted(stored) == ["10.0.0.5", "10.0.0.6"]
    assert (stored["10.0.0.5"].country, stored["10.0.0.5"].city) == ("FR", "Lyon")
    assert stored["10.0.0.6"].country == "DE"
    assert stored["10.0.0.6"].max_concurrency is None
    assert stored["10.0.0.6"].credentials is not None
    assert stored["10.0.0.6"].credentials.password == "s3cret-pw"


def test_a_clean_import_exits_zero_with_the_settings_default_concurrency(
    storage_url: str, storage: IStorage, tmp_path: Path
) -> None:
    write(tmp_path / "ok.txt", "http://10.0.0.5:3128\n\n# done\n")
    result = run_scrapy(
        "pharox-import", "ok.txt", "--pool", "dc", "--storage", storage_url,
        "-s", "PHAROX_PROXY_MAX_CONCURRENCY=3", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Pool 'dc': 1 added, 0 already present, 0 rejected" in result.stdout
    (proxy,) = storage.list_proxies("dc")
    assert proxy.max_concurrency == 3


# -- pharox-pools and pharox-proxies ---------------------------------------------


def pool_named(storage: IStorage, name: str) -> ProxyPool:
    return next(pool for pool in storage.list_pools() if pool.name == name)


def populate(storage: IStorage) -> None:
    """Pool "web": a used proxy with a lease out, one cooling down, one cooling
    down for one domain, an inactive and a banned one; pool "empty"."""
    web = bootstrap_pool(storage, name="web")
    bootstrap_pool(storage, name="empty")
    proxies = {
        name: bootstrap_proxy(
            storage, pool=web, host="10.0.1.1", port=port, max_concurrency=2
        )
        for name, port in [
            ("used", 8001), ("cooling", 8002), ("domain", 8003), ("inactive", 8004),
            ("banned", 8005),
        ]
    }  # fmt: skip
    manager = ProxyManager(storage)

    def lease_of(name: str, consumer: str = "tests") -> Lease:
        for other in proxies.values():
            storage.set_proxy_status(other.id, ProxyStatus.INACTIVE)
        storage.set_proxy_status(proxies[name].id, ProxyStatus.ACTIVE)
        lease = manager.acquire_proxy("web", consumer_name=consumer)
        assert lease is not None and lease.proxy_id == proxies[name].id
        return lease

    def use(name: str, outcome: LeaseOutcome, **fields: Any) -> None:
        report = OutcomeReport(outcome=outcome, **fields)
        assert manager.release_proxy(lease_of(name), report)

    use("used", LeaseOutcome.SUCCESS, latency_ms=120)
    use("used", LeaseOutcome.SUCCESS, latency_ms=120)
    use("used", LeaseOutcome.FAILURE)
    use("cooling", LeaseOutcome.BAN)
    use("domain", LeaseOutcome.BAN, domain="shop.example")
    lease_of("used", consumer="holder")  # kept: one lease out
    for name in ("used", "cooling", "domain"):
        storage.set_proxy_status(proxies[name].id, ProxyStatus.ACTIVE)
    storage.set_proxy_status(proxies["banned"].id, ProxyStatus.BANNED)


def test_pools_lists_every_pool_with_its_counts(
    storage_url: str, storage: IStorage, tmp_path: Path
) -> None:
    populate(storage)
    result = run_scrapy("pharox-pools", "--storage", storage_url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "pool", "total", "active", "leased", "cooling", "down", "banned",
    ]  # fmt: skip
    assert rows_of(result.stdout) == {
        "empty": ["0", "0", "0", "0", "0"],
        "web": ["5", "3", "1", "1", "1"],
    }


def test_proxies_shows_health_per_proxy_without_passwords(
    storage_url: str, storage: IStorage, tmp_path: Path
) -> None:
    populate(storage)
    web = pool_named(storage, "web")
    storage.add_proxy(
        Proxy.from_url("http://carol:t0p-secret@10.0.1.2:9000", pool_id=web.id)
    )
    result = run_scrapy(
        "pharox-proxies", "--pool", "web", "--storage", storage_url, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "t0p-secret" not in result.stdout
    table, _, domains = result.stdout.partition("\n\n")
    assert table.splitlines()[0].split() == [
        "proxy", "status", "leases", "successes", "bans", "failures", "latency",
        "cooldown", "left",
    ]  # fmt: skip
    rows = rows_of(table)
    assert rows["http://10.0.1.1:8001"] == [
        "active",
        "1/2",
        "2",
        "0",
        "1",
        "120 ms",
        "-",
    ]
    cooling = rows["http://10.0.1.1:8002"]
    assert cooling[:5] == ["active", "0/2", "0", "1", "0"]
    assert cooling[6].endswith("s")  # about a minute left
    assert rows["http://10.0.1.1:8003"][3] == "1"
    assert rows["http://10.0.1.1:8003"][6] == "-"
    assert rows["http://10.0.1.1:8004"][0] == "inactive"
    assert rows["http://10.0.1.1:8005"][0] == "banned"
    assert rows["http://carol:***@10.0.1.2:9000"][:2] == ["active", "0/-"]
    assert domains.splitlines()[0] == "Cooling down for one domain only:"
    domain_rows = rows_of("\n".join(domains.splitlines()[1:]))
    assert domain_rows["http://10.0.1.1:8003"][:2] == ["shop.example", "1"]


# -- pharox-set ------------------------------------------------------------------


def test_set_takes_a_proxy_out_and_puts_it_back_with_its_cooldown_cleared(
    storage_url: str, storage: IStorage, tmp_path: Path
) -> None:
    populate(storage)
    web = pool_named(storage, "web")
    for url in ("http://dave:pw-one@10.0.1.3:7000", "http://erin:pw-two@10.0.1.3:7000"):
        storage.add_proxy(Proxy.from_url(url, pool_id=web.id))

    def status(port: int, user: str | None = None) -> Proxy:
        return next(
            proxy
            for proxy in storage.list_proxies("web")
            if proxy.port == port
            and (user is None or (proxy.credentials and proxy.credentials.user == user))
        )

    out = run_scrapy(
        "pharox-set", "--pool", "web", "--proxy", "http://10.0.1.1:8001",
        "--status", "inactive", "--storage", storage_url, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert (
        out.stdout.strip() == "http://10.0.1.1:8001 in pool 'web': active -> inactive"
    )
    assert status(8001).status is ProxyStatus.INACTIVE

    back = run_scrapy(
        "pharox-set", "--pool", "web", "--proxy", "http://10.0.1.1:8002",
        "--status", "ACTIVE", "--storage", storage_url, cwd=tmp_path,
    )  # fmt: skip
    assert back.returncode == 0, back.stderr
    assert back.stdout.strip() == (
        "http://10.0.1.1:8002 in pool 'web': active -> active (cooldowns cleared)"
    )
    assert status(8002).cooldown_until is None
    assert status(8002).consecutive_bans == 0
    assert ProxyManager(storage).acquire_proxy("web") is not None

    by_user = run_scrapy(
        "pharox-set", "--pool", "web", "--proxy", "http://erin:***@10.0.1.3:7000",
        "--status", "inactive", "--storage", storage_url, cwd=tmp_path,
    )  # fmt: skip
    assert by_user.returncode == 0, by_user.stderr
    assert by_user.stdout.startswith("http://erin:***@10.0.1.3:7000 in pool 'web'")
    assert status(7000, "erin").status is ProxyStatus.INACTIVE
    assert status(7000, "dave").status is ProxyStatus.ACTIVE

    ambiguous = one_error_line(
        run_scrapy(
            "pharox-set", "--pool", "web", "--proxy", "http://10.0.1.3:7000",
            "--status", "inactive", "--storage", storage_url, cwd=tmp_path,
        )
    )  # fmt: skip
    assert "matches 2 proxies" in ambiguous and "give the user too" in ambiguous
    assert "pw-one" not in ambiguous and "pw-two" not in ambiguous


# -- pharox-check ----------------------------------------------------------------


@pytest.mark.crawl
def test_check_records_each_proxy_and_prints_a_summary(
    storage_url: str,
    storage: IStorage,
    tmp_path: Path,
    site: TargetSite,
    start_proxy: Callable[..., ForwardProxy],
) -> None:
    working = start_proxy()
    dead = free_port()
    write(tmp_path / "p.txt", f"{working.url}\nhttp://127.0.0.1:{dead}\n")
    imported = run_scrapy(
        "pharox-import", "p.txt", "--pool", "hc", "--storage", storage_url,
        cwd=tmp_path,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr

    result = run_scrapy(
        "pharox-check", "--pool", "hc", "--storage", storage_url,
        "-s", f"PHAROX_CHECK_URL={site.url}/page/2", cwd=tmp_path,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    summary, *table = result.stdout.strip().splitlines()
    assert summary.startswith(f"Checked 2 proxies of pool 'hc' through {site.url}/")
    assert summary.endswith("1 active, 0 slow, 1 inactive, 0 skipped")
    rows = rows_of("\n".join(["header", *table[1:]]))
    assert rows[working.url][0] == "active"
    assert rows[working.url][1].endswith(" ms")
    assert rows[working.url][2] == "HTTP 200"
    assert rows[f"http://127.0.0.1:{dead}"][:2] == ["inactive", "-"]
    assert "refused" in rows[f"http://127.0.0.1:{dead}"][2].lower()
    progress = result.stderr.strip()
    assert progress.startswith("checking hc [")
    assert progress.endswith("] 2/2")
    assert "Traceback" not in result.stderr
    assert [request.path for request in site.requests] == ["/page/2"]
    statuses = {proxy.port: proxy.status for proxy in storage.list_proxies("hc")}
    assert statuses == {working.port: ProxyStatus.ACTIVE, dead: ProxyStatus.INACTIVE}


# -- failures: one line, no traceback --------------------------------------------


def test_a_bad_storage_url_fails_in_one_line(tmp_path: Path) -> None:
    line = one_error_line(
        run_scrapy(
            "pharox-pools", "--storage", "mysql://root:sekrit@db/x", cwd=tmp_path
        )
    )
    assert line.startswith("scrapy pharox-pools: error: unsupported storage URL")
    assert "sekrit" not in line


def test_an_unreachable_database_fails_in_one_line(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://user:sekrit@127.0.0.1:{free_port()}/db"
    line = one_error_line(run_scrapy("pharox-pools", "--storage", url, cwd=tmp_path))
    assert line.startswith("scrapy pharox-pools: error: cannot reach the database")
    assert "sekrit" not in line


def test_the_in_memory_default_is_refused_in_one_line(tmp_path: Path) -> None:
    line = one_error_line(run_scrapy("pharox-proxies", "--pool", "x", cwd=tmp_path))
    assert "memory:// lives and dies with one process" in line
    assert "--storage" in line and "PHAROX_STORAGE_URL" in line


def test_an_unreadable_file_fails_in_one_line(sqlite_url: str, tmp_path: Path) -> None:
    line = one_error_line(
        run_scrapy(
            "pharox-import", "absent.txt", "--pool", "p", "--storage", sqlite_url,
            cwd=tmp_path,
        )
    )  # fmt: skip
    assert line == (
        "scrapy pharox-import: error: cannot read 'absent.txt': "
        "No such file or directory"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pharox-proxies", "--pool", "nope"], "no pool named 'nope' (pools: known)"),
        (["pharox-check", "--pool", "nope", "-s", "PHAROX_CHECK_URL=http://x/"],
         "no pool named 'nope'"),
        (["pharox-check", "--pool", "known"], "PHAROX_CHECK_URL is not set"),
        (["pharox-set", "--pool", "nope", "--proxy", "http://h:1", "--status",
          "active"], "no pool named 'nope'"),
        (["pharox-set", "--pool", "known", "--proxy", "http://h:1", "--status",
          "paused"], "--status must be active or inactive, got 'paused'"),
        (["pharox-set", "--pool", "known", "--proxy", "http://u:pw-9@h",
          "--status", "active"], "invalid proxy URL 'http://u:***@h': no port"),
        (["pharox-set", "--pool", "known", "--proxy", "http://10.9.9.9:1",
          "--status", "active"], "no proxy http://10.9.9.9:1 in pool 'known'"),
    ],
)  # fmt: skip
def test_bad_input_fails_in_one_line(
    args: list[str], message: str, sqlite_url: str, tmp_path: Path
) -> None:
    store = open_storage(sqlite_url)
    try:
        bootstrap_pool(store, name="known")
    finally:
        store.close()
    line = one_error_line(run_scrapy(*args, "--storage", sqlite_url, cwd=tmp_path))
    assert line.startswith(f"scrapy {args[0]}: error: ")
    assert message in line
    assert "pw-9" not in line


# -- settings and discovery ------------------------------------------------------


def test_the_project_settings_name_the_storage(sqlite_url: str, tmp_path: Path) -> None:
    write(tmp_path / "scrapy.cfg", "[settings]\ndefault = shop.settings\n")
    (tmp_path / "shop").mkdir()
    write(tmp_path / "shop" / "__init__.py", "")
    write(
        tmp_path / "shop" / "settings.py",
        f'BOT_NAME = "shop"\nPHAROX_STORAGE_URL = {sqlite_url!r}\n',
    )
    write(tmp_path / "p.txt", "http://10.0.0.5:3128\n")
    assert (
        run_scrapy("pharox-import", "p.txt", "--pool", "mine", cwd=tmp_path).returncode
        == 0
    )

    result = run_scrapy("pharox-pools", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert rows_of(result.stdout) == {"mine": ["1", "1", "0", "0", "0"]}


def test_scrapy_lists_the_commands_outside_a_project(tmp_path: Path) -> None:
    result = run_scrapy(cwd=tmp_path)
    listed = {line.split()[0] for line in result.stdout.splitlines() if line.strip()}
    assert set(COMMANDS) <= listed
