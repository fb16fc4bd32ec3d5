"""Sessions: one proxy and one cookie jar per key, for every request of a flow.

A request with ``meta["pharox_session"] = key`` goes through its session's proxy
and carries its session's cookies. The storage binds the key to a proxy and
holds one lease slot on it (``IStorage.bind_session``) for the session's life,
renewed as its requests come back; the keeper's ``Sessions`` hold the crawl's
side: the binding, the cookie jar, whose turn it is (PHAROX_SESSION_CONCURRENCY
requests at a time), and when a generation ends (a ban, max uses, max age, a
failed ``pharox_session_check``, failures), after which the key goes on with
another proxy and an empty jar. At spider close the sessions are parked: their
slots go back, their rows stay for the next crawl.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from scrapy.exceptions import IgnoreRequest
from scrapy.utils.defer import deferred_from_coro
from twisted.internet.task import LoopingCall

from .bridge import Wakeup
from .gateway_exits import GatewayExits
from .renewal import SHORTEST_SWEEP_SECONDS
from .session_bindings import ROTATION_REASONS, SessionBindings
from .session_cookies import cookies_of, take_request_cookies
from .session_state import OUR_COOKIES_KEY, LocalSession, SessionTurn

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.http import Response

    from .callers import AcquireRequest
    from .keeper import LeaseKeeper
    from .models import OutcomeReport
    from .models.sessions import ProxySession

logger = logging.getLogger(__name__)

__all__ = ["ROTATION_REASONS", "Sessions"]


FIRST_RECHECK_SECONDS = 0.25
MAX_RECHECK_SECONDS = 2.0
#: The most time, past DOWNLOAD_TIMEOUT, a session's lease keeps for the
#: request going out (see ``Sessions.__init__``).
MAX_RENEW_MARGIN = 10.0


class Sessions:
    """The sessions of one keeper's crawl."""

    def __init__(self, keeper: LeaseKeeper) -> None:
        self._keeper = keeper
        self._config = keeper.config
        self._storage = keeper.manager.storage
        self._tally = keeper.tally
        self._sessions: dict[tuple[str, str], LocalSession] = {}
        self._wakeup = Wakeup()
        # A session's lease lasts PHAROX_SESSION_IDLE_SECONDS from its last
        # request, and never so little that it could lapse under one: a
        # request goes out only while the lease has a download's time left
        # and a margin (else it is renewed first).
        download = self._config.download_timeout
        margin = min(download, MAX_RENEW_MARGIN)
        self.lease_seconds = max(self._config.session_idle_seconds, download + margin)
        self._renew_after = self.lease_seconds - download - margin / 2
        self._bindings = SessionBindings(keeper, self.lease_seconds)
        self._renewing: LoopingCall | None = None

    @property
    def bound(self) -> int:
        """Sessions holding a lease slot now (``pharox/leases/active``)."""
        return self._bindings.bound

    def start(self) -> None:
        """Renew the leases of sessions with requests out, from now until ``stop``."""
        if self._renewing is None:
            every = min(self._renew_after, self.lease_seconds - self._renew_after) / 2
            self._renewing = LoopingCall(
                lambda: deferred_from_coro(self.renew_in_flight())
            )
            self._renewing.start(max(every, SHORTEST_SWEEP_SECONDS), now=False)

    def stop(self) -> None:
        if self._renewing is not None and self._renewing.running:
            self._renewing.stop()

    # -- a request's turn ------------------------------------------------------------

    async def enter(self, request: Request, key: str) -> SessionTurn:
        """A turn of session ``key`` for ``request``, bound to a proxy; waits for
        it within PHAROX_ACQUIRE_TIMEOUT (then IgnoreRequest)."""
        keeper = self._keeper
        target = keeper.routing.target_of(request)
        acquire = keeper.routing.acquire_request(request, target)
        local = self._sessions.get((target.pool, key))
        if local is None:
            local = self._sessions[(target.pool, key)] = LocalSession(target.pool, key)
        host = acquire.domain
        started = time.monotonic()
        deadline = started + self._config.acquire_timeout
        sleeper = object()
        recheck = FIRST_RECHECK_SECONDS
        while True:
            keeper.check_open()
            now = time.monotonic()
            # A rest (Retry-After), and the reuse delay of the session's IP for
            # the request's host: the session holds its proxy, so it paces it.
            ready_at = max(
                local.not_before, local.sent_at.get(host, -1e9) + acquire.reuse_delay
            )
            if (
                not local.turning
                and local.in_flight < self._config.session_concurrency
                and ready_at <= now
            ):
                if local.binding is not None and not self._needs_change(local, now):
                    break
                local.turning = True
                try:
                    changed = await self._change(local, acquire)
                finally:
                    local.turning = False
                    self._wake(local)
                if changed:
                    recheck = FIRST_RECHECK_SECONDS
                    continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._tally.inc("pharox/acquire/gave_up")
                logger.warning(
                    "Dropped %s: session %r of pool %r found no free proxy nor its "
                    "turn within PHAROX_ACQUIRE_TIMEOUT (%ss)",
                    request,
                    key,
                    target.pool,
                    self._config.acquire_timeout,
                )
                raise IgnoreRequest(f"scrapy-pharox: session {key!r} got no turn")
            wait = min(remaining, recheck)
            if ready_at > now:
                wait = min(remaining, ready_at - now)
            woken = await self._wakeup.sleep(sleeper, wait, started, local)
            if woken is None:
                recheck = min(recheck * 2, MAX_RECHECK_SECONDS)
        assert local.binding is not None
        local.in_flight += 1
        local.sent_at[host] = time.monotonic()
        return SessionTurn(local, local.binding, acquire)

    def _needs_change(self, local: LocalSession, now: float) -> bool:
        binding = local.binding
        assert binding is not None
        config = self._config
        return (
            config.session_max_uses is not None
            and binding.session.uses >= config.session_max_uses
        ) or (
            self._age(binding.session) >= config.session_max_age
            or now - local.renewed_at >= self._renew_after
            or (not local.in_flight and self._keeper.exits.due(binding.lease))
        )

    async def _change(self, local: LocalSession, acquire: AcquireRequest) -> bool:
        """Bind the session, rotate a worn one, or renew a stale one; False when
        no proxy is free now (or the storage failed: the caller waits)."""
        binding = local.binding
        config = self._config
        rotate = self._bindings.rotate
        if binding is not None:
            session = binding.session
            reason = None
            if (
                config.session_max_uses is not None
                and session.uses >= config.session_max_uses
            ):
                reason = "max_uses"
            elif self._age(session) >= config.session_max_age:
                reason = "max_age"
            elif not local.in_flight and self._keeper.exits.due(binding.lease):
                # Between its requests: the exit renewed, the session with it
                # (unless the exit carries others' requests: it goes on).
                old = binding.lease
                new = await self._keeper.exits.renew_due(old)
                if GatewayExits.session_of(new) != GatewayExits.session_of(old):
                    reason = "identity"
            if reason is not None:
                return await rotate(local, acquire, reason) is not None
            renewed = await self._bindings.renew(local, None, used=False)
            if renewed is not False:
                return bool(renewed)  # None: the storage failed, look again later
        return await self._bindings.bind(local, acquire)

    def _age(self, session: ProxySession) -> float:
        return self._storage.session_clock() - session.created_at.timestamp()

    # -- after the response --------------------------------------------------------

    async def done(
        self, turn: SessionTurn, request: Request, response: Response
    ) -> None:
        """The turn's request came back well: its session's use is counted, and
        the response's cookies kept in its jar and saved with it."""
        local = turn.session
        if turn.open and turn.current:
            cookies = None
            if request.meta.get(OUR_COOKIES_KEY):
                local.jar.extract_cookies(response, request)
                cookies = cookies_of(local.jar)
            local.failures = 0
            await self._bindings.renew(local, cookies)
        self.leave(turn)

    async def renew_in_flight(self) -> None:
        """Renew the leases of sessions with requests out, before they would
        lapse under them: a request may wait in its download slot for long."""
        for local in list(self._sessions.values()):
            if (
                local.binding is not None
                and local.in_flight
                and not local.turning
                and time.monotonic() - local.renewed_at >= self._renew_after
            ):
                local.turning = True
                try:
                    await self._bindings.renew(local, None, used=False)
                finally:
                    local.turning = False
                    self._wake(local)

    async def failed(self, turn: SessionTurn, report: OutcomeReport) -> None:
        """The turn's request failed: after PHAROX_FAILURES_BEFORE_COOLDOWN in a
        row, its generation ends with the failure reported."""
        local = turn.session
        self._tally.inc("pharox/outcome/failure")
        if turn.open and turn.current:
            local.failures += 1
            if local.failures >= self._config.cooldown.failures_before_cooldown:
                # The session saw the failures in a row; the storage hears of
                # the last one only, so it cools the proxy at once, as that
                # many failures of plain requests would.
                policy = self._config.cooldown.model_copy(
                    update={"failures_before_cooldown": 1}
                )
                report = report.model_copy(update={"policy": policy})
                await self.rotate(turn, "failure", report)
        self.leave(turn)

    def rest(self, turn: SessionTurn, seconds: float) -> None:
        """The session's next request waits ``seconds`` (a Retry-After)."""
        local = turn.session
        local.not_before = max(local.not_before, time.monotonic() + seconds)
        self.leave(turn)

    async def rotate(
        self, turn: SessionTurn, reason: str, report: OutcomeReport | None = None
    ) -> None:
        """End the turn's generation (``reason`` in ROTATION_REASONS): the key
        goes on with another proxy and an empty jar."""
        local = turn.session
        if turn.open and turn.current and not local.turning:
            local.turning = True
            try:
                await self._bindings.rotate(local, turn.acquire, reason, report)
            finally:
                local.turning = False
        self.leave(turn)

    def leave(self, turn: SessionTurn) -> None:
        """The turn ends (idempotent): the next request of its session may go."""
        if turn.open:
            turn.open = False
            turn.session.in_flight -= 1
            self._wake(turn.session)

    def _wake(self, local: LocalSession) -> None:
        """Wake the requests of ``local`` that may go now (its longest waiters)."""
        for _ in range(max(1, self._config.session_concurrency - local.in_flight)):
            self._wakeup.wake_one(set(), lambda kind: kind is local)

    # -- cookies ------------------------------------------------------------------

    @staticmethod
    def add_cookies(turn: SessionTurn, request: Request, *, again: bool) -> None:
        """Put the session's cookies on ``request``; ``again`` for a copy of a
        request that went out (a retry or redirect), whose Cookie header, of
        an earlier turn, gives way. The request's own ``cookies`` join the jar,
        as CookiesMiddleware would put them into Scrapy's."""
        jar = turn.session.jar
        if again:
            request.headers.pop(b"Cookie", None)
        elif request.cookies:
            take_request_cookies(jar, request)
        jar.add_cookie_header(request)

    # -- the crawl's end ---------------------------------------------------------------

    def wake_all(self) -> None:
        """Every request waiting for a session's turn looks again now."""
        self._wakeup.wake_all()

    async def park_all(self) -> None:
        """Give every session's slot back, keeping the sessions in the storage."""
        await self._bindings.park_all(self._sessions.values())
        self._wakeup.wake_all()
