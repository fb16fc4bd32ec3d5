"""Offline playground: a local target site, forward proxies and a gateway on 127.0.0.1.

Used by the example Scrapy project, the end-to-end tests and the benchmarks, and
served on its own by ``python -m scrapy_pharox.playground``. Everything binds to
loopback only and runs in daemon threads, independent of any Twisted reactor. It
needs only the standard library and ``cryptography`` (for the TLS certificate);
``scrapy_pharox`` itself never imports it.
"""

from __future__ import annotations

from scrapy_pharox.playground.gateway import ExitStats, GatewayProxy
from scrapy_pharox.playground.proxies import ForwardProxy
from scrapy_pharox.playground.server import free_port
from scrapy_pharox.playground.site import (
    EXIT_HEADER,
    PROXY_HEADER,
    RecordedRequest,
    TargetSite,
)

__all__ = [
    "EXIT_HEADER",
    "PROXY_HEADER",
    "ExitStats",
    "ForwardProxy",
    "GatewayProxy",
    "RecordedRequest",
    "TargetSite",
    "free_port",
]
