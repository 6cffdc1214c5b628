"""The Ray runtime a sweep runs on: address check, connection, whether a trial fits, and `--gpus-per-trial auto`.

Ray is imported inside the functions that need it, so the address check of planning stays Ray-free.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

from sweeps.errors import SweepError
from sweeps.options import SweepOptions, split_list
from tinymem.errors import TinyMemError

GPU_PROBE_TIMEOUT_S = 300.0  # how long `--gpus-per-trial auto` waits for a cluster GPU to report its memory


def check_ray_address(address: str, timeout: float = 3.0) -> None:
    """An unreachable cluster fails here, in seconds, instead of after Ray's own long connection retries."""
    if address in ("auto", "local"):
        return
    parsed = urlparse(address if "://" in address else f"ray://{address}")
    host, port = parsed.hostname, parsed.port
    if not host or not port:
        raise SweepError(f"bad --address {address!r}: expected HOST:PORT (the head's GCS port, e.g. 10.0.0.1:6379), "
                         f"ray://HOST:PORT, or auto")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        raise SweepError(f"Ray cluster at --address {address} is unreachable ({e.strerror or e}); "
                         f"start it with `ray start --head` (see cluster/) or omit --address for a local run"
                         ) from None


def connect_ray(address: str | None, *, num_cpus: int | None = None, num_gpus: int | None = None) -> bool:
    """Connect to `address`, or start a local runtime on 127.0.0.1. Returns True if this call started or
    joined Ray (and the caller should shut it down), False if Ray was already initialised (tests, notebooks)."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no phoning home from a sweep
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    if address:
        ray.init(address=address, **kwargs)
    else:
        # A single-node runtime bound to loopback: nothing listens on the network.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, **kwargs)
    return True


def check_trial_fits(o: SweepOptions, say: Callable[[str], None]) -> None:
    """A trial that no node can hold would stay PENDING forever: say so before any trial starts.

    On the local runtime that is an error; on a cluster it is a warning, since an autoscaler may add nodes.
    """
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if any(r.get("CPU", 0) >= o.cpus_per_trial and r.get("GPU", 0) >= o.gpus_per_trial for r in nodes):
        return
    have = [{"CPU": r.get("CPU", 0), "GPU": r.get("GPU", 0)} for r in nodes]
    msg = (f"no Ray node can hold one trial (--cpus-per-trial {o.cpus_per_trial}, --gpus-per-trial "
           f"{o.gpus_per_trial}); nodes have {have}")
    if not o.address:
        raise SweepError(msg)
    say(f"warning: {msg}; trials wait until the cluster grows")


def _gpu_memory_gib() -> float:
    """Ray task body: total memory (GiB) of the GPU Ray gave this task."""
    import torch

    return torch.cuda.get_device_properties(0).total_memory / 2**30


def cluster_gpu_memory_gib() -> float | None:
    """Memory of one of the cluster's GPUs, reported by a one-GPU Ray task; None when the cluster has no GPU."""
    import ray

    if not ray.cluster_resources().get("GPU", 0):
        return None
    ref = ray.remote(_gpu_memory_gib).options(num_cpus=0, num_gpus=1, name="tinymem-gpu-probe").remote()
    try:
        return float(ray.get(ref, timeout=GPU_PROBE_TIMEOUT_S))
    except ray.exceptions.GetTimeoutError:
        ray.cancel(ref, force=True)
        raise SweepError(f"--gpus-per-trial auto: no GPU of the cluster was free for {GPU_PROBE_TIMEOUT_S:.0f} s to "
                         "report its memory; give --gpus-per-trial N") from None


def auto_gpus_per_trial(opts: SweepOptions, gpu_mem_gib: float | None) -> float:
    """`--gpus-per-trial auto` for a Hugging Face model: the largest `tinymem.hf.memory.gpus_for_source` of the swept
    methods on GPUs of `gpu_mem_gib`; 0 (CPU trials) when there is no GPU or --device cpu."""
    from tinymem.hf.memory import gpus_for_source
    from tinymem.memfile import resolve_metric

    if gpu_mem_gib is None or opts.device == "cpu":
        return 0.0
    s = opts.source
    seq_len = resolve_metric(s.metric_preset, s.prompt_len, s.k, s.seq_len).seq_len
    try:
        return max(gpus_for_source(str(s.model), m, gpu_mem_gib, s.dtype or "float32", seq_len)
                   for m in split_list(opts.method))
    except TinyMemError as e:
        raise SweepError(f"--gpus-per-trial auto: {e}") from None


def resolve_auto_gpus(o: SweepOptions, say: Callable[[str], None]) -> None:
    """Replace `auto` in --gpus-per-trial by a number, in place (what the sweep record then keeps)."""
    memory = cluster_gpu_memory_gib() if o.device != "cpu" else None
    o.gpus_per_trial = auto_gpus_per_trial(o, memory)
    where = f"GPUs of {memory:.0f} GiB" if memory is not None else "no GPU in the Ray cluster: trials run on CPU"
    say(f"--gpus-per-trial auto: {o.gpus_per_trial:g} ({where})")
