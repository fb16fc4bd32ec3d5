"""Serve the playground: ``python -m scrapy_pharox.playground --proxies 2``."""

from __future__ import annotations

import argparse
import sys
import time

from scrapy_pharox.playground import ForwardProxy, TargetSite


def main(argv: list[str] | None = None) -> int:
    """Start one site and N proxies, print their URLs, serve until Ctrl-C."""
    parser = argparse.ArgumentParser(description="Serve the offline playground.")
    parser.add_argument("--pages", type=int, default=30)
    parser.add_argument("--proxies", type=int, default=3)
    parser.add_argument("--tls", action="store_true", help="serve the site over HTTPS")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds per response")
    parser.add_argument("--site-port", type=int, default=0)
    parser.add_argument("--username", help="require this proxy user (Basic auth)")
    parser.add_argument("--password", help="proxy password")
    args = parser.parse_args(argv)
    site = TargetSite(args.pages, tls=args.tls, delay=args.delay, port=args.site_port)
    proxies = [
        ForwardProxy(username=args.username, password=args.password)
        for _ in range(args.proxies)
    ]
    try:
        print(f"site  {site.start().url}/", flush=True)
        for proxy in proxies:
            print(f"proxy {proxy.start().auth_url}", flush=True)
        print("serving; Ctrl-C to stop", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        for service in [site, *proxies]:
            service.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
