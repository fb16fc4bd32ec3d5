"""The playground's forward proxies: plain or asking for Basic credentials, or hanging.

A ForwardProxy forwards absolute-URI requests and opens CONNECT tunnels (for TLS
sites), to loopback upstreams only, and counts what it carried.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hmac
import threading
from collections.abc import Callable, Iterator
from urllib.parse import quote

from scrapy_pharox.playground.proxy_handler import ProxyHandler
from scrapy_pharox.playground.server import Handler, Service


class ForwardProxy(Service):
    """An HTTP forward proxy: absolute-URI requests, CONNECT tunnels, auth, counting."""

    def __init__(
        self,
        *,
        username: str | None = None,
        password: str | None = None,
        mode: str = "normal",
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host, port)
        if mode not in ("normal", "hang"):
            raise ValueError(f"unknown mode {mode!r}")
        if password is not None and username is None:
            raise ValueError("password given without username")
        self.username, self.password, self.mode = username, password, mode
        self._lock = threading.Lock()
        self.requests_count = 0
        self.rejected_count = 0
        self.seen_proxy_authorization: list[str] = []
        self.upstream_ports: set[int] = set()
        self.active_requests = 0
        self.max_active_requests = 0

    @contextlib.contextmanager
    def _carrying(self) -> Iterator[Callable[[], None]]:
        """Count a request (or a CONNECT tunnel) from arrival to its last byte.

        The handler calls the function it gets just before it writes the last
        bytes: once they are out, the client may send its next request, which
        must not find this one still counted.
        """
        with self._lock:
            self.active_requests += 1
            self.max_active_requests = max(
                self.max_active_requests, self.active_requests
            )
        done = False

        def finish() -> None:
            nonlocal done
            with self._lock:
                if not done:
                    done = True
                    self.active_requests -= 1

        try:
            yield finish
        finally:
            finish()

    def _handler(self) -> Handler:
        return functools.partial(ProxyHandler, proxy=self)

    @property
    def auth_url(self) -> str:
        """Proxy URL with percent-encoded credentials (same as url without auth)."""
        if self.username is None:
            return self.url
        user, pwd = quote(self.username, safe=""), quote(self.password or "", safe="")
        return f"http://{user}:{pwd}@{self._host}:{self.port}"

    def reset_counters(self) -> None:
        """Zero the counters (max_open_connections restarts from the current value)."""
        with self._lock:
            self.requests_count = self.rejected_count = 0
            self.max_active_requests = self.active_requests
            self.seen_proxy_authorization.clear()
            self.upstream_ports.clear()
        if self._server is not None:
            with self._server.cond:
                self._server.max_open_connections = self._server.open_connections

    def _authorize(self, values: list[str]) -> bool:
        """Record Proxy-Authorization values; True if they carry our credentials."""
        scheme, _, token = (values[0] if len(values) == 1 else "").partition(" ")
        try:
            decoded = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            decoded = b""
        expected = f"{self.username}:{self.password or ''}".encode()
        ok = self.username is None or (
            scheme.lower() == "basic" and hmac.compare_digest(decoded, expected)
        )
        self._record_authorization(values, ok)
        return ok

    def _record_authorization(self, values: list[str], ok: bool) -> None:
        """Keep the Proxy-Authorization values seen; count a refusal."""
        with self._lock:
            self.seen_proxy_authorization.extend(values)
            self.rejected_count += not ok

    def _forwarded(self, upstream_port: int) -> None:
        with self._lock:
            self.requests_count += 1
            self.upstream_ports.add(upstream_port)
