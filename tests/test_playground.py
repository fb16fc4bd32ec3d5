"""End-to-end checks of the offline playground (local site + local forward proxies)."""

from __future__ import annotations

import base64
import http.client
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from scrapy_pharox.playground import ForwardProxy, TargetSite, free_port

Response = tuple[int, dict[str, str], bytes]


def basic(user: str, password: str) -> str:
    """Build a Basic credentials header value."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def fetch(port: int, target: str, headers: dict[str, str] | None = None) -> Response:
    """GET ``target`` (absolute URI when talking to a proxy) on 127.0.0.1:port."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", target, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def wait_for(predicate: Callable[[], bool], timeout: float = 3.0) -> bool:
    """Poll ``predicate`` until true or timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def insecure_context() -> ssl.SSLContext:
    """A client context that accepts the playground's self-signed certificate."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@pytest.fixture
def site() -> Iterator[TargetSite]:
    with TargetSite(pages=10) as target:
        yield target


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy() as fwd:
        yield fwd


def test_every_page_reachable_from_index(site: TargetSite) -> None:
    seen, todo = set(), ["/"]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        status, headers, body = fetch(site.port, path)
        assert status == 200
        assert headers["Content-Type"].startswith("text/html")
        todo.extend(re.findall(r'href="([^"]+)"', body.decode()))
    assert seen == {"/"} | {f"/page/{n}" for n in range(1, 11)}
    assert site.url == f"http://127.0.0.1:{site.port}"
    assert fetch(site.port, "/page/11")[0] == 404
    assert fetch(site.port, "/nope")[0] == 404
    assert fetch(site.port, "/status/503")[0] == 503
    assert len(site.requests) == 14


def test_plain_request_through_proxy_marks_and_strips(site: TargetSite) -> None:
    with ForwardProxy(username="user", password="secret") as proxy:
        creds = basic("user", "secret")
        headers = {"Proxy-Authorization": creds, "X-Custom": "kept"}
        status, _, body = fetch(proxy.port, f"{site.url}/page/3?x=1", headers)
        assert status == 200
        assert b"Page 3" in body
        assert proxy.seen_proxy_authorization == [creds]
        assert proxy.requests_count == 1
        assert len(proxy.upstream_ports) == 1
    (record,) = site.requests
    assert record.path == "/page/3?x=1"
    assert record.via_proxy_port == proxy.port
    assert record.headers["X-Playground-Proxy"] == str(proxy.port)
    assert record.headers["X-Custom"] == "kept"
    assert "proxy-authorization" not in {name.lower() for name in record.headers}
    assert record.peer[1] in proxy.upstream_ports


def test_flow_cookie_is_kept_through_the_proxy_it_was_issued_to(
    site: TargetSite,
) -> None:
    with ForwardProxy() as proxy:
        status, headers, body = fetch(proxy.port, f"{site.url}/flow/1")
        assert status == 200
        assert b'href="/flow/2"' in body
        cookie = headers["Set-Cookie"].split(";")[0]
        assert site.visitors == {cookie.split("=")[1]: proxy.port}
        status, headers, _ = fetch(proxy.port, f"{site.url}/flow/2", {"Cookie": cookie})
    assert status == 200
    assert "Set-Cookie" not in headers
    assert site.refused == []


def test_flow_cookie_through_another_proxy_is_refused(site: TargetSite) -> None:
    with ForwardProxy() as first, ForwardProxy() as second:
        _, headers, _ = fetch(first.port, f"{site.url}/flow/1")
        cookie = headers["Set-Cookie"].split(";")[0]
        status, headers, _ = fetch(
            second.port, f"{site.url}/flow/2", {"Cookie": cookie}
        )
    assert status == 403
    assert "Set-Cookie" not in headers
    (refused,) = site.refused
    assert (refused.path, refused.via_proxy_port) == ("/flow/2", second.port)


def test_flow_without_a_known_cookie_issues_a_new_one(site: TargetSite) -> None:
    status, headers, _ = fetch(site.port, "/flow/3", {"Cookie": "visitor=forged"})
    assert status == 200
    assert headers["Set-Cookie"] == "visitor=v1; Path=/"
    assert fetch(site.port, f"/flow/{site.flow_pages + 1}")[0] == 404


def test_auth_proxy_rejects_then_accepts(site: TargetSite) -> None:
    with ForwardProxy(username="us er", password="p@ss:w") as proxy:
        assert proxy.url == f"http://127.0.0.1:{proxy.port}"
        assert proxy.auth_url == f"http://us%20er:p%40ss%3Aw@127.0.0.1:{proxy.port}"
        status, headers, _ = fetch(proxy.port, f"{site.url}/")
        assert status == 407
        assert headers["Proxy-Authenticate"] == 'Basic realm="playground"'
        wrong = {"Proxy-Authorization": basic("us er", "nope")}
        assert fetch(proxy.port, f"{site.url}/", wrong)[0] == 407
        assert proxy.rejected_count == 2
        assert proxy.requests_count == 0
        assert site.requests == []
        right = {"Proxy-Authorization": basic("us er", "p@ss:w")}
        assert fetch(proxy.port, f"{site.url}/", right)[0] == 200
        assert proxy.requests_count == 1
        proxy.reset_counters()
        assert (proxy.requests_count, proxy.rejected_count) == (0, 0)
        assert proxy.seen_proxy_authorization == []


