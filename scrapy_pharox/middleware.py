"""The downloader middleware: a leased proxy on each request, given back after."""

from __future__ import annotations

from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

from scrapy import signals
from scrapy.downloadermiddlewares.retry import get_retry_request
from scrapy.exceptions import IgnoreRequest
from scrapy.utils.defer import deferred_from_coro
from scrapy.utils.httpobj import urlparse_cached

from .keeper import LeaseKeeper
from .middleware_settings import answers_may_pass_us, slots_may_delay
from .models import Lease, LeaseOutcome, OutcomeReport
from .session_state import OUR_COOKIES_KEY, SESSION_META_KEY, TURN_KEY, SessionTurn
from .slot_gate import SlotGate
from .stopping import HandBack, StopWaiting

if TYPE_CHECKING:
    from scrapy import Request, Spider
    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from typing_extensions import Self

#: The proxy address this middleware put in ``meta["proxy"]``: how a copied
#: request (retry, redirect, follow with the old meta) is told from one whose
#: proxy someone else chose.
OUR_PROXY_KEY = "_pharox_proxy"
#: The download slot this middleware put in ``meta["download_slot"]`` (with
#: PHAROX_DOWNLOAD_SLOT = "proxy"): a copy's next proxy gets a slot of its own.
OUR_SLOT_KEY = "_pharox_slot"
#: The statuses whose Retry-After makes them a rest (outcome THROTTLED).
THROTTLE_CODES = frozenset({429, 503})


