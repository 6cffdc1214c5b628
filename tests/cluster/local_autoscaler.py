"""A local autoscaling Ray cluster started from cluster/local-autoscaling.yaml the documented way, for tests.

The head is the `ray start --head ... --autoscaling-config=...` line of cluster/README.md ("Try a cluster
config locally"), with the README's environment (`RAY_FAKE_CLUSTER=1 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
RAY_AUTH_MODE=token`), started by `tests/cluster/ray_nodes.py`'s recipe: a session of its own, its own short
temp dir, free ports, a random auth token, stopped by session and temp dir, never by name. Its autoscaler
(`monitor.py`, a child of the head) starts the worker nodes inside its own process tree, in the head's temp
dir, so the same stop reaches them. Only two things differ from the README: the test runs on a copy of the
config whose `provider.gcs_address` names the head's free port instead of 6379, and whose idle timeout
may be shorter.

`python -m tests.cluster.local_autoscaler ADDRESS` is a node-table watcher: a driver that prints Ray's node
table (`ray.nodes()`) as one JSON line per second, so a test can follow nodes joining and leaving while a
sweep runs without joining the cluster itself.

`listening_sockets(pids)` lists the TCP sockets those processes listen on (the `ss -ltnp` view, from /proc).
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.cluster.ray_nodes import LocalCluster, free_port

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "cluster" / "local-autoscaling.yaml"
# The environment cluster/README.md exports for the head and the driver (RAY_AUTH_MODE=token: LocalCluster).
README_ENV = {"RAY_FAKE_CLUSTER": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def head_ip(config: dict) -> str:
    """The head's address: the host of the config's `provider.gcs_address` (the README's --node-ip-address)."""
    return config["provider"]["gcs_address"].rsplit(":", 1)[0]


def config_copy(path: Path, port: int, idle_timeout_minutes: float | None = None) -> dict:
    """Write cluster/local-autoscaling.yaml to `path` with the head's GCS port (and an idle timeout); return it."""
    config = yaml.safe_load(CONFIG.read_text())
    config["provider"]["gcs_address"] = f"{head_ip(config)}:{port}"
    if idle_timeout_minutes is not None:
        config["idle_timeout_minutes"] = idle_timeout_minutes
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return config


@dataclass
class AutoscalingCluster(LocalCluster):
    """A head on the config's address (127.0.0.1) running Ray's autoscaler on a copy of
    cluster/local-autoscaling.yaml; no worker nodes until the autoscaler starts them."""

    idle_timeout_minutes: float | None = None
    extra_env: dict[str, str] = field(default_factory=lambda: dict(README_ENV))
    config: dict = field(default_factory=dict)

    @property
    def address(self) -> str:
        return self.config["provider"]["gcs_address"]

    def start(self, cwd: str | None = None) -> "AutoscalingCluster":
        """The README's head line; beside it only what isolates a test run (LocalCluster's temp dir, free
        ports, small object store, no usage stats) and the config copy."""
        self._log_dir = tempfile.mkdtemp(prefix="rN-log-")
        ip = head_ip(yaml.safe_load(CONFIG.read_text()))
        self.port = free_port(ip)
        config_path = Path(self._log_dir) / "local-autoscaling.yaml"
        self.config = config_copy(config_path, self.port, self.idle_timeout_minutes)
        # --num-cpus / --num-gpus=0 as the head's node type declares (tests/cluster/test_configs.py checks it)
        head = self.config["available_node_types"][self.config["head_node_type"]]["resources"]
        try:
            self._start_node("head", ip, head.get("CPU", 0), {}, cwd,
                             ["--head", f"--port={self.port}", "--include-dashboard=false",
                              f"--dashboard-port={free_port(ip)}", f"--autoscaling-config={config_path}"])
        except BaseException:
            self.stop()
            raise
        return self

    def pids(self) -> list[int]:
        """Every live process of the cluster: the head's session and anything running from its temp dir
        (the autoscaler's worker nodes and their trial workers included)."""
        return self.head._strays() if self.head is not None else []


@dataclass
class NodeWatcher:
    """Follows Ray's node table from a separate driver process (`python -m tests.cluster.local_autoscaler`)."""

    cluster: LocalCluster
    out_path: Path
    proc: subprocess.Popen | None = None
    _read: int = 0
    _partial: str = ""

    def start(self) -> "NodeWatcher":
        with open(self.out_path, "wb") as out, open(self.out_path.with_suffix(".err"), "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "tests.cluster.local_autoscaler", self.cluster.address],
                                         cwd=REPO, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                         env=self.cluster.env(PYTHONPATH=str(REPO)))
        return self

    def snapshots(self) -> list[dict]:
        """The node tables printed since the last call, oldest first: {"t": unix time, "nodes": [...]}.
        A watcher that died is an error (else a test would read "no nodes")."""
        if self.proc is not None and self.proc.poll() is not None:
            tail = self.out_path.with_suffix(".err").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the node watcher exited with {self.proc.returncode}:\n{tail}")
        with open(self.out_path, encoding="utf-8") as f:
            f.seek(self._read)
            text = f.read()
            self._read = f.tell()
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()  # an unfinished last line is read again next time
        return [json.loads(line) for line in lines if line.strip()]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def _hex_ip(text: str) -> str:
    """An address of /proc/net/tcp(6): little-endian 32-bit words in hex."""
    raw = bytes.fromhex(text)
    packed = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(packed)
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)


def listening_sockets(pids: list[int]) -> list[dict]:
    """TCP sockets in LISTEN state owned by `pids`: {pid, name, ip, port}, as `ss -ltnp` shows them."""
    owner: dict[str, int] = {}
    for pid in pids:
        try:
            for fd in os.scandir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(fd.path)
                except OSError:
                    continue
                if target.startswith("socket:["):
                    owner[target[8:-1]] = pid
        except OSError:  # the process is gone
            continue
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] != "0A" or cols[9] not in owner:  # 0A: LISTEN
                continue
            addr, port = cols[1].split(":")
            pid = owner[cols[9]]
            try:
                name = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                name = "?"
            found.append({"pid": pid, "name": name, "ip": _hex_ip(addr), "port": int(port, 16)})
    return found


def _watch(address: str, interval: float = 1.0) -> None:
    import ray

    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    while True:
        nodes = [{"id": n["NodeID"], "ip": n["NodeManagerAddress"], "alive": bool(n["Alive"]),
                  "resources": n.get("Resources", {}), "labels": n.get("Labels", {})} for n in ray.nodes()]
        print(json.dumps({"t": time.time(), "nodes": nodes}), flush=True)
        time.sleep(interval)


if __name__ == "__main__":
    _watch(sys.argv[1])
