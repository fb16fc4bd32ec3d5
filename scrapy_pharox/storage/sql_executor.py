"""The one way the SQL adapters run an operation: ``Executor``.

An operation is written once per dialect as its steps (``sql_steps.Steps``: a
generator of queries that gets each query's rows back). The executor drives
them on a connection of the dialect's driver, in a transaction when the
operation needs one, and owns what every operation needs around that: another
try after a lost connection or a busy database (the steps learn they are a
retry, so an acquire whose reply was lost finds its lease instead of taking a
second one), the driver's errors turned into StorageError, and connections that
died kept out of use (the driver's ``give_back``). On PostgreSQL it also drives
steps on the running loop (``run_async``), where the queries of many
coroutines share round trips (``sql_rounds``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from ..exceptions import StorageError
from .sql_errors import Retry, reason
from .sql_query import Steps

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Driver(Protocol):
    """A dialect's blocking connections, and how steps run on one."""

    @property
    def error(self) -> type[Exception]:
        """The driver's base error class: what a try can fail with."""

    def take(self) -> Any:
        """A connection for one operation."""

    def give_back(self, conn: Any) -> None:
        """The connection back after the operation (closed if it is not usable)."""

    def drive(self, conn: Any, steps: Steps[T], *, atomic: bool, read_only: bool) -> T:
        """Run ``steps`` on ``conn`` to their result; in one transaction when
        ``atomic`` (or when the dialect runs every operation in one)."""

    def transient(self, exc: Exception) -> bool:
        """Whether another try may succeed."""

    def close(self) -> None:
        """Close every connection it keeps."""


class Pipeliner(Protocol):
    """Steps of many coroutines on the running loop (``sql_rounds.Pipeliner``)."""

    async def run(self, steps: Steps[T]) -> T: ...

    def close(self) -> None: ...


class Executor:
    """Runs operations' steps on a driver: retried, translated, in transactions.

    ``describe(action, error)`` words a driver error as the StorageError to
    raise (it names the database, password masked).
    """

    def __init__(
        self,
        driver: Driver,
        *,
        shown_url: str,
        describe: Callable[[str, BaseException], StorageError],
        retry_seconds: float,
        pipeliner: Pipeliner | None = None,
    ) -> None:
        self.driver = driver
        self._pipeliner = pipeliner
        self._shown_url = shown_url
        self._describe = describe
        self._retry_seconds = retry_seconds

    def run(
        self,
        action: str,
        steps: Callable[[bool], Steps[T]],
        *,
        atomic: bool = False,
        read_only: bool = False,
        retry: bool = True,
    ) -> T:
        """Drive ``steps(retrying)`` to its result; again after a transient
        failure (for up to ``retry_seconds``) unless ``retry`` is False."""
        tries = Retry(self._retry_seconds)
        while True:
            conn = None
            try:
                conn = self.driver.take()
                return self.driver.drive(
                    conn, steps(tries.retrying), atomic=atomic, read_only=read_only
                )
            except self.driver.error as exc:
                delay = self._next_try(action, exc, tries, retry)
            finally:
                if conn is not None:
                    self.driver.give_back(conn)
            time.sleep(delay)

    async def run_async(self, action: str, steps: Callable[[bool], Steps[T]]) -> T:
        """``run`` on the running loop, for single-statement steps: the loop
        serves others while it waits, and the steps of several coroutines
        share round trips."""
        assert self._pipeliner is not None, "only a dialect with a pipeliner runs async"
        tries = Retry(self._retry_seconds)
        while True:
            try:
                return await self._pipeliner.run(steps(tries.retrying))
            except self.driver.error as exc:
                delay = self._next_try(action, exc, tries, True)
            await asyncio.sleep(delay)

    def close(self) -> None:
        """Close every idle connection (one in use closes when given back)."""
        self.driver.close()
        if self._pipeliner is not None:
            self._pipeliner.close()

    def _next_try(
        self, action: str, exc: Exception, tries: Retry, retry: bool
    ) -> float:
        """The wait before another try, or the StorageError to raise now."""
        if not (retry and self.driver.transient(exc) and tries.allowed()):
            raise self._describe(action, exc) from exc
        logger.warning(
            "%s on %s failed (%s); trying again", action, self._shown_url, reason(exc)
        )
        return tries.next_delay()


def drive_steps(conn: Any, steps: Steps[T], error: type[Exception]) -> T:
    """Run each query ``steps`` yields on ``conn`` and send the steps its result;
    a driver ``error`` is thrown into the steps instead."""
    query = next(steps)
    while True:
        try:
            try:
                result = query.run(conn)
            except error as exc:
                query = steps.throw(exc)
            else:
                query = steps.send(result)
        except StopIteration as done:
            value: T = done.value
            return value
