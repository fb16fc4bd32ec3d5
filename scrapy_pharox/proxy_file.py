"""Proxies from settings and files: PHAROX_PROXIES, PHAROX_PROXIES_FILE and
``scrapy pharox-import`` read one format.

One proxy URL a line, optionally followed by fields (``country=DE city=Kiel``);
``#`` at the start of a line or after white space starts a comment (one inside a
URL is part of it, to be told as a character to percent-encode).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from uuid import UUID

from .exceptions import PharoxError, PharoxSettingError
from .models import Proxy, mask_url_password

#: Fields a line may give after the URL, as name=value.
FILE_FIELDS = frozenset(
    {"country", "city", "source", "isp", "asn", "latitude", "longitude",
     "max_concurrency"}
)  # fmt: skip

# A placeholder pool id: proxies are parsed before the pool exists in storage.
_UNBOUND_POOL = UUID(int=0)


def _setting_error(message: str) -> PharoxError:
    return PharoxSettingError(message)


def parse_proxy(
    source: str, url: Any, max_concurrency: int | None, fields: dict[str, str]
) -> Proxy:
    """A proxy, not yet in a pool; PharoxSettingError names ``source``."""
    extra: dict[str, Any] = {"max_concurrency": max_concurrency, **fields}
    try:
        return Proxy.from_url(str(url), pool_id=_UNBOUND_POOL, **extra)
    except PharoxError as exc:
        raise _setting_error(f"{source}: {exc}") from None


def parse_proxies(
    source: str, urls: list[Any], max_concurrency: int | None
) -> list[Proxy]:
    """A proxy per URL of a setting; an error names the setting and the entry's
    number (``PHAROX_PROXIES entry 2``)."""
    return [
        parse_proxy(f"{source} entry {number}", url, max_concurrency, {})
        for number, url in enumerate(urls, start=1)
    ]


def split_proxy_urls(text: str) -> list[str]:
    """URLs given as one string (``-s PHAROX_PROXIES=url1,url2``), cut at the
    commas that start another URL: a comma inside a password stays there."""
    return _NEXT_URL.split(text)


# A comma followed by a scheme and "://".
_NEXT_URL = re.compile(r",(?=\s*[A-Za-z][A-Za-z0-9+.-]*://)")
# A "#" that starts a comment: at the start of a line or after white space.
_COMMENT = re.compile(r"(?:^|\s)#.*", re.DOTALL)


def parse_proxy_line(
    line: str, source: str, max_concurrency: int | None, **defaults: str
) -> Proxy | None:
    """One line of a proxies file, or None when it holds no proxy; ``defaults``
    fill fields the line does not give.

    A bad line raises PharoxSettingError prefixed with ``source``, password masked.
    """
    text = _COMMENT.sub("", line, count=1)
    words = text.split()
    if not words:
        return None
    fields = dict(defaults)
    for word in words[1:]:
        name, equals, value = word.partition("=")
        if equals and name in FILE_FIELDS:
            fields[name] = value
            continue
        if any("@" in later for later in words[1:]):
            # The password ends at the last "@": with white space in it, the
            # words before that "@" are pieces of it, not to be shown.
            raise _setting_error(
                f"{source}: malformed proxy line {mask_url_password(text.strip())!r}: "
                "only name=value fields may follow the URL, and a space in a "
                "password must be percent-encoded as %20"
            )
        raise _setting_error(
            f"{source}: {word!r} is not one of "
            f"{', '.join(sorted(FILE_FIELDS))} given as name=value"
        )
    return parse_proxy(source, words[0], max_concurrency, fields)


def proxies_from_file(path: Any, max_concurrency: int | None) -> list[Proxy]:
    """The proxies PHAROX_PROXIES_FILE lists (none when it is unset)."""
    if not path:
        return []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise _setting_error(
            f"PHAROX_PROXIES_FILE: cannot read {str(path)!r} ({exc.strerror})"
        ) from None
    proxies = []
    for number, line in enumerate(lines, start=1):
        source = f"PHAROX_PROXIES_FILE {path}:{number}"
        proxy = parse_proxy_line(line, source, max_concurrency)
        if proxy is not None:
            proxies.append(proxy)
    return proxies


def parse_proxy_list(
    text: str, label: str, max_concurrency: int | None
) -> tuple[list[Proxy], list[str]]:
    """The proxies of a live list (a fetched page, a file re-read), and a
    problem per malformed line, which is skipped: ``<label> line <n>: ...``,
    password masked."""
    proxies, problems = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            proxy = parse_proxy_line(line, f"{label} line {number}", max_concurrency)
        except PharoxError as exc:
            problems.append(str(exc))
            continue
        if proxy is not None:
            proxies.append(proxy)
    return proxies, problems


def file_signature(path: str) -> tuple[int, int] | None:
    """What tells a file changed: its mtime (ns) and size; None when missing."""
    try:
        found = Path(path).stat()
    except OSError:
        return None
    return (found.st_mtime_ns, found.st_size)
