"""What one request asks its crawler's pool for, and how its outcome is told.

A request leases from the spider's pool with its filters, selector and reuse
delay, unless its meta names others (``pharox_pool``, ``pharox_filters``,
``pharox_selector``, ``pharox_reuse_delay``). It names its domain (the URL's
host), so proxies resting there (a Retry-After, or a ban with
``PHAROX_BAN_SCOPE = "domain"``) or inside their reuse delay for it are passed
over. With ``PHAROX_BAN_SCOPE = "domain"`` a ban rests a proxy there only.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from scrapy.utils.httpobj import urlparse_cached

from .callers import AcquireRequest, Target, with_protocols
from .config import PharoxConfig
from .durations import check_seconds
from .models import LeaseOutcome, OutcomeReport, ProxyFilters, build_trusted
from .target_values import parse_filters, parse_selector

if TYPE_CHECKING:
    from scrapy import Request

#: The meta keys that route one request elsewhere than the spider's default.
TARGET_META_KEYS = frozenset({"pharox_pool", "pharox_filters", "pharox_selector"})
#: Acquire requests of the default target kept by (domain, reuse delay).
_KEPT_REQUESTS = 4096


class Routing:
    """Targets, acquire requests and outcome reports of one crawler's requests.

    ``pools_used`` holds every pool a request was routed to (the extension
    reports them).
    """

    def __init__(
        self, config: PharoxConfig, consumer: str, default_target: Target
    ) -> None:
        self.config = config
        self.consumer = consumer
        self.default_target = default_target
        self.pools_used: set[str] = {default_target.pool}
        self.default_filters = with_protocols(default_target.filters, config.protocols)
        # The requests of the default target ask the same for one domain.
        self._default_requests: dict[tuple[str | None, float], AcquireRequest] = {}
        self._slot_delay = config.proxy_slot_delay

    def target_of(self, request: Request) -> Target:
        """The pool, filters and selector for one request (meta overrides spider)."""
        meta = request.meta
        default = self.default_target
        if TARGET_META_KEYS.isdisjoint(meta):
            return default
        target = Target(
            pool=meta.get("pharox_pool") or default.pool,
            filters=(
                parse_filters("request.meta['pharox_filters']", meta["pharox_filters"])
                if "pharox_filters" in meta
                else default.filters
            ),
            selector=(
                parse_selector(
                    "request.meta['pharox_selector']", meta["pharox_selector"]
                )
                if meta.get("pharox_selector")
                else default.selector
            ),
        )
        self.pools_used.add(target.pool)
        return target

    def acquire_request(self, request: Request, target: Target) -> AcquireRequest:
        """What the storage is asked for a lease for ``request`` from ``target``."""
        domain = urlparse_cached(request).hostname
        meta = request.meta
        reuse_delay = (
            check_seconds(
                meta["pharox_reuse_delay"],
                "request.meta['pharox_reuse_delay']",
                zero=True,
            )
            if meta.get("pharox_reuse_delay") is not None
            else self.default_target.reuse_delay
        )
        if reuse_delay < self._slot_delay:  # a proxy slot's delay is a floor
            reuse_delay = self._slot_delay
        if target is not self.default_target:
            filters = with_protocols(target.filters, self.config.protocols)
            return self._request(target, filters, domain, reuse_delay)
        key = (domain, reuse_delay)
        found = self._default_requests.get(key)
        if found is None:
            if len(self._default_requests) >= _KEPT_REQUESTS:
                self._default_requests.clear()
            found = self._default_requests[key] = self._request(
                target, self.default_filters, domain, reuse_delay
            )
        return found

    def _request(
        self,
        target: Target,
        filters: ProxyFilters | None,
        domain: str | None,
        reuse_delay: float,
    ) -> AcquireRequest:
        return AcquireRequest(
            target.pool,
            self.consumer,
            self.config.lease_seconds,
            filters,
            target.selector,
            domain,
            reuse_delay,
        )

    def domain_of(self, request: Request) -> str | None:
        """The domain bans are scoped to (PHAROX_BAN_SCOPE = "domain"), else None."""
        if self.config.ban_scope != "domain":
            return None
        return urlparse_cached(request).hostname

    def report(
        self,
        request: Request,
        outcome: LeaseOutcome,
        latency_ms: float | None = None,
        rest_seconds: float | None = None,
    ) -> OutcomeReport:
        """The outcome of a request's lease, as the storage records it.

        A latency below zero (the wall clock stepped back) counts as zero. A
        throttled outcome always names the domain: it rests the proxy there.
        """
        outcome = (
            outcome if isinstance(outcome, LeaseOutcome) else LeaseOutcome(outcome)
        )
        return build_trusted(
            OutcomeReport,
            {
                "outcome": outcome,
                "latency_ms": None if latency_ms is None else max(0.0, latency_ms),
                "domain": urlparse_cached(request).hostname
                if outcome is LeaseOutcome.THROTTLED
                else self.domain_of(request),
                "policy": self.config.cooldown,
                "draw": random.random(),
                "rest_seconds": rest_seconds,
            },
        )
