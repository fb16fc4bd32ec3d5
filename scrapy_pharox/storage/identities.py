"""The gateway part of the storage contract, which ``IStorage`` inherits: an
exit of a provider gateway (a proxy with an ``identity``) renewed to a new
session id by one compare and set, so two processes never turn one exit into
two ids.
"""

from __future__ import annotations

from uuid import UUID

from ..exceptions import InvalidArgumentError
from ..models import Proxy, check_session_id


class IdentityStorage:
    """Gateway exits. ``renew_identity`` raises InvalidArgumentError by default,
    so an adapter written before gateways keeps working without them."""

    def renew_identity(
        self,
        proxy_id: UUID,
        session_id: str,
        new_session_id: str,
        *,
        max_leases: int | None = None,
    ) -> Proxy:
        """Give the exit ``proxy_id`` the session id ``new_session_id`` if it
        holds ``session_id`` now (and, with ``max_leases``, at most that many
        leases): ``session_id`` replaced by the new one in its credentials, its
        session started now, its health counts from zero, no cooldown (for any
        domain) and no reuse delay. Returns the proxy as stored after the call:
        its ``session_id`` is ``new_session_id`` when this call renewed it, and
        another when it held another id (renewed already) or more leases.
        ProxyNotFoundError for an unknown proxy."""
        check_renewal(session_id, new_session_id, max_leases)
        raise InvalidArgumentError(f"{type(self).__name__} has no gateway exits")


def check_renewal(session_id: str, new_session_id: str, max_leases: int | None) -> None:
    """The arguments of ``renew_identity`` checked before any I/O."""
    check_session_id(session_id)
    check_session_id(new_session_id)
    if new_session_id == session_id:
        raise InvalidArgumentError(
            f"a renewal needs a session id other than {session_id!r}"
        )
    whole = isinstance(max_leases, int) and not isinstance(max_leases, bool)
    if max_leases is not None and (not whole or max_leases < 0):
        raise InvalidArgumentError(
            f"max_leases must be a whole number from 0, got {max_leases!r}"
        )
