"""A real two-node Ray cluster on one Linux machine, kept on loopback, for tests and benchmarks.

The loopback recipe: the head is `ray start --head --node-ip-address=127.0.0.2`, the
second node `ray start --address=127.0.0.2:PORT --node-ip-address=127.0.0.3`; Ray rewrites only 127.0.0.1 /
localhost to the machine's network address, so both nodes and their traffic stay on loopback. Each node:

- is a separate `ray start --block` process in a session of its own, so the node is exactly the processes
  of that session (GCS, raylet, agents, and the raylet's workers, which leave the process group but keep the
  session) and is stopped or killed by their process ids, plus anything naming the node's own `--temp-dir`;
  never by process name. `ray stop` is never used: it stops every Ray process of the user on the machine,
  other people's test runtimes included;
- has its own short temp dir (`/tmp/rN-xxxx`: Ray's unix socket paths must stay under ~107 characters), its
  own custom resource (`node_a` on the head, `node_b` on the second node), few CPUs, a small object store,
  and free ports for everything that would otherwise take a fixed default (GCS 6379, dashboard 8265,
  dashboard agent 52365) and collide with another runtime on the machine.

Authentication: token mode (`RAY_AUTH_MODE=token`), with a random token made per cluster and passed in the
environment (`RAY_AUTH_TOKEN`) to the nodes and to every driver (`cluster.env()`). It exercises the same
authenticated path as the real clusters (`cluster/README.md`), touches no `~/.ray/auth_token`, and keeps
other local processes on this shared machine out of the cluster, which loopback alone would not
(`RAY_AUTH_MODE=disabled` would let any local process submit work to it).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HEAD_IP = "127.0.0.2"
WORKER_IP = "127.0.0.3"
STARTED = "Ray runtime started"


class NodeStartError(RuntimeError):
    """`ray start` could not bring a node up; the message carries the tail of its output."""


def free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def ray_cli() -> str:
    exe = Path(sys.executable).with_name("ray")
    return str(exe) if exe.exists() else (shutil.which("ray") or "ray")


def _pids_using(marker: str) -> list[int]:
    """Processes whose command line contains `marker` (a node's unique temp dir)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            out.append(int(d.name))
    return out


def _session_pids(sid: int) -> list[int]:
    """Processes of session `sid`. A node's `ray start` leads a session of its own (start_new_session), and
    everything it starts stays in it: GCS, raylet, agents, and the raylet's workers, which do move to a
    process group of their own (so a process-group kill would miss them) but keep the session."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid:
            out.append(int(d.name))
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by init) is not running anything
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


@dataclass
class RayNode:
    name: str
    ip: str
    temp_dir: str
    log_path: str
    proc: subprocess.Popen | None = None
    pgid: int | None = None
    stopped: bool = False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def _signal_all(self, sig: int) -> None:
        for pid in self._strays():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def kill(self, sig: int = signal.SIGKILL, grace: float = 0.0) -> None:
        """Signal every process of the node (its session, and anything else running from its temp dir);
        with `grace`, wait that long for a graceful exit, then SIGKILL what is left."""
        self._signal_all(sig)
        deadline = time.time() + grace
        while grace and time.time() < deadline and self._strays():
            time.sleep(0.2)
        self._signal_all(signal.SIGKILL)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.stopped = True

    def _strays(self) -> list[int]:
        """Live (non-zombie) processes of this node: its session, plus any process naming its temp dir."""
        pids = set(_pids_using(self.temp_dir))
        if self.pgid is not None:
            pids.update(_session_pids(self.pgid))
        pids.discard(os.getpid())
        return sorted(p for p in pids if _alive(p))


@dataclass
class LocalCluster:
    """Head on 127.0.0.2 (+ `node_a`), second node on 127.0.0.3 (+ `node_b`); see the module docstring."""

    head_cpus: int = 1
    worker_cpus: int = 1
    object_store_bytes: int = 200 * 1024 * 1024
    start_timeout: float = 180.0
    extra_env: dict[str, str] = field(default_factory=dict)
    token: str = field(default_factory=lambda: secrets.token_hex(24))
    port: int = 0
    head: RayNode | None = None
    worker: RayNode | None = None
    _log_dir: str = ""

    @property
    def address(self) -> str:
        return f"{HEAD_IP}:{self.port}"

    def env(self, **more: str) -> dict[str, str]:
        """Environment for any process that joins the cluster (nodes, drivers)."""
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
        env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token, "RAY_USAGE_STATS_ENABLED": "0",
                    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0"})
        env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # "0" forbids a second node
        env.update(self.extra_env)
        env.update(more)
        return env

    def start(self, cwd: str | None = None) -> "LocalCluster":
        self._log_dir = tempfile.mkdtemp(prefix="rN-log-")
        self.port = free_port(HEAD_IP)
        try:
            self.head = self._start_node("head", HEAD_IP, self.head_cpus, {"node_a": 1}, cwd,
                                         ["--head", f"--port={self.port}", "--include-dashboard=false",
                                          f"--dashboard-port={free_port(HEAD_IP)}"])
            self.worker = self._start_node("worker", WORKER_IP, self.worker_cpus, {"node_b": 1}, cwd,
                                           [f"--address={self.address}"])
        except BaseException:
            self.stop()
            raise
        return self

    def _start_node(self, name: str, ip: str, cpus: int, resources: dict[str, int], cwd: str | None,
                    args: list[str]) -> RayNode:
        import json

        # Short: Ray puts unix sockets under <temp dir>/session_<date>_<pid>/sockets/ (107-byte limit).
        temp_dir = tempfile.mkdtemp(prefix="rN-", dir="/tmp")
        node = RayNode(name, ip, temp_dir, os.path.join(self._log_dir, f"{name}.log"))
        cmd = [ray_cli(), "start", "--block", f"--node-ip-address={ip}", f"--num-cpus={cpus}", "--num-gpus=0",
               f"--resources={json.dumps(resources)}", f"--temp-dir={temp_dir}",
               f"--object-store-memory={self.object_store_bytes}", "--disable-usage-stats",
               f"--dashboard-agent-listen-port={free_port(ip)}", *args]
        with open(node.log_path, "wb") as log:
            node.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self.env(), cwd=cwd, start_new_session=True)
        node.pgid = node.proc.pid  # start_new_session: it leads its own session (and process group)
        setattr(self, name, node)  # registered before waiting, so stop() cleans up a node that hangs
        deadline = time.time() + self.start_timeout
        while time.time() < deadline:
            if STARTED in Path(node.log_path).read_text(errors="replace"):
                return node
            if node.proc.poll() is not None:
                raise NodeStartError(f"`ray start` for the {name} node exited with {node.proc.returncode}:\n"
                                     f"{node.log_tail()}")
            time.sleep(0.5)
        raise NodeStartError(f"the {name} node did not start within {self.start_timeout:.0f} s:\n{node.log_tail()}")

    def kill_worker(self) -> None:
        """Lose the second node at once: SIGKILL to all its processes (raylet, agents, trial workers)."""
        assert self.worker is not None
        self.worker.kill(signal.SIGKILL)

    def stop(self) -> list[int]:
        """Stop both nodes (second node first) by process group and temp dir; remove their temp dirs.
        Returns the pids that were still running from a node's temp dir afterwards (expected: none)."""
        survivors: list[int] = []
        for node in (self.worker, self.head):
            if node is None:
                continue
            if not node.stopped:
                node.kill(signal.SIGTERM, grace=10.0)
            deadline = time.time() + 5  # SIGKILLed processes take a moment to go
            while node._strays() and time.time() < deadline:
                time.sleep(0.2)
            survivors += node._strays()
            shutil.rmtree(node.temp_dir, ignore_errors=True)
        if self._log_dir:
            shutil.rmtree(self._log_dir, ignore_errors=True)
        return survivors

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
