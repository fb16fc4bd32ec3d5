"""Gateway exits of the in-memory adapter: a renewal is a compare and set under
the storage's one lock."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timezone
from uuid import UUID

from ..exceptions import ProxyNotFoundError
from ..models import Proxy, renewed_credentials
from .identities import IdentityStorage, check_renewal
from .memory_pool import PoolIndex


class MemoryIdentities(IdentityStorage):
    """The gateway part of ``InMemoryStorage`` (which sets these)."""

    _lock: threading.Lock
    _clock: Callable[[], float]
    _pools: dict[str, PoolIndex]

    def _pool_of(self, proxy_id: UUID) -> PoolIndex | None:
        """The pool holding the proxy (the adapter's lookup, kept here)."""
        return next(
            (pool for pool in self._pools.values() if proxy_id in pool.slots), None
        )

    def renew_identity(
        self,
        proxy_id: UUID,
        session_id: str,
        new_session_id: str,
        *,
        max_leases: int | None = None,
    ) -> Proxy:
        check_renewal(session_id, new_session_id, max_leases)
        with self._lock:
            pool = self._pool_of(proxy_id)
            if pool is None:
                raise ProxyNotFoundError(f"no proxy with id {proxy_id}")
            slot = pool.slots[proxy_id]
            proxy = slot.proxy
            if proxy.session_id != session_id or (
                max_leases is not None and proxy.current_leases > max_leases
            ):
                return proxy.model_copy()
            now = self._clock()
            proxy.credentials = renewed_credentials(
                proxy.credentials, session_id, new_session_id
            )
            proxy.session_id = new_session_id
            proxy.session_started_at = datetime.fromtimestamp(now, timezone.utc)
            proxy.successes = proxy.bans = proxy.failures = 0
            proxy.consecutive_bans = proxy.consecutive_failures = 0
            proxy.latency_ms = proxy.cooldown_until = None
            slot.cooldown_until = 0.0
            slot.domain_cooldowns.clear()
            slot.leased_for.clear()
            pool.push_if_free(slot, now)
            return proxy.model_copy()
