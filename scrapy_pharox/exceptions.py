"""Errors raised by scrapy-pharox, all under one ``PharoxError`` base."""

from __future__ import annotations


class PharoxError(Exception):
    """Base class of every error this package raises."""


class InvalidArgumentError(PharoxError, ValueError):
    """An argument or setting has a value that can never work."""


class InvalidLeaseError(InvalidArgumentError):
    """Lease parameters are invalid (a duration that is not positive)."""


class InvalidProxyURLError(InvalidArgumentError):
    """A proxy URL cannot be parsed; the message names it, password masked."""


class PharoxSettingError(InvalidArgumentError):
    """A ``PHAROX_*`` setting has a value that cannot work; the message names it."""


class UnsupportedStorageURLError(InvalidArgumentError):
    """``open_storage`` was given a URL whose scheme no adapter handles."""


class PoolNotFoundError(PharoxError):
    """A pool with that name or id does not exist."""


class ProxyNotFoundError(PharoxError):
    """A proxy with that id does not exist."""


class ProxyUnavailableError(PharoxError):
    """The proxy chosen for a lease has no free slot any more."""


class StorageError(PharoxError):
    """The storage backend failed (a driver error, translated at the adapter)."""
