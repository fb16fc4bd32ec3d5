"""What a session is on the crawl's side: its key's binding and jar, and the
turns its requests hold while they are out."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scrapy.http.cookies import CookieJar

if TYPE_CHECKING:
    from .callers import AcquireRequest
    from .models import Lease
    from .models.sessions import SessionBinding

#: The meta key naming a request's session.
SESSION_META_KEY = "pharox_session"
#: The turn a session request holds while it is out (see ``SessionTurn``).
TURN_KEY = "_pharox_session_turn"
#: Set with ``dont_merge_cookies`` by us: the session's jar, not Scrapy's, holds
#: the request's cookies.
OUR_COOKIES_KEY = "_pharox_session_cookies"


class LocalSession:
    """This crawl's side of one session key."""

    __slots__ = (
        "binding",
        "failures",
        "in_flight",
        "jar",
        "key",
        "not_before",
        "pool",
        "renewed_at",
        "sent_at",
        "turning",
    )

    def __init__(self, pool: str, key: str) -> None:
        self.pool = pool
        self.key = key
        self.binding: SessionBinding | None = None
        self.jar = CookieJar()
        self.in_flight = 0
        self.failures = 0
        #: ``time.monotonic()`` before which no request of it goes out (a rest).
        self.not_before = 0.0
        self.renewed_at = 0.0
        #: ``time.monotonic()`` of its last request to each host (reuse delays).
        self.sent_at: dict[str | None, float] = {}
        #: A bind, renewal or rotation is under way: the others wait for it.
        self.turning = False

    def __repr__(self) -> str:  # never the cookies
        return f"<session {self.key!r} of pool {self.pool!r}>"


class SessionTurn:
    """One request of a session out now, on the binding it went out with."""

    __slots__ = ("acquire", "binding", "open", "session")

    def __init__(
        self, session: LocalSession, binding: SessionBinding, acquire: AcquireRequest
    ) -> None:
        self.session = session
        self.binding = binding
        #: What the request asks of a proxy (its pool, filters, domain...).
        self.acquire = acquire
        self.open = True

    @property
    def lease(self) -> Lease:
        return self.binding.lease

    @property
    def current(self) -> bool:
        """Whether its session still holds the lease the request went out with."""
        binding = self.session.binding
        return binding is not None and binding.lease.id == self.binding.lease.id

    def __reduce__(self) -> Any:  # a turn is no more once on disk
        return (_closed_turn, ())


def _closed_turn() -> None:
    return None
