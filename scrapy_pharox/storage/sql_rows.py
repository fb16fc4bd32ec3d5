"""Rows of the SQL adapter's statements made models (no validation: the
database holds only what the models let in), and models made parameters."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any
from uuid import UUID

from ..durations import check_seconds
from ..models import (
    Lease,
    LeaseStatus,
    OutcomeReport,
    Paced,
    Proxy,
    ProxyCredentials,
    ProxyPool,
    ProxyProtocol,
    ProxyStatus,
    build_trusted,
    new_id,
)
from .base import check_lease_seconds


def proxy_from_row(row: Any) -> Proxy:
    credentials = None
    if row.username is not None:
        credentials = build_trusted(
            ProxyCredentials, {"user": row.username, "password": row.password}
        )
    cooldown_until, started = row.cooldown_until, row.session_started_at
    return build_trusted(
        Proxy,
        {
            "id": row.id,
            "host": row.host,
            "port": row.port,
            "protocol": ProxyProtocol(row.protocol),
            "pool_id": row.pool_id,
            "status": ProxyStatus(row.status),
            "checked_at": utc(row.checked_at),
            "credentials": credentials,
            "source": row.source,
            "country": row.country,
            "city": row.city,
            "latitude": row.latitude,
            "longitude": row.longitude,
            "isp": row.isp,
            "asn": row.asn,
            "max_concurrency": row.max_concurrency,
            "current_leases": row.current_leases,
            "successes": row.successes,
            "bans": row.bans,
            "failures": row.failures,
            "consecutive_bans": row.consecutive_bans,
            "consecutive_failures": row.consecutive_failures,
            "latency_ms": row.latency_ms,
            "cooldown_until": None if cooldown_until is None else utc(cooldown_until),
            "identity": row.identity,
            "session_id": row.session_id,
            "session_seconds": row.session_seconds,
            "session_started_at": None if started is None else utc(started),
        },
    )


def utc(moment: datetime) -> datetime:
    # Rows of prepared statements come from psycopg in the session's time zone.
    if moment.tzinfo is timezone.utc:
        return moment
    return moment.astimezone(timezone.utc)


def pool_from_row(row: Any) -> ProxyPool:
    return ProxyPool.model_construct(
        id=row.id, name=row.name, description=row.description
    )


def lease_from_row(row: Any, params: dict[str, Any], pool_name: str) -> Lease:
    return build_lease(row, row, params, pool_name)


def build_lease(
    proxy_row: Any, times: Any, params: dict[str, Any], pool_name: str
) -> Lease:
    proxy = proxy_from_row(proxy_row)
    return build_trusted(
        Lease,
        {
            "id": params["lease_id"],
            "proxy_id": proxy.id,
            "consumer_id": params["consumer_id"],
            "pool_id": proxy.pool_id,
            "pool_name": pool_name,
            "status": LeaseStatus.ACTIVE,
            "acquired_at": utc(times.acquired_at),
            "expires_at": utc(times.expires_at),
            "released_at": None,
            "proxy": proxy,
        },
    )


def acquire_parameters(
    pool_name: str,
    consumer_id: UUID,
    duration_seconds: float,
    domain: str | None,
    reuse_delay: float = 0.0,
) -> dict[str, Any]:
    """An acquire's parameters, with the new lease's id (a retry finds it by it).

    A reuse delay counts with a domain only; a bad one raises before any I/O.
    """
    params = {
        "pool_name": pool_name,
        "lease_id": new_id(),
        "consumer_id": consumer_id,
        "seconds": check_lease_seconds(duration_seconds),
        "target_domain": domain,
    }
    if reuse_delay:
        reuse_delay = check_seconds(reuse_delay, "reuse_delay", zero=True)
        if reuse_delay and domain is not None:
            params["reuse_delay"] = reuse_delay
    return params


def paced_or_none(row: Any) -> Paced | None:
    """A miss: Paced when the row of a paced acquire says when a proxy comes
    out of its reuse delay, else None."""
    seconds = getattr(row, "paced_in", None)
    return None if seconds is None else Paced(float(seconds))


def release_parameters(lease: Lease, report: OutcomeReport | None) -> dict[str, Any]:
    """A release's parameters: the lease, its pool's name (for the notice of a
    freed slot, ``sql_release.told``) and the report's."""
    params: dict[str, Any] = {"lease_id": lease.id, "pool_name": lease.pool_name}
    if report is not None:
        params.update(outcome_parameters(report))
    return params


def outcome_parameters(report: OutcomeReport) -> dict[str, Any]:
    """The parameters of the statements that record an outcome (sql_health)."""
    policy = report.policy
    return {
        "latency": None if report.latency_ms is None else float(report.latency_ms),
        "target_domain": report.domain,
        "base_seconds": float(policy.base_seconds),
        "max_seconds": float(policy.max_seconds),
        "jitter": float(policy.jitter),
        "draw": float(report.draw),
        "failures_before_cooldown": policy.failures_before_cooldown,
        "rest_seconds": policy.rest(report.rest_seconds),
    }


def proxy_values(proxy: Proxy) -> dict[str, Any]:
    credentials = proxy.credentials
    return {
        "id": proxy.id,
        "pool_id": proxy.pool_id,
        "protocol": proxy.protocol.value,
        "host": proxy.host,
        "host_key": proxy.host.lower(),
        "port": proxy.port,
        "username": credentials.user if credentials else None,
        "password": credentials.password if credentials else None,
        "status": proxy.status.value,
        "checked_at": proxy.checked_at,
        "source": proxy.source,
        "country": proxy.country,
        "city": proxy.city,
        "latitude": proxy.latitude,
        "longitude": proxy.longitude,
        "isp": proxy.isp,
        "asn": proxy.asn,
        "max_concurrency": proxy.max_concurrency,
        "current_leases": 0,
        "successes": proxy.successes,
        "bans": proxy.bans,
        "failures": proxy.failures,
        "consecutive_bans": proxy.consecutive_bans,
        "consecutive_failures": proxy.consecutive_failures,
        "latency_ms": proxy.latency_ms,
        "cooldown_until": proxy.cooldown_until,
        "identity": proxy.identity,
        "session_id": proxy.session_id,
        "session_seconds": proxy.session_seconds,
        "session_started_at": proxy.session_started_at,
    }
