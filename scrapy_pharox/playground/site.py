"""The playground's target site: a few linked pages that record every request.

``/`` links to every ``/page/<n>`` (1..pages); each page links back to ``/`` and
to the next three pages (wrapping around), so every page is reachable. Also
``/status/<code>`` answers with that status and ``/slow`` after a delay. Each
request is recorded with the moment it arrived, its host and the proxy (and the
gateway exit) that carried it.

``/proxies.txt`` serves ``proxy_list`` as text with ``proxy_list_status``: a
live proxy list (PHAROX_PROXIES_URL) whose content and failures a test sets.

``/flow/<n>`` (1..flow_pages, each linking to the next) is a site that ties its
visitor cookie to an IP: a request without a cookie it knows gets a new one,
issued to the proxy (or gateway exit) that carried it, and a cookie that comes
back through another is refused (403, recorded in ``refused``).
"""

from __future__ import annotations

import functools
import itertools
import time
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from scrapy_pharox.playground.server import Handler, Server, Service

# Set by a ForwardProxy on what it forwards, so the site knows which proxy it was.
PROXY_HEADER = "X-Playground-Proxy"
# Set by a GatewayProxy on what it forwards: the exit (session id) that carried it.
EXIT_HEADER = "X-Playground-Exit"
#: The cookie of the ``/flow/<n>`` pages, tied to the proxy it was issued through.
VISITOR_COOKIE = "visitor"


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
    #: When it arrived by the epoch clock, the one lease times are taken by.
    received_at: float = field(default_factory=time.time)

    @property
    def host(self) -> str:
        """The Host header without its port."""
        return self.headers.get("Host", "").rpartition(":")[0]

    @property
    def exit(self) -> str | None:
        """The gateway exit (session id) that carried it, if any."""
        return self.headers.get(EXIT_HEADER)

    @property
    def ip(self) -> int | str | None:
        """What stands for the IP it came from: its gateway exit, else the port
        of the proxy that carried it (None: it came direct)."""
        return self.exit or self.via_proxy_port

    @property
    def visitor(self) -> str | None:
        """The value of the visitor cookie it carried, if any."""
        try:
            cookies = SimpleCookie(self.headers.get("Cookie", ""))
        except CookieError:
            return None
        morsel = cookies.get(VISITOR_COOKIE)
        return morsel.value if morsel is not None else None


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
        issued: str | None = None
        content_type = "text/html; charset=utf-8"
        retry_after = self.site.throttled_proxy_ports.get(record.via_proxy_port or 0)
        if record.via_proxy_port in self.site.banned_proxy_ports and (
            self.site.ban_host is None or host == self.site.ban_host
        ):
            status, html = 403, _html("Forbidden", [])
        elif retry_after is not None:
            status, html = 429, _html("Too Many Requests", [])
        else:
            path = urlsplit(self.path).path
            if path.startswith("/flow/"):
                status, html, issued = self._flow(path, record)
            elif path == "/proxies.txt":
                status, html = self.site.proxy_list_status, self.site.proxy_list
                content_type = "text/plain; charset=utf-8"
            else:
                status, html = self._route(path)
        data = html.encode("utf-8")
        self.send_response(status)
        if issued is not None:
            self.send_header("Set-Cookie", f"{VISITOR_COOKIE}={issued}; Path=/")
        if status == 429 and retry_after:
            self.send_header("Retry-After", retry_after)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_HEAD = do_POST = do_GET

    def _flow(self, path: str, record: RecordedRequest) -> tuple[int, str, str | None]:
        """A ``/flow/<n>`` page: its status, its HTML and a visitor cookie to
        issue (None when the request's own is good)."""
        site = self.site
        number = path.removeprefix("/flow/")
        if not number.isdigit() or not 1 <= int(number) <= site.flow_pages:
            return 404, _html("Not found", ["/"]), None
        with self.srv.cond:
            visitor = record.visitor
            issued_to = site.visitors.get(visitor) if visitor else None
            if issued_to is not None and issued_to != record.ip:
                site.refused.append(record)
                return 403, _html("Cookie from another IP", []), None
            issued = None
            if issued_to is None:
                issued = f"v{next(site._visitor_numbers)}"
                site.visitors[issued] = record.ip
        following = int(number) + 1
        links = [f"/flow/{following}"] if following <= site.flow_pages else []
        return 200, _html(f"Flow {number}", links), issued

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
        flow_pages: int = 6,
        tls: bool = False,
        delay: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host, port, tls)
        if pages < 1:
            raise ValueError("pages must be >= 1")
        self.pages, self.delay, self.flow_pages = pages, delay, flow_pages
        self.requests: list[RecordedRequest] = []
        # Requests that arrive through these proxy ports get 403 Forbidden: a ban
        # (only those for ``ban_host``, when it is set).
        self.banned_proxy_ports: set[int] = set()
        self.ban_host: str | None = None
        # Requests through these proxy ports get 429 Too Many Requests, with the
        # port's Retry-After value (none for an empty one).
        self.throttled_proxy_ports: dict[int, str] = {}
        #: Visitor cookies of the /flow pages, each with the proxy port it was
        #: issued through (None: no proxy); ``refused`` holds the requests whose
        #: cookie came back through another.
        self.visitors: dict[str, int | str | None] = {}
        self.refused: list[RecordedRequest] = []
        self._visitor_numbers = itertools.count(1)
        #: ``/proxies.txt``: a live proxy list, answered with this status.
        self.proxy_list = ""
        self.proxy_list_status = 200

    @property
    def list_fetches(self) -> list[RecordedRequest]:
        """The requests for ``/proxies.txt`` so far."""
        return [r for r in self.requests if urlsplit(r.path).path == "/proxies.txt"]

    def _handler(self) -> Handler:
        return functools.partial(_SiteHandler, site=self)
