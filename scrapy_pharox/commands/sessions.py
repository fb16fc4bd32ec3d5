"""``scrapy pharox-sessions --pool NAME [--end KEY]``: the sessions of a pool,
or end one. Cookies show as a count, never by name or value."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._common import CommandError, PharoxCommand, require_pool, table

if TYPE_CHECKING:
    import argparse

HEADERS = ("key", "proxy", "generation", "uses", "age (s)", "idle (s)", "cookies")


class Command(PharoxCommand):
    name = "pharox-sessions"

    def syntax(self) -> str:
        return "--pool NAME [--end KEY] [--storage URL]"

    def short_desc(self) -> str:
        return "List the sessions of a scrapy-pharox pool, or end one"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        parser.add_argument("--pool", metavar="NAME", required=True, help="the pool")
        parser.add_argument(
            "--end",
            metavar="KEY",
            help="end session KEY: delete it and give its lease back",
        )

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        with self.failures(), self.storage(opts) as storage:
            require_pool(storage, opts.pool)
            if opts.end is not None:
                if not storage.end_session(opts.pool, opts.end):
                    raise CommandError(f"no session {opts.end!r} in pool {opts.pool!r}")
                print(f"Session {opts.end!r} of pool {opts.pool!r} ended")
                return
            sessions = storage.list_sessions(opts.pool)
            if not sessions:
                print(f"Pool {opts.pool!r} has no sessions")
                return
            now = storage.session_clock()
            rows = [
                (
                    session.key,
                    session.proxy.masked_url if session.proxy else session.proxy_id,
                    session.generation,
                    session.uses,
                    f"{now - session.created_at.timestamp():.0f}",
                    f"{now - session.last_used_at.timestamp():.0f}",
                    len(session.cookies),
                )
                for session in sessions
            ]
            print(table(HEADERS, rows, right=range(2, len(HEADERS))))
