"""SQLite's release feed: the file's data version, looked at every few ms.

SQLite has no notices. ``PRAGMA data_version`` on a connection of the feed's
own changes whenever another connection, of this process or another, commits
to the file: a look costs a few microseconds (3.8 measured) and never waits for
a lock, so it runs on the event loop. A change is told as a
release of some pool (the feed cannot tell which, nor tell a release from an
acquire), so each process wakes its longest waiter within ``LOOK_SECONDS`` of
any commit, the releasing process too: no process's waiters get a head start.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable

from ..exceptions import StorageError
from .base import ReleaseFeed

#: How often the feed looks at the file's data version.
LOOK_SECONDS = 0.005


class SqliteReleaseFeed(ReleaseFeed):
    """A ReleaseFeed on a SQLite file (see the module)."""

    def __init__(
        self, database: str, describe: Callable[[str, BaseException], StorageError]
    ) -> None:
        self._database = database
        self._describe = describe
        self._conn: sqlite3.Connection | None = None
        self._version = 0

    async def open(self) -> None:
        try:
            # timeout=0: it runs on the event loop, so it never waits for a
            # lock; a look that finds the file busy tells nothing, and the
            # next one looks again.
            self._conn = sqlite3.connect(
                self._database,
                timeout=0,
                isolation_level=None,
                check_same_thread=False,
            )
            self._version = self._data_version()
        except sqlite3.Error as exc:
            await self.close()
            raise self._describe("looking for releases", exc) from exc

    async def next_release(self) -> str | None:
        while True:
            await asyncio.sleep(LOOK_SECONDS)
            try:
                version = self._data_version()
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc) or "busy" in str(exc):
                    continue
                raise self._describe("looking for releases", exc) from exc
            except sqlite3.Error as exc:
                raise self._describe("looking for releases", exc) from exc
            if version != self._version:
                self._version = version
                return None  # some pool's

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _data_version(self) -> int:
        if self._conn is None:
            raise StorageError("the release feed is not open")
        row = self._conn.execute("PRAGMA data_version").fetchone()
        return int(row[0])
