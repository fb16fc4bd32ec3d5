"""Where the leasing core meets the reactor: threads for blocking storage calls,
and a wake-up that lets waiting requests sleep until a lease comes back.

Under Scrapy's default asyncio reactor both use asyncio; under another Twisted
reactor, Twisted's thread pool and ``callLater``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar, cast

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

T = TypeVar("T")


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The asyncio loop running this code (Scrapy's default reactor), or None."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def call_later(delay: float, func: Callable[[], None]) -> Callable[[], None]:
    """Run ``func`` in ``delay`` seconds on the running loop (else the reactor);
    return what cancels it. Cancelling after it ran does nothing."""
    loop = running_loop()
    if loop is not None:
        return loop.call_later(delay, func).cancel
    from twisted.internet import reactor  # importing it installs one: late

    call = cast(Any, reactor).callLater(delay, func)

    def cancel() -> None:
        if call.active():
            call.cancel()

    return cancel


class Offloader:
    """Runs blocking calls in worker threads, awaited from reactor code."""

    def __init__(self, threads: int) -> None:
        self._executor = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="pharox-storage"
        )

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        """Await ``func(*args)`` run in a worker thread."""
        loop = running_loop()
        if loop is not None:
            return await loop.run_in_executor(self._executor, partial(func, *args))
        result: T = await deferToThread(func, *args)
        return result

    def shutdown(self) -> None:
        """Stop the worker threads once their calls have finished."""
        self._executor.shutdown(wait=False)


Baton = set[object]


class Wakeup:
    """Sleepers wait, up to a timeout, for a freed lease to be handed to them.

    They stand in line by when they began to wait (``since``), not by when
    their last sleep began: ``wake_one`` wakes the longest waiter that wants
    the freed lease (``wanted``, asked of each sleeper's ``kind``), with a
    baton: the set of sleepers that already had their try. A sleeper that
    cannot use the freed proxy (another took it, or its filters do not match)
    passes the baton on, so one release costs one try in the common case and
    never loops.
    """

    def __init__(self) -> None:
        self._wakers: dict[object, tuple[float, Any, Callable[[Baton | None], None]]]
        self._wakers = {}

    @property
    def sleepers(self) -> int:
        """How many coroutines are asleep here now."""
        return len(self._wakers)

    async def sleep(
        self, sleeper: object, timeout: float, since: float = 0.0, kind: Any = None
    ) -> Baton | None:
        """Sleep up to ``timeout`` seconds; the baton when woken, else None."""
        loop = running_loop()
        if loop is not None:
            future: asyncio.Future[Baton | None] = loop.create_future()

            def wake(baton: Baton | None) -> None:
                if not future.done():
                    future.set_result(baton)

            timer: Any = loop.call_later(timeout, wake, None)
            waiting: Any = future
        else:
            from twisted.internet import reactor  # importing it installs one: late

            deferred: Deferred[Baton | None] = Deferred()

            def wake(baton: Baton | None) -> None:
                if not deferred.called:
                    deferred.callback(baton)

            timer = cast(Any, reactor).callLater(timeout, wake, None)
            waiting = deferred
        self._wakers[sleeper] = (since, kind, wake)
        try:
            baton: Baton | None = await waiting
            return baton
        finally:
            self._wakers.pop(sleeper, None)
            if loop is not None or timer.active():
                timer.cancel()

    def wake_one(
        self, baton: Baton, wanted: Callable[[Any], bool] | None = None
    ) -> None:
        """Hand the baton to the longest waiter that wants it and has not had it."""
        chosen: object | None = None
        first = 0.0
        for sleeper, (since, kind, _) in self._wakers.items():
            if (
                (chosen is None or since < first)
                and sleeper not in baton
                and (wanted is None or wanted(kind))
            ):
                chosen, first = sleeper, since
        if chosen is not None:
            wake = self._wakers.pop(chosen)[2]
            wake(baton)

    def wake_all(self) -> None:
        """End every current sleep now, without a baton."""
        for _, _, wake in list(self._wakers.values()):
            wake(None)
        self._wakers.clear()
