"""How the keeper calls its storage: inline, in worker threads, or on the loop.

One caller is chosen per keeper, when it is built, from what the storage is:
memory storage answers inline, blocking storage (a database) in worker threads,
and storage that waits on an asyncio loop (``native_async``) on the running loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from .bridge import Offloader, running_loop
from .models import ProxyFilters, ProxyProtocol

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from .manager import ProxyManager
    from .models import Lease, OutcomeReport, Paced, SelectorStrategy

T = TypeVar("T")


@dataclass(frozen=True)
class Target:
    """Where a request's proxy comes from."""

    pool: str
    filters: ProxyFilters | None
    selector: SelectorStrategy
    #: Seconds between two leases of one proxy for one domain (0: none).
    reuse_delay: float = 0.0


@dataclass(frozen=True, slots=True)
class AcquireRequest:
    """What one acquire asks the storage for."""

    pool: str
    consumer: str
    duration_seconds: float
    filters: ProxyFilters | None
    selector: SelectorStrategy
    domain: str | None
    #: Seconds between two leases of a proxy for ``domain`` (0: none).
    reuse_delay: float = 0.0


def with_protocols(
    filters: ProxyFilters | None, protocols: frozenset[ProxyProtocol]
) -> ProxyFilters | None:
    """``filters`` narrowed to proxies speaking one of ``protocols``."""
    if len(protocols) == len(ProxyProtocol):
        return filters
    return ProxyFilters(
        any_of=[
            ProxyFilters(protocol=protocol)
            for protocol in sorted(protocols, key=lambda protocol: protocol.value)
        ],
        all_of=[filters] if filters is not None else None,
    )


class StorageCaller:
    """Calls the manager's storage in the way its storage needs."""

    #: True when ``acquire_now`` and ``release_now`` answer without a coroutine.
    inline: ClassVar[bool] = False

    def __init__(self, manager: ProxyManager) -> None:
        self.manager = manager

    @staticmethod
    def for_manager(manager: ProxyManager) -> StorageCaller:
        """The caller the manager's storage needs."""
        storage = manager.storage
        if storage.native_async:
            return LoopCaller(manager)
        if storage.blocking_io:
            return ThreadCaller(manager)
        return InlineCaller(manager)

    def acquire_now(self, request: AcquireRequest) -> Lease | Paced | None:
        """Acquire right here, blocking until the storage answers."""
        return self.manager.acquire_proxy(
            request.pool,
            request.consumer,
            request.duration_seconds,
            request.filters,
            request.selector,
            request.domain,
            reuse_delay=request.reuse_delay,
        )

    def release_now(self, lease: Lease, report: OutcomeReport | None) -> bool:
        """Release right here, blocking until the storage answers."""
        return self.manager.release_proxy(lease, report)

    def extend_now(self, lease: Lease, seconds: float) -> bool:
        """Extend right here, blocking until the storage answers."""
        return self.manager.extend_lease(lease, seconds)

    # acquire and release hand back the coroutine that does the work rather than
    # wrap it in one more: a frame less on every request.
    def acquire(
        self, request: AcquireRequest
    ) -> Coroutine[Any, Any, Lease | Paced | None]:
        """Acquire without blocking the reactor."""
        return self.call(self.acquire_now, request)

    def release(
        self, lease: Lease, report: OutcomeReport | None
    ) -> Coroutine[Any, Any, bool]:
        """Release without blocking the reactor."""
        return self.call(self.release_now, lease, report)

    def extend(self, lease: Lease, seconds: float) -> Coroutine[Any, Any, bool]:
        """Extend without blocking the reactor."""
        return self.call(self.extend_now, lease, seconds)

    async def call(self, func: Callable[..., T], *args: Any) -> T:
        """Await ``func(*args)``, a blocking storage call, without blocking."""
        return func(*args)

    def in_background(self) -> bool:
        """Whether a release may go on in an asyncio task of its own now."""
        return False

    def shutdown(self) -> None:
        """Stop the worker threads, if any."""


class InlineCaller(StorageCaller):
    """Storage that neither does I/O nor waits on a loop (memory): called right
    here, without a coroutine around each call, on the per-request path."""

    inline = True


class ThreadCaller(StorageCaller):
    """Blocking storage: every call runs in a worker thread."""

    def __init__(self, manager: ProxyManager) -> None:
        super().__init__(manager)
        self._offloader = Offloader(threads=8)

    async def call(self, func: Callable[..., T], *args: Any) -> T:
        return await self._offloader.run(func, *args)

    def shutdown(self) -> None:
        self._offloader.shutdown()


class LoopCaller(ThreadCaller):
    """Storage that waits on the running asyncio loop; under another Twisted
    reactor, where no asyncio loop runs, it falls back to worker threads."""

    def acquire(
        self, request: AcquireRequest
    ) -> Coroutine[Any, Any, Lease | Paced | None]:
        if running_loop() is None:
            return super().acquire(request)
        return self.manager.acquire_proxy_async(
            request.pool,
            request.consumer,
            request.duration_seconds,
            request.filters,
            request.selector,
            request.domain,
            reuse_delay=request.reuse_delay,
        )

    def release(
        self, lease: Lease, report: OutcomeReport | None
    ) -> Coroutine[Any, Any, bool]:
        if running_loop() is None:
            return super().release(lease, report)
        return self.manager.release_proxy_async(lease, report)

    def extend(self, lease: Lease, seconds: float) -> Coroutine[Any, Any, bool]:
        if running_loop() is None:
            return super().extend(lease, seconds)
        return self.manager.extend_lease_async(lease, seconds)

    def in_background(self) -> bool:
        return running_loop() is not None
