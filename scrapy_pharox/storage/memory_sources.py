"""The live-list claims of the in-memory adapter: one per pool, under the
storage's one lock, expiring by the storage's clock."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from ..exceptions import PoolNotFoundError
from .memory_pool import PoolIndex
from .sources import SourceState, SourceStorage, check_claim


@dataclass
class _Claim:
    holder: str
    until: float
    state: SourceState


class MemorySources(SourceStorage):
    """The live-list primitives of ``InMemoryStorage`` (which sets these)."""

    _lock: threading.Lock
    _clock: Callable[[], float]
    _pools: dict[str, PoolIndex]
    _claims: dict[str, _Claim]

    def claim_refresh(self, pool_name: str, holder: str, seconds: float) -> bool:
        seconds = check_claim(holder, seconds)
        with self._lock:
            if pool_name not in self._pools:
                raise PoolNotFoundError(f"no pool named {pool_name!r}")
            now = self._clock()
            claim = self._claims.get(pool_name)
            if claim is None:
                self._claims[pool_name] = _Claim(holder, now + seconds, SourceState())
                return True
            if claim.holder != holder and claim.until > now:
                return False
            claim.holder, claim.until = holder, now + seconds
            return True

    def get_source_state(self, pool_name: str) -> SourceState:
        with self._lock:
            claim = self._claims.get(pool_name)
            return SourceState() if claim is None else claim.state

    def put_source_state(self, pool_name: str, holder: str, state: SourceState) -> bool:
        with self._lock:
            claim = self._claims.get(pool_name)
            if claim is None or claim.holder != holder:
                return False
            claim.state = state
            return True
