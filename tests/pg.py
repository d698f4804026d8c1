"""A throwaway PostgreSQL cluster on loopback for the scale-out and fault tests.

`postgres` (session fixture) finds Debian's PostgreSQL binaries (PATH, then
/usr/lib/postgresql/<version>/bin), installs `postgresql` with apt-get when they are missing
(CI runs on a fresh machine, as root), then `initdb`s a cluster in a temporary directory owned
by the `postgres` user (initdb refuses root), starts it listening only on 127.0.0.1 on a free
port with its unix socket in the same directory, trust auth, and stops and removes it at the end
of the session. It never skips: a PostgreSQL that cannot be installed or started fails the test
with the reason. `pg_url` gives each test its own fresh database.

Import both fixtures into a test module: `from pg import pg_url, postgres  # noqa: F401`.
"""

from __future__ import annotations

import atexit
import fcntl
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_bin_dir() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres (the newest installed version)."""
    found = shutil.which("initdb")
    if found:
        real = Path(found).resolve().parent
        if (real / "pg_ctl").exists():
            return real
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0)
    return Path(versions[-1]).parent if versions else None


def apt_install(package: str, find, give_up):
    """`find()`, after installing Debian's `package` with apt-get when it finds nothing (CI runs on a
    fresh machine, as root). One apt-get at a time across pytest's xdist workers (dpkg's lock would
    fail the second), and a worker that waited looks again first. `give_up(reason)` (pytest.fail or
    pytest.skip) when it is missing and cannot be installed."""
    apt = f"apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {package}"
    found = find()
    if found is not None:
        return found
    if os.geteuid() != 0:
        give_up(f"{package} is not installed and we are not root to install it; run: sudo sh -c '{apt}'")
    with open(Path(tempfile.gettempdir()) / "alignbench-apt.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = find()
        if found is not None:
            return found
        out = subprocess.run(["sh", "-c", apt], capture_output=True, text=True, timeout=1200)
    found = find()
    if out.returncode != 0 or found is None:
        give_up(f"could not install {package} with `{apt}` (exit {out.returncode}): "
                f"{(out.stderr or out.stdout).strip()[-1500:]}")
    return found


def ensure_installed() -> Path:
    return apt_install("postgresql", find_bin_dir, pytest.fail)


class Cluster:
    """One PostgreSQL server on 127.0.0.1:<port>; trust auth; superuser `postgres`."""

    def __init__(self, bin_dir: Path):
        self.bin_dir = bin_dir
        self.as_root = os.geteuid() == 0
        self.root = Path(tempfile.mkdtemp(prefix="alignbench-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.running = False
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
        self.user = "postgres"

    def _run(self, *args, timeout=120):
        cmd = [str(self.bin_dir / args[0]), *map(str, args[1:])]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed (exit {out.returncode}): {(out.stderr or out.stdout).strip()[-2000:]}")
        return out

    def start(self) -> Cluster:
        self._run("initdb", "-D", self.data, "-U", self.user, "--auth=trust", "--encoding=UTF8", "--no-locale",
                  "--no-sync", timeout=300)
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off "
                f"-c synchronous_commit=off -c full_page_writes=off -c max_connections=100 -c shared_buffers=32MB")
        self._run("pg_ctl", "-D", self.data, "-l", self.root / "server.log", "-o", opts, "-w", "-t", "120", "start",
                  timeout=180)
        self.running = True
        deadline = time.time() + 60
        while True:
            try:
                self.connect("postgres").close()
                return self
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(0.5)

    def connect(self, db: str):
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user, dbname=db, connect_timeout=10)
        conn.autocommit = True
        return conn

    def create_database(self, name: str | None = None) -> str:
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        conn = self.connect("postgres")
        try:
            conn.cursor().execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return name

    def url(self, db: str) -> str:
        # SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3; name the driver that is installed.
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        if self.running:
            self.running = False
            try:
                self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop", timeout=60)
            except Exception:
                pass
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, n: int = 3000) -> str:
        try:
            return (self.root / "server.log").read_text()[-n:]
        except OSError:
            return ""


_CLUSTER: Cluster | None = None


@pytest.fixture(scope="session")
def postgres(request):
    """The session's PostgreSQL cluster (started once even when several modules import this fixture)."""
    global _CLUSTER
    if _CLUSTER is None or not _CLUSTER.running:
        cluster = Cluster(ensure_installed())
        try:
            cluster.start()
        except Exception as exc:
            log = cluster.log_tail()
            cluster.stop()
            pytest.fail(f"could not start PostgreSQL: {exc}\n{log}")
        _CLUSTER = cluster
        atexit.register(cluster.stop)
    request.addfinalizer(_CLUSTER.stop)
    return _CLUSTER


@pytest.fixture
def pg_url(postgres) -> str:
    """A fresh, empty database on the session's cluster: `postgresql+psycopg2://postgres@127.0.0.1:PORT/t_...`."""
    return postgres.url(postgres.create_database())


class MlflowServer:
    """`mlflow server` on 127.0.0.1:<port> with a PostgreSQL backend store and a local artifact root."""

    def __init__(self, cluster: Cluster, root: Path):
        self.cluster, self.root = cluster, Path(root)
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.backend = cluster.url(cluster.create_database())
        self.artifacts = self.root / "mlartifacts"
        self.proc = None

    def command(self) -> list[str]:
        import sys

        exe = Path(sys.executable).with_name("mlflow")
        return [str(exe), "server", "--host", "127.0.0.1", "--port", str(self.port),
                "--backend-store-uri", self.backend, "--artifacts-destination", str(self.artifacts), "--workers", "1"]

    def start(self, timeout: float = 240) -> MlflowServer:
        import urllib.request

        self.log = open(self.root / "mlflow-server.log", "wb")
        self.proc = subprocess.Popen(self.command(), stdout=self.log, stderr=subprocess.STDOUT, cwd=self.root,
                                     start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited {self.proc.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=5) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(1)
        raise RuntimeError(f"mlflow server not healthy after {timeout}s: {self.log_tail()}")

    def stop(self) -> None:
        import signal

        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: the server and its workers
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()

    def log_tail(self, n: int = 3000) -> str:
        try:
            return (self.root / "mlflow-server.log").read_text(errors="replace")[-n:]
        except OSError:
            return ""


_SERVER: MlflowServer | None = None


@pytest.fixture(scope="session")
def mlflow_server(postgres, request):
    """The session's MLflow tracking server on loopback, backed by its own database of `postgres`."""
    global _SERVER
    if _SERVER is None or _SERVER.proc is None or _SERVER.proc.poll() is not None:
        server = MlflowServer(postgres, tempfile.mkdtemp(prefix="alignbench-mlflow-"))
        try:
            server.start()
        except Exception as exc:
            server.stop()
            pytest.fail(f"could not start the MLflow server: {exc}")
        _SERVER = server
        atexit.register(server.stop)

    def stop():
        _SERVER.stop()
        shutil.rmtree(_SERVER.root, ignore_errors=True)
    request.addfinalizer(stop)
    return _SERVER
