"""The playground's target site: a few linked pages that record every request.

``/`` links to every ``/page/<n>`` (1..pages); each page links back to ``/`` and
to the next three pages (wrapping around), so every page is reachable. Also
``/status/<code>`` answers with that status and ``/slow`` after a delay. Each
request is recorded with the moment it arrived, its host and the proxy that
carried it.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from scrapy_pharox.playground.server import Handler, Server, Service

# Set by a ForwardProxy on what it forwards, so the site knows which proxy it was.
PROXY_HEADER = "X-Playground-Proxy"


@dataclass(frozen=True)
class RecordedRequest:
    """One request as received by a TargetSite."""

    method: str
    path: str
    headers: dict[str, str]
    via_proxy_port: int | None
    peer: tuple[str, int]
    #: When it arrived (time.monotonic()).
    at: float = field(default_factory=time.monotonic)

    @property
    def host(self) -> str:
        """The Host header without its port."""
        return self.headers.get("Host", "").rpartition(":")[0]


class _SiteHandler(BaseHTTPRequestHandler):
    """Serves the TargetSite pages."""

    protocol_version = "HTTP/1.1"
    server_version = "PlaygroundSite/1.0"

    def __init__(
        self, request: Any, client_address: Any, server: Server, *, site: TargetSite
    ) -> None:
        self.site, self.srv = site, server
        super().__init__(request, client_address, server)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep stderr quiet."""

    def do_GET(self) -> None:
        """Record the request, then serve the page (also used for HEAD and POST)."""
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = dict(self.headers.items())
        proxy = headers.get(PROXY_HEADER, "")
        peer = (str(self.client_address[0]), int(self.client_address[1]))
        record = RecordedRequest(
            self.command,
            self.path,
            headers,
            int(proxy) if proxy.isdigit() else None,
            peer,
        )
        with self.srv.cond:
            self.site.requests.append(record)
        host = record.host
        retry_after = self.site.throttled_proxy_ports.get(record.via_proxy_port or 0)
        if record.via_proxy_port in self.site.banned_proxy_ports and (
            self.site.ban_host is None or host == self.site.ban_host
        ):
            status, html = 403, _html("Forbidden", [])
        elif retry_after is not None:
            status, html = 429, _html("Too Many Requests", [])
        else:
            status, html = self._route(urlsplit(self.path).path)
        data = html.encode("utf-8")
        self.send_response(status)
        if status == 429 and retry_after:
            self.send_header("Retry-After", retry_after)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_HEAD = do_POST = do_GET

    def _route(self, path: str) -> tuple[int, str]:
        site = self.site
        self.srv.wait((site.delay or 2.0) if path == "/slow" else site.delay)
        parts = path.strip("/").split("/")
        if path == "/":
            links = [f"/page/{n}" for n in range(1, site.pages + 1)]
            return 200, _html("Index", links)
        if len(parts) == 2 and parts[1].isdigit():
            num = int(parts[1])
            if parts[0] == "page" and 1 <= num <= site.pages:
                nxt = [(num + k - 1) % site.pages + 1 for k in (1, 2, 3)]
                links = ["/"] + [f"/page/{n}" for n in dict.fromkeys(nxt) if n != num]
                return 200, _html(f"Page {num}", links)
            if parts[0] == "status" and 200 <= num <= 599:
                return num, _html(f"Status {num}", ["/"])
        if path == "/slow":
            return 200, _html("Slow", ["/"])
        return 404, _html("Not found", ["/"])


def _html(title: str, links: list[str]) -> str:
    """Render a tiny HTML page with a list of links."""
    items = "".join(f'<li><a href="{href}">{href}</a></li>' for href in links)
    return (
        f"<!DOCTYPE html><html><head><title>{title}</title></head>"
        f"<body><h1>{title}</h1><ul>{items}</ul></body></html>"
    )


class TargetSite(Service):
    """A small crawlable site: / links to every /page/<n>, each page to a few more."""

    def __init__(
        self,
        pages: int = 50,
        *,
        tls: bool = False,
        delay: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host, port, tls)
        if pages < 1:
            raise ValueError("pages must be >= 1")
        self.pages, self.delay = pages, delay
        self.requests: list[RecordedRequest] = []
        # Requests that arrive through these proxy ports get 403 Forbidden: a ban
        # (only those for ``ban_host``, when it is set).
        self.banned_proxy_ports: set[int] = set()
        self.ban_host: str | None = None
        # Requests through these proxy ports get 429 Too Many Requests, with the
        # port's Retry-After value (none for an empty one).
        self.throttled_proxy_ports: dict[int, str] = {}

    def _handler(self) -> Handler:
        return functools.partial(_SiteHandler, site=self)
