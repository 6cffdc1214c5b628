"""A real `mlflow server` for tests: on 127.0.0.1 and a free port, in its own process group, ready once `/health`
answers (the MLflow 3 server can take ~20-30 s on a loaded 2-core machine), stopped by its process group."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.cluster.ray_nodes import free_port


def _stop(server: subprocess.Popen) -> None:
    """SIGTERM to the group, then SIGKILL to what is left of it (its job consumers outlive the leader)."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        try:
            server.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            pass


@contextlib.contextmanager
def mlflow_server(backend_store_uri: str, workdir: Path, timeout: float = 180.0) -> Iterator[str]:
    """Serve `backend_store_uri` (artifacts under `workdir`); yields the server's URL. Its log is
    `workdir/server.log`, quoted when it does not come up."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port("127.0.0.1")
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    log_path = workdir / "server.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", backend_store_uri, "--artifacts-destination", str(workdir / "server-artifacts")],
            cwd=workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + timeout
            while True:
                try:
                    with urllib.request.urlopen(url + "/health", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                assert server.poll() is None and time.time() < deadline, log_path.read_text()
                time.sleep(0.5)
            yield url
        finally:
            _stop(server)
