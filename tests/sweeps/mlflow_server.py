"""A real `mlflow server` for tests: on 127.0.0.1 and a free port, in its own process group, ready once `/health`
answers (the MLflow 3 server can take ~20-30 s on a loaded 2-core machine), stopped by its process group.

`with MlflowServer(uri, workdir) as server:` starts it; `server.wait_ready()` waits for it, so a test can do
other work (run a sweep) while it starts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.cluster.ray_nodes import free_port


class MlflowServer:
    """`mlflow server` on `backend_store_uri`, artifacts and log (`server.log`) under `workdir`."""

    def __init__(self, backend_store_uri: str, workdir: Path):
        self.backend_store_uri = backend_store_uri
        self.workdir = workdir
        self.url = f"http://127.0.0.1:{free_port('127.0.0.1')}"
        self.log_path = workdir / "server.log"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "MlflowServer":
        self.start()
        return self

    def start(self) -> None:
        """Start the server (again, after `stop`: same port, same backend store, the log appended)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        mlflow_bin = Path(sys.executable).with_name("mlflow")
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(
                [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", self.url.rsplit(":", 1)[1],
                 "--workers", "1", "--backend-store-uri", self.backend_store_uri,
                 "--artifacts-destination", str(self.workdir / "server-artifacts")],
                cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                # No job runner (MLflow 3's huey consumer, for GenAI jobs no test uses): one process less to
                # start, ~2.5 s of each (re)start on 2 cores.
                env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})

    def wait_ready(self, timeout: float = 180.0) -> str:
        """The server's URL, once `/health` answers; its log if it exits or does not come up in time."""
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return self.url
            except OSError:
                pass
            assert self.proc.poll() is None and time.time() < deadline, self.log_path.read_text()
            time.sleep(0.5)

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, crash: bool = False) -> None:
        """SIGTERM to the group, then SIGKILL to what is left of it (a worker can outlive the leader);
        `crash`: SIGKILL at once, the server gone in an instant."""
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10))[crash:]:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                pass
