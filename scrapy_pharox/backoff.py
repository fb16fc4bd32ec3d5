"""``Backoff``: how often, and how patiently, a retrying acquire tries again."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, cast

from .durations import check_seconds
from .exceptions import InvalidArgumentError

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class Backoff:
    """Up to ``max_attempts`` tries, waiting ``backoff_seconds`` after the first
    miss and ``backoff_multiplier`` times longer after each next one, capped at
    ``max_backoff_seconds``; ``sleep_fn`` waits (``time.sleep`` by default).

    Checked when built: InvalidArgumentError names the bad value.
    """

    max_attempts: int = 3
    backoff_seconds: float = 0.5
    backoff_multiplier: float = 2.0
    max_backoff_seconds: float | None = None
    sleep_fn: Callable[[float], Any] | None = None

    def __post_init__(self) -> None:
        attempts = self.max_attempts
        if isinstance(attempts, bool) or not isinstance(attempts, int):
            raise InvalidArgumentError(f"max_attempts must be an int, got {attempts!r}")
        if attempts < 1:
            raise InvalidArgumentError(f"max_attempts must be >= 1, got {attempts}")
        check_seconds(self.backoff_seconds, "backoff_seconds", zero=True)
        if not self.backoff_multiplier >= 1:
            raise InvalidArgumentError(
                f"backoff_multiplier must be >= 1, got {self.backoff_multiplier!r}"
            )
        if self.max_backoff_seconds is not None:
            check_seconds(self.max_backoff_seconds, "max_backoff_seconds")

    def waits(self) -> list[float]:
        """The waits between the attempts: one fewer than ``max_attempts``."""
        waits = []
        wait = float(self.backoff_seconds)
        cap = self.max_backoff_seconds
        for _ in range(self.max_attempts - 1):
            capped = wait if cap is None else min(wait, cap)
            waits.append(capped)
            wait = capped * self.backoff_multiplier
        return waits

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` with ``sleep_fn``."""
        (self.sleep_fn or time.sleep)(seconds)


def same_parameters(
    model: Callable[P, Any],
) -> Callable[[Callable[..., R]], Callable[P, R]]:
    """Type a ``(*args, **kwargs)`` forwarder with the parameters of ``model``,
    for mypy and for ``help()`` (its ``__signature__``) alike."""

    def typed(forwarder: Callable[..., R]) -> Callable[P, R]:
        model_sig = inspect.signature(model)
        own = list(inspect.signature(forwarder).parameters.values())
        params = list(model_sig.parameters.values())
        if own and params and own[0].kind is own[0].POSITIONAL_OR_KEYWORD:
            params[0] = params[0].replace(name=own[0].name)  # self -> manager
        forwarder.__signature__ = model_sig.replace(  # type: ignore[attr-defined]
            parameters=params, return_annotation=inspect.Signature.empty
        )
        return cast("Callable[P, R]", forwarder)

    return typed
