"""Who waits for a proxy, in what order, and whom a freed proxy wakes.

Requests that missed wait in a line per (pool, host). A newcomer to a line that
has waiters waits behind them (it looks when woken, or at its first recheck),
so a freed proxy goes to the longest waiter, not to a newcomer. When the pool's
free proxies are all inside their reuse delay for the host (``Paced``), one
waiter of the line, its pacer, sleeps until the first of them comes out; the
others sleep until the pacer is served (then the next one paces) or their
recheck: a proxy just freed is mostly one just used for that host, so a release
would wake them for nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .bridge import Baton, Wakeup
from .callers import AcquireRequest

if TYPE_CHECKING:
    from .models import Paced

#: A line of waiters: (pool, host).
Line = tuple[str, "str | None"]

#: A pacer tries again this long after its proxy's reuse delay ends, so that
#: the storage's clock has passed it.
PACED_SLACK_SECONDS = 0.005


class WaitingLines:
    """The lines of one keeper's waiting requests, and their wake-ups."""

    def __init__(self, longest_sleep: float) -> None:
        self._wakeup = Wakeup()
        self._longest_sleep = longest_sleep
        self._waiting: dict[Line, int] = {}  # line -> requests in it
        self._pacers: dict[Line, object] = {}  # line -> its pacer

    @property
    def sleepers(self) -> int:
        """How many requests are asleep now."""
        return self._wakeup.sleepers

    def has_waiters(self, line: Line) -> bool:
        """Whether requests wait in ``line``: a newcomer goes behind them."""
        return line in self._waiting

    def join(self, line: Line) -> None:
        """One more request waits in ``line``."""
        self._waiting[line] = self._waiting.get(line, 0) + 1

    def leave(self, line: Line, sleeper: object) -> None:
        """``sleeper`` left ``line`` (served, given up or stopped); a pacer's
        place goes to the next of its line, woken now."""
        if self._waiting.get(line, 0) > 1:
            self._waiting[line] -= 1
        else:
            self._waiting.pop(line, None)
        if self._pacers.get(line) is sleeper:
            del self._pacers[line]
            self._wakeup.wake_one(set(), lambda other: other == line)

    async def sleep(
        self,
        sleeper: object,
        seconds: float,
        since: float,
        request: AcquireRequest,
        line: Line,
        paced: Paced | None,
    ) -> Baton | None:
        """Sleep up to ``seconds`` (a paced waiter: see the module); the baton
        of a release when woken by one, else None."""
        kind: object = request
        if paced is not None:
            if self._pacers.setdefault(line, sleeper) is sleeper:
                seconds = min(seconds, paced.seconds + PACED_SLACK_SECONDS)
            else:
                seconds, kind = min(seconds, self._longest_sleep), line
        return await self._wakeup.sleep(sleeper, seconds, since, kind)

    def pass_on(self, baton: Baton, sleeper: object, request: AcquireRequest) -> None:
        """``sleeper`` was woken by a release it could not use: the longest
        waiter of the pool that asks for something else may (one asking the
        same would miss too)."""
        baton.add(sleeper)
        self._wakeup.wake_one(
            baton,
            lambda other: (
                isinstance(other, AcquireRequest)
                and other.pool == request.pool
                and other != request
            ),
        )

    def wake_for(self, pool_name: str | None) -> None:
        """A lease of the pool came back: wake its longest waiter (any pool's,
        without a name)."""
        if not self._wakeup.sleepers:
            return
        if pool_name is None:
            self._wakeup.wake_one(set())
        else:
            self._wakeup.wake_one(
                set(),
                lambda other: (
                    isinstance(other, AcquireRequest) and other.pool == pool_name
                ),
            )

    def wake_all(self) -> None:
        """End every sleep now."""
        self._wakeup.wake_all()
