"""What one request asks its crawler's pool for, and how its outcome is told.

A request leases from the spider's pool with its filters and selector, unless
its meta names others (``pharox_pool``, ``pharox_filters``, ``pharox_selector``);
with ``PHAROX_BAN_SCOPE = "domain"`` it also names its domain, so proxies
resting for that domain are passed over and a ban rests a proxy there only.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from scrapy.utils.httpobj import urlparse_cached

from .callers import AcquireRequest, Target, with_protocols
from .config import PharoxConfig, parse_filters, parse_selector
from .models import LeaseOutcome, OutcomeReport, ProxyFilters, build_trusted

if TYPE_CHECKING:
    from scrapy import Request

#: The meta keys that route one request elsewhere than the spider's default.
TARGET_META_KEYS = frozenset({"pharox_pool", "pharox_filters", "pharox_selector"})


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
        self._default_filters = with_protocols(default_target.filters, config.protocols)
        # With no domain scope, every request of the default target asks the same.
        self._default_request = self._request(default_target, self._default_filters)

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
        if target is self.default_target and self.config.ban_scope != "domain":
            return self._default_request
        filters = (
            self._default_filters
            if target is self.default_target
            else with_protocols(target.filters, self.config.protocols)
        )
        return self._request(target, filters, self.domain_of(request))

    def _request(
        self, target: Target, filters: ProxyFilters | None, domain: str | None = None
    ) -> AcquireRequest:
        return AcquireRequest(
            target.pool,
            self.consumer,
            self.config.lease_seconds,
            filters,
            target.selector,
            domain,
        )

    def domain_of(self, request: Request) -> str | None:
        """The domain bans are scoped to (PHAROX_BAN_SCOPE = "domain"), else None."""
        if self.config.ban_scope != "domain":
            return None
        return urlparse_cached(request).hostname

    def report(
        self, request: Request, outcome: LeaseOutcome, latency_ms: float | None = None
    ) -> OutcomeReport:
        """The outcome of a request's lease, as the storage records it.

        A latency below zero (the wall clock stepped back) counts as zero.
        """
        return build_trusted(
            OutcomeReport,
            {
                "outcome": outcome
                if isinstance(outcome, LeaseOutcome)
                else LeaseOutcome(outcome),
                "latency_ms": None if latency_ms is None else max(0.0, latency_ms),
                "domain": self.domain_of(request),
                "policy": self.config.cooldown,
                "draw": random.random(),
            },
        )
