"""Start-up errors: one clear line and exit code 1, worded for what happened (a
database out of reach, an authentication that failed, a database that is
missing, a URL a parser would misread), the password masked."""

from __future__ import annotations

import pytest
from conftest import database_url, require_postgres
from sqlalchemy.engine import make_url

from crawl_support import REPO, one_error_line, run_scrapy
from pg_cluster import throwaway_cluster
from scrapy_pharox import (
    PharoxConfig,
    PharoxSettingError,
    SqlStorage,
    StorageError,
    UnsupportedStorageURLError,
    open_storage,
)
from scrapy_pharox.crawl_setup import open_configured_storage
from scrapy_pharox.playground import free_port


@pytest.mark.parametrize("password", ["Pw@With@At1", "Pw/With/Slash1", "Pw#With#Hash1"])
def test_a_storage_url_password_with_a_special_character_is_masked_whole_as_malformed(
    password: str,
) -> None:
    with pytest.raises(UnsupportedStorageURLError) as raised:
        SqlStorage(f"postgresql+psycopg://bob:{password}@127.0.0.1:1/db")
    message = str(raised.value)
    assert "malformed storage URL 'postgresql+psycopg://bob:***@127.0.0.1:1/db'" in (
        message
    )
    assert "must be percent-encoded" in message
    assert "With" not in message


@pytest.mark.postgres
def test_a_wrong_password_is_told_as_failed_authentication_for_its_user() -> None:
    with throwaway_cluster(password="right-pw") as cluster:
        url = (
            f"postgresql+psycopg://postgres:wrong-pw@127.0.0.1:{cluster.port}/postgres"
        )
        with pytest.raises(StorageError) as raised:
            open_storage(url)
    message = str(raised.value)
    assert message.startswith(
        "authentication failed for user 'postgres' on the database at "
        f"127.0.0.1:{cluster.port} (postgresql+psycopg://postgres:***@"
    )
    assert "wrong-pw" not in message and "right-pw" not in message


@pytest.mark.postgres
def test_a_missing_database_is_told_as_missing() -> None:
    require_postgres()
    url = make_url(database_url()).set(
        password="s3cret-pw", database="pharox_no_such_database"
    )
    with pytest.raises(StorageError) as raised:
        open_storage(url.render_as_string(hide_password=False))
    message = str(raised.value)
    assert message.startswith(
        "the database 'pharox_no_such_database' does not exist at "
        f"{url.host}:{url.port or 5432}"
    )
    assert "s3cret-pw" not in message


@pytest.mark.crawl
def test_scrapy_crawl_with_its_database_out_of_reach_fails_in_one_line() -> None:
    url = f"postgresql+psycopg://bob:s3cret-pw@127.0.0.1:{free_port()}/db"
    result = run_scrapy(
        "crawl", "pages", "--loglevel", "WARNING", "-s", f"PHAROX_STORAGE_URL={url}",
        cwd=REPO / "example_spider",
    )  # fmt: skip
    line = one_error_line(result)
    assert result.returncode == 1
    assert "s3cret-pw" not in line
    assert (
        " ERROR: scrapy-pharox cannot start the crawl: PHAROX_STORAGE_URL: cannot "
        "reach the database at 127.0.0.1:"
    ) in line


@pytest.mark.parametrize(
    "url", ["postgresql+psycopg://bob:S3cretPW@127.0.0.1/db", "sqlite:///pool.db"]
)
def test_a_storage_url_in_pharox_storage_is_refused_pointing_to_the_url_setting(
    url: str,
) -> None:
    with pytest.raises(PharoxSettingError) as raised:
        open_configured_storage(PharoxConfig(storage=url))
    message = str(raised.value)
    assert "put a storage URL in PHAROX_STORAGE_URL" in message
    assert "S3cretPW" not in message
