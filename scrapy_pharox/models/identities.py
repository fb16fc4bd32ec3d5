"""A provider gateway's exits: one gateway URL with a ``{session}`` placeholder in
its user name or password becomes one proxy per exit ("identity"), each with a
session id of its own in its credentials; a renewed exit gets a new id.

The session id is not a secret (providers show it in dashboards, we log it);
the gateway's password is, and every message here masks it.
"""

from __future__ import annotations

import re
import secrets
import string
from datetime import datetime
from typing import Any
from uuid import UUID

from ..exceptions import InvalidArgumentError, InvalidProxyURLError
from .base import utc_now
from .proxy import Proxy, ProxyCredentials
from .urls import mask_url_password

#: What a gateway URL holds where each exit's session id goes.
SESSION_PLACEHOLDER = "{session}"
#: How long a provider keeps an exit by default (``session_seconds``).
DEFAULT_SESSION_SECONDS = 600.0
#: The length of the session ids we make: letters and digits.
SESSION_ID_LENGTH = 12

_ALPHABET = string.ascii_letters + string.digits
_SESSION_ID = re.compile(r"[A-Za-z0-9]{1,64}")


def new_session_id() -> str:
    """A fresh session id: ``SESSION_ID_LENGTH`` random letters and digits."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(SESSION_ID_LENGTH))


def check_session_id(value: object) -> str:
    """``value`` when it is a session id (1-64 letters and digits), else
    InvalidArgumentError naming it."""
    if not isinstance(value, str) or _SESSION_ID.fullmatch(value) is None:
        raise InvalidArgumentError(
            f"a session id is 1 to 64 letters and digits, got {value!r}"
        )
    return value


def gateway_identities(
    url: str,
    identities: int,
    *,
    pool_id: UUID,
    session_seconds: float = DEFAULT_SESSION_SECONDS,
    now: datetime | None = None,
    **fields: Any,
) -> list[Proxy]:
    """The ``identities`` exits of the gateway ``url``, numbered from 1.

    ``url`` holds ``{session}`` once, in its user name or password; a bad one
    raises InvalidProxyURLError naming it, password masked.
    """
    shown = mask_url_password(url) if isinstance(url, str) else repr(url)
    if not isinstance(url, str) or url.count(SESSION_PLACEHOLDER) != 1:
        raise InvalidProxyURLError(
            f"gateway URL {shown!r} must hold {SESSION_PLACEHOLDER} exactly once"
        )
    at = url.rfind("@")
    if url.find(SESSION_PLACEHOLDER) > at or url.find("://") < 0:
        raise InvalidProxyURLError(
            f"gateway URL {shown!r} must hold {SESSION_PLACEHOLDER} in its user "
            "name or password"
        )
    if isinstance(identities, bool) or not isinstance(identities, int):
        raise InvalidArgumentError(
            f"identities must be a whole number, got {identities!r}"
        )
    if identities < 1:
        raise InvalidArgumentError(f"identities must be at least 1, got {identities}")
    started = now or utc_now()
    proxies = []
    for number in range(1, identities + 1):
        session_id = new_session_id()
        proxies.append(
            Proxy.from_url(
                url.replace(SESSION_PLACEHOLDER, session_id),
                pool_id=pool_id,
                identity=f"{shown}#{number}",
                session_id=session_id,
                session_seconds=session_seconds,
                session_started_at=started,
                **fields,
            )
        )
    return proxies


def renewed_credentials(
    credentials: ProxyCredentials | None, session_id: str, new_session_id: str
) -> ProxyCredentials | None:
    """The credentials of an exit whose ``session_id`` becomes ``new_session_id``
    (as the SQL adapters write it: ``replace()`` in user and password)."""
    if credentials is None:
        return None
    return ProxyCredentials.model_construct(
        user=credentials.user.replace(session_id, new_session_id),
        password=credentials.password.replace(session_id, new_session_id),
    )
