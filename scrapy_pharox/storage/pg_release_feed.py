"""PostgreSQL's release feed: LISTEN on a connection of its own.

A release statement that takes a full proxy back under its limit sends a
notice at its commit (``sql_release.told``); the feed hears them
all, keeps those of its own schema (tests and fleets may share one database)
and tells their pool names.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, Callable
from typing import Any

import psycopg

from ..exceptions import StorageError
from .base import ReleaseFeed
from .sql_release import RELEASE_CHANNEL

#: A quiet feed checks its connection this often: a server gone without a word
#: (a cable pulled) would otherwise leave it waiting for ever.
CHECK_SECONDS = 30.0


class PgReleaseFeed(ReleaseFeed):
    """A ReleaseFeed on one psycopg AsyncConnection (see the module)."""

    def __init__(
        self,
        options: dict[str, Any],
        hooks: list[Callable[[Any], None]],
        describe: Callable[[str, BaseException], StorageError],
    ) -> None:
        self._options = options
        self._hooks = hooks
        self._describe = describe
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._schema = ""
        self._notices: AsyncGenerator[psycopg.Notify] | None = None

    async def open(self) -> None:
        try:
            conn = self._conn = await psycopg.AsyncConnection.connect(**self._options)
            for hook in self._hooks:
                hook(conn)
            cursor = await conn.execute("SELECT current_schema()")
            row = await cursor.fetchone()
            self._schema = row[0] if row else ""
            await conn.execute(f"LISTEN {RELEASE_CHANNEL}")
        except psycopg.Error as exc:
            await self.close()
            raise self._describe("listening for releases", exc) from exc

    async def next_release(self) -> str:
        conn = self._conn
        if conn is None:
            raise StorageError("the release feed is not open")
        try:
            while True:
                if self._notices is None:
                    self._notices = conn.notifies(timeout=CHECK_SECONDS)
                try:
                    notice = await anext(self._notices)
                except StopAsyncIteration:  # quiet for CHECK_SECONDS
                    self._notices = None
                    await conn.execute("SELECT 1")
                    continue
                pool_name = self._pool_of(notice.payload)
                if pool_name is not None:
                    return pool_name
        except psycopg.Error as exc:
            await self.close()
            raise self._describe("listening for releases", exc) from exc

    def _pool_of(self, payload: str) -> str | None:
        """The pool of a notice of this schema's, else None."""
        try:
            schema, pool_name, _lease_id = json.loads(payload)
        except (ValueError, TypeError):  # not one of ours
            return None
        return str(pool_name) if schema == self._schema else None

    async def close(self) -> None:
        notices, self._notices = self._notices, None
        conn, self._conn = self._conn, None
        if notices is not None:
            with contextlib.suppress(psycopg.Error):
                await notices.aclose()
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()
