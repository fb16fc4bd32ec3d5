"""A session: one key of a pool bound to one proxy and one lease slot on it, with
its cookie jar; and what binding a key to its session gives back.

Cookie values are secrets: a session's repr and str leave its cookies out, and
no error quotes them (nor a joined proxy's password).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ..exceptions import InvalidArgumentError
from .leases import Lease
from .proxy import Proxy

#: The longest session key, in characters.
MAX_SESSION_KEY_LENGTH = 200


def session_key_problem(key: object) -> str | None:
    """Why ``key`` cannot be a session key, or None when it can."""
    if not isinstance(key, str) or not key:
        return "a session key must be a non-empty string"
    if len(key) > MAX_SESSION_KEY_LENGTH:
        return f"a session key has at most {MAX_SESSION_KEY_LENGTH} characters"
    return None


def check_session_key(key: object) -> str:
    """``key`` when it can be a session key; else InvalidArgumentError naming
    it (a key is not a secret)."""
    problem = session_key_problem(key)
    if problem is not None:
        raise InvalidArgumentError(f"{problem}, got {key!r}")
    return key  # type: ignore[return-value]  # a str: checked above


def cookies_to_json(cookies: list[dict[str, Any]]) -> str:
    """A cookie jar as the storage keeps it: JSON text. InvalidArgumentError,
    naming no value, for a jar JSON cannot hold."""
    try:
        return json.dumps(cookies, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        # Not the exception's text: it may quote a cookie.
        raise InvalidArgumentError(
            f"session cookies must be a JSON list of objects ({type(exc).__name__})"
        ) from None


def cookies_from_json(text: str) -> list[dict[str, Any]]:
    """A cookie jar read back from the storage."""
    cookies: list[dict[str, Any]] = json.loads(text)
    return cookies


# The fields whose values no error quotes: the cookies, and the joined proxy
# (its password); the model as a whole (a rule across fields) holds them too.
_SECRET = {("cookies",), ("proxy",), ()}


class ProxySession(BaseModel):
    """Session ``key`` of a pool: its proxy, the lease holding its slot (None
    while parked), its cookies and how long and how much it was used.

    ``generation`` counts the identities (proxy and cookies) the key had: a
    rotation or a new proxy starts the next one, and every write of a session
    is fenced by it. ``proxy`` is joined from the proxies when read, not stored.
    A bad value raises InvalidArgumentError naming it, unless it is a secret.
    """

    # model_validate skips __init__: its errors quote no input either.
    model_config = ConfigDict(hide_input_in_errors=True)

    pool_name: str = Field(min_length=1)
    key: str
    generation: int = Field(ge=1)
    proxy_id: UUID
    lease_id: UUID | None = None
    consumer_id: UUID | None = None
    lease_expires_at: datetime | None = None
    uses: int = Field(default=0, ge=0)
    created_at: datetime
    last_used_at: datetime
    cookies: list[dict[str, Any]] = Field(default_factory=list, repr=False)
    proxy: Proxy | None = None

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:  # a PharoxError too, as every bad argument
            problems = "; ".join(
                f"{'.'.join(map(str, error['loc'])) or 'session'}: {error['msg']}"
                + ("" if error["loc"][:1] in _SECRET else f", got {error['input']!r}")
                for error in exc.errors()
            )
            raise InvalidArgumentError(f"invalid ProxySession: {problems}") from None

    @field_validator("key")
    @classmethod
    def _valid_key(cls, key: str) -> str:
        problem = session_key_problem(key)
        if problem is not None:
            raise ValueError(problem)
        return key

    @model_validator(mode="after")
    def _lease_fields_together(self) -> ProxySession:
        if self.lease_id is not None and (
            self.consumer_id is None or self.lease_expires_at is None
        ):
            raise ValueError("a session's lease needs its consumer_id and expiry")
        return self

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any]]]:
        # As a lease's: a pickle (a JOBDIR queue) holds no proxy password.
        on_disk = self.model_dump(exclude={"proxy": {"credentials"}})
        return (_unpickled_session, (on_disk,))

    @property
    def parked(self) -> bool:
        """True when no lease holds the session's slot (as stored)."""
        return self.lease_id is None

    def stored_lease(self) -> Lease | None:
        """The lease the stored row names, rebuilt (with the joined proxy), or
        None while parked. It may have lapsed: extend it to know."""
        if self.lease_id is None or self.consumer_id is None:
            return None
        assert self.lease_expires_at is not None  # the validator's rule
        return Lease(
            id=self.lease_id,
            proxy_id=self.proxy_id,
            consumer_id=self.consumer_id,
            pool_id=self.proxy.pool_id if self.proxy is not None else None,
            pool_name=self.pool_name,
            expires_at=self.lease_expires_at,
            proxy=self.proxy,
        )


def _unpickled_session(fields: dict[str, Any]) -> ProxySession:
    """A session read back from a pickle: without its proxy's credentials."""
    return ProxySession(**fields)


@dataclass(frozen=True)
class SessionBinding:
    """A key bound to its session: the session and the live lease holding its
    slot (``proxy`` set, credentials included, as an acquire returns it).

    ``event``: "created" for a new generation (a new key, or its proxy was not
    to be had), "resumed" for a parked or lapsed session whose proxy was
    leased again, "joined" for a session whose lease was live (held here or by
    another process) and was extended. ``expired``: a generation past its
    maximum age was dropped on the way.
    """

    session: ProxySession
    lease: Lease
    event: Literal["created", "resumed", "joined"]
    expired: bool = False
