"""The servers bench_crawl starts: nginx and tinyproxy processes, or the playground."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from crawl_child import PR_SET_PDEATHSIG, PROXIES


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def page_html(title: str, links: list[str]) -> str:
    """The markup of the playground's pages (scrapy_pharox/playground/site.py)."""
    items = "".join(f'<li><a href="{href}">{href}</a></li>' for href in links)
    return (
        f"<!DOCTYPE html><html><head><title>{title}</title></head>"
        f"<body><h1>{title}</h1><ul>{items}</ul></body></html>"
    )


def write_site(root: Path, pages: int) -> None:
    """/ links to every /page/<n>; each page to / and the next three (wrapping)."""
    (root / "page").mkdir(parents=True)
    index = page_html("Index", [f"/page/{n}" for n in range(1, pages + 1)])
    (root / "index.html").write_text(index, encoding="utf-8")
    for num in range(1, pages + 1):
        nxt = [(num + k - 1) % pages + 1 for k in (1, 2, 3)]
        links = ["/"] + [f"/page/{n}" for n in dict.fromkeys(nxt) if n != num]
        (root / "page" / str(num)).write_text(
            page_html(f"Page {num}", links), encoding="utf-8"
        )


def nginx_conf(tmp: Path, port: int) -> str:
    return f"""\
worker_processes 1;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    default_type text/html;
    access_log {tmp}/nginx-access.log combined buffer=64k flush=1s;
    keepalive_requests 100000;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    server {{
        listen 127.0.0.1:{port};
        root {tmp}/site;
        index index.html;
    }}
}}
"""


def tinyproxy_conf(tmp: Path, index: int, port: int) -> str:
    import grp
    import pwd

    user = pwd.getpwuid(os.geteuid()).pw_name
    group = grp.getgrgid(os.getegid()).gr_name
    return f"""\
User {user}
Group {group}
Port {port}
Listen 127.0.0.1
Allow 127.0.0.1
Timeout 60
MaxClients 256
LogFile "{tmp}/tinyproxy-{index}.log"
LogLevel Warning
Syslog Off
PidFile "{tmp}/tinyproxy-{index}.pid"
DisableViaHeader Yes
"""


def _server_preexec() -> None:
    """In a server child before exec: die with this script, even on SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Servers:
    """One site and PROXIES forward proxies on 127.0.0.1; a context manager."""

    pages: int
    cpus: set[int] | None = None
    description: str = ""
    site_url: str = ""
    proxy_urls: list[str] = field(default_factory=list)
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    _processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def native(self) -> bool:
        return bool(shutil.which("nginx") and shutil.which("tinyproxy"))

    def __enter__(self) -> Servers:
        try:
            if self.native:
                self._start_native()
            else:
                self._start_playground()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()

    def cpu_seconds(self) -> float:
        """CPU time the servers used so far (all of this process's, in fallback)."""
        if not self._processes:
            times = os.times()
            return times.user + times.system
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for process in self._processes:
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")")[1]
                total += int(fields.split()[11]) + int(fields.split()[12])
        return total / tick

    def _start_native(self) -> None:
        tmp = Path(tempfile.mkdtemp(prefix="bench-crawl-"))
        self._stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        self._stack.callback(self._stop_processes)
        write_site(tmp / "site", self.pages)
        site_port = free_port()
        (tmp / "nginx.conf").write_text(nginx_conf(tmp, site_port))
        nginx = shutil.which("nginx") or "nginx"
        self._spawn(
            "nginx",
            [nginx, "-p", f"{tmp}/", "-c", f"{tmp}/nginx.conf", "-e",
             f"{tmp}/nginx-error.log", "-g", "daemon off;"],
            site_port, tmp / "nginx-error.log",
        )  # fmt: skip
        self.site_url = f"http://127.0.0.1:{site_port}/"
        tinyproxy = shutil.which("tinyproxy") or "tinyproxy"
        for index in range(1, PROXIES + 1):
            port = free_port()
            conf = tmp / f"tinyproxy-{index}.conf"
            conf.write_text(tinyproxy_conf(tmp, index, port))
            log = tmp / f"tinyproxy-{index}.log"
            self._spawn("tinyproxy", [tinyproxy, "-d", "-c", str(conf)], port, log)
            self.proxy_urls.append(f"http://127.0.0.1:{port}")
        self.description = (
            f"nginx ({_version([nginx, '-v'])}) + {PROXIES} tinyproxy "
            f"({_version([tinyproxy, '-v'])}), child processes on 127.0.0.1"
        )

    def _spawn(self, name: str, command: list[str], port: int, log: Path) -> None:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # Ctrl-C reaches this script only: it stops them
            preexec_fn=_server_preexec,
        )
        self._processes.append(process)
        if self.cpus:
            os.sched_setaffinity(process.pid, self.cpus)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            time.sleep(0.02)
        stderr = (
            process.stderr.read().decode(errors="replace") if process.stderr else ""
        )
        if process.poll() is None:
            process.kill()
        logged = log.read_text(errors="replace") if log.exists() else ""
        tail = (stderr + logged).strip().splitlines()[-5:]
        raise RuntimeError(f"{name} did not start on port {port}: {tail}")

    def _stop_processes(self) -> None:
        for process in self._processes:
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + 5
        for process in self._processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stderr is not None:
                process.stderr.close()

    def _start_playground(self) -> None:
        from scrapy_pharox.playground import ForwardProxy, TargetSite

        if self.cpus:  # the servers are threads of this process
            os.sched_setaffinity(0, self.cpus)
        site = self._stack.enter_context(TargetSite(pages=self.pages))
        self.site_url = site.url + "/"
        for _ in range(PROXIES):
            proxy = self._stack.enter_context(ForwardProxy())
            self.proxy_urls.append(proxy.url)
        self.description = (
            "FALLBACK: scrapy_pharox/playground/ threads in this process "
            "(nginx and/or tinyproxy not on PATH: slow and noisy, ratios unreliable)"
        )


def _version(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "?"
    text = (done.stderr or done.stdout).strip().splitlines()
    return text[0].rsplit(" ", 1)[-1].rsplit("/", 1)[-1] if text else "?"
