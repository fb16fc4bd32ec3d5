"""What importing scrapy-pharox costs: SQLAlchemy only for those who use SQL."""

from __future__ import annotations

import subprocess
import sys

MEMORY_CRAWL_IMPORTS = """
import sys
import scrapy_pharox
from scrapy_pharox import PharoxProxyMiddleware, PharoxStatsExtension, open_storage
open_storage("memory://").close()
print(sorted(name for name in sys.modules if name.split(".")[0] == "sqlalchemy"))
"""


def test_a_memory_storage_crawl_setup_does_not_import_sqlalchemy() -> None:
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_CRAWL_IMPORTS],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "[]"


def test_sql_storage_is_still_exported_by_the_package_and_storage() -> None:
    import scrapy_pharox
    import scrapy_pharox.storage
    from scrapy_pharox.storage.sql import SqlStorage

    assert scrapy_pharox.SqlStorage is SqlStorage
    assert scrapy_pharox.storage.SqlStorage is SqlStorage
    assert "SqlStorage" in scrapy_pharox.__all__
