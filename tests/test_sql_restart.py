"""A PostgreSQL restart in the middle of a run, on a throwaway cluster.

The tests create their own cluster with ``initdb`` on a free port (as the
``postgres`` OS user when run as root) so restarting it disturbs nobody.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scrapy_pharox import (
    ProxyManager,
    SqlStorage,
    StorageError,
    bootstrap_pool,
    bootstrap_proxy,
)

pytestmark = pytest.mark.postgres


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


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
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
    initdb = [str(bin_dir / "initdb"), "-D", str(root / "data"), "-A", "trust"]
    subprocess.run(
        [*as_user, *initdb, "-U", "postgres", "--no-sync"],
        check=True,
        capture_output=True,
    )
    server = Cluster(bin_dir, root, port, as_user)
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            server.stop(mode="immediate")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def manager(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[ProxyManager]:
    """A manager on the cluster, with a pool of its own named after the test."""
    storage = SqlStorage(cluster.url, retry_seconds=15)
    storage.create_schema()
    pool = bootstrap_pool(storage, name=request.node.name)
    bootstrap_proxy(storage, pool=pool, host="127.0.0.1", port=1, max_concurrency=1)
    try:
        yield ProxyManager(storage)
    finally:
        storage.close()


def test_the_first_acquire_after_a_restart_succeeds(
    cluster: Cluster, manager: ProxyManager, request: pytest.FixtureRequest
) -> None:
    pool_name = request.node.name
    manager.release_proxy(manager.acquire_proxy(pool_name))  # type: ignore[arg-type]
    cluster.restart()
    lease = manager.acquire_proxy(pool_name)
    assert lease is not None


def test_an_acquire_made_while_the_server_restarts_succeeds_once_it_is_back(
    cluster: Cluster, manager: ProxyManager, request: pytest.FixtureRequest
) -> None:
    pool_name = request.node.name
    manager.release_proxy(manager.acquire_proxy(pool_name))  # type: ignore[arg-type]
    cluster.stop()
    restart = threading.Timer(1.0, cluster.start)
    restart.start()
    started = time.monotonic()
    try:
        lease = manager.acquire_proxy(pool_name)
    finally:
        restart.join()
    assert lease is not None
    assert time.monotonic() - started >= 1.0


def test_an_acquire_while_the_server_stays_down_raises_a_storage_error_naming_it(
    cluster: Cluster, request: pytest.FixtureRequest
) -> None:
    storage = SqlStorage(cluster.url, retry_seconds=0.5)
    storage.create_schema()
    cluster.stop()
    try:
        with pytest.raises(
            StorageError, match=f"cannot reach the database at 127.0.0.1:{cluster.port}"
        ):
            ProxyManager(storage).acquire_proxy(request.node.name)
    finally:
        cluster.start()
        storage.close()
