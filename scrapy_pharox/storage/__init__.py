"""Storage adapters behind the one ``IStorage`` contract, and ``open_storage``."""

from __future__ import annotations

from ..exceptions import UnsupportedStorageURLError
from ..models import mask_url_password
from .base import IStorage
from .memory import InMemoryStorage

__all__ = ["IStorage", "InMemoryStorage", "open_storage"]


def open_storage(url: str) -> IStorage:
    """The storage a URL names: ``memory://`` for the embedded in-memory one."""
    scheme = url.partition("://")[0].lower() if isinstance(url, str) else ""
    if scheme == "memory":
        return InMemoryStorage()
    raise UnsupportedStorageURLError(
        f"unsupported storage URL {mask_url_password(str(url))!r}: use memory://"
    )
