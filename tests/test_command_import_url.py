"""``scrapy pharox-import URL``: a live list fetched from a local page (the
playground's ``/proxies.txt``), end to end in a subprocess."""

from __future__ import annotations

from pathlib import Path

from test_commands import PROXIES_FILE

from crawl_support import one_error_line, run_scrapy
from scrapy_pharox import open_storage
from scrapy_pharox.playground import TargetSite


def list_url(site: TargetSite, password: str = "list-pw") -> str:
    return f"http://lister:{password}@127.0.0.1:{site.port}/proxies.txt"


def test_import_takes_a_url_sending_its_credentials_and_showing_none(
    site: TargetSite, sqlite_url: str, tmp_path: Path
) -> None:
    site.proxy_list = PROXIES_FILE
    result = run_scrapy(
        "pharox-import", list_url(site), "--pool", "res", "--storage", sqlite_url,
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr  # the file's bad lines
    report = result.stdout.splitlines()
    assert report[1].split() == ["added", "2", "http://10.0.0.5:3128"]
    assert report[2].split() == ["added", "3", "http://alice:***@10.0.0.6:3128"]
    assert "Pool 'res': 2 added, 1 already present, 3 rejected" in result.stdout
    for secret in ("list-pw", "s3cret-pw", "hunter2-pw"):
        assert secret not in result.stdout + result.stderr
    (fetch,) = site.list_fetches
    assert fetch.headers["Authorization"] == "Basic bGlzdGVyOmxpc3QtcHc="
    storage = open_storage(sqlite_url)
    try:
        assert len(storage.list_proxies("res")) == 2
    finally:
        storage.close()


def test_import_of_a_url_that_fails_is_one_error_line_password_masked(
    site: TargetSite, sqlite_url: str, tmp_path: Path
) -> None:
    site.proxy_list_status = 503
    result = run_scrapy(
        "pharox-import", list_url(site, "p@ss-w0rd".replace("@", "%40")), "--pool",
        "res", "--storage", sqlite_url, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1
    assert one_error_line(result) == (
        "scrapy pharox-import: error: cannot fetch "
        f"'http://lister:***@127.0.0.1:{site.port}/proxies.txt': HTTP 503"
    )
