"""Rows of the SQL adapter's statements, made models (no validation: the
database holds only what the models let in)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from ..models import (
    Lease,
    LeaseStatus,
    Proxy,
    ProxyCredentials,
    ProxyPool,
    ProxyProtocol,
    ProxyStatus,
    build_trusted,
)


def proxy_from_row(row: Any) -> Proxy:
    credentials = None
    if row.username is not None:
        credentials = build_trusted(
            ProxyCredentials, {"user": row.username, "password": row.password}
        )
    cooldown_until = row.cooldown_until
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
