"""The sessions of the in-memory adapter: one row per (pool, key), under the
storage's one lock. Cookies are kept as the JSON text a database would hold,
so a caller's list is never shared and a jar JSON cannot hold is refused here
as there."""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import EllipsisType
from uuid import UUID

from ..exceptions import PoolNotFoundError, ProxyNotFoundError
from ..models import (
    ProxySession,
    check_session_key,
    cookies_from_json,
    cookies_to_json,
)
from .memory_pool import PoolIndex
from .sessions import SessionStorage

#: A stored session: the row without its cookies or proxy, and the cookies' JSON.
StoredSession = tuple[ProxySession, str]


class MemorySessions(SessionStorage):
    """The session primitives of ``InMemoryStorage`` (which sets these)."""

    _lock: threading.Lock
    _clock: Callable[[], float]
    _pools: dict[str, PoolIndex]
    _sessions: dict[tuple[str, str], StoredSession]

    def session_clock(self) -> float:
        return self._clock()

    def get_session(self, pool_name: str, key: str) -> ProxySession | None:
        check_session_key(key)
        with self._lock:
            stored = self._sessions.get((pool_name, key))
            return None if stored is None else self._joined(stored)

    def put_session(
        self,
        session: ProxySession,
        expected_generation: int | None,
        *,
        expected_lease_id: UUID | EllipsisType | None = ...,
    ) -> bool:
        check_session_key(session.key)
        cookies = cookies_to_json(session.cookies)
        row = session.model_copy(update={"cookies": [], "proxy": None})
        with self._lock:
            pool = self._pools.get(session.pool_name)
            if pool is None:
                raise PoolNotFoundError(f"no pool named {session.pool_name!r}")
            if session.proxy_id not in pool.slots:
                raise ProxyNotFoundError(
                    f"no proxy with id {session.proxy_id} in pool {session.pool_name!r}"
                )
            place = (session.pool_name, session.key)
            stored = self._sessions.get(place)
            if expected_generation is None:
                if stored is not None:
                    return False
            elif (
                stored is None
                or stored[0].generation != expected_generation
                or (
                    expected_lease_id is not ...
                    and stored[0].lease_id != expected_lease_id
                )
            ):
                return False
            self._sessions[place] = (row, cookies)
            return True

    def delete_session(
        self, pool_name: str, key: str, generation: int | None = None
    ) -> bool:
        check_session_key(key)
        with self._lock:
            stored = self._sessions.get((pool_name, key))
            if stored is None or (
                generation is not None and stored[0].generation != generation
            ):
                return False
            del self._sessions[(pool_name, key)]
            return True

    def list_sessions(self, pool_name: str) -> list[ProxySession]:
        with self._lock:
            return [
                self._joined(stored)
                for (pool, _), stored in sorted(self._sessions.items())
                if pool == pool_name
            ]

    def _joined(self, stored: StoredSession) -> ProxySession:
        """The stored session with its cookies and its proxy (lock held)."""
        row, cookies = stored
        pool = self._pools.get(row.pool_name)
        slot = pool.slots.get(row.proxy_id) if pool is not None else None
        return row.model_copy(
            update={
                "cookies": cookies_from_json(cookies),
                "proxy": slot.proxy.model_copy() if slot is not None else None,
            }
        )