class PharoxProxyMiddleware:
    """Leases a proxy for every request and releases it on response or error.

    Put it at 740: before HttpProxyMiddleware (750) turns the proxy's credentials
    into a Proxy-Authorization header, and releasing before RedirectMiddleware
    (600) and RetryMiddleware (550) build a new request, which gets a new lease.
    """

    def __init__(self, keeper: LeaseKeeper, crawler: Crawler) -> None:
        self.keeper = keeper
        self.crawler = crawler
        self._slot_per_proxy = keeper.config.download_slot == "proxy"
        #: Only where a slot may delay: Scrapy's per-domain slots with a delay.
        self.gate = (
            SlotGate(crawler)
            if not self._slot_per_proxy and slots_may_delay(crawler.settings)
            else None
        )
        self.hand_back = HandBack(crawler, self._stop_waiting)
        self._watching_scheduled = False

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        middleware = cls(LeaseKeeper.for_crawler(crawler), crawler)
        if answers_may_pass_us(crawler.settings, cls):
            middleware._watch_scheduled()
        crawler.signals.connect(middleware.spider_opened, signal=signals.spider_opened)
        if middleware.gate is not None:
            crawler.signals.connect(
                middleware.gate.entered, signal=signals.request_reached_downloader
            )
        return middleware

    def _watch_scheduled(self) -> None:
        """Clean every request on its way into the scheduler from now on (a
        signal handler costs each request, so only where copies need it)."""
        if not self._watching_scheduled:
            self._watching_scheduled = True
            self.crawler.signals.connect(
                self.request_scheduled, signal=signals.request_scheduled
            )

    def _stop_waiting(self) -> None:
        """The crawl stops: no request waits for a proxy, nor for its turn."""
        self.keeper.stop_waiting()
        if self.gate is not None:
            self.gate.stop_waiting()

    def spider_opened(self) -> None:
        assert self.crawler.engine is not None
        self.hand_back.watch(self.crawler.engine)

    def request_scheduled(self, request: Request, spider: Spider | None = None) -> None:
        """A request on its way into the scheduler (and to disk, with a JOBDIR)
        carries no proxy credentials and holds no lease: a middleware after ours
        may answer with a copy of a request that went out through a proxy, and
        our process_response never sees it; and a copy of a session's request
        (a retry, a redirect) carries its cookies. Connected only once either
        may happen: such a middleware is enabled (``answers_may_pass_us``), or a
        session request took its cookies from its session. Otherwise a copy
        (a retry's, a redirect's, a callback's) is of a request our
        process_response cleaned already."""
        self._clean(request)
        if request.meta.get(OUR_COOKIES_KEY):
            # Nor the session's cookies: its next turn puts on those of then.
            request.headers.pop(b"Cookie", None)
        if self.gate is not None:
            # A copy of a request let through to its slot, which it never
            # reached (a middleware after ours answered with this copy).
            self.gate.entered(request)
        lease = request.meta.get("pharox_lease")
        if isinstance(lease, Lease) and self.keeper.holds(lease):
            # A copy of a request that went out (a middleware after ours answered
            # with it): its lease ends now, not once the copy is fetched.
            deferred_from_coro(self.keeper.release(lease, "response"))
        turn = request.meta.pop(TURN_KEY, None)
        if isinstance(turn, SessionTurn):  # the same for a session's turn
            self.keeper.sessions.leave(turn)

    def _clean(self, request: Request) -> None:
        """Strip from a request whose proxy answered the proxy's credentials, in
        its header and in ``meta["proxy"]``: no copy of it (to the scheduler and
        a JOBDIR, a callback's) may carry them."""
        _forget_credentials(request)
        meta = request.meta
        ours = meta.get(OUR_PROXY_KEY)
        if (
            ours is not None
            and meta.get("proxy", ours) != ours
            and self._set_by_us(request)
        ):
            meta["proxy"] = ours  # the address, without credentials

    # The optional, unused ``spider`` parameters are those of Scrapy's own
    # middlewares (Scrapy before 2.14 passed one to every process_* method).
    async def process_request(
        self, request: Request, spider: Spider | None = None
    ) -> Request | None:
        meta = request.meta
        if "proxy" in meta and not self._set_by_us(request):
            return None
        stale = meta.pop("pharox_lease", None)
        if isinstance(stale, Lease) and self.keeper.holds(stale):
            # A middleware after us answered the old request with a new one, so our
            # process_response never saw its response: give that lease back now.
            _forget_credentials(request)
            await self.keeper.release(stale, "response")
        meta.pop("proxy", None)
        stale_turn = meta.pop(TURN_KEY, None)
        if isinstance(stale_turn, SessionTurn):  # the same for a session's turn
            self.keeper.sessions.leave(stale_turn)
        key = meta.get(SESSION_META_KEY)
        if key is not None:
            return await self._session_request(request, key)
        gate = self.gate
        try:
            if gate is not None:
                await gate.wait_turn(request)
            lease = await self.keeper.lease_for(request)
        except BaseException as exc:
            if gate is not None:
                gate.entered(request)  # it goes no further
            if isinstance(exc, StopWaiting):
                return self.hand_back.request_for(request)
            raise
        self._use(request, lease)
        return None

    async def _session_request(self, request: Request, key: str) -> Request | None:
        """Through the proxy of session ``key``, with its cookies."""
        sessions = self.keeper.sessions
        gate = self.gate
        try:
            if gate is not None:
                await gate.wait_turn(request)
            turn = await sessions.enter(request, key)
        except BaseException as exc:
            if gate is not None:
                gate.entered(request)
            if isinstance(exc, StopWaiting):
                return self.hand_back.request_for(request)
            raise
        meta = request.meta
        meta[TURN_KEY] = turn
        if meta.get(OUR_COOKIES_KEY):
            self._watch_scheduled()  # its copies must not carry them
            sessions.add_cookies(turn, request, again=OUR_PROXY_KEY in meta)
        self._use(request, turn.lease)
        return None

    def _use(self, request: Request, lease: Lease) -> None:
        """Send ``request`` through the proxy of ``lease``."""
        meta = request.meta
        assert lease.proxy is not None
        proxy = lease.proxy
        url = proxy.url
        meta["pharox_lease"] = lease
        meta["proxy"] = url
        # Without credentials the URL is the address: build the string once.
        meta[OUR_PROXY_KEY] = url if proxy.credentials is None else proxy.address
        if self._slot_per_proxy and meta.get("download_slot") == meta.get(OUR_SLOT_KEY):
            # One download slot per (domain, proxy): Scrapy's delays and
            # concurrency per slot apply per IP per site.
            slot = f"{urlparse_cached(request).hostname} via {proxy.id}"
            meta["download_slot"] = meta[OUR_SLOT_KEY] = slot

    async def process_response(
        self, request: Request, response: Response, spider: Spider | None = None
    ) -> Response | Request:
        if self.gate is not None:
            self.gate.entered(request)  # a later middleware answered, say
        if OUR_PROXY_KEY in request.meta:
            self._clean(request)
        turn = request.meta.pop(TURN_KEY, None)
        lease = request.meta.get("pharox_lease")
        if isinstance(turn, SessionTurn):
            if not turn.open:
                return response
        elif not isinstance(lease, Lease) or not self.keeper.holds(lease):
            return response
        rest = retry_after(response) if response.status in THROTTLE_CODES else None
        if rest is not None:
            outcome = LeaseOutcome.THROTTLED
        else:
            outcome = (
                LeaseOutcome.BAN if self._is_ban(response) else LeaseOutcome.SUCCESS
            )
        latency = request.meta.get("download_latency")
        report = self.keeper.report(
            request,
            outcome,
            latency * 1000 if isinstance(latency, (int, float)) else None,
            rest,
        )
        if isinstance(turn, SessionTurn):
            if not await self._session_response(turn, request, response, report):
                return response
        else:
            assert isinstance(lease, Lease)
            await self.keeper.release(lease, "response", report)
        if outcome is LeaseOutcome.SUCCESS:
            return response
        if outcome is LeaseOutcome.BAN:
            assert self.crawler.stats is not None
            self.crawler.stats.inc_value(f"pharox/ban/status/{response.status}")
        if request.meta.get("dont_retry"):
            return response
        # Through Scrapy's retry machinery: retry/* stats and max_retry_times apply.
        assert self.crawler.spider is not None
        retry = get_retry_request(
            request,
            spider=self.crawler.spider,
            reason="pharox_ban" if outcome is LeaseOutcome.BAN else "pharox_throttled",
        )
        return retry if retry is not None else response

    async def process_exception(
        self, request: Request, exception: Exception, spider: Spider | None = None
    ) -> None:
        if self.gate is not None:
            self.gate.entered(request)
        if OUR_PROXY_KEY in request.meta:
            self._clean(request)
        turn = request.meta.pop(TURN_KEY, None)
        if isinstance(turn, SessionTurn):
            if isinstance(exception, IgnoreRequest):
                self.keeper.sessions.leave(turn)
            else:
                report = self.keeper.report(request, LeaseOutcome.FAILURE)
                await self.keeper.sessions.failed(turn, report)
            return
        lease = request.meta.get("pharox_lease")
        if not isinstance(lease, Lease):
            return
        if isinstance(exception, IgnoreRequest):
            # A later middleware dropped the request: no verdict on the proxy.
            await self.keeper.release(lease, "closed")
        else:
            report = self.keeper.report(request, LeaseOutcome.FAILURE)
            await self.keeper.release(lease, "exception", report)

    async def _session_response(
        self,
        turn: SessionTurn,
        request: Request,
        response: Response,
        report: OutcomeReport,
    ) -> bool:
        """A session's response: its use counted, or its generation ended (a
        ban, a failed ``pharox_session_check``), or its session rested. True
        when the request is to be retried as a plain request's would be."""
        sessions = self.keeper.sessions
        outcome = report.outcome
        self.keeper.tally.inc(f"pharox/outcome/{outcome.value}")
        if outcome is LeaseOutcome.BAN:
            await sessions.rotate(turn, "ban", report)
            return True
        if outcome is LeaseOutcome.THROTTLED:
            assert report.rest_seconds is not None
            sessions.rest(turn, report.rest_seconds)
            return True
        check = getattr(self.crawler.spider, "pharox_session_check", None)
        if callable(check) and not check(response):
            await sessions.rotate(turn, "check")
            return False
        await sessions.done(turn, request, response)
        return False

    def _is_ban(self, response: Response) -> bool:
        is_ban = getattr(self.crawler.spider, "pharox_is_ban", None)
        if callable(is_ban):
            return bool(is_ban(response))
        return response.status in self.keeper.config.ban_status_codes

    @staticmethod
    def _set_by_us(request: Request) -> bool:
        ours = request.meta.get(OUR_PROXY_KEY)
        lease = request.meta.get("pharox_lease")
        if ours is None or not isinstance(lease, Lease) or lease.proxy is None:
            return False
        return request.meta["proxy"] in (ours, lease.proxy.url)


def retry_after(response: Response) -> float | None:
    """The seconds a response's Retry-After asks for (a number of seconds, or an
    HTTP date from now), or None when it has none it can be read as."""
    header = response.headers.get(b"Retry-After")
    if not header:
        return None
    text = header.decode("latin-1").strip()
    if text.isdigit():
        return float(text)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:  # an HTTP date is GMT
        moment = moment.replace(tzinfo=timezone.utc)
    return max(0.0, (moment - datetime.now(timezone.utc)).total_seconds())


def _forget_credentials(request: Request) -> None:
    """Drop the Proxy-Authorization header HttpProxyMiddleware put on a request
    whose lease ends: a retry or redirect copy of it starts clean (the header
    of its next proxy is set anew), and a copy on disk (JOBDIR) holds none."""
    if "_auth_proxy" in request.meta:
        request.headers.pop(b"Proxy-Authorization", None)
        del request.meta["_auth_proxy"]
