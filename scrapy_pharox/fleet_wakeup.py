"""Hearing of releases made anywhere in the fleet, so waiters need not poll.

A storage with a release feed (PostgreSQL: LISTEN/NOTIFY) tells every process
of each release that can serve a waiter (one that takes a full proxy back
under its limit) as it commits, the releasing process included. While the
feed is live, each process wakes its longest waiter for the released pool on
the notice; the releaser does not wake its own waiters first, so a freed proxy
goes to one of the fleet's longest waiters, each process's as likely as
another's. When the feed is down (connection lost), waiters fall back to their
polling and the keeper wakes its own waiters on its releases, as without a feed;
the feed is opened again after a pause.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .bridge import running_loop
from .exceptions import StorageError
from .storage.base import IStorage

logger = logging.getLogger(__name__)

#: Pauses between tries to open a feed that went down: doubled up to the last.
FIRST_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 30.0


class FleetWakeup:
    """Calls ``on_release(pool_name)`` for each release the storage's feed tells
    (None: of a pool it cannot tell)."""

    def __init__(
        self, storage: IStorage, on_release: Callable[[str | None], None]
    ) -> None:
        self._storage = storage
        self._on_release = on_release
        self._task: asyncio.Task[None] | None = None
        self._live = False

    @property
    def live(self) -> bool:
        """True while the feed listens: every release that can serve a
        waiter, ours too, will be told."""
        return self._live

    def start(self) -> None:
        """Listen, when the storage has a feed and an asyncio loop runs."""
        loop = running_loop()
        if self._task is not None or loop is None:
            return
        if self._storage.release_feed() is None:  # a feed is cheap until opened
            return
        self._task = loop.create_task(self._listen())

    async def stop(self) -> None:
        """Stop listening; the feed's connection is closed when this returns."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    def stop_now(self) -> None:
        """Stop listening without waiting (the loop may be gone)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()

    async def _listen(self) -> None:
        pause = FIRST_RETRY_SECONDS
        down = False
        while True:
            feed = self._storage.release_feed()
            if feed is None:
                return
            try:
                await feed.open()
                self._live, pause = True, FIRST_RETRY_SECONDS
                if down:
                    logger.info("scrapy-pharox hears of the fleet's releases again")
                    down = False
                while True:
                    self._on_release(await feed.next_release())
            except StorageError as exc:
                if not down:
                    logger.warning(
                        "scrapy-pharox cannot hear of the fleet's releases (%s): "
                        "waiting requests look again on their own meanwhile",
                        exc,
                    )
                    down = True
            finally:
                self._live = False
                await feed.close()
            await asyncio.sleep(pause)
            pause = min(pause * 2, MAX_RETRY_SECONDS)
