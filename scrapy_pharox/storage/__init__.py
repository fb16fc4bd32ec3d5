"""Storage adapters behind the one ``IStorage`` contract, and ``open_storage``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..exceptions import UnsupportedStorageURLError
from ..models import mask_url_password
from .base import IStorage
from .memory import InMemoryStorage
from .sources import SourceState, SyncResult

if TYPE_CHECKING:
    from .sql import SqlStorage

__all__ = [
    "IStorage",
    "InMemoryStorage",
    "SourceState",
    "SqlStorage",
    "SyncResult",
    "open_storage",
]

_SQL_SCHEMES = frozenset(
    {"postgresql", "postgresql+psycopg", "postgres", "sqlite", "sqlite+pysqlite"}
)


def open_storage(url: str) -> IStorage:
    """The storage a URL names, ready to use.

    ``memory://`` for the embedded in-memory one;
    ``postgresql+psycopg://user:password@host:port/db`` or
    ``sqlite:///path/to/file.db`` for a ``SqlStorage``, its schema created (or
    checked) on the way. Errors name the URL with its password masked.
    """
    scheme = url.partition("://")[0].lower() if isinstance(url, str) else ""
    if scheme == "memory":
        return InMemoryStorage()
    if scheme in _SQL_SCHEMES:
        if scheme == "postgres":
            url = "postgresql" + url[len(scheme) :]
        from .sql import adapter_for

        storage = adapter_for(url)(url)
        try:
            storage.create_schema()
        except BaseException:
            storage.close()
            raise
        return storage
    raise UnsupportedStorageURLError(
        f"unsupported storage URL {mask_url_password(str(url))!r}: use memory://, "
        "postgresql+psycopg://user:password@host:port/db or sqlite:///path/to/file.db"
    )


def __getattr__(name: str) -> Any:
    # SQLAlchemy is imported by those who use SQL only: it brings some 25,000
    # objects that every full garbage collection of a crawl would walk.
    if name == "SqlStorage":
        from .sql import SqlStorage

        return SqlStorage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
