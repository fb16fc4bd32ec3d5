"""A proxy: its status, protocol and credentials, its URL (parsed, built and masked
for logs) and the health counts the storage keeps on it."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any
from urllib.parse import quote, unquote, urlsplit
from uuid import UUID, uuid4

from pydantic import BaseModel, Field, ValidationError, field_validator

from ..durations import MAX_SECONDS
from ..exceptions import InvalidProxyURLError
from .base import utc_now
from .urls import credentials_problem, mask_url_password


class ProxyStatus(str, Enum):
    """Operational status of a proxy; only ACTIVE proxies are leased."""

    ACTIVE = "active"
    INACTIVE = "inactive"
    SLOW = "slow"
    BANNED = "banned"


class ProxyProtocol(str, Enum):
    """The protocol a client speaks to the proxy."""

    HTTP = "http"
    HTTPS = "https"
    SOCKS4 = "socks4"
    SOCKS5 = "socks5"


class ProxyCredentials(BaseModel):
    """User and password for a proxy; the password never shows in a repr."""

    user: str
    password: str = Field(repr=False)

    @field_validator("user", "password")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value


def normalise_country(value: str | None) -> str | None:
    """A country code as proxies and filters hold it: upper case."""
    return value.upper() if value is not None else None


class Proxy(BaseModel):
    """A proxy endpoint in a pool, with its location and lease capacity."""

    id: UUID = Field(default_factory=uuid4)
    host: str
    port: int = Field(ge=1, le=65535)
    protocol: ProxyProtocol = ProxyProtocol.HTTP
    pool_id: UUID
    status: ProxyStatus = ProxyStatus.ACTIVE
    checked_at: datetime = Field(default_factory=utc_now)
    credentials: ProxyCredentials | None = None
    source: str | None = None
    country: str | None = None
    city: str | None = None
    latitude: float | None = Field(default=None, ge=-90, le=90)
    longitude: float | None = Field(default=None, ge=-180, le=180)
    isp: str | None = None
    asn: int | None = None
    max_concurrency: int | None = Field(default=None, gt=0)
    current_leases: int = Field(default=0, ge=0)
    # Health the storage keeps from reported outcomes, shared by every process.
    successes: int = Field(default=0, ge=0)
    bans: int = Field(default=0, ge=0)
    failures: int = Field(default=0, ge=0)
    consecutive_bans: int = Field(default=0, ge=0)
    consecutive_failures: int = Field(default=0, ge=0)
    latency_ms: float | None = Field(default=None, ge=0)
    cooldown_until: datetime | None = None
    # A provider gateway's exit: ``identity`` names it in its pool (the gateway's
    # URL, masked, and a number), ``session_id`` is in its credentials, and the
    # storage renews it (``renew_identity``) before ``session_seconds`` from
    # ``session_started_at`` run out, or when it is burned.
    identity: str | None = None
    session_id: str | None = None
    session_seconds: float | None = Field(default=None, gt=0, le=MAX_SECONDS)
    session_started_at: datetime | None = None

    @field_validator("host", mode="before")
    @classmethod
    def _host_text(cls, value: Any) -> str:
        host = str(value).strip()
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not host or any(char in host for char in "/@ ?#"):
            raise ValueError(f"invalid host {host!r}")
        return host

    @field_validator("country")
    @classmethod
    def _upper_country(cls, value: str | None) -> str | None:
        return normalise_country(value)

    @property
    def netloc_host(self) -> str:
        """The host as written in a URL: IPv6 literals (the only hosts with a colon)
        in brackets."""
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def url(self) -> str:
        """``scheme://user:password@host:port`` with the credentials percent-encoded."""
        auth = ""
        if self.credentials is not None:
            user = quote(self.credentials.user, safe="")
            password = quote(self.credentials.password, safe="")
            auth = f"{user}:{password}@"
        return f"{self.protocol.value}://{auth}{self.netloc_host}:{self.port}"

    @property
    def masked_url(self) -> str:
        """The URL safe for logs and stats: the password replaced by ``***``."""
        auth = ""
        if self.credentials is not None:
            auth = f"{quote(self.credentials.user, safe='')}:***@"
        return f"{self.protocol.value}://{auth}{self.netloc_host}:{self.port}"

    @property
    def address(self) -> str:
        """``scheme://host:port`` without any credentials."""
        return f"{self.protocol.value}://{self.netloc_host}:{self.port}"

    @classmethod
    def from_url(cls, url: str, *, pool_id: UUID, **fields: Any) -> Proxy:
        """Parse ``scheme://[user:password@]host:port`` into a Proxy.

        A bad URL raises ``InvalidProxyURLError`` naming it, its password masked
        whatever characters it holds.
        """
        text = url.strip() if isinstance(url, str) else url
        if not isinstance(text, str) or not text:
            raise InvalidProxyURLError(f"invalid proxy URL {url!r}: empty")
        shown = mask_url_password(text)
        # Checked before urlsplit, which would read part of such a password as
        # the host or the port, and say so.
        problem = credentials_problem(text) or _stray_character(shown)
        if problem is not None:
            raise InvalidProxyURLError(f"malformed proxy URL {shown!r}: {problem}")
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError as exc:
            raise InvalidProxyURLError(
                f"malformed proxy URL {shown!r}: {exc}"
            ) from None
        scheme = parts.scheme.lower()
        if scheme not in {protocol.value for protocol in ProxyProtocol}:
            raise InvalidProxyURLError(
                f"invalid proxy URL {shown!r}: scheme must be one of "
                "http, https, socks4, socks5"
            )
        if not parts.hostname:
            raise InvalidProxyURLError(f"invalid proxy URL {shown!r}: no host")
        if port is None:
            raise InvalidProxyURLError(f"invalid proxy URL {shown!r}: no port")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise InvalidProxyURLError(
                f"invalid proxy URL {shown!r}: a proxy URL has no path or query"
            )
        credentials = None
        if parts.username is not None or parts.password is not None:
            if not parts.username or not parts.password:
                raise InvalidProxyURLError(
                    f"invalid proxy URL {shown!r}: give both user and password"
                )
            credentials = ProxyCredentials(
                user=unquote(parts.username), password=unquote(parts.password)
            )
        try:
            return cls(
                host=parts.hostname,
                port=port,
                protocol=ProxyProtocol(scheme),
                pool_id=pool_id,
                credentials=credentials,
                **fields,
            )
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
                for error in exc.errors()
            )
            raise InvalidProxyURLError(
                f"invalid proxy URL {shown!r}: {problems}"
            ) from None

    @property
    def endpoint_key(self) -> tuple[str, str, int, str | None]:
        """What makes two proxies of one pool the same: protocol, host, port, and
        the user, or for a gateway's exit its identity (its user changes with its
        session id)."""
        who = self.identity
        if who is None and self.credentials is not None:
            who = self.credentials.user
        return (self.protocol.value, self.host.lower(), self.port, who)

    @property
    def renewal_due_at(self) -> float | None:
        """When a gateway's exit is due for a new session id (a POSIX time): a
        tenth of its ``session_seconds`` before they run out; None for others."""
        if self.session_seconds is None or self.session_started_at is None:
            return None
        return self.session_started_at.timestamp() + 0.9 * self.session_seconds

    @property
    def has_capacity(self) -> bool:
        """True while another lease fits under ``max_concurrency``."""
        return (
            self.max_concurrency is None or self.current_leases < self.max_concurrency
        )


# Characters RFC 3986 allows nowhere in a URL unencoded (other than white space).
_NEVER_IN_A_URL = frozenset('<>"{}|\\^`')


def _stray_character(url: str) -> str | None:
    """What a proxy URL (its password masked) holds that no URL does, or None:
    white space, a control character, or a character a URL must encode."""
    for char in url:
        if char.isspace() or not char.isprintable() or char in _NEVER_IN_A_URL:
            return "it holds a space" if char == " " else f"it holds {char!r}"
    return None
