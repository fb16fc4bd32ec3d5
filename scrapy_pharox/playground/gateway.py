"""A residential provider's gateway: one host:port, the exit chosen by a session id.

The client names its session in the proxy user name (``cust-42-session-<id>``);
each session id is an exit, stamped on what it forwards as ``X-Playground-Exit``.
An exit may burn (the site blocks its IP: 403 after ``burn_after`` requests) and a
session may expire (502 after ``session_seconds`` from its first request).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import hmac
import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from scrapy_pharox.playground.proxies import ForwardProxy
from scrapy_pharox.playground.proxy_handler import ProxyHandler, Reply
from scrapy_pharox.playground.server import Handler, Server
from scrapy_pharox.playground.site import EXIT_HEADER

_SESSION = "{session}"
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclasses.dataclass
class ExitStats:
    """One exit (session id) of a GatewayProxy, as counted so far."""

    #: Requests (and CONNECT tunnels) it took on, past the burn and expiry checks.
    requests: int
    in_flight: int
    max_in_flight: int
    #: Arrival of its first request and of its latest (any answer), on the clock.
    first_seen: float
    last_seen: float
    #: It carried ``burn_after`` requests: it answers 403 from now on.
    burned: bool


def _nothing() -> None:
    """Release nothing (a request that holds no exit)."""


class GatewayProxy(ForwardProxy):
    """A ForwardProxy whose user name picks the exit: counted, burned, expired."""

    password: str

    def __init__(
        self,
        *,
        username_template: str,
        password: str,
        burn_after: int | None = None,
        session_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host=host, port=port)
        if username_template.count(_SESSION) != 1:
            raise ValueError("username_template must hold {session} exactly once")
        if ":" in username_template:
            raise ValueError("username_template must not hold ':' (Basic user name)")
        if burn_after is not None and burn_after < 0:
            raise ValueError("burn_after must be >= 0")
        if session_seconds is not None and not session_seconds > 0:
            raise ValueError("session_seconds must be > 0")
        prefix, _, suffix = username_template.partition(_SESSION)
        self._user = re.compile(
            re.escape(prefix) + f"({_SESSION_ID.pattern})" + re.escape(suffix)
        )
        self.username_template, self.password = username_template, password
        self.burn_after, self.session_seconds = burn_after, session_seconds
        self._clock = clock
        self._exits: dict[str, ExitStats] = {}
        self.expired_requests = 0
        self.burned_requests = 0

    @property
    def exits(self) -> dict[str, ExitStats]:
        """A copy of every exit's counts, by session id."""
        with self._lock:
            return {sid: dataclasses.replace(s) for sid, s in self._exits.items()}

    @property
    def gateway_url(self) -> str:
        """The gateway as PHAROX_GATEWAYS takes it: ``{session}`` in the user name."""
        user = quote(self.username_template, safe="{}")
        return f"http://{user}:{quote(self.password, safe='')}@{self._host}:{self.port}"

    def session_url(self, session: str) -> str:
        """Proxy URL whose percent-encoded credentials pick the exit ``session``."""
        if not _SESSION_ID.fullmatch(session):
            raise ValueError("a session id is 1-64 letters, digits, '_' or '-'")
        user = self.username_template.replace(_SESSION, session)
        return (
            f"http://{quote(user, safe='')}:{quote(self.password, safe='')}"
            f"@{self._host}:{self.port}"
        )

    def reset_counters(self) -> None:
        """Zero the counters and forget the exits, but those with requests in flight.

        An exit in flight stays, as if first seen now and carrying what it carries
        (like max_active_requests, its max_in_flight restarts from in_flight).
        """
        super().reset_counters()
        now = self._clock()
        with self._lock:
            self.expired_requests = self.burned_requests = 0
            self._exits = {
                sid: stats for sid, stats in self._exits.items() if stats.in_flight
            }
            for stats in self._exits.values():
                stats.requests, stats.max_in_flight = 0, stats.in_flight
                stats.first_seen = stats.last_seen = now
                stats.burned = self.burn_after == 0

    def _handler(self) -> Handler:
        return functools.partial(_GatewayHandler, proxy=self)

    def _authorize(self, values: list[str]) -> bool:
        return self._authorize_session(values) is not None

    def _authorize_session(self, values: list[str]) -> str | None:
        """Record Proxy-Authorization values; the session id they name, if right."""
        session = self._session_of(values)
        self._record_authorization(values, session is not None)
        return session

    def _session_of(self, values: list[str]) -> str | None:
        scheme, _, token = (values[0] if len(values) == 1 else "").partition(" ")
        try:
            decoded = base64.b64decode(token.strip(), validate=True).decode()
        except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
            return None
        user, colon, password = decoded.partition(":")
        match = self._user.fullmatch(user)
        right = hmac.compare_digest(password.encode(), self.password.encode())
        if scheme.lower() != "basic" or not colon or match is None or not right:
            return None
        return match.group(1)

    def _admit(self, session: str) -> Callable[[], None]:
        """Take a request on the exit ``session``, or refuse it (Reply 502 or 403).

        Returns the function that ends its in-flight count, once, whenever called.
        """
        now = self._clock()
        with self._lock:
            stats = self._exits.get(session)
            if stats is None:
                stats = ExitStats(
                    requests=0,
                    in_flight=0,
                    max_in_flight=0,
                    first_seen=now,
                    last_seen=now,
                    burned=self.burn_after == 0,
                )
                self._exits[session] = stats
            stats.last_seen = now
            # The gateway refuses an expired session before the site could see it.
            limit = self.session_seconds
            if limit is not None and now > stats.first_seen + limit:
                self.expired_requests += 1
                raise Reply(502, "session expired")
            if stats.burned:
                self.burned_requests += 1
                raise Reply(403, "exit burned")
            stats.requests += 1
            stats.burned = self.burn_after is not None and (
                stats.requests >= self.burn_after
            )
            stats.in_flight += 1
            stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        done = False

        def release() -> None:
            nonlocal done
            with self._lock:
                if not done:
                    done = True
                    stats.in_flight -= 1

        return release


class _GatewayHandler(ProxyHandler):
    """A ProxyHandler that holds each request's exit while it carries it."""

    def __init__(
        self, request: Any, client_address: Any, server: Server, *, proxy: GatewayProxy
    ) -> None:
        self.gateway = proxy
        self._exit: str | None = None
        self._release: Callable[[], None] = _nothing
        super().__init__(request, client_address, server, proxy=proxy)

    def handle_one_request(self) -> None:
        """Serve one request; its exit is released by the end, whatever happened."""
        self._exit, self._release = None, _nothing
        try:
            super().handle_one_request()
        finally:
            self._release()

    def _check_auth(self) -> None:
        values = self.headers.get_all("Proxy-Authorization") or []
        session = self.gateway._authorize_session(values)
        if session is None:
            raise Reply(407, "Proxy Authentication Required")
        self._release = self.gateway._admit(session)
        self._exit = session

    def _forward(self, finish: Callable[[], None]) -> None:
        def finish_with_exit() -> None:
            self._release()
            finish()

        super()._forward(finish_with_exit)

    def _reply(self, err: Reply) -> None:
        self._release()  # a refusal is the request's last bytes too
        super()._reply(err)

    def _upstream_headers(self, host: str) -> list[tuple[str, str]]:
        """The ForwardProxy's headers, the client's own exit header replaced."""
        out = [
            (name, value)
            for name, value in super()._upstream_headers(host)
            if name.lower() != EXIT_HEADER.lower()
        ]
        return [*out, (EXIT_HEADER, self._exit or "")]
