"""Counting round trips to PostgreSQL on the wire."""

from __future__ import annotations

import tempfile
from typing import Any

from psycopg.pq import Trace


class WireTrace:
    """libpq's protocol trace of psycopg connections: every round trip ends with
    the server's ReadyForQuery."""

    def __init__(self, connections: list[Any]) -> None:
        self._connections = connections
        self._file = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in __exit__
        self.round_trips = 0

    def follow(self, connection: Any) -> None:
        connection.pgconn.trace(self._file.fileno())
        connection.pgconn.set_trace_flags(Trace.SUPPRESS_TIMESTAMPS)

    def __enter__(self) -> WireTrace:
        for connection in self._connections:
            self.follow(connection)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for connection in self._connections:
            connection.pgconn.untrace()  # flushes the trace
        self._file.seek(0)
        self.round_trips = sum(
            line.startswith("B") and "ReadyForQuery" in line for line in self._file
        )
        self._file.close()
