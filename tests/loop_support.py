"""Running a coroutine from a plain (synchronous) test."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


def run_on_a_loop(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on a private loop in its own thread: the test session's
    reactor already runs an asyncio loop in this one."""
    with ThreadPoolExecutor(max_workers=1) as executor:
        return executor.submit(asyncio.run, coroutine).result()
