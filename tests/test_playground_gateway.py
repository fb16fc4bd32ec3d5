"""The playground's provider gateway: real sockets through it to a local site."""

from __future__ import annotations

import base64
import http.client
import logging
import ssl
import threading
from collections.abc import Iterator
from urllib.parse import unquote, urlsplit

import pytest
from test_playground import wait_for

from scrapy_pharox.playground import GatewayProxy, TargetSite

Response = tuple[int, dict[str, str], bytes]
TEMPLATE = "cust-42-session-{session}"
PASSWORD = "s3cret:pw"


def basic(user: str, password: str = PASSWORD) -> dict[str, str]:
    """A Proxy-Authorization header with Basic credentials."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Proxy-Authorization": f"Basic {token}"}


def through(
    gateway: GatewayProxy, url: str, headers: dict[str, str] | None = None
) -> Response:
    """GET the absolute ``url`` through the gateway on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=5)
    try:
        conn.request("GET", url, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def on_exit(gateway: GatewayProxy, session: str, url: str) -> Response:
    """GET ``url`` through the gateway's exit ``session``."""
    return through(gateway, url, basic(f"cust-42-session-{session}"))


class FakeClock:
    """A clock a test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def site() -> Iterator[TargetSite]:
    with TargetSite(pages=5) as target:
        yield target


@pytest.fixture
def gateway() -> Iterator[GatewayProxy]:
    with GatewayProxy(username_template=TEMPLATE, password=PASSWORD) as gate:
        yield gate


def test_the_exit_id_is_read_from_the_user_name_and_stamped_on_the_forwarded_request(
    site: TargetSite, gateway: GatewayProxy
) -> None:
    status, _, body = on_exit(gateway, "abc123XYZ789", f"{site.url}/page/2")
    assert (status, b"Page 2" in body) == (200, True)
    (record,) = site.requests
    assert record.exit == "abc123XYZ789"
    assert record.headers["X-Playground-Exit"] == "abc123XYZ789"
    assert record.via_proxy_port == gateway.port
    assert "proxy-authorization" not in {name.lower() for name in record.headers}
    assert gateway.requests_count == 1
    assert list(gateway.exits) == ["abc123XYZ789"]


def test_an_exit_header_sent_by_the_client_is_replaced_by_the_real_exit(
    site: TargetSite, gateway: GatewayProxy
) -> None:
    headers = {**basic("cust-42-session-real"), "x-playground-exit": "forged"}
    assert through(gateway, f"{site.url}/", headers)[0] == 200
    (record,) = site.requests
    assert record.exit == "real"
    assert "x-playground-exit" not in record.headers


def test_two_ids_are_two_exits_with_their_own_counts(
    site: TargetSite, gateway: GatewayProxy
) -> None:
    for session in ("one", "two", "one", "one"):
        assert on_exit(gateway, session, f"{site.url}/")[0] == 200
    exits = gateway.exits
    assert {sid: stats.requests for sid, stats in exits.items()} == {
        "one": 3,
        "two": 1,
    }
    assert exits["one"].first_seen < exits["two"].first_seen < exits["one"].last_seen
    assert exits["two"].first_seen == exits["two"].last_seen
    assert [r.exit for r in site.requests] == ["one", "two", "one", "one"]


@pytest.mark.parametrize(
    "user",
    [
        "cust-43-session-abc",  # another customer
        "cust-42-session-",  # no session id
        "cust-42-session-a.b",  # not a session id's characters
        "cust-42-session-" + "a" * 65,  # too long
        "xcust-42-session-abc",  # the template must match the whole name
    ],
)
def test_a_user_not_matching_the_template_gets_407(
    site: TargetSite, gateway: GatewayProxy, user: str
) -> None:
    status, headers, _ = through(gateway, f"{site.url}/", basic(user))
    assert status == 407
    assert headers["Proxy-Authenticate"] == 'Basic realm="playground"'
    assert (gateway.rejected_count, gateway.requests_count) == (1, 0)
    assert gateway.exits == {}
    assert site.requests == []


def test_a_wrong_or_missing_password_gets_407(
    site: TargetSite, gateway: GatewayProxy
) -> None:
    wrong = basic("cust-42-session-abc", "s3cret")
    assert through(gateway, f"{site.url}/", wrong)[0] == 407
    assert through(gateway, f"{site.url}/")[0] == 407
    assert gateway.rejected_count == 2
    assert gateway.exits == {}
    assert site.requests == []


def test_a_64_character_id_is_an_exit(site: TargetSite, gateway: GatewayProxy) -> None:
    session = "a-Z_9" * 12 + "abcd"
    assert on_exit(gateway, session, f"{site.url}/")[0] == 200
    assert list(gateway.exits) == [session]


def test_requests_one_after_another_on_one_id_are_never_in_flight_together(
    site: TargetSite, gateway: GatewayProxy
) -> None:
    for page in (1, 2, 3, 4, 5):
        assert on_exit(gateway, "abc", f"{site.url}/page/{page}")[0] == 200
        assert gateway.exits["abc"].in_flight == 0  # counted off before its answer
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=5)
    try:
        for page in (1, 2, 3, 4, 5):  # one keep-alive connection
            auth = basic("cust-42-session-abc")
            conn.request("GET", f"{site.url}/page/{page}", headers=auth)
            resp = conn.getresponse()
            assert (resp.status, b"Page" in resp.read()) == (200, True)
            assert gateway.exits["abc"].in_flight == 0
    finally:
        conn.close()
    stats = gateway.exits["abc"]
    assert (stats.requests, stats.in_flight, stats.max_in_flight) == (10, 0, 1)


def test_concurrent_requests_on_one_id_show_max_in_flight_2(
    gateway: GatewayProxy,
) -> None:
    with TargetSite(pages=3, delay=0.5) as site:
        results: list[int] = []

        def worker(page: int) -> None:
            results.append(on_exit(gateway, "abc", f"{site.url}/page/{page}")[0])

        threads = [threading.Thread(target=worker, args=(n,)) for n in (1, 2)]
        for thread in threads:
            thread.start()
        assert wait_for(lambda: gateway.exits.get("abc", None) is not None)
        assert wait_for(lambda: gateway.exits["abc"].in_flight == 2)
        for thread in threads:
            thread.join()
    assert results == [200, 200]
    stats = gateway.exits["abc"]
    assert (stats.requests, stats.in_flight, stats.max_in_flight) == (2, 0, 2)


def test_an_exit_answers_403_after_burn_after_requests_while_other_ids_still_work(
    site: TargetSite,
) -> None:
    with GatewayProxy(
        username_template=TEMPLATE, password=PASSWORD, burn_after=2
    ) as gateway:
        assert [on_exit(gateway, "abc", f"{site.url}/")[0] for _ in range(2)] == [
            200,
            200,
        ]
        assert gateway.exits["abc"].burned
        status, _, body = on_exit(gateway, "abc", f"{site.url}/")
        assert (status, body) == (403, b"exit burned\n")
        assert on_exit(gateway, "abc", f"{site.url}/")[0] == 403
        assert on_exit(gateway, "other", f"{site.url}/")[0] == 200
        exits = gateway.exits
    assert (exits["abc"].requests, exits["abc"].in_flight) == (2, 0)
    assert not exits["other"].burned
    assert gateway.burned_requests == 2
    assert gateway.requests_count == 3
    assert [r.exit for r in site.requests] == ["abc", "abc", "other"]


def test_a_connect_tunnel_through_a_burned_exit_is_refused() -> None:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with (
        TargetSite(pages=2, tls=True) as site,
        GatewayProxy(
            username_template=TEMPLATE, password=PASSWORD, burn_after=1
        ) as gateway,
    ):
        auth = basic("cust-42-session-abc")
        tunnel = http.client.HTTPSConnection(
            "127.0.0.1", gateway.port, timeout=5, context=context
        )
        tunnel.set_tunnel("127.0.0.1", site.port, headers=auth)
        try:
            tunnel.request("GET", "/page/1")
            assert tunnel.getresponse().status == 200
        finally:
            tunnel.close()
        assert wait_for(lambda: gateway.exits["abc"].in_flight == 0)
        refused = http.client.HTTPSConnection(
            "127.0.0.1", gateway.port, timeout=5, context=context
        )
        refused.set_tunnel("127.0.0.1", site.port, headers=auth)
        with pytest.raises(OSError, match="403"):
            refused.request("GET", "/page/2")
        refused.close()
        stats = gateway.exits["abc"]
    assert (stats.requests, stats.in_flight, stats.burned) == (1, 0, True)
    assert gateway.burned_requests == 1
    assert [r.path for r in site.requests] == ["/page/1"]


def test_a_request_after_session_seconds_gets_502_and_counts_as_expired(
    site: TargetSite,
) -> None:
    clock = FakeClock()
    with GatewayProxy(
        username_template=TEMPLATE, password=PASSWORD, session_seconds=60, clock=clock
    ) as gateway:
        assert on_exit(gateway, "abc", f"{site.url}/")[0] == 200
        clock.now += 60
        assert on_exit(gateway, "abc", f"{site.url}/")[0] == 200
        clock.now += 0.5
        status, _, body = on_exit(gateway, "abc", f"{site.url}/")
        assert (status, body) == (502, b"session expired\n")
        assert on_exit(gateway, "fresh", f"{site.url}/")[0] == 200
        exits = gateway.exits
    assert gateway.expired_requests == 1
    assert (exits["abc"].requests, exits["abc"].in_flight) == (2, 0)
    assert (exits["abc"].first_seen, exits["abc"].last_seen) == (1000.0, 1060.5)
    assert len(site.requests) == 3


def test_reset_counters_zeroes_the_exits(site: TargetSite) -> None:
    clock = FakeClock()
    with GatewayProxy(
        username_template=TEMPLATE,
        password=PASSWORD,
        burn_after=1,
        session_seconds=10,
        clock=clock,
    ) as gateway:
        for session in ("burned", "burned", "expired"):
            on_exit(gateway, session, f"{site.url}/")
        clock.now += 11
        assert on_exit(gateway, "expired", f"{site.url}/")[0] == 502
        gateway.reset_counters()
        assert gateway.exits == {}
        assert (gateway.expired_requests, gateway.burned_requests) == (0, 0)
        assert (gateway.requests_count, gateway.rejected_count) == (0, 0)
        assert on_exit(gateway, "burned", f"{site.url}/")[0] == 200  # afresh


def test_reset_counters_keeps_an_exit_with_a_request_in_flight(
    gateway: GatewayProxy,
) -> None:
    with TargetSite(pages=2, delay=0.5) as site:
        assert on_exit(gateway, "idle", f"{site.url}/")[0] == 200
        worker = threading.Thread(target=on_exit, args=(gateway, "busy", site.url))
        worker.start()
        assert wait_for(lambda: "busy" in gateway.exits)
        gateway.reset_counters()
        (busy,) = gateway.exits.values()
        assert list(gateway.exits) == ["busy"]
        assert (busy.requests, busy.in_flight, busy.max_in_flight) == (0, 1, 1)
        assert (busy.last_seen, busy.burned) == (busy.first_seen, False)
        worker.join()
    assert gateway.exits["busy"].in_flight == 0


def test_session_url_carries_the_templated_user_and_password(
    site: TargetSite, gateway: GatewayProxy
) -> None:
    url = urlsplit(gateway.session_url("abc"))
    assert (url.hostname, url.port) == ("127.0.0.1", gateway.port)
    assert unquote(url.username or "") == "cust-42-session-abc"
    assert unquote(url.password or "") == PASSWORD
    user, password = unquote(url.username or ""), unquote(url.password or "")
    assert through(gateway, f"{site.url}/", basic(user, password))[0] == 200
    with pytest.raises(ValueError, match="session id"):
        gateway.session_url("a b")


def test_the_gateway_never_logs_credentials(
    site: TargetSite,
    gateway: GatewayProxy,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    on_exit(gateway, "abc", f"{site.url}/")
    through(gateway, f"{site.url}/", basic("cust-42-session-abc", "wrong-pw"))
    through(gateway, f"{site.url}/", basic("nobody"))
    out, err = capfd.readouterr()
    for secret in (PASSWORD, "wrong-pw", basic("nobody")["Proxy-Authorization"]):
        assert secret not in out + err + caplog.text + repr(gateway)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"username_template": "cust-42"}, "exactly once"),
        ({"username_template": "{session}-{session}"}, "exactly once"),
        ({"username_template": "a:{session}"}, "':'"),
        ({"burn_after": -1}, "burn_after"),
        ({"session_seconds": 0}, "session_seconds"),
    ],
)
def test_bad_arguments_are_refused_when_built(
    arguments: dict[str, object], message: str
) -> None:
    given = {"username_template": TEMPLATE, "password": PASSWORD, **arguments}
    with pytest.raises(ValueError, match=message):
        GatewayProxy(**given)  # type: ignore[arg-type]
