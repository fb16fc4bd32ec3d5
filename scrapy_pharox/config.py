"""The one reader of ``PHAROX_*`` settings: plain values, checked at start-up."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from scrapy.settings import BaseSettings

from .durations import MAX_SECONDS, check_seconds
from .exceptions import PharoxSettingError as PharoxSettingError  # re-exported
from .models import (
    CooldownPolicy,
    Proxy,
    ProxyFilters,
    ProxyProtocol,
    SelectorStrategy,
    mask_url_password,
)
from .proxy_file import (
    parse_gateways,
    parse_proxies,
    proxies_from_file,
    split_proxy_urls,
)
from .target_values import parse_filters, parse_selector

#: Every setting's default, written here only: the config classes below and
#: their ``from_settings`` take theirs from it.
DEFAULTS: dict[str, Any] = {
    "PHAROX_ENABLED": True,
    "PHAROX_STORAGE_URL": "memory://",
    "PHAROX_STORAGE": None,
    "PHAROX_POOL": "default",
    "PHAROX_PROXIES": [],
    "PHAROX_PROXIES_FILE": None,
    "PHAROX_GATEWAYS": [],
    "PHAROX_PROXIES_URL": None,
    "PHAROX_PROXIES_REFRESH": 300,
    "PHAROX_PROXY_MAX_CONCURRENCY": 1,
    "PHAROX_CONSUMER": None,
    "PHAROX_LEASE_SECONDS": 300,
    "PHAROX_SELECTOR": "round_robin",
    "PHAROX_FILTERS": None,
    "PHAROX_ACQUIRE_TIMEOUT": 60,
    "PHAROX_STATS_INTERVAL": 60,
    "PHAROX_PROTOCOLS": ["http", "https"],
    # Sharing over time
    "PHAROX_REUSE_DELAY": 0,
    "PHAROX_DOWNLOAD_SLOT": "domain",
    # Bans and cooldowns
    "PHAROX_BAN_STATUS_CODES": [403, 407, 429, 503],
    "PHAROX_BAN_SCOPE": "proxy",
    # The cooldown policy's own defaults.
    "PHAROX_COOLDOWN_BASE": CooldownPolicy.model_fields["base_seconds"].default,
    "PHAROX_COOLDOWN_MAX": CooldownPolicy.model_fields["max_seconds"].default,
    "PHAROX_FAILURES_BEFORE_COOLDOWN": (
        CooldownPolicy.model_fields["failures_before_cooldown"].default
    ),
    # Health checks
    "PHAROX_CHECK_URL": None,
    "PHAROX_CHECK_SLOW_MS": 2000,
    "PHAROX_CHECK_TIMEOUT": 10,
    "PHAROX_CHECK_CONCURRENCY": 8,
    "PHAROX_SESSION_IDLE_SECONDS": 300,
    "PHAROX_SESSION_CONCURRENCY": 1,
    "PHAROX_SESSION_MAX_USES": 50,
    "PHAROX_SESSION_MAX_AGE": 3000,
}

BAN_SCOPES = ("proxy", "domain")
DOWNLOAD_SLOTS = ("domain", "proxy")


def _default_protocols() -> frozenset[ProxyProtocol]:
    return frozenset(ProxyProtocol(name) for name in DEFAULTS["PHAROX_PROTOCOLS"])


@dataclass(frozen=True)
class PharoxConfig:
    """Every PHAROX_* setting, parsed and checked."""

    enabled: bool = DEFAULTS["PHAROX_ENABLED"]
    storage_url: str = DEFAULTS["PHAROX_STORAGE_URL"]
    storage: Any = DEFAULTS["PHAROX_STORAGE"]
    pool: str = DEFAULTS["PHAROX_POOL"]
    proxies: tuple[Proxy, ...] = ()
    #: PHAROX_GATEWAYS' exits, each with the name of its pool.
    gateway_exits: tuple[tuple[str, Proxy], ...] = ()
    #: Live lists: the URL fetched, the file re-read, every ``proxies_refresh``
    #: seconds (0: the URL at start only).
    proxies_url: str | None = DEFAULTS["PHAROX_PROXIES_URL"]
    proxies_file: str | None = DEFAULTS["PHAROX_PROXIES_FILE"]
    proxies_refresh: float = float(DEFAULTS["PHAROX_PROXIES_REFRESH"])
    proxy_max_concurrency: int | None = DEFAULTS["PHAROX_PROXY_MAX_CONCURRENCY"]
    consumer: str | None = DEFAULTS["PHAROX_CONSUMER"]
    lease_seconds: float = float(DEFAULTS["PHAROX_LEASE_SECONDS"])
    selector: SelectorStrategy = SelectorStrategy(DEFAULTS["PHAROX_SELECTOR"])  # noqa: RUF009 - an enum member: immutable
    filters: ProxyFilters | None = DEFAULTS["PHAROX_FILTERS"]
    acquire_timeout: float = float(DEFAULTS["PHAROX_ACQUIRE_TIMEOUT"])
    stats_interval: float = float(DEFAULTS["PHAROX_STATS_INTERVAL"])
    protocols: frozenset[ProxyProtocol] = field(default_factory=_default_protocols)
    ban_status_codes: frozenset[int] = frozenset(DEFAULTS["PHAROX_BAN_STATUS_CODES"])
    ban_scope: str = DEFAULTS["PHAROX_BAN_SCOPE"]
    reuse_delay: float = float(DEFAULTS["PHAROX_REUSE_DELAY"])
    download_slot: str = DEFAULTS["PHAROX_DOWNLOAD_SLOT"]
    #: With slots per proxy: the shortest delay Scrapy's slot keeps between two
    #: requests (DOWNLOAD_DELAY less its jitter), so a proxy is leased for a
    #: host only once its slot there would send at once.
    proxy_slot_delay: float = 0.0
    cooldown: CooldownPolicy = field(default_factory=CooldownPolicy)
    #: Scrapy's DOWNLOAD_TIMEOUT (a lease outlives it: renewal.LeaseRenewer).
    download_timeout: float = 180.0
    #: Scrapy's BOT_NAME, the first half of the default consumer name.
    bot_name: str = "scrapybot"
    session_idle_seconds: float = float(DEFAULTS["PHAROX_SESSION_IDLE_SECONDS"])
    session_concurrency: int = DEFAULTS["PHAROX_SESSION_CONCURRENCY"]
    session_max_uses: int | None = DEFAULTS["PHAROX_SESSION_MAX_USES"]
    session_max_age: float = float(DEFAULTS["PHAROX_SESSION_MAX_AGE"])
    unknown_settings: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: BaseSettings) -> PharoxConfig:
        """Read and check the settings; PharoxSettingError names a bad one."""
        if not _read(settings, "PHAROX_ENABLED", settings.getbool):
            return cls(enabled=False)
        max_concurrency = _optional_positive_int(
            settings, "PHAROX_PROXY_MAX_CONCURRENCY"
        )
        proxies = [
            *parse_proxies("PHAROX_PROXIES", _proxy_urls(settings), max_concurrency),
            *proxies_from_file(_raw(settings, "PHAROX_PROXIES_FILE"), max_concurrency),
        ]
        pool = _non_empty_text(settings, "PHAROX_POOL")
        consumer = _raw(settings, "PHAROX_CONSUMER")
        if consumer is not None and (not isinstance(consumer, str) or not consumer):
            raise PharoxSettingError(
                f"PHAROX_CONSUMER must be a non-empty string, got {consumer!r}"
            )
        return cls(
            storage_url=_non_empty_text(settings, "PHAROX_STORAGE_URL"),
            storage=_raw(settings, "PHAROX_STORAGE"),
            pool=pool,
            proxies=tuple(proxies),
            gateway_exits=tuple(
                parse_gateways(_raw(settings, "PHAROX_GATEWAYS"), pool, max_concurrency)
            ),
            proxies_url=_http_url(settings, "PHAROX_PROXIES_URL"),
            proxies_file=str(_raw(settings, "PHAROX_PROXIES_FILE") or "") or None,
            proxies_refresh=_seconds(settings, "PHAROX_PROXIES_REFRESH", zero=True),
            proxy_max_concurrency=max_concurrency,
            consumer=consumer,
            lease_seconds=_seconds(settings, "PHAROX_LEASE_SECONDS"),
            selector=parse_selector(
                "PHAROX_SELECTOR", _raw(settings, "PHAROX_SELECTOR")
            ),
            filters=parse_filters("PHAROX_FILTERS", _raw(settings, "PHAROX_FILTERS")),
            acquire_timeout=_seconds(settings, "PHAROX_ACQUIRE_TIMEOUT", zero=True),
            stats_interval=_seconds(settings, "PHAROX_STATS_INTERVAL", zero=True),
            protocols=_protocols(settings),
            ban_status_codes=_status_codes(settings),
            ban_scope=_choice(settings, "PHAROX_BAN_SCOPE", BAN_SCOPES),
            reuse_delay=_seconds(settings, "PHAROX_REUSE_DELAY", zero=True),
            download_slot=(
                slot := _choice(settings, "PHAROX_DOWNLOAD_SLOT", DOWNLOAD_SLOTS)
            ),
            proxy_slot_delay=_shortest_slot_delay(settings) if slot == "proxy" else 0.0,
            cooldown=_cooldown(settings),
            download_timeout=settings.getfloat("DOWNLOAD_TIMEOUT"),
            bot_name=str(settings.get("BOT_NAME")),
            session_idle_seconds=_seconds(settings, "PHAROX_SESSION_IDLE_SECONDS"),
            session_concurrency=_positive_int(settings, "PHAROX_SESSION_CONCURRENCY"),
            session_max_uses=_optional_positive_int(
                settings, "PHAROX_SESSION_MAX_USES"
            ),
            session_max_age=_seconds(settings, "PHAROX_SESSION_MAX_AGE"),
            unknown_settings=tuple(
                sorted(
                    name
                    for name in settings
                    if name.startswith("PHAROX_") and name not in DEFAULTS
                )
            ),
        )


def _shortest_slot_delay(settings: BaseSettings) -> float:
    """DOWNLOAD_DELAY less the most its jitter takes off (DOWNLOAD_DELAY_JITTER;
    an older Scrapy: RANDOMIZE_DOWNLOAD_DELAY, +-50%)."""
    jitter = settings.get("DOWNLOAD_DELAY_JITTER")
    if jitter is None:
        jitter = 0.5 if settings.getbool("RANDOMIZE_DOWNLOAD_DELAY", True) else 0.0
    delay = settings.getfloat("DOWNLOAD_DELAY") * max(0.0, 1 - float(jitter))
    return min(delay, MAX_SECONDS)


def _raw(settings: BaseSettings, name: str) -> Any:
    """The setting as given, or its default."""
    return settings.get(name, DEFAULTS[name])


def _read(settings: BaseSettings, name: str, getter: Any) -> Any:
    try:
        return getter(name, DEFAULTS[name])
    except (ValueError, TypeError) as exc:
        raise PharoxSettingError(
            f"{name}: invalid value {settings.get(name)!r} ({exc})"
        ) from None


def _proxy_urls(settings: BaseSettings) -> list[Any]:
    """PHAROX_PROXIES as a list; a string is cut where another URL starts."""
    value = _raw(settings, "PHAROX_PROXIES")
    if isinstance(value, str):
        return split_proxy_urls(value)
    return list(_read(settings, "PHAROX_PROXIES", settings.getlist))


def _number(settings: BaseSettings, name: str, *, positive: bool = False) -> float:
    value = _read(settings, name, settings.getfloat)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise PharoxSettingError(f"{name} must be a number {bound}, got {value!r}")
    return float(value)


def _seconds(settings: BaseSettings, name: str, *, zero: bool = False) -> float:
    """A span of time (``durations.check_seconds``): above 0, or from 0."""
    value = _read(settings, name, settings.getfloat)
    return check_seconds(value, name, zero=zero, error=PharoxSettingError)


def _optional_positive_int(settings: BaseSettings, name: str) -> int | None:
    """A whole number >= 1, or None for no limit (given as 0 or "none")."""
    raw = _raw(settings, name)
    if isinstance(raw, str) and raw.strip().lower() == "none":
        return None
    try:
        value = int(raw)
    except (TypeError, ValueError):
        value = -1
    if value < 0 or isinstance(raw, (bool, float)):
        raise PharoxSettingError(
            f"{name} must be a whole number >= 1, or 0 for no limit, got {raw!r}"
        )
    return value or None


def _positive_int(settings: BaseSettings, name: str) -> int:
    """A whole number >= 1."""
    raw = _raw(settings, name)
    try:
        value = int(raw)
    except (TypeError, ValueError):
        value = 0
    if value < 1 or isinstance(raw, (bool, float)):
        raise PharoxSettingError(f"{name} must be a whole number >= 1, got {raw!r}")
    return value


def _status_codes(settings: BaseSettings) -> frozenset[int]:
    codes = _read(settings, "PHAROX_BAN_STATUS_CODES", settings.getlist)
    try:
        parsed = frozenset(int(code) for code in codes)
    except (TypeError, ValueError):
        parsed = frozenset({0})
    if any(not 100 <= code <= 599 for code in parsed):
        raise PharoxSettingError(
            f"PHAROX_BAN_STATUS_CODES must be HTTP status codes, got {codes!r}"
        )
    return parsed


def _choice(settings: BaseSettings, name: str, choices: tuple[str, ...]) -> str:
    value = str(_raw(settings, name)).strip().lower()
    if value not in choices:
        raise PharoxSettingError(
            f"{name}: unknown value {settings.get(name)!r}, use one of "
            f"{', '.join(choices)}"
        )
    return value


def _cooldown(settings: BaseSettings) -> CooldownPolicy:
    base = _seconds(settings, "PHAROX_COOLDOWN_BASE")
    most = _seconds(settings, "PHAROX_COOLDOWN_MAX")
    if most < base:
        raise PharoxSettingError(
            f"PHAROX_COOLDOWN_MAX ({most:g}) must not be below "
            f"PHAROX_COOLDOWN_BASE ({base:g})"
        )
    failures = _optional_positive_int(settings, "PHAROX_FAILURES_BEFORE_COOLDOWN")
    if failures is None:
        raise PharoxSettingError("PHAROX_FAILURES_BEFORE_COOLDOWN must be >= 1")
    return CooldownPolicy(
        base_seconds=base, max_seconds=most, failures_before_cooldown=failures
    )


def _non_empty_text(settings: BaseSettings, name: str) -> str:
    value = _raw(settings, name)
    if not isinstance(value, str) or not value.strip():
        raise PharoxSettingError(f"{name} must be a non-empty string, got {value!r}")
    return value.strip()


def _http_url(settings: BaseSettings, name: str) -> str | None:
    """An http:// or https:// URL, or None when unset (password masked in errors)."""
    url = _raw(settings, name)
    if url is not None and not isinstance(url, str):
        raise PharoxSettingError(f"{name} must be a URL, got {type(url).__name__}")
    url = (url or "").strip() or None
    scheme = url.partition("://")[0].lower() if url is not None else "http"
    if scheme not in ("http", "https"):
        raise PharoxSettingError(
            f"{name} must be an http:// or https:// URL, got "
            f"{mask_url_password(str(url))!r}"
        )
    return url


