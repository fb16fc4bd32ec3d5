"""Proxies from settings and files: PHAROX_PROXIES, PHAROX_PROXIES_FILE and
``scrapy pharox-import`` read one format.

One proxy URL a line, optionally followed by fields (``country=DE city=Kiel``);
``#`` at the start of a line or after white space starts a comment (one inside a
URL is part of it, to be told as a character to percent-encode). A provider
gateway's line holds ``{session}`` in its URL and says how many exits to hold
(``identities=N``, optionally ``session_seconds=S``): it stands for N proxies.
PHAROX_GATEWAYS gives gateways as dicts of the same fields.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from uuid import UUID

from .durations import MAX_SECONDS
from .exceptions import PharoxError, PharoxSettingError
from .models import (
    DEFAULT_SESSION_SECONDS,
    SESSION_PLACEHOLDER,
    Proxy,
    gateway_identities,
    mask_url_password,
)

#: Fields a line may give after the URL, as name=value.
FILE_FIELDS = frozenset(
    {"country", "city", "source", "isp", "asn", "latitude", "longitude",
     "max_concurrency"}
)  # fmt: skip
#: What a gateway's line or dict gives beside those.
GATEWAY_FIELDS = frozenset({"identities", "session_seconds"})

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


def parse_gateway(
    source: str, url: Any, max_concurrency: int | None, fields: dict[str, Any]
) -> list[Proxy]:
    """The exits of a gateway (``identities`` and ``session_seconds`` among the
    fields); PharoxSettingError names ``source``, password masked."""
    extra = {"max_concurrency": max_concurrency, **fields}
    identities = extra.pop("identities", None)
    seconds = extra.pop("session_seconds", DEFAULT_SESSION_SECONDS)
    try:
        if identities is None:
            raise PharoxSettingError(
                f"a gateway URL (with {SESSION_PLACEHOLDER}) needs identities=N"
            )
        return gateway_identities(
            str(url),
            _whole(identities, "identities"),
            pool_id=_UNBOUND_POOL,
            session_seconds=_positive(seconds, "session_seconds"),
            **extra,
        )
    except PharoxError as exc:
        raise _setting_error(f"{source}: {exc}") from None


def _whole(value: Any, name: str) -> int:
    try:
        number = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise PharoxSettingError(
            f"{name} must be a whole number, got {value!r}"
        ) from None
    return number


def _positive(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise PharoxSettingError(f"{name} must be a number, got {value!r}") from None
    if not 0 < number <= MAX_SECONDS:
        raise PharoxSettingError(
            f"{name} must be above 0 and at most {MAX_SECONDS}, got {value!r}"
        )
    return number


def parse_proxy_line(
    line: str, source: str, max_concurrency: int | None, **defaults: str
) -> list[Proxy]:
    """The proxies of one line of a proxies file (none for a blank or comment
    line, a gateway's exits for a gateway's); ``defaults`` fill fields the line
    does not give.

    A bad line raises PharoxSettingError prefixed with ``source``, password masked.
    """
    text = _COMMENT.sub("", line, count=1)
    words = text.split()
    if not words:
        return []
    fields = dict(defaults)
    gateway = SESSION_PLACEHOLDER in words[0]
    allowed = FILE_FIELDS | GATEWAY_FIELDS if gateway else FILE_FIELDS
    for word in words[1:]:
        name, equals, value = word.partition("=")
        if equals and name in allowed:
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
            f"{', '.join(sorted(allowed))} given as name=value"
        )
    if gateway:
        return parse_gateway(source, words[0], max_concurrency, fields)
    return [parse_proxy(source, words[0], max_concurrency, fields)]


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
        proxies.extend(parse_proxy_line(line, source, max_concurrency))
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
            proxies.extend(
                parse_proxy_line(line, f"{label} line {number}", max_concurrency)
            )
        except PharoxError as exc:
            problems.append(str(exc))
    return proxies, problems


def file_signature(path: str) -> tuple[int, int] | None:
    """What tells a file changed: its mtime (ns) and size; None when missing."""
    try:
        found = Path(path).stat()
    except OSError:
        return None
    return (found.st_mtime_ns, found.st_size)


def parse_gateways(
    value: Any, default_pool: str, max_concurrency: int | None
) -> list[tuple[str, Proxy]]:
    """PHAROX_GATEWAYS (a list of dicts, or its JSON text) as (pool, exit) pairs;
    PharoxSettingError names the entry and the bad key or value."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except ValueError as exc:
            raise _setting_error(f"PHAROX_GATEWAYS: not valid JSON ({exc})") from None
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise _setting_error(
            f"PHAROX_GATEWAYS must be a list of dicts, got {type(value).__name__}"
        )
    allowed = FILE_FIELDS | GATEWAY_FIELDS | {"url", "pool"}
    exits: list[tuple[str, Proxy]] = []
    for number, entry in enumerate(value, start=1):
        source = f"PHAROX_GATEWAYS entry {number}"
        if not isinstance(entry, dict):
            raise _setting_error(f"{source} must be a dict, got {type(entry).__name__}")
        unknown = sorted(str(key) for key in entry if key not in allowed)
        if unknown:
            raise _setting_error(
                f"{source}: unknown key {unknown[0]!r} (known: "
                f"{', '.join(sorted(allowed))})"
            )
        if "url" not in entry:
            raise _setting_error(f"{source} has no url")
        fields = {
            key: item for key, item in entry.items() if key not in ("url", "pool")
        }
        pool = entry.get("pool", default_pool)
        if not isinstance(pool, str) or not pool:
            raise _setting_error(
                f"{source}: pool must be a non-empty string, got {pool!r}"
            )
        exits.extend(
            (pool, proxy)
            for proxy in parse_gateway(source, entry["url"], max_concurrency, fields)
        )
    return exits
