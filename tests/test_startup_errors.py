"""Start-up errors: one clear line and exit code 1, worded for what happened (a
database out of reach, an authentication that failed, a database that is
missing, a URL a parser would misread), the password masked."""

from __future__ import annotations

import pytest

from scrapy_pharox import SqlStorage, UnsupportedStorageURLError


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