def test_connect_tunnel_to_tls_site() -> None:
    with (
        TargetSite(pages=5, tls=True) as site,
        ForwardProxy(username="u", password="p") as proxy,
    ):
        assert site.url.startswith("https://127.0.0.1:")
        conn = http.client.HTTPSConnection(
            "127.0.0.1", proxy.port, timeout=5, context=insecure_context()
        )
        auth = {"Proxy-Authorization": basic("u", "p")}
        conn.set_tunnel("127.0.0.1", site.port, headers=auth)
        try:
            for page in (1, 2):
                conn.request("GET", f"/page/{page}")
                resp = conn.getresponse()
                assert resp.status == 200
                assert f"Page {page}".encode() in resp.read()
        finally:
            conn.close()
        assert proxy.requests_count == 1  # one tunnel, two requests inside it
        assert [r.path for r in site.requests] == ["/page/1", "/page/2"]
        assert all(r.via_proxy_port is None for r in site.requests)
        assert {r.peer[1] for r in site.requests} <= proxy.upstream_ports

        denied = http.client.HTTPSConnection("127.0.0.1", proxy.port, timeout=5)
        denied.set_tunnel("127.0.0.1", site.port)
        with pytest.raises(OSError, match="407"):
            denied.request("GET", "/")
        denied.close()
        assert proxy.rejected_count == 1
        assert wait_for(lambda: proxy.open_connections == 0)


def test_keep_alive_client_connection(site: TargetSite, proxy: ForwardProxy) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    try:
        for page in (1, 2, 3):
            conn.request("GET", f"{site.url}/page/{page}")
            resp = conn.getresponse()
            assert resp.status == 200
            resp.read()
    finally:
        conn.close()
    assert proxy.requests_count == 3
    assert proxy.max_open_connections == 1
    assert wait_for(lambda: proxy.open_connections == 0)


def test_max_open_connections_counts_concurrent(proxy: ForwardProxy) -> None:
    with TargetSite(pages=3, delay=0.5) as site:
        results: list[int] = []

        def worker(page: int) -> None:
            results.append(fetch(proxy.port, f"{site.url}/page/{page}")[0])

        threads = [threading.Thread(target=worker, args=(n,)) for n in (1, 2)]
        for thread in threads:
            thread.start()
        assert wait_for(lambda: proxy.open_connections == 2)
        for thread in threads:
            thread.join()
    assert results == [200, 200]
    assert proxy.max_open_connections == 2
    assert proxy.max_active_requests == 2
    assert wait_for(lambda: proxy.open_connections == 0)
    proxy.reset_counters()
    assert proxy.max_open_connections == 0
    assert proxy.max_active_requests == 0


def test_requests_one_after_another_are_never_active_together(
    proxy: ForwardProxy, site: TargetSite
) -> None:
    for page in (1, 2, 3):
        assert fetch(proxy.port, f"{site.url}/page/{page}")[0] == 200
    assert proxy.max_active_requests == 1


def test_hang_mode_never_answers() -> None:
    proxy = ForwardProxy(mode="hang").start()
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=0.3) as sock:
            sock.sendall(b"GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: x\r\n\r\n")
            with pytest.raises(TimeoutError):
                sock.recv(1)
            assert proxy.open_connections == 1
    finally:
        proxy.stop()
        proxy.stop()  # idempotent
    assert proxy.open_connections == 0
    assert proxy.requests_count == 0


def test_non_loopback_upstreams_refused_before_connecting(proxy: ForwardProxy) -> None:
    assert fetch(proxy.port, "http://203.0.113.7/")[0] == 403
    assert fetch(proxy.port, "http://example.invalid:8080/x")[0] == 403
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"CONNECT 203.0.113.7:443 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 403")
    assert proxy.requests_count == 0
    assert proxy.upstream_ports == set()


def test_upstream_refused_and_malformed_requests(proxy: ForwardProxy) -> None:
    assert fetch(proxy.port, f"http://127.0.0.1:{free_port()}/")[0] == 502
    assert fetch(proxy.port, "/relative/only")[0] == 400
    for garbage in (b"garbage\r\n\r\n", b"CONNECT nowhere HTTP/1.1\r\n\r\n", b"\x00"):
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
            sock.sendall(garbage)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(4096):
                pass
    assert wait_for(lambda: proxy.open_connections == 0)
    with TargetSite(pages=2) as site:
        assert fetch(proxy.port, f"{site.url}/page/2")[0] == 200


def test_stop_closes_idle_connections_and_port_is_freed() -> None:
    site = TargetSite(pages=2).start()
    port = site.port
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while not data.endswith(b"</html>"):
            data += sock.recv(4096)
        assert data.startswith(b"HTTP/1.1 200")
        site.stop()
        site.stop()
        assert sock.recv(4096) == b""
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", free_port()), timeout=5).close()


def test_explicit_port_and_slow_path() -> None:
    port = free_port()
    with TargetSite(pages=1, delay=0.2, port=port) as site:
        assert site.url == f"http://127.0.0.1:{port}"
        started = time.monotonic()
        assert fetch(port, "/slow")[0] == 200
        assert time.monotonic() - started >= 0.2
    with pytest.raises(ValueError):
        ForwardProxy(host="0.0.0.0")


def test_served_on_its_own_by_python_m() -> None:
    command = [sys.executable, "-m", "scrapy_pharox.playground", "--proxies", "1"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as served:
        assert served.stdout is not None
        try:
            site_line, proxy_line = served.stdout.readline(), served.stdout.readline()
            site_url = site_line.split()[1]
            proxy_port = int(proxy_line.rsplit(":", 1)[1])
            assert fetch(proxy_port, site_url)[0] == 200
        finally:
            served.terminate()


def test_the_package_does_not_import_the_playground() -> None:
    code = "import sys, scrapy_pharox; print('scrapy_pharox.playground' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
