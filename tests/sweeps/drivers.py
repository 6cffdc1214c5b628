"""A real sweep driver for tests: `python sweeps/run.py ... --json` in its own process group, with a private Ray
temp dir and a marker in its environment, so that it and everything it starts (its Ray runtime, its MLflow
writer) are stopped by process group and by that marker, never by name."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow import MlflowClient

from sweeps import tags as T
from tests.sweeps.conftest import REPO

def launcher(script: str) -> str:
    """`python -c` code that runs `script` (sweeps/run.py, sweeps/report.py) with its arguments, with the
    test-only `sweep_probe` method registered first (a sweep's trials import it too; its record names it)."""
    return (f"import runpy, sys; import tests.sweeps.probe_method; sys.argv = [{script!r}, *sys.argv[1:]]; "
            f"runpy.run_path({script!r}, run_name='__main__')")


LAUNCH = launcher("sweeps/run.py")
# A sweep_probe space whose trials take long enough to be caught in the middle (>= 2 x 0.6 s each).
PROBE_SPACE = """
method: sweep_probe
description: test space of real drivers (each trial takes at least 2 x 0.6 s)
params:
  ratio: {type: float, low: 0.0, high: 0.5}
fixed: {epochs: 2, sleep: 0.6}
"""
MARK = "TINYMEM_CRASH_TEST_ID"  # in the environment of every process a test's driver starts (Ray's included)

class Driver:
    """A `sweeps/run.py` process in its own process group, with a private Ray temp dir and a marker."""

    def __init__(self, args: list[str], log: Path, extra_env: dict[str, str] | None = None):
        self.mark = uuid.uuid4().hex
        # Short: Ray's socket paths under it must stay below the 107-character limit of Unix sockets.
        self.ray_tmp = tempfile.mkdtemp(prefix="tmc-", dir="/tmp")
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update({MARK: self.mark, "RAY_TMPDIR": self.ray_tmp, **(extra_env or {})})
        self.log_path = log
        self.log = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-c", LAUNCH, *args, "--json"], cwd=REPO, env=env,
                                     stdout=subprocess.PIPE, stderr=self.log, start_new_session=True, text=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self) -> str:
        return self.log_path.read_text()[-3000:]

    def kill(self) -> None:
        """SIGKILL the group, then whatever the driver's Ray runtime left outside it (raylet, GCS, workers)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=60)
        self.cleanup()

    def finish(self, timeout: float, status: int = 0) -> dict:
        """Wait for its exit with `status`; the JSON object it printed (none for a nonzero status)."""
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"driver did not finish in {timeout} s:\n{self.tail()}")
        self.cleanup()
        assert self.proc.returncode == status, self.tail()
        return json.loads(out) if status == 0 else {}

    def cleanup(self) -> None:
        for pid in marked_pids(self.mark):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.time() + 30
        while marked_pids(self.mark) and time.time() < deadline:
            time.sleep(0.2)
        self.log.close()
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


def marked_pids(mark: str) -> list[int]:
    """Live processes whose environment holds this driver's marker (only ours: other users' are unreadable)."""
    needle = f"{MARK}={mark}".encode()
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            if needle in (d / "environ").read_bytes().split(b"\0"):
                stat = (d / "stat").read_text()
                if stat.rsplit(")", 1)[1].split()[0] != "Z":  # a zombie waits for its parent, not for us
                    pids.append(int(d.name))
        except OSError:  # gone meanwhile, or not ours
            continue
    return pids


def children(client: MlflowClient, experiment: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get(T.ROLE) != "sweep"]


def wait_for(what: str, check: Callable[[], bool], driver: Driver, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        assert driver.alive(), f"driver exited before {what}:\n{driver.tail()}"
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}:\n{driver.tail()}")
