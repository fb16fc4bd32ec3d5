"""``scrapy pharox-import FILE|URL --pool NAME``: add the proxies a file or a
live list (an http or https URL) lists.

Outside a crawl there is no engine: the URL is fetched with the standard
library, its credentials, if any, sent as Basic authentication."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit, urlunsplit

from scrapy.exceptions import UsageError

from ..exceptions import PharoxError
from ..models import Proxy, ProxyPool, mask_url_password
from ..proxy_file import parse_proxy_line
from ._common import CommandError, PharoxCommand, proxies, table

if TYPE_CHECKING:
    import argparse

    from ..storage import IStorage


@dataclass(frozen=True)
class Line:
    """A line of the file that names a proxy, or the reason it was rejected."""

    number: int
    proxy: Proxy | None
    problem: str = ""


class Command(PharoxCommand):
    name = "pharox-import"

    def syntax(self) -> str:
        return (
            "FILE|URL --pool NAME [--max-concurrency N] [--country CC] [--storage URL]"
        )

    def short_desc(self) -> str:
        return "Add the proxies a file or a URL lists to a scrapy-pharox pool"

    def long_desc(self) -> str:
        return (
            "Add the proxies of FILE, or of the page at an http(s) URL, to a pool, "
            "creating it if needed. One proxy URL "
            "a line, # at its start or after a space starts a comment, fields may "
            "follow the URL as name=value "
            "(country, city, source, isp, asn, latitude, longitude, "
            "max_concurrency), as in PHAROX_PROXIES_FILE. Proxies already in the "
            "pool are left as they are, so importing twice adds nothing. Exit code "
            "1 when a line was rejected."
        )

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        parser.add_argument("--pool", metavar="NAME", required=True, help="the pool")
        parser.add_argument(
            "--max-concurrency",
            metavar="N",
            type=int,
            help="requests at once per proxy, 0 for no limit, where a line does not "
            "say (default: PHAROX_PROXY_MAX_CONCURRENCY)",
        )
        parser.add_argument(
            "--country",
            metavar="CC",
            help="the country of proxies whose line does not give one",
        )

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        if len(args) != 1:
            raise UsageError("give one FILE or URL to import")
        if opts.max_concurrency is not None and opts.max_concurrency < 0:
            raise UsageError("--max-concurrency must be 0 (no limit) or more")
        with self.failures():
            lines = self.parse(args[0], opts)
            if not lines:
                print(f"No proxies in {mask_url_password(args[0])}")
                return
            summary = ""
            if any(line.proxy for line in lines):
                with self.storage(opts) as storage:
                    pool = storage.add_pool(ProxyPool(name=opts.pool))
                    rows = [self.store(storage, pool, line) for line in lines]
                    in_pool = len(storage.list_proxies(opts.pool))
                summary = f"; {proxies(in_pool)} in the pool now"
            else:
                rows = [("rejected", line.number, line.problem) for line in lines]
            print(table(("result", "line", "proxy"), rows, right=(1,)))
            results = [row[0] for row in rows]
            print(
                f"Pool {opts.pool!r}: {results.count('added')} added, "
                f"{results.count('present')} already present, "
                f"{results.count('rejected')} rejected{summary}"
            )
            if "rejected" in results:
                self.exitcode = 1

    def parse(self, source: str, opts: argparse.Namespace) -> list[Line]:
        """Every line that names a proxy, parsed or rejected with its reason."""
        if source.partition("://")[0].lower() in ("http", "https"):
            text = fetch_list(source)
        else:
            try:
                text = Path(source).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                reason = getattr(exc, "strerror", None) or str(exc)
                raise CommandError(f"cannot read {source!r}: {reason}") from None
        max_concurrency = (
            opts.max_concurrency or None
            if opts.max_concurrency is not None
            else self.config.proxy_max_concurrency
        )
        defaults = {"country": opts.country} if opts.country else {}
        lines = []
        for number, text_line in enumerate(text.splitlines(), start=1):
            try:
                proxies = parse_proxy_line(
                    text_line, f"line {number}", max_concurrency, **defaults
                )
            except PharoxError as exc:
                problem = str(exc).removeprefix(f"line {number}: ")
                lines.append(Line(number, None, problem))
                continue
            lines.extend(Line(number, proxy) for proxy in proxies)
        return lines

    def store(
        self, storage: IStorage, pool: ProxyPool, line: Line
    ) -> tuple[str, int, str]:
        """Add one line's proxy; the report row: result, line, proxy or problem."""
        if line.proxy is None:
            return ("rejected", line.number, line.problem)
        proxy = line.proxy.model_copy(update={"pool_id": pool.id})
        stored = storage.add_proxy(proxy)
        result = "added" if stored.id == proxy.id else "present"
        return (result, line.number, stored.masked_url)


#: Seconds the command waits for a list URL to answer.
FETCH_TIMEOUT = 30.0


def fetch_list(url: str) -> str:
    """The text at ``url``; CommandError naming it (password masked) when it
    cannot be fetched, answers other than 2xx or is not UTF-8 text."""
    parts = urlsplit(url)
    request = urllib.request.Request(
        urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    )
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        token = base64.b64encode(pair.encode("utf-8")).decode("ascii")
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT) as response:
            return response.read().decode("utf-8-sig")  # type: ignore[no-any-return]
    except urllib.error.HTTPError as exc:
        reason = f"HTTP {exc.code}"
    except urllib.error.URLError as exc:
        reason = str(exc.reason)
    except (OSError, ValueError) as exc:  # a timeout, a body not UTF-8
        reason = str(exc) or type(exc).__name__
    for secret in {parts.password, unquote(parts.password or "")} - {None, ""}:
        reason = reason.replace(str(secret), "***")
    raise CommandError(f"cannot fetch {mask_url_password(url)!r}: {reason}")
