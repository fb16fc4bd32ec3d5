"""The live-list part of the storage contract, which ``IStorage`` inherits: a
claim per pool, so one fleet member refreshes it at a time, the list's state
saved with it, and the sync of a pool with a list, composed once here of those
primitives and of the pool administration.

A list owns what it put in: proxies gone from it are set INACTIVE (kept, with
their counters; leases out finish normally) and remembered as withdrawn, and
only a withdrawn proxy is set ACTIVE again when the list names it anew. A
proxy someone else set INACTIVE (``scrapy pharox-set``, a health check) stays
as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from uuid import UUID

from ..durations import check_seconds
from ..exceptions import InvalidArgumentError
from ..models import Proxy, ProxyPool, ProxyStatus

#: A list takes out only proxies that serve; BANNED and INACTIVE ones are not
#: its to bring back.
_WITHDRAWABLE = frozenset({ProxyStatus.ACTIVE, ProxyStatus.SLOW})


@dataclass(frozen=True)
class SourceState:
    """What a pool's list did: the proxies it names (``listed``) and those it
    took out (``withdrawn``), by id."""

    listed: frozenset[UUID] = frozenset()
    withdrawn: frozenset[UUID] = frozenset()


@dataclass(frozen=True)
class SyncResult:
    """What a sync changed: proxies that joined the pool, came back, left it."""

    added: list[Proxy] = field(default_factory=list)
    returned: list[Proxy] = field(default_factory=list)
    removed: list[Proxy] = field(default_factory=list)
    #: False when another holder took the claim meanwhile (its state wins).
    saved: bool = True


class SourceStorage:
    """Pools that follow a live list (``PHAROX_PROXIES_URL``, a proxies file).

    The primitives raise InvalidArgumentError by default, so an adapter written
    before live lists keeps working without them; ``sync_source`` needs them.
    Claim expiries are by the storage's clock.
    """

    if TYPE_CHECKING:  # the administration of IStorage, which the sync composes

        def add_pool(self, pool: ProxyPool) -> ProxyPool: ...

        def add_proxy(self, proxy: Proxy) -> Proxy: ...

        def list_proxies(self, pool_name: str) -> list[Proxy]: ...

        def set_proxy_status(
            self,
            proxy_id: UUID,
            status: ProxyStatus,
            *,
            latency_ms: float | None = None,
            checked: bool = False,
            reset_cooldown: bool = False,
        ) -> Proxy: ...

    # -- primitives -------------------------------------------------------------

    def claim_refresh(self, pool_name: str, holder: str, seconds: float) -> bool:
        """Hold the refresh of the pool for ``seconds`` from now; True when
        ``holder`` has it: nobody held it, the claim expired, or it was
        ``holder``'s already (renewed). PoolNotFoundError for an unknown pool."""
        raise self._no_live_lists()

    def get_source_state(self, pool_name: str) -> SourceState:
        """The state the pool's last refresh saved (empty when none did)."""
        raise self._no_live_lists()

    def put_source_state(self, pool_name: str, holder: str, state: SourceState) -> bool:
        """Save the pool's list state if ``holder`` still holds the claim
        (expired or not, as long as nobody took it since); True when saved."""
        raise self._no_live_lists()

    def _no_live_lists(self) -> InvalidArgumentError:
        return InvalidArgumentError(f"{type(self).__name__} has no live lists")

    # -- operations ---------------------------------------------------------------

    def sync_source(
        self, pool_name: str, holder: str, proxies: Sequence[Proxy]
    ) -> SyncResult:
        """Make the pool follow ``proxies``, the list's whole content now (the
        caller holds the claim): new ones are added, withdrawn ones named again
        set ACTIVE, ones the last sync listed and this one does not set
        INACTIVE (see the module). Proxies are matched by endpoint, as
        ``add_proxy`` does; their ``pool_id`` is replaced by the pool's."""
        pool = self.add_pool(ProxyPool(name=pool_name))
        state = self.get_source_state(pool_name)
        known = {proxy.id: proxy for proxy in self.list_proxies(pool_name)}
        result = SyncResult()
        listed: set[UUID] = set()
        for proxy in proxies:
            stored = self.add_proxy(proxy.model_copy(update={"pool_id": pool.id}))
            if stored.id not in known and stored.id not in listed:
                result.added.append(stored)
            listed.add(stored.id)
        withdrawn = {pid for pid in state.withdrawn if pid in known}
        for proxy_id in sorted(withdrawn & listed):
            withdrawn.discard(proxy_id)
            if known[proxy_id].status is ProxyStatus.INACTIVE:
                back = self.set_proxy_status(proxy_id, ProxyStatus.ACTIVE)
                result.returned.append(back)
        for proxy_id in sorted(state.listed - listed):
            gone = known.get(proxy_id)
            if gone is not None and gone.status in _WITHDRAWABLE:
                result.removed.append(
                    self.set_proxy_status(proxy_id, ProxyStatus.INACTIVE)
                )
                withdrawn.add(proxy_id)
        saved = self.put_source_state(
            pool_name, holder, SourceState(frozenset(listed), frozenset(withdrawn))
        )
        return SyncResult(result.added, result.returned, result.removed, saved)


def check_claim(holder: str, seconds: float) -> float:
    """A claim's arguments checked before any I/O; its seconds as a float."""
    if not isinstance(holder, str) or not holder:
        raise InvalidArgumentError(f"holder must be a non-empty string, got {holder!r}")
    return check_seconds(seconds, "seconds")
