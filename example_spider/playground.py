"""Offline playground: a local target site and local forward proxies on 127.0.0.1.

Used by the example Scrapy project and by the end-to-end tests. Everything binds to
loopback only and runs in daemon threads, independent of any Twisted reactor.

Site links: ``/`` links to every ``/page/<n>`` (1..pages); each page links back to
``/`` and to the next three pages (wrapping around), so every page is reachable.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import datetime
import functools
import hmac
import http.client
import ipaddress
import selectors
import socket
import socketserver
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import quote, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

__all__ = ["PROXY_HEADER", "ForwardProxy", "RecordedRequest", "TargetSite", "free_port"]

PROXY_HEADER = "X-Playground-Proxy"
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
     "proxy-connection", "te", "trailer", "trailers", "transfer-encoding", "upgrade"}
)  # fmt: skip
_Handler = Callable[[Any, Any, Any], socketserver.BaseRequestHandler]
_S = TypeVar("_S", bound="_Service")


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nobody is listening on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _loopback(host: str) -> str:
    """Return the IPv4 loopback address for ``host`` (no DNS) or raise ValueError."""
    if host.lower() == "localhost":
        return "127.0.0.1"
    addr = ipaddress.ip_address(host)
    if addr.version != 4 or not addr.is_loopback:
        raise ValueError(f"not an IPv4 loopback address: {host!r}")
    return str(addr)


def _nodelay(sock: socket.socket) -> None:
    """Disable Nagle's algorithm on a TCP socket."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@functools.cache
def _self_signed_pem() -> bytes:
    """Generate (once per process) a key + self-signed cert for 127.0.0.1/localhost."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    san = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem + cert.public_bytes(serialization.Encoding.PEM)


def _server_tls_context() -> ssl.SSLContext:
    """Return a server SSLContext loaded with the self-signed certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory(prefix="playground-") as tmp:
        path = Path(tmp, "cert.pem")
        path.write_bytes(_self_signed_pem())
        ctx.load_cert_chain(path)
    return ctx


class _Server(socketserver.ThreadingTCPServer):
    """Threaded TCP server that counts and tracks live connections for a clean stop."""

    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(
        self, address: tuple[str, int], handler: _Handler, tls: ssl.SSLContext | None
    ) -> None:
        self.tls = tls
        self.stopping = threading.Event()
        self.cond = threading.Condition()
        self.open_connections = 0
        self.max_open_connections = 0
        self.live: set[socket.socket] = set()
        self.make_handler = handler
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Count the accepted connection, then hand it to a new thread."""
        with self.cond:
            self.open_connections += 1
            self.max_open_connections = max(
                self.max_open_connections, self.open_connections
            )
        super().process_request(request, client_address)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Run the handler (in the connection thread), wrapping TLS if enabled."""
        conn: socket.socket = request
        _nodelay(conn)  # headers and body go out in two writes: avoid Nagle stalls
        if self.tls is not None:
            conn = self.tls.wrap_socket(
                request, server_side=True, do_handshake_on_connect=False
            )
        try:
            with self.tracked(conn):
                if self.stopping.is_set():
                    return
                if isinstance(conn, ssl.SSLSocket):
                    conn.settimeout(10)
                    conn.do_handshake()
                    conn.settimeout(None)
                self.make_handler(conn, client_address, self)
        finally:
            if conn is not request:
                conn.close()

    def shutdown_request(self, request: Any) -> None:
        """Close the client socket and count it as closed."""
        try:
            super().shutdown_request(request)
        finally:
            with self.cond:
                self.open_connections -= 1
                self.cond.notify_all()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore network errors (clients vanish all the time); report real bugs."""
        if (
            isinstance(sys.exc_info()[1], OSError | ValueError)
            or self.stopping.is_set()
        ):
            return
        super().handle_error(request, client_address)

    @contextlib.contextmanager
    def tracked(self, sock: socket.socket) -> Iterator[None]:
        """Register ``sock`` to be shut down by :meth:`close_all` while in the block."""
        with self.cond:
            self.live.add(sock)
        try:
            yield
        finally:
            with self.cond:
                self.live.discard(sock)

    def close_all(self, wait: float = 2.0) -> None:
        """Stop serving, close the listener and every tracked socket."""
        self.stopping.set()
        self.shutdown()
        self.server_close()
        with self.cond:
            for sock in self.live:
                # the plain-socket shutdown also works on an SSLSocket (no TLS alert)
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
            self.cond.wait_for(lambda: self.open_connections <= 0, timeout=wait)

    def wait(self, seconds: float) -> None:
        """Sleep ``seconds``, waking early when the server stops."""
        if seconds > 0:
            self.stopping.wait(seconds)


class _Service:
    """Shared start/stop/context-manager plumbing for the playground servers."""

    def __init__(self, host: str, port: int, tls: bool = False) -> None:
        self._host = _loopback(host)
        self._port = port
        self._tls = tls
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def _handler(self) -> _Handler:
        raise NotImplementedError

    @property
    def port(self) -> int:
        """The listening port (the configured one until started)."""
        return self._port

    @property
    def url(self) -> str:
        """Base URL, without trailing slash."""
        if not self._port:
            raise RuntimeError("not started yet (port 0)")
        return f"{'https' if self._tls else 'http'}://{self._host}:{self._port}"

    @property
    def open_connections(self) -> int:
        """Client connections open right now."""
        return self._server.open_connections if self._server else 0

    @property
    def max_open_connections(self) -> int:
        """Most client connections open at once since start / reset."""
        return self._server.max_open_connections if self._server else 0

    def start(self: _S) -> _S:
        """Bind, start serving in a daemon thread and return self."""
        if self._server is not None and not self._server.stopping.is_set():
            return self
        tls = _server_tls_context() if self._tls else None
        server = _Server((self._host, self._port), self._handler(), tls)
        self._server, self._port = server, int(server.server_address[1])
        name = f"{type(self).__name__}-{self._port}"
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.05,), name=name, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close all sockets; idempotent."""
        server, thread = self._server, self._thread
        if server is None or server.stopping.is_set():
            return
        server.close_all()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self: _S) -> _S:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@dataclass(frozen=True)
