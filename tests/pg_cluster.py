"""Throwaway PostgreSQL clusters: ``initdb`` into a temporary directory, a free
port (as the ``postgres`` OS user when run as root), so a test may stop, restart
or lock one without disturbing the shared server."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


class Cluster:
    """A PostgreSQL cluster in a temporary directory, started and stopped by pg_ctl."""

    def __init__(self, bin_dir: Path, root: Path, port: int, as_user: list[str]):
        self.port = port
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
        self._pg_ctl = [*as_user, str(bin_dir / "pg_ctl"), "-D", str(root / "data")]
        self._options = (
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        )
        self._log = str(root / "server.log")

    def start(self) -> None:
        self._ctl("start", "-w", "-l", self._log, "-o", self._options)

    def stop(self, mode: str = "fast") -> None:
        self._ctl("stop", "-w", "-m", mode)

    def restart(self) -> None:
        self._ctl("restart", "-w", "-m", "fast", "-l", self._log, "-o", self._options)

    def _ctl(self, *args: str) -> None:
        subprocess.run([*self._pg_ctl, *args], check=True, capture_output=True)


def cluster_or_why_not() -> tuple[Path, list[str]] | str:
    """Where initdb is and how to run it, or why a cluster cannot be made here."""
    bin_dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not bin_dirs:
        return "no /usr/lib/postgresql/*/bin to run initdb from"
    if os.geteuid() != 0:
        return (Path(bin_dirs[-1]), [])
    if shutil.which("runuser") is None:
        return "running as root without runuser to become the postgres user"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "running as root and there is no postgres OS user"
    return (Path(bin_dirs[-1]), ["runuser", "-u", "postgres", "--"])


@contextlib.contextmanager
def throwaway_cluster(password: str | None = None) -> Iterator[Cluster]:
    """A started cluster, removed on exit. The ``postgres`` user gets in with no
    password (trust), or, given ``password``, with that one only (scram-sha-256).

    Skips the test when no cluster can be made here, or fails it when
    ``PHAROX_REQUIRE_POSTGRES=1``.
    """
    found = cluster_or_why_not()
    if isinstance(found, str):
        if os.environ.get("PHAROX_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"cannot make a throwaway PostgreSQL cluster: {found}")
        pytest.skip(f"cannot make a throwaway PostgreSQL cluster: {found}")
    bin_dir, as_user = found
    root = Path(tempfile.mkdtemp(prefix="pharox-pg-"))
    if as_user:
        shutil.chown(root, user="postgres")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    initdb = [str(bin_dir / "initdb"), "-D", str(root / "data"), "-U", "postgres"]
    if password is None:
        initdb += ["-A", "trust"]
    else:
        password_file = root / "password"
        password_file.write_text(password, encoding="utf-8")
        if as_user:
            shutil.chown(password_file, user="postgres")
        initdb += ["-A", "scram-sha-256", f"--pwfile={password_file}"]
    subprocess.run([*as_user, *initdb, "--no-sync"], check=True, capture_output=True)
    server = Cluster(bin_dir, root, port, as_user)
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            server.stop(mode="immediate")
        shutil.rmtree(root, ignore_errors=True)
