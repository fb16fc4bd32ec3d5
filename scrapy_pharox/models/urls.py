"""Proxy and database URLs as people write them: shown with the password masked
and checked for what a parser would misread, by one rule that parses nothing.

The user name runs from after ``://`` to the first ``:``, the password from
there to the last ``@``, whatever characters it holds: a password with a ``/``,
``#`` or ``@`` in it is still masked whole, where a URL parser would have taken
part of it for the host, the port or the path.
"""

from __future__ import annotations

#: What a user name or password with a special character is told to do.
PERCENT_ENCODE_HINT = (
    "special characters in the user name or password must be percent-encoded "
    "(/ as %2F, @ as %40, # as %23, ? as %3F, a space as %20)"
)

# Characters that end the user name or password for a URL parser.
_DELIMITERS = frozenset("/?#@[]")


def _credentials(url: str) -> tuple[str, str, str, str] | None:
    """The URL cut as (up to the user, user, password, from the last ``@`` on), or
    None when it has no ``user:password@``."""
    scheme_end = url.find("://")
    start = scheme_end + 3 if scheme_end >= 0 else 0
    at = url.rfind("@")
    colon = url.find(":", start, max(at, start))
    if colon < 0:
        return None
    return url[:start], url[start:colon], url[colon + 1 : at], url[at:]


def mask_url_password(url: str) -> str:
    """The URL with everything between the user name's ``:`` and the last ``@``
    replaced by ``***``; unchanged when it holds no password."""
    parts = _credentials(url)
    if parts is None:
        return url
    head, user, _, tail = parts
    return f"{head}{user}:***{tail}"


def credentials_problem(url: str) -> str | None:
    """Why the URL's user name or password would be misread, or None: it holds a
    character that ends it for a URL parser, white space or a control character."""
    parts = _credentials(url)
    if parts is None:
        return None
    _, user, password, _ = parts
    if any(
        char in _DELIMITERS or char.isspace() or not char.isprintable()
        for char in user + password
    ):
        return PERCENT_ENCODE_HINT
    return None
