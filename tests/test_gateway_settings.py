"""Gateways as settings, file lines and imports: PHAROX_GATEWAYS, a proxies-file
line whose URL holds ``{session}`` (``identities=N session_seconds=S``), and
``scrapy pharox-import`` of such a line; errors name the entry, password masked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scrapy.settings import Settings

from crawl_support import run_scrapy
from scrapy_pharox import IStorage, PharoxConfig, PharoxSettingError
from scrapy_pharox.storage import open_storage

GATEWAY = "http://cust-42-session-{session}:s3cret@gw.example:7000"


def config(**settings: Any) -> PharoxConfig:
    return PharoxConfig.from_settings(Settings(settings))


def message_of(**settings: Any) -> str:
    with pytest.raises(PharoxSettingError) as bad:
        config(**settings)
    return str(bad.value)


def test_a_gateway_setting_becomes_its_exits_in_their_pools() -> None:
    parsed = config(
        PHAROX_POOL="main",
        PHAROX_GATEWAYS=[
            {"url": GATEWAY, "identities": 3, "country": "de", "max_concurrency": 1},
            {
                "url": GATEWAY.replace("42", "43"),
                "identities": 2,
                "pool": "mobile",
                "session_seconds": 60,
            },
        ],
    )
    exits = parsed.gateway_exits
    assert [pool for pool, _ in exits] == ["main"] * 3 + ["mobile"] * 2
    first = exits[0][1]
    assert (first.host, first.port, first.country, first.max_concurrency) == (
        "gw.example",
        7000,
        "DE",
        1,
    )
    assert first.session_seconds == 600  # the default sticky time
    assert exits[3][1].session_seconds == 60
    ids = [proxy.session_id for _, proxy in exits]
    assert len(set(ids)) == 5 and all(i is not None and len(i) == 12 for i in ids)
    assert first.credentials is not None
    assert first.credentials.user == f"cust-42-session-{first.session_id}"
    assert [proxy.identity for _, proxy in exits[:2]] == [
        "http://cust-42-session-{session}:***@gw.example:7000#1",
        "http://cust-42-session-{session}:***@gw.example:7000#2",
    ]


def test_gateways_may_be_given_as_json_text() -> None:
    parsed = config(PHAROX_GATEWAYS=f'[{{"url": "{GATEWAY}", "identities": 2}}]')
    assert len(parsed.gateway_exits) == 2


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"identities": 2}, "entry 1 has no url"),
        ({"url": GATEWAY}, "needs identities=N"),
        ({"url": GATEWAY, "identities": 0}, "identities must be at least 1, got 0"),
        ({"url": GATEWAY, "identities": "many"}, "'many'"),
        ({"url": GATEWAY, "identities": 2, "colour": "red"}, "unknown key 'colour'"),
        ({"url": GATEWAY, "identities": 2, "session_seconds": 0}, "session_seconds"),
        ({"url": GATEWAY, "identities": 2, "pool": ""}, "pool must be"),
        (
            {"url": "http://cust:s3cret@gw-{session}.example:7000", "identities": 2},
            "in its user name or password",
        ),
        (
            {"url": "http://cust:s3cret@gw.example:7000", "identities": 2},
            "exactly once",
        ),
    ],
)
def test_a_bad_gateway_is_refused_naming_its_entry_and_the_problem(
    entry: dict[str, Any], problem: str
) -> None:
    message = message_of(PHAROX_GATEWAYS=[entry])
    assert message.startswith("PHAROX_GATEWAYS entry 1")
    assert problem in message
    assert "s3cret" not in message


def test_gateways_must_be_a_list_of_dicts() -> None:
    assert "a list of dicts" in message_of(PHAROX_GATEWAYS={"url": GATEWAY})
    assert "entry 1 must be a dict" in message_of(PHAROX_GATEWAYS=[GATEWAY])


def test_a_proxies_file_line_with_a_session_placeholder_stands_for_its_exits(
    tmp_path: Path,
) -> None:
    listing = tmp_path / "proxies.txt"
    listing.write_text(
        "http://10.0.0.5:3128\n"
        f"{GATEWAY} identities=3 session_seconds=120 country=fr  # residential\n"
    )
    parsed = config(PHAROX_PROXIES_FILE=str(listing))
    assert len(parsed.proxies) == 4
    exits = parsed.proxies[1:]
    assert {proxy.session_seconds for proxy in exits} == {120}
    assert {proxy.country for proxy in exits} == {"FR"}
    assert len({proxy.session_id for proxy in exits}) == 3


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (GATEWAY, "needs identities=N"),
        ("http://10.0.0.5:3128 identities=3", "'identities=3' is not one of"),
        (f"{GATEWAY} identities=2 session_seconds=soon", "'soon'"),
    ],
)
def test_a_bad_gateway_line_is_named_by_its_number_password_masked(
    tmp_path: Path, line: str, problem: str
) -> None:
    listing = tmp_path / "proxies.txt"
    listing.write_text(f"# gateways\n{line}\n")
    message = message_of(PHAROX_PROXIES_FILE=str(listing))
    assert "proxies.txt:2: " in message and problem in message
    assert "s3cret" not in message


@pytest.fixture
def sqlite_storage_url(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path / 'pharox.db'}"


IMPORT = ("pharox-import", "gateways.txt", "--pool", "res")


def test_import_adds_a_gateway_line_s_exits_once(
    sqlite_storage_url: str, tmp_path: Path
) -> None:
    (tmp_path / "gateways.txt").write_text(f"{GATEWAY} identities=2\n")
    runs = [
        run_scrapy(
            "pharox-import",
            "gateways.txt",
            "--pool",
            "res",
            "--storage",
            sqlite_storage_url,
            cwd=tmp_path,
        )
        for _ in range(2)
    ]
    assert [run.returncode for run in runs] == [0, 0], runs[0].stderr
    assert "Pool 'res': 2 added, 0 already present" in runs[0].stdout
    assert "Pool 'res': 0 added, 2 already present" in runs[1].stdout
    assert all("s3cret" not in run.stdout + run.stderr for run in runs)
    storage: IStorage = open_storage(sqlite_storage_url)
    try:
        exits = storage.list_proxies("res")
    finally:
        storage.close()
    assert len(exits) == 2 and {proxy.session_seconds for proxy in exits} == {600}