def _protocols(settings: BaseSettings) -> frozenset[ProxyProtocol]:
    names = _read(settings, "PHAROX_PROTOCOLS", settings.getlist)
    try:
        protocols = frozenset(ProxyProtocol(str(name).lower()) for name in names)
    except ValueError:
        raise PharoxSettingError(
            f"PHAROX_PROTOCOLS: unknown protocol in {names!r}, "
            "use http, https, socks4, socks5"
        ) from None
    if not protocols:
        raise PharoxSettingError("PHAROX_PROTOCOLS must name at least one protocol")
    return protocols


# -- health checks and the command line ------------------------------------------


@dataclass(frozen=True)
class HealthCheckConfig:
    """The PHAROX_CHECK_* settings, parsed and checked."""

    url: str | None = DEFAULTS["PHAROX_CHECK_URL"]
    slow_ms: float = float(DEFAULTS["PHAROX_CHECK_SLOW_MS"])
    timeout: float = float(DEFAULTS["PHAROX_CHECK_TIMEOUT"])
    concurrency: int = DEFAULTS["PHAROX_CHECK_CONCURRENCY"]
    protocols: frozenset[ProxyProtocol] = field(default_factory=_default_protocols)

    @classmethod
    def from_settings(cls, settings: BaseSettings) -> HealthCheckConfig:
        """Read and check the settings; PharoxSettingError names a bad one."""
        url = _http_url(settings, "PHAROX_CHECK_URL")
        concurrency = _positive_int(settings, "PHAROX_CHECK_CONCURRENCY")
        return cls(
            url=url,
            slow_ms=_number(settings, "PHAROX_CHECK_SLOW_MS", positive=True),
            timeout=_seconds(settings, "PHAROX_CHECK_TIMEOUT"),
            concurrency=concurrency,
            protocols=_protocols(settings),
        )

    def require_url(self) -> str:
        """The page to fetch through each proxy; PharoxSettingError when unset."""
        if self.url is None:
            raise PharoxSettingError(
                "PHAROX_CHECK_URL is not set: name a page that answers 200, e.g. "
                "-s PHAROX_CHECK_URL=https://example.com/"
            )
        return self.url


@dataclass(frozen=True)
class CommandConfig:
    """What the ``scrapy pharox-*`` commands read from the settings."""

    storage_url: str = DEFAULTS["PHAROX_STORAGE_URL"]
    proxy_max_concurrency: int | None = DEFAULTS["PHAROX_PROXY_MAX_CONCURRENCY"]

    @classmethod
    def from_settings(cls, settings: BaseSettings) -> CommandConfig:
        """Read and check the settings; PharoxSettingError names a bad one."""
        return cls(
            storage_url=_non_empty_text(settings, "PHAROX_STORAGE_URL"),
            proxy_max_concurrency=_optional_positive_int(
                settings, "PHAROX_PROXY_MAX_CONCURRENCY"
            ),
        )
