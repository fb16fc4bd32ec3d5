"""The plumbing every playground server shares: a threaded TCP server on loopback.

``Service`` starts a ``Server`` in a daemon thread, independent of any Twisted
reactor, and stops it with every connection it still holds.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import socketserver
import ssl
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from scrapy_pharox.playground.certificates import server_tls_context

Handler = Callable[[Any, Any, Any], socketserver.BaseRequestHandler]
_S = TypeVar("_S", bound="Service")


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nobody is listening on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def loopback(host: str) -> str:
    """Return the IPv4 loopback address for ``host`` (no DNS) or raise ValueError."""
    if host.lower() == "localhost":
        return "127.0.0.1"
    addr = ipaddress.ip_address(host)
    if addr.version != 4 or not addr.is_loopback:
        raise ValueError(f"not an IPv4 loopback address: {host!r}")
    return str(addr)


def nodelay(sock: socket.socket) -> None:
    """Disable Nagle's algorithm on a TCP socket."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Server(socketserver.ThreadingTCPServer):
    """Threaded TCP server that counts and tracks live connections for a clean stop."""

    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(
        self, address: tuple[str, int], handler: Handler, tls: ssl.SSLContext | None
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
        nodelay(conn)  # headers and body go out in two writes: avoid Nagle stalls
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


class Service:
    """Shared start/stop/context-manager plumbing for the playground servers."""

    def __init__(self, host: str, port: int, tls: bool = False) -> None:
        self._host = loopback(host)
        self._port = port
        self._tls = tls
        self._server: Server | None = None
        self._thread: threading.Thread | None = None

    def _handler(self) -> Handler:
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
        tls = server_tls_context() if self._tls else None
        server = Server((self._host, self._port), self._handler(), tls)
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
