"""How the work done with a lease went, and what a ban or a failure costs its proxy:
the cooldown policy, the outcome report and a proxy's cooldown for one domain."""

from __future__ import annotations

import random
from datetime import datetime
from enum import Enum
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..durations import MAX_SECONDS
from ..exceptions import InvalidArgumentError


class LeaseOutcome(str, Enum):
    """How the work done with a lease went."""

    SUCCESS = "success"
    BAN = "ban"
    FAILURE = "failure"
    #: Rate limited (a 429 or 503 with Retry-After): a rest for the domain, not
    #: a ban; the ban and failure streaks stay as they are.
    THROTTLED = "throttled"


#: Weight of the newest latency in a proxy's moving average.
LATENCY_SMOOTHING = 0.3


class CooldownPolicy(BaseModel):
    """How long a banned or failing proxy rests: ``base * 2**(strikes - 1)``,
    capped at ``max``, times a jitter factor in ``1 ± jitter``.

    Strikes are consecutive bans; for failures, consecutive failures beyond
    ``failures_before_cooldown - 1``. A success resets both.
    """

    model_config = ConfigDict(frozen=True)

    # Spans of time: above 0, at most durations.MAX_SECONDS (seven days).
    base_seconds: float = Field(default=60.0, gt=0, le=MAX_SECONDS)
    max_seconds: float = Field(default=3600.0, gt=0, le=MAX_SECONDS)
    jitter: float = Field(default=0.2, ge=0, lt=1)
    failures_before_cooldown: int = Field(default=3, ge=1)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:  # a PharoxError too, as every bad argument
            problems = "; ".join(
                f"{'.'.join(map(str, error['loc']))}: {error['msg']}, "
                f"got {error['input']!r}"
                for error in exc.errors()
            )
            raise InvalidArgumentError(f"invalid CooldownPolicy: {problems}") from None

    def seconds(self, strikes: int, draw: float) -> float:
        """The cooldown after ``strikes`` (>= 1), for a uniform ``draw`` in [0, 1]."""
        exponent = min(max(strikes, 1) - 1, 62)
        plain = min(self.max_seconds, self.base_seconds * 2.0**exponent)
        return plain * (1 + self.jitter * (2 * draw - 1))

    def strikes(self, outcome: LeaseOutcome, consecutive: int) -> int:
        """Strikes counted after ``consecutive`` bans or failures (0: no cooldown)."""
        if outcome is LeaseOutcome.BAN:
            return consecutive
        if outcome is LeaseOutcome.FAILURE:
            return max(0, consecutive - self.failures_before_cooldown + 1)
        return 0

    def rest(self, asked: float | None) -> float:
        """How long a throttled proxy rests when ``asked`` (Retry-After) seconds:
        the base without one, never past the max."""
        return min(self.max_seconds, self.base_seconds if asked is None else asked)


class OutcomeReport(BaseModel):
    """What a lease's holder reports when it releases it.

    With ``domain`` set, a ban cools the proxy for that domain only; failures
    always count against the proxy. ``draw`` picks the jitter. A THROTTLED
    outcome rests the proxy for ``rest_seconds`` (the policy's base when not
    given, capped by its max): for ``domain`` only, or the whole proxy without
    one.
    """

    outcome: LeaseOutcome
    latency_ms: float | None = Field(default=None, ge=0)
    domain: str | None = None
    rest_seconds: float | None = Field(default=None, ge=0, le=MAX_SECONDS)
    policy: CooldownPolicy = CooldownPolicy()
    draw: float = Field(default_factory=random.random, ge=0, le=1)


class DomainCooldown(BaseModel):
    """A proxy resting for one target domain only."""

    proxy_id: UUID
    domain: str
    consecutive_bans: int = Field(ge=0)
    cooldown_until: datetime | None = None
