"""How a ForwardProxy serves one connection: forwarding, CONNECT, auth replies."""

from __future__ import annotations

import contextlib
import http.client
import selectors
import socket
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from scrapy_pharox.playground.server import Server, loopback, nodelay
from scrapy_pharox.playground.site import PROXY_HEADER

if TYPE_CHECKING:
    from scrapy_pharox.playground.proxies import ForwardProxy

_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
     "proxy-connection", "te", "trailer", "trailers", "transfer-encoding", "upgrade"}
)  # fmt: skip


class Reply(Exception):
    """Raised inside the proxy handler to answer the client with an error."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class ProxyHandler(BaseHTTPRequestHandler):
    """Handles one client connection of a ForwardProxy."""

    protocol_version = "HTTP/1.1"
    server_version = "PlaygroundProxy/1.0"

    def __init__(
        self, request: Any, client_address: Any, server: Server, *, proxy: ForwardProxy
    ) -> None:
        self.proxy, self.srv = proxy, server
        super().__init__(request, client_address, server)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep stderr quiet."""

    def handle(self) -> None:
        """Serve requests, or in hang mode hold the connection silently."""
        if self.proxy.mode != "hang":
            super().handle()
            return
        self.connection.settimeout(0.1)
        while not self.srv.stopping.is_set():
            try:
                if not self.connection.recv(65536):
                    return
            except TimeoutError:
                continue

    def do_GET(self) -> None:
        """Forward an absolute-URI request."""
        with self.proxy._carrying() as finish:
            try:
                self._forward(finish)
            except Reply as err:
                finish()
                self._reply(err)

    do_HEAD = do_POST = do_PUT = do_DELETE = do_OPTIONS = do_PATCH = do_GET

    def do_CONNECT(self) -> None:
        """Open a tunnel to a loopback host:port."""
        self.close_connection = True
        try:
            host, sep, port_text = self.path.rpartition(":")
            if not (
                sep and host and port_text.isdigit() and 0 < int(port_text) < 65536
            ):
                raise Reply(400, "CONNECT needs host:port")
            self._check_auth()
            upstream = self._connect(host, int(port_text))
        except Reply as err:
            self._reply(err)
            return
        with upstream, self.srv.tracked(upstream), self.proxy._carrying():
            self.send_response_only(200, "Connection established")
            self.end_headers()
            self._pipe(upstream)

    def _reply(self, err: Reply) -> None:
        body = (err.message + "\n").encode("utf-8")
        self.close_connection = True
        self.send_response_only(err.code)
        if err.code == 407:
            self.send_header("Proxy-Authenticate", 'Basic realm="playground"')
        self.send_header("Connection", "close")
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _check_auth(self) -> None:
        values = self.headers.get_all("Proxy-Authorization") or []
        if not self.proxy._authorize(values):
            raise Reply(407, "Proxy Authentication Required")

    def _connect(self, host: str, port: int) -> socket.socket:
        """Open an upstream connection, only to loopback; record its source port."""
        try:
            address = loopback(host.strip("[]"))
        except ValueError:
            raise Reply(403, "only loopback upstreams are allowed") from None
        try:
            sock = socket.create_connection((address, port), timeout=30)
        except OSError as exc:
            raise Reply(502, f"upstream unreachable: {exc}") from None
        nodelay(sock)
        self.proxy._forwarded(int(sock.getsockname()[1]))
        return sock

    def _forward(self, finish: Callable[[], None]) -> None:
        url = urlsplit(self.path)
        try:
            port = url.port or 80
        except ValueError:
            raise Reply(400, "bad port") from None
        if url.scheme != "http" or not url.hostname:
            raise Reply(400, "expected an absolute http:// URI")
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise Reply(501, "chunked request bodies are not supported")
        length = self.headers.get("Content-Length", "0").strip() or "0"
        if not length.isdigit():
            raise Reply(400, "bad Content-Length")
        body = self.rfile.read(int(length))
        self._check_auth()
        conn = http.client.HTTPConnection("127.0.0.1", port)
        conn.sock = upstream = self._connect(url.hostname, port)
        target = (url.path or "/") + (f"?{url.query}" if url.query else "")
        with contextlib.closing(conn), self.srv.tracked(upstream):
            try:
                conn.putrequest(self.command, target, True, True)  # skip Host, A-E
                for name, value in self._upstream_headers(
                    url.netloc.rpartition("@")[2]
                ):
                    conn.putheader(name, value)
                conn.endheaders(body or None)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException, ValueError) as exc:
                raise Reply(502, f"upstream failed: {exc!r}") from None
        self.send_response_only(resp.status, resp.reason)
        for name, value in resp.getheaders():
            if name.lower() not in _HOP_BY_HOP | {"content-length"}:
                self.send_header(name, value)
        no_body = self.command == "HEAD" or resp.status in (204, 304)
        length_out = resp.getheader("Content-Length") if no_body else str(len(data))
        if length_out is not None:
            self.send_header("Content-Length", length_out)
        if self.close_connection:
            self.send_header("Connection", "close")
        if no_body:
            finish()
        self.end_headers()
        if not no_body:
            finish()
            self.wfile.write(data)

    def _upstream_headers(self, host: str) -> list[tuple[str, str]]:
        """Client headers minus hop-by-hop ones, plus the playground marker."""
        drop = set(_HOP_BY_HOP) | {PROXY_HEADER.lower()}
        for value in self.headers.get_all("Connection") or []:
            drop.update(token.strip().lower() for token in value.split(","))
        out = [(k, v) for k, v in self.headers.items() if k.lower() not in drop]
        if "Host" not in self.headers:
            out.insert(0, ("Host", host))
        return [*out, (PROXY_HEADER, str(self.proxy.port)), ("Connection", "close")]

    def _pipe(self, upstream: socket.socket) -> None:
        """Relay bytes both ways until either side closes or the proxy stops."""
        client = self.connection
        client.setblocking(False)  # grab bytes the client sent right after CONNECT
        try:
            pending = self.rfile.read1(65536) or b""
        except OSError:
            pending = b""
        client.settimeout(None)
        upstream.settimeout(None)
        if pending:
            upstream.sendall(pending)
        with selectors.DefaultSelector() as sel:
            sel.register(client, selectors.EVENT_READ, upstream)
            sel.register(upstream, selectors.EVENT_READ, client)
            while not self.srv.stopping.is_set():
                for key, _ in sel.select(timeout=0.2):
                    data = cast(socket.socket, key.fileobj).recv(65536)
                    if not data:
                        return
                    cast(socket.socket, key.data).sendall(data)
