"""A session's cookie jar: Scrapy's CookieJar, saved with the session as plain
values, and the cookies a request is given (``Request(cookies=...)``) put in it
as CookiesMiddleware would put them into Scrapy's shared jar."""

from __future__ import annotations

from http.cookiejar import Cookie
from typing import TYPE_CHECKING, Any

from scrapy.http import Response
from scrapy.http.cookies import CookieJar

if TYPE_CHECKING:
    from scrapy import Request

#: The fields of a cookie that are saved with its session.
_COOKIE_FIELDS = (
    "version", "name", "value", "port", "port_specified", "domain",
    "domain_specified", "domain_initial_dot", "path", "path_specified",
    "secure", "expires", "discard", "comment", "comment_url",
)  # fmt: skip


def cookies_of(jar: CookieJar) -> list[dict[str, Any]]:
    """The jar's cookies as plain values, to be saved with the session."""
    return [{name: getattr(cookie, name) for name in _COOKIE_FIELDS} for cookie in jar]


def jar_of(cookies: list[dict[str, Any]]) -> CookieJar:
    """A jar holding the saved ``cookies``."""
    jar = CookieJar()
    for fields in cookies:
        values: dict[str, Any] = {name: fields.get(name) for name in _COOKIE_FIELDS}
        jar.set_cookie(Cookie(**values, rest={}))
    return jar


def take_request_cookies(jar: CookieJar, request: Request) -> None:
    """Put the cookies given with ``request`` (``Request(cookies=...)``, a
    dict or a list of dicts) into ``jar``, as if the site had set them."""
    given = request.cookies
    if isinstance(given, dict):
        given = [{"name": name, "value": value} for name, value in given.items()]
    lines = []
    for cookie in given:
        line = f"{_text(cookie['name'])}={_text(cookie['value'])}"
        for attribute in ("domain", "path"):
            if cookie.get(attribute):
                line += f"; {attribute.title()}={_text(cookie[attribute])}"
        if cookie.get("secure"):
            line += "; Secure"
        lines.append(line)
    response = Response(request.url, headers={"Set-Cookie": lines})
    for made in jar.make_cookies(response, request):
        jar.set_cookie_if_ok(made, request)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