class RecordedRequest:
    """One request as received by a TargetSite."""

    method: str
    path: str
    headers: dict[str, str]
    via_proxy_port: int | None
    peer: tuple[str, int]


class _SiteHandler(BaseHTTPRequestHandler):
    """Serves the TargetSite pages."""

    protocol_version = "HTTP/1.1"
    server_version = "PlaygroundSite/1.0"

    def __init__(
        self, request: Any, client_address: Any, server: _Server, *, site: TargetSite
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
        host = headers.get("Host", "").rpartition(":")[0]
        if record.via_proxy_port in self.site.banned_proxy_ports and (
            self.site.ban_host is None or host == self.site.ban_host
        ):
            status, html = 403, _html("Forbidden", [])
        else:
            status, html = self._route(urlsplit(self.path).path)
        data = html.encode("utf-8")
        self.send_response(status)
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


class TargetSite(_Service):
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

    def _handler(self) -> _Handler:
        return functools.partial(_SiteHandler, site=self)


class _Reply(Exception):
    """Raised inside the proxy handler to answer the client with an error."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class _ProxyHandler(BaseHTTPRequestHandler):
    """Handles one client connection of a ForwardProxy."""

    protocol_version = "HTTP/1.1"
    server_version = "PlaygroundProxy/1.0"

    def __init__(
        self, request: Any, client_address: Any, server: _Server, *, proxy: ForwardProxy
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
            except _Reply as err:
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
                raise _Reply(400, "CONNECT needs host:port")
            self._check_auth()
            upstream = self._connect(host, int(port_text))
        except _Reply as err:
            self._reply(err)
            return
        with upstream, self.srv.tracked(upstream), self.proxy._carrying():
            self.send_response_only(200, "Connection established")
            self.end_headers()
            self._pipe(upstream)

    def _reply(self, err: _Reply) -> None:
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
            raise _Reply(407, "Proxy Authentication Required")

    def _connect(self, host: str, port: int) -> socket.socket:
        """Open an upstream connection, only to loopback; record its source port."""
        try:
            address = _loopback(host.strip("[]"))
        except ValueError:
            raise _Reply(403, "only loopback upstreams are allowed") from None
        try:
            sock = socket.create_connection((address, port), timeout=30)
        except OSError as exc:
            raise _Reply(502, f"upstream unreachable: {exc}") from None
        _nodelay(sock)
        self.proxy._forwarded(int(sock.getsockname()[1]))
        return sock

    def _forward(self, finish: Callable[[], None]) -> None:
        url = urlsplit(self.path)
        try:
            port = url.port or 80
        except ValueError:
            raise _Reply(400, "bad port") from None
        if url.scheme != "http" or not url.hostname:
            raise _Reply(400, "expected an absolute http:// URI")
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise _Reply(501, "chunked request bodies are not supported")
        length = self.headers.get("Content-Length", "0").strip() or "0"
        if not length.isdigit():
            raise _Reply(400, "bad Content-Length")
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
                raise _Reply(502, f"upstream failed: {exc!r}") from None
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


class ForwardProxy(_Service):
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

    def _handler(self) -> _Handler:
        return functools.partial(_ProxyHandler, proxy=self)

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
        with self._lock:
            self.seen_proxy_authorization.extend(values)
            self.rejected_count += not ok
        return ok

    def _forwarded(self, upstream_port: int) -> None:
        with self._lock:
            self.requests_count += 1
            self.upstream_ports.add(upstream_port)


def main(argv: list[str] | None = None) -> int:
    """Start one site and N proxies, print their URLs, serve until Ctrl-C."""
    parser = argparse.ArgumentParser(description="Serve the offline playground.")
    parser.add_argument("--pages", type=int, default=30)
    parser.add_argument("--proxies", type=int, default=3)
    parser.add_argument("--tls", action="store_true", help="serve the site over HTTPS")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds per response")
    parser.add_argument("--site-port", type=int, default=0)
    parser.add_argument("--username", help="require this proxy user (Basic auth)")
    parser.add_argument("--password", help="proxy password")
    args = parser.parse_args(argv)
    site = TargetSite(args.pages, tls=args.tls, delay=args.delay, port=args.site_port)
    proxies = [
        ForwardProxy(username=args.username, password=args.password)
        for _ in range(args.proxies)
    ]
    try:
        print(f"site  {site.start().url}/", flush=True)
        for proxy in proxies:
            print(f"proxy {proxy.start().auth_url}", flush=True)
        print("serving; Ctrl-C to stop", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        for service in [site, *proxies]:
            service.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
