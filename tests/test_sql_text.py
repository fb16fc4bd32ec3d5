"""The hot PostgreSQL statements, checked in as .sql files a reviewer can read.

Each file under ``scrapy_pharox/storage/statements/`` holds one statement as
SQLAlchemy compiles it for psycopg, laid out one clause a line, with ``--``
comments saying why. The test compares the file, comments and layout aside,
with what the code compiles now; after changing a statement, run
``python tests/test_sql_text.py --write`` (it needs ``pip install sqlparse``)
and review the diff.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from scrapy_pharox.models import LeaseOutcome, SelectorStrategy
from scrapy_pharox.storage import sql_expiry, sql_leasing, sql_outcomes, sql_release
from scrapy_pharox.storage.sql_query import Prepared

STATEMENTS_DIR = (
    Path(__file__).resolve().parent.parent / "scrapy_pharox" / "storage" / "statements"
)

#: file name -> the statement it holds.
HOT_STATEMENTS: dict[str, Callable[[], Prepared]] = {
    **{
        f"acquire_{strategy.value}{suffix}.sql": (
            lambda s=strategy, c=check: sql_leasing.pg_acquire(s, None, c)
        )
        for strategy in SelectorStrategy
        for check, suffix in enumerate(("", "_by_domain", "_paced"))
    },
    "release.sql": sql_release.pg_release,
    **{
        f"release_{outcome.value}{'_by_domain' if by_domain else ''}.sql": (
            lambda o=outcome, d=by_domain: sql_outcomes.pg_release_reported(o, d)
        )
        for outcome in LeaseOutcome
        for by_domain in (False, True)
    },
    "reclaim.sql": sql_expiry.pg_reclaim,
}

#: Why-comments, each put above every line of a file that holds its text (with
#: "text|later", only where one of the next three lines holds ``later``).
WHY = {
    "pool_row AS MATERIALIZED": (
        "The pool row, locked: round-robin acquires of one pool take turns and\n"
        "each reads the cursor the one before it left; none while an expired\n"
        "lease waits to be reclaimed (both searches then find nothing).\n"
        "MATERIALIZED: run once, before the searches that read it, never\n"
        "inlined into them."
    ),
    "after_cursor AS MATERIALIZED": (
        "The first free proxy after the cursor, in id order (an index walk).\n"
        "MATERIALIZED: its row lock is taken here, once; inlined, the planner\n"
        "could evaluate it again in from_start and in picked."
    ),
    "from_start AS MATERIALIZED": (
        "Only when none is after the cursor: the first from the start (wrap)."
    ),
    "picked AS MATERIALIZED": (
        "The first free proxy in selector order. MATERIALIZED: the row lock is\n"
        "taken once, here; inlined into the UPDATE it could lock other rows."
    ),
    "FOR NO KEY UPDATE OF pharox_proxy SKIP LOCKED": (
        "Rows other transactions hold are skipped, not waited for. NO KEY\n"
        "UPDATE is the lock an UPDATE of non-key columns takes anyway."
    ),
    "cooldowns AS": (
        "Proxies held back from the target domain now (resting there; paced,\n"
        "also leased for it within reuse_delay): one range of the (domain,\n"
        "cooldown_until) index, hashed once for the whole search."
    ),
    "> now()) IS NOT true": (
        "IS NOT TRUE: a NULL cooldown_until (never cooled) is eligible."
    ),
    "(SELECT e.expires_at|e.expires_at <= now()": (
        "Nothing is picked while an expired lease waits: the caller reclaims\n"
        "first (reclaim_needed), so a search never runs past a dead lease.\n"
        "The first expired lease in expiry order: a range of the expiry index\n"
        "that ends at the first lease not yet expired, dead or alive. As an\n"
        "EXISTS, the generic plan scans the table; as min(expires_at), the\n"
        "index walk passes every dead entry until a vacuum."
    ),
    "make_interval(secs": (
        "Times are the database's: every process compares with one clock."
    ),
    "SELECT claimed.*": (
        "claimed.*, not each column: spelled out, the round-robin acquire by\n"
        "domain would pass psycopg's 4096-byte cache of parsed queries."
    ),
    "FROM picked) RETURNING pharox_proxy.id": (
        "The claim is the statement, and no row comes back when nothing was\n"
        "picked: no CTE of the claim to scan, no one-row join around it. Its\n"
        "columns are named, not *: PostgreSQL fixes what * stands for at\n"
        "PREPARE, and refuses the statement once a column is added."
    ),
    "(SELECT 1 AS one) AS one": (
        "One row even when nothing was claimed: its NULL id says so."
    ),
    "gone AS": (
        "The lease leaves the active table. A second or late release matches\n"
        "no row, and everything below hangs off gone: it changes nothing."
    ),
    "RETURNING true AS released": (
        "The history row is the statement: a row when the lease was released,\n"
        "none when it was no longer active (no scan of gone again to say so)."
    ),
    "doomed AS MATERIALIZED": (
        "Expired leases no other release or reclaim holds now. MATERIALIZED:\n"
        "the DELETE removes exactly the rows locked here."
    ),
    "locked_proxies AS MATERIALIZED": (
        "Their proxies, locked in id order, so two reclaims never deadlock."
    ),
    "WHEN (pharox_proxy.max_concurrency = pharox_proxy.current_leases + 1)": (
        "A notice of the release, sent at commit, to the waiters of every\n"
        "process (sql_release.RELEASE_CHANNEL), only when the proxy was full\n"
        "before (RETURNING sees the row after): a request waits only when it\n"
        "found no free slot, so a slot given back on a proxy with one left, or\n"
        "without a limit, wakes nobody."
    ),
    "ON CONFLICT": (
        "The (proxy, domain) row is created on its first ban, rest or paced\n"
        "lease, updated after."
    ),
    "paced_use AS": (
        "The pick stamps leased_at of its (proxy, domain) row, and is claimed\n"
        "only if that row, read as committed now (ON CONFLICT reads the latest\n"
        "row, waiting for an insert in flight), is out of its rest and delay:\n"
        "the search's snapshot may predate another process's paced lease."
    ),
    "AS paced_in": (
        "When nothing was claimed: the seconds until the first free proxy that\n"
        "only its reuse delay holds back comes out of it (NULL: none does)."
    ),
}


def normalised(sql: str) -> str:
    """``sql`` without comments and layout: what the database parses."""
    sql = re.sub(r"--[^\n]*", "", sql)
    sql = re.sub(r"\s+", " ", sql).strip()
    return re.sub(r"\s*([(),])\s*", r"\1", sql)


def laid_out(sql: str) -> str:
    """``sql`` one clause a line, with the why-comments above their lines."""
    import sqlparse

    formatted: list[str] = []
    for line in sqlparse.format(sql, reindent=True).splitlines():
        # sqlparse ends a CTE's line with the next CTE's name: one a line.
        split = re.match(r"^(\s*)(.*\)),\s*(\w+ AS(?: MATERIALIZED)?)$", line)
        if split is None:
            formatted.append(line.rstrip())
        else:
            indent, end, name = split.groups()
            formatted += [f"{indent}{end},", name]
    lines: list[str] = []
    for number, line in enumerate(formatted):
        for key, why in WHY.items():
            text, _, later = key.partition("|")
            after = formatted[number + 1 : number + 4]
            if text in line and (not later or any(later in a for a in after)):
                indent = line[: len(line) - len(line.lstrip())]
                lines += [f"{indent}-- {part}" for part in why.splitlines()]
        lines.append(line)
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("name", sorted(HOT_STATEMENTS))
def test_the_checked_in_sql_is_what_the_code_compiles(name: str) -> None:
    checked_in = (STATEMENTS_DIR / name).read_text()
    assert normalised(checked_in) == normalised(HOT_STATEMENTS[name]().sql), (
        f"{name} is out of date: python tests/test_sql_text.py --write"
    )


def test_every_checked_in_sql_file_is_a_hot_statement() -> None:
    assert sorted(path.name for path in STATEMENTS_DIR.glob("*.sql")) == sorted(
        HOT_STATEMENTS
    )


def test_every_materialized_cte_carries_a_why_comment() -> None:
    for name in HOT_STATEMENTS:
        lines = (STATEMENTS_DIR / name).read_text().splitlines()
        for number, line in enumerate(lines):
            if "MATERIALIZED" in line and not line.lstrip().startswith("--"):
                assert lines[number - 1].lstrip().startswith("--"), (name, line)


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    for path in STATEMENTS_DIR.glob("*.sql"):
        path.unlink()
    for name, statement in sorted(HOT_STATEMENTS.items()):
        (STATEMENTS_DIR / name).write_text(laid_out(statement().sql))
        print("wrote", STATEMENTS_DIR / name)
