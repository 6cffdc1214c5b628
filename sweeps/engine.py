"""The sweep engine: a Ray Tune experiment around `tinymem.trial.run_trial`.

Order of work (every check that can fail on bad input runs before any Ray or MLflow side effect that costs
time, and before any trial):

1. `plan_sweep`: methods, presets (or a Hugging Face `--model hf:...` with its memorized-sequence files),
   search spaces, flags, tracking URI and cluster address are validated.
2. `connect_ray`: join `--address` or start a local runtime bound to 127.0.0.1 (or reuse one already up);
   `--gpus-per-trial auto` is sized from the model and a GPU of the cluster (`resolve_auto_gpus`).
3. `prepare_bases`: each base model is made once, as a Ray task (on a cluster it runs on a worker; several
   presets train in parallel), and evaluated once; trials then only load it from the store. A Hugging Face
   model is never trained or stored: it is loaded and its base evaluation cached.
4. MLflow: the experiment and the sweep's parent run (see `sweeps.tracking`).
5. Ray Tune: function trainable `sweep_trainable` (one `run_trial` per trial, per-epoch reports for ASHA),
   `ParetoOptunaSearch` with two objectives (nothing in TuneConfig's metric/mode: that would silently turn
   the study single-objective) or the paper's grid, per-trial resources, `reuse_actors`, `FailureConfig`
   retries, storage under the root so `--resume` restores with `Tuner.restore`.
6. `sweeps.report`: trials read back from MLflow, Pareto front, CSV, PNG, tags.

A trial that raises a `TinyMemError` or produces NaN objectives is recorded as failed with its reason and
not retried (it would fail the same way); any other exception is retried `max_failures` times (a lost node,
an OOM under GPU packing) and then recorded as failed.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import re
import json
import socket
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ray.tune import Callback
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from sweeps import storage
from sweeps.errors import SweepError
from sweeps.pareto import MEM, task_kind, utility_loss, utility_loss_name
from sweeps.space import SearchSpace, SweepSpace
from sweeps.space_file import default_space_path, load_search_space, parse_search_space
from sweeps.tracking import (RunIdMap, TrialLogger, check_tracking_uri, default_tracking_uri, ensure_experiment,
                             log_metrics, log_params, mlflow_client, set_tags)
from tinymem.cli_hf import reject_source_options, source_config
from tinymem.errors import ConfigError, TinyMemError
from tinymem.hf.models import parse_dtype, parse_source
from tinymem.hf.options import HF_PREFIX, HFSourceOptions, is_hf_source
from tinymem.mitigations import get_method, method_names
from tinymem.presets import DEFAULT_PRESET, all_presets, get_preset

SAMPLERS = ("tpe", "nsga2", "random")
SCHEDULERS = ("none", "asha")
GRIDS = ("paper",)
DEFAULT_STORAGE = "./tinymem-runs"
# Sized so that `python sweeps/run.py --method balanced_subnet` finishes within 15 minutes on a 2-core CPU,
# including the first training of math-demo (see README / the report of issue 6 for the measurement).
DEFAULT_NUM_SAMPLES = 12
ASHA_GUARD = "retain_loss"  # what iterative methods report per epoch and rises when an edit breaks the model
SWEEP_RECORD = "sweep.json"
AUTO = "auto"  # --gpus-per-trial auto: sized from a Hugging Face model (tinymem.hf.memory.gpus_for_source)
GPU_PROBE_TIMEOUT_S = 300.0  # how long `--gpus-per-trial auto` waits for a cluster GPU to report its memory

log = logging.getLogger("sweeps")


# --- options and plan ---------------------------------------------------------------------------------------

@dataclass
class SweepOptions:
    """Everything `sweeps/run.py` accepts; defaults are the CLI's."""

    method: str = ""
    preset: str | None = None  # None: DEFAULT_PRESET, unless `model` names the base model
    num_samples: int | None = None  # None: DEFAULT_NUM_SAMPLES, or the whole grid with --grid
    max_concurrent: int | None = None  # None: as many as the resources allow
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | str | None = None  # None: "auto" with `model`, else 0; run_sweep resolves "auto"
    sampler: str = "tpe"
    grid: str | None = None
    scheduler: str = "none"
    address: str | None = None
    storage: str = DEFAULT_STORAGE
    tracking_uri: str | None = None
    experiment: str | None = None
    resume: str | None = None  # "latest" or a sweep id
    seed: int = 0
    search_space: str | None = None
    max_failures: int = 1
    device: str = "auto"
    command: str = ""
    warm_start: bool = True  # evaluate each method's default hyperparameters first (Optuna samplers only)
    # A Hugging Face base model instead of a preset, and its options (`tinymem mitigate --model hf:...`; the
    # names are tinymem.cli_hf.SOURCE_OPTIONS, the trial-config keys of tinymem.hf.HF_TRIAL_KEYS).
    model: str | None = None  # hf:NAME_OR_PATH[@REVISION]
    dtype: str | None = None
    forget_file: str | None = None
    retain_file: str | None = None
    test_file: str | None = None
    metric_preset: str | None = None
    prompt_len: int | None = None
    k: int | None = None
    seq_len: int | None = None


@dataclass
class SweepPlan:
    """A validated sweep, ready to run (new or resumed)."""

    options: SweepOptions
    space: SweepSpace
    experiment: str
    sweep_id: str
    storage: str
    tracking_uri: str
    kinds: dict[str, str]
    resumed: bool = False
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return next(iter(self.kinds.values()))

    @property
    def loss_name(self) -> str:
        return utility_loss_name(self.kind)

    @property
    def objectives(self) -> list[str]:
        return [MEM, self.loss_name]

    @property
    def sweep_dir(self) -> str:
        return storage.join(self.storage, "sweeps", self.experiment, self.sweep_id)

    @property
    def ray_parent(self) -> str:
        return storage.join(self.storage, "ray", self.experiment)

    @property
    def ray_path(self) -> str:
        return storage.join(self.ray_parent, self.sweep_id)


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise SweepError(f"unknown {name} {value!r}; allowed: {list(allowed)}")


def plan_sweep(opts: SweepOptions) -> SweepPlan:
    """Validate everything that can be checked without starting Ray; raise SweepError on bad input."""
    storage_root = storage.normalize_root(opts.storage or DEFAULT_STORAGE)
    storage.check_root(storage_root)
    if opts.resume:
        return _plan_resume(opts, storage_root)
    methods = _split(opts.method)
    if not methods:
        raise SweepError(f"--method is required; allowed: {method_names()}")
    for m in methods:
        if m not in method_names():
            raise SweepError(f"unknown method {m!r}; allowed: {method_names()}")
    if len(set(methods)) != len(methods):
        raise SweepError(f"--method lists a method twice: {methods}")
    if opts.model:
        opts, label = _plan_model(opts, methods)
        presets = [str(opts.model)]  # the base model is the sweep's one "preset" (MLflow param `preset`)
        kinds = {presets[0]: task_kind("verbatim")}
    else:
        try:
            reject_source_options(opts, None)  # hf-only options given without --model
        except ConfigError as e:
            raise SweepError(str(e)) from None
        presets = _split(opts.preset) or [DEFAULT_PRESET]
        label = "+".join(presets)
        known = all_presets()
        for p in presets:
            if p not in known:
                raise SweepError(f"unknown preset {p!r}; allowed: {sorted(known)}")
        kinds = {p: task_kind(get_preset(p).data.task) for p in presets}
    if len(set(kinds.values())) > 1:
        raise SweepError(f"presets {presets} mix math and language data; their utility losses "
                         f"(accuracy drop vs perplexity increase) cannot share one Pareto front")
    _check_choice("--sampler", opts.sampler, SAMPLERS)
    _check_choice("--scheduler", opts.scheduler, SCHEDULERS)
    if opts.grid is not None:
        _check_choice("--grid", opts.grid, GRIDS)
    if opts.num_samples is not None and opts.num_samples < 1:
        raise SweepError(f"--num-samples must be >= 1, got {opts.num_samples}")
    if opts.max_concurrent is not None and opts.max_concurrent < 1:
        raise SweepError(f"--max-concurrent must be >= 1, got {opts.max_concurrent}")
    if not opts.cpus_per_trial > 0:
        raise SweepError(f"--cpus-per-trial must be > 0, got {opts.cpus_per_trial}")
    opts = replace(opts, gpus_per_trial=_check_gpus(opts))
    if opts.max_failures < 0:
        raise SweepError(f"--max-failures must be >= 0, got {opts.max_failures}")
    files = _split(opts.search_space)
    if files and len(files) != len(methods):
        raise SweepError(f"--search-space names {len(files)} file(s) for {len(methods)} method(s); "
                         f"give one per method, in the same order")
    spaces = [load_search_space(files[i] if files else default_space_path(m), m) for i, m in enumerate(methods)]
    space = SweepSpace(spaces, presets)
    if opts.scheduler == "asha":
        if not space.any_iterative():
            raise SweepError(f"--scheduler asha stops trials between epochs, but {methods} report no epochs "
                             f"(not iterative); iterative methods: "
                             f"{[m for m in method_names() if get_method(m).iterative]}")
        if opts.grid:
            raise SweepError("--scheduler asha cannot be combined with --grid paper (a grid is run in full)")
    if opts.grid:
        space.grid_points()  # raises if a method has no paper_grid
    experiment = opts.experiment or f"{'+'.join(methods)}-{label}"
    _check_experiment_name(experiment)
    tracking_uri = opts.tracking_uri or default_tracking_uri(storage_root)
    check_tracking_uri(tracking_uri)
    if opts.address:
        check_ray_address(opts.address)
    sweep_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:4]
    return SweepPlan(options=opts, space=space, experiment=experiment, sweep_id=sweep_id, storage=storage_root,
                     tracking_uri=tracking_uri, kinds=kinds)


def _check_gpus(opts: SweepOptions) -> float | str:
    """--gpus-per-trial: a number >= 0, or `auto` (the default with --model; resolved once Ray is up)."""
    gpus = opts.gpus_per_trial
    if gpus is None:
        return AUTO if opts.model else 0.0
    if isinstance(gpus, str) and gpus.strip().lower() == AUTO:
        if not opts.model:
            raise SweepError("--gpus-per-trial auto sizes trials from a Hugging Face model's size (--model hf:...); "
                             "for presets give a number >= 0 (default 0)")
        return AUTO
    try:
        value = float(gpus)
    except (TypeError, ValueError):
        raise SweepError(f"bad --gpus-per-trial {gpus!r}; allowed: a number >= 0 or {AUTO!r}") from None
    if value < 0:
        raise SweepError(f"--gpus-per-trial must be >= 0, got {gpus}")
    return value


def _plan_model(opts: SweepOptions, methods: list[str]) -> tuple[SweepOptions, str]:
    """Check a Hugging Face base model and its options as `tinymem mitigate --model hf:...` does, before Ray
    starts. Returns the options with local paths made absolute (trials run in other working directories) and
    a directory-safe label of the model for the default experiment name."""
    from tinymem.memfile import check_data_options

    if opts.preset:
        raise SweepError(f"--model {opts.model} and --preset {opts.preset} both name the base model; give one")
    regularizers = [m for m in methods if get_method(m).family == "regularizer"]
    if regularizers:
        allowed = [m for m in method_names() if get_method(m).family != "regularizer"]
        raise SweepError(f"{regularizers} train a TinyMem model from scratch and do not apply to --model "
                         f"{opts.model}; allowed: {allowed}")
    try:
        source = parse_source(str(opts.model))
        parse_dtype(opts.dtype)
        check_data_options(**HFSourceOptions.from_object(opts).data_options())
    except ConfigError as e:
        raise SweepError(str(e)) from None

    def absolute(path: str | None) -> str | None:
        return str(Path(path).expanduser().resolve()) if path else path

    if source.local is not None:
        model, label = HF_PREFIX + str(source.local), source.local.name
    else:
        model, label = source.text, source.text[len(HF_PREFIX):]
    opts = replace(opts, model=model, forget_file=absolute(opts.forget_file),
                   retain_file=absolute(opts.retain_file), test_file=absolute(opts.test_file))
    return opts, re.sub(r"[^A-Za-z0-9._@+-]+", "_", label).lstrip("._") or "hf-model"


def base_config(preset: str, hf_options: dict[str, Any]) -> dict[str, Any]:
    """The base-model part of a trial config (`tinymem.trial.run_trial`): a TinyMem preset, or an `hf:` model
    (the sweep's `preset` slot holds its source) with its options."""
    return {"model": preset, **hf_options} if is_hf_source(preset) else {"preset": preset}


def _check_experiment_name(name: str) -> None:
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise SweepError(f"bad --experiment {name!r}: it names directories, so no '/', '\\' or leading '.'")


def _plan_resume(opts: SweepOptions, storage_root: str) -> SweepPlan:
    """Rebuild the plan of an earlier sweep from its record (a restore is not an edit: flags that change
    the experiment are ignored, as Ray ignores them)."""
    if not opts.experiment:
        parent = storage.join(storage_root, "sweeps")
        raise SweepError(f"--resume needs --experiment NAME; experiments under {parent}: {storage.list_dirs(parent)}")
    _check_experiment_name(opts.experiment)
    exp_dir = storage.join(storage_root, "sweeps", opts.experiment)
    sweeps = storage.list_dirs(exp_dir)
    if not sweeps:
        raise SweepError(f"nothing to resume: no sweep of experiment {opts.experiment!r} under {exp_dir}")
    sweep_id = sweeps[-1] if opts.resume == "latest" else opts.resume
    if sweep_id not in sweeps:
        raise SweepError(f"no sweep {sweep_id!r} in experiment {opts.experiment!r}; allowed: {sweeps}")
    record = storage.read_json(storage.join(exp_dir, sweep_id, SWEEP_RECORD))
    if not record:
        raise SweepError(f"sweep {sweep_id!r} of {opts.experiment!r} has no {SWEEP_RECORD}; it cannot be resumed")
    spaces = [parse_search_space(d, f"{SWEEP_RECORD} of {sweep_id} ({m})", m)
              for m, d in record["space"]["methods"].items()]
    space = SweepSpace(spaces, record["space"]["presets"])
    saved = SweepOptions(**{k: v for k, v in record["options"].items() if k in SweepOptions.__dataclass_fields__})
    # What may differ on resume: where the cluster is now, and the command line that resumed it.
    saved.address = opts.address
    saved.resume = sweep_id
    saved.command = opts.command
    tracking_uri = record["tracking_uri"]
    if opts.tracking_uri and opts.tracking_uri != tracking_uri:
        raise SweepError(f"sweep {sweep_id!r} logs to {tracking_uri}; resume it without --tracking-uri "
                         f"(or with that one)")
    check_tracking_uri(tracking_uri)
    if opts.address:
        check_ray_address(opts.address)
    return SweepPlan(options=saved, space=space, experiment=opts.experiment, sweep_id=sweep_id,
                     storage=storage_root, tracking_uri=tracking_uri, kinds=record["kinds"], resumed=True,
                     record=record)


# --- Ray -------------------------------------------------------------------------------------------------------

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
        # A single-node runtime bound to loopback (sweep-stack.md, Appendix): nothing listens on the network.
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
    seq_len = resolve_metric(opts.metric_preset, opts.prompt_len, opts.k, opts.seq_len).seq_len
    try:
        return max(gpus_for_source(str(opts.model), m, gpu_mem_gib, opts.dtype or "float32", seq_len)
                   for m in _split(opts.method))
    except TinyMemError as e:
        raise SweepError(f"--gpus-per-trial auto: {e}") from None


def resolve_auto_gpus(plan: SweepPlan, say: Callable[[str], None]) -> None:
    """Replace `auto` in the plan's --gpus-per-trial by a number (what the sweep record then keeps)."""
    o = plan.options
    memory = cluster_gpu_memory_gib() if o.device != "cpu" else None
    o.gpus_per_trial = auto_gpus_per_trial(o, memory)
    where = f"GPUs of {memory:.0f} GiB" if memory is not None else "no GPU in the Ray cluster: trials run on CPU"
    say(f"--gpus-per-trial auto: {o.gpus_per_trial:g} ({where})")


def _limit_threads(cpus: float) -> None:
    """Use as many torch threads as CPUs were granted (a reused worker keeps no stale setting)."""
    import torch

    n = max(1, int(cpus))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def _build_base(preset: str, storage_root: str, device: str, cpus: float,
                hf_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Ray task body: make (or find) the base model of `preset` (or of an `hf:` model) and its cached base
    evaluation."""
    from tinymem.trial import prepare_base

    _limit_threads(cpus)
    prepared = prepare_base({**base_config(preset, hf_options or {}), "storage": storage_root, "device": device})
    return {"preset": preset, "key": prepared.key, "model_dir": prepared.model_dir, "created": prepared.created,
            "seconds": prepared.seconds, "metrics": prepared.evaluation.metrics}


def prepare_bases(plan: SweepPlan, say: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """Make every base model up front, in parallel, as Ray tasks; returns preset -> info with base metrics."""
    import ray

    presets = plan.space.presets
    # Give each training task a fair share of one node (more threads train faster), never more than a node has.
    node_cpus = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    biggest = max(node_cpus or [1])
    total = sum(node_cpus or [1])
    cpus = max(min(biggest, total / len(presets)), min(plan.options.cpus_per_trial, biggest), 1)
    cpus = float(int(cpus))
    # A model spread over several GPUs (--gpus-per-trial 2) needs them for its base evaluation too.
    gpus = max(1, math.ceil(float(plan.options.gpus_per_trial))) if float(plan.options.gpus_per_trial) > 0 else 0
    task = ray.remote(_build_base).options(num_cpus=cpus, num_gpus=gpus, max_retries=1,
                                           name="tinymem-base-model")
    say(f"base model(s) {presets}: making sure they exist in {plan.storage} (trained once if missing) ...")
    hf_options = source_config(plan.options)
    refs = {p: task.remote(p, plan.storage, plan.options.device, cpus, hf_options) for p in presets}
    out = {}
    for preset, ref in refs.items():
        try:
            info = ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            cause = e.cause if getattr(e, "cause", None) is not None else e
            if isinstance(cause, TinyMemError):
                raise SweepError(f"base model {preset!r}: {cause}") from None
            raise
        verb = "trained" if info["created"] else "loaded"
        say(f"base model {preset} ({info['key']}): {verb} in {info['seconds']:.1f} s; "
            f"mem_pct {info['metrics'].get(MEM, math.nan):.2f}, "
            + (f"test_acc {info['metrics'].get('test_acc', math.nan):.2f}" if plan.kinds[preset] == "math"
               else f"test_ppl {info['metrics'].get('test_ppl', math.nan):.2f}"))
        out[preset] = info
    return out


# --- the trainable ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrialStatic:
    """What every trial needs besides its sampled config (passed once through Ray's object store)."""

    space: SweepSpace
    storage: str
    device: str
    seed: int
    cpus: float
    kinds: dict[str, str]
    method_modules: tuple[str, ...] = ()
    hf_options: tuple[tuple[str, Any], ...] = ()  # (key, value) of an hf: model's options (SOURCE_OPTIONS)
    # The trial's work directory is node-local (object-store --storage): its resume files then travel in
    # Tune checkpoints (sweeps.checkpoints). On local/NFS storage it is shared and nothing is copied.
    checkpoint_work_dir: bool = False


def _method_modules(plan: SweepPlan) -> tuple[str, ...]:
    """Modules of swept methods that live outside `tinymem.mitigations` (a notebook's or a test's own method):
    workers import them before the trial so the registry knows the method. They must be importable there
    (installed, or under the driver's working directory, which Ray puts on the workers' path)."""
    mods = {get_method(m).__module__ for m in plan.space.methods}
    return tuple(sorted(m for m in mods if not m.startswith("tinymem.mitigations")))


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def sweep_trainable(config: dict[str, Any], static: TrialStatic) -> None:
    """One trial: `run_trial` with the sampled hyperparameters; per-epoch reports, then one final report.

    Final report keys: every metric of `tinymem.metrics` (after the edit), the utility loss
    (`test_acc_drop` or `test_ppl_increase_pct`), `seconds_<phase>`, `info_<key>`, `final=1`, `failed`.
    """
    import ray
    from ray import tune

    from sweeps.checkpoints import ResumeFiles
    from tinymem.trial import run_trial

    _limit_threads(static.cpus)
    for module in static.method_modules:  # methods registered outside tinymem.mitigations
        importlib.import_module(module)
    method, preset, params = static.space.decode(config)
    kind = static.kinds[preset]
    loss_name = utility_loss_name(kind)
    last_epoch = 0
    # Where the trial runs, in every result (Ray adds `hostname` and `node_ip`); the MLflow run is tagged with it.
    node_id = ray.get_runtime_context().get_node_id()

    # A retry on another node finds nothing in a node-local work dir: carry the resume files in checkpoints.
    resume = ResumeFiles() if static.checkpoint_work_dir else None

    def report(row: dict[str, Any]) -> None:
        if resume is None:
            tune.report(row)
            return
        # Methods write an epoch's checkpoint before reporting it, so this one holds the epoch just done; the
        # final report's (empty once the run removed its files) replaces it, so nothing stays in the bucket.
        with resume.checkpoint() as checkpoint:
            tune.report(row, checkpoint=checkpoint)

    def on_epoch(metrics: dict[str, float]) -> None:
        nonlocal last_epoch
        last_epoch = int(metrics.get("epoch", last_epoch + 1))
        report({**_numeric(metrics), "epoch": last_epoch, "final": 0, "ray_node_id": node_id})

    trial_config = {"method": method, "params": params, **base_config(preset, dict(static.hf_options)),
                    "storage": static.storage, "device": static.device, "seed": static.seed}
    cpu0 = time.process_time()
    try:
        result = run_trial(trial_config, callback=on_epoch, on_work_dir=resume.restore if resume else None)
    except (TinyMemError, FloatingPointError) as e:
        # Deterministic failures (bad value, NaN): record and move on; a retry would fail the same way.
        tune.report({"final": 1, "failed": 1, "error": f"{type(e).__name__}: {e}", "epoch": last_epoch,
                     MEM: math.nan, loss_name: math.nan, "ray_node_id": node_id})
        return
    after = _numeric(result.after)
    loss = utility_loss(after, result.before, kind)
    final: dict[str, Any] = {**after, loss_name: loss}
    final.update({f"seconds_{k}": float(v) for k, v in result.seconds.items()})
    # CPU time of the trial's process (all its threads): on a shared machine wall time says little about cost.
    final["seconds_cpu"] = time.process_time() - cpu0
    final.update({f"info_{k}": v for k, v in _numeric(result.info).items()})
    final.update({"epoch": last_epoch, "final": 1, "failed": 0, "ray_node_id": node_id})
    # NaN or inf in an objective or a core utility metric means a broken model (e.g. NaN weights give NaN
    # logits, whose perplexity overflows to inf): a failed trial, not a point for the front.
    bad = [k for k in (MEM, loss_name, "test_acc", "test_ppl")
           if k in final or k in (MEM, loss_name)
           if not math.isfinite(final.get(k, math.nan))]
    if bad:
        final.update({"failed": 1, "error": f"FloatingPointError: metrics {bad} are not finite (NaN/inf) "
                                             f"after {method}: the mitigated model is broken"})
    report(final)


# --- the searcher ----------------------------------------------------------------------------------------------

def make_searcher(plan: SweepPlan, num_samples: int) -> "ParetoOptunaSearch":
    """OptunaSearch over the sweep space with two objectives, warm-started with the methods' defaults."""
    import optuna

    seed = plan.options.seed
    if plan.options.sampler == "nsga2":
        # Generational: a population of ~1/4 of the budget gives it a few generations to improve.
        sampler = optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, num_samples // 4)))
    elif plan.options.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        # MO-TPE; its default 10 random start-up trials would be most of a small budget.
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(4, min(10, num_samples // 4)))
    return ParetoOptunaSearch(space=plan.space, metric=plan.objectives, mode=["min"] * len(plan.objectives),
                              sampler=sampler,
                              points_to_evaluate=(plan.space.warm_start_points() if plan.options.warm_start
                                                  else None) or None,
                              study_name=f"{plan.experiment}-{plan.sweep_id}")


class ParetoOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna the truth about trials without final metrics.

    Ray passes an early-stopped trial's last (intermediate) result to Optuna as COMPLETE, so truncated edits
    would steer the sampler (sweep-stack.md §2.2). Here a trial whose last result is not final is PRUNED, and
    one that reported `failed` is FAIL; completed trials go through unchanged.
    """

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        from optuna.trial import TrialState

        ot_trial = self._ot_trials.get(trial_id)
        partial = result is None or not result.get("final") or bool(result.get("failed"))
        if ot_trial is None or trial_id in self._completed_trials or not partial:
            return super().on_trial_complete(trial_id, result=result, error=error)
        state = TrialState.FAIL if (error or (result or {}).get("failed")) else TrialState.PRUNED
        try:
            self._ot_study.tell(ot_trial, None, state=state)
        except Exception as exc:  # e.g. already told; the sweep must not die over bookkeeping
            log.warning("optuna tell failed for %s: %s", trial_id, exc)
        self._completed_trials.add(trial_id)


class GridSearcher(Searcher):
    """The paper's grid as a Tune searcher: hands out the given points in order, then FINISHED.

    (Ray's BasicVariantGenerator wants every pre-set key declared in `param_space`, which a cross-method grid
    cannot do without filling other methods' keys with junk.) Its state is the index of the next point,
    saved (as JSON) with the experiment, so `--resume` continues the grid where it stopped.
    """

    def __init__(self, points: list[dict[str, Any]]):
        super().__init__(metric=None, mode=None)
        self.points = [dict(p) for p in points]
        self.next_index = 0

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.next_index >= len(self.points):
            return Searcher.FINISHED
        point = self.points[self.next_index]
        self.next_index += 1
        return dict(point)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass

    def save(self, checkpoint_path: str) -> None:
        # JSON, not pickle: the state is plain parameter values, and a restore then never unpickles.
        with open(checkpoint_path, "w") as f:
            json.dump({"points": self.points, "next_index": self.next_index}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as f:
            state = json.load(f)
        self.points, self.next_index = state["points"], state["next_index"]


# --- progress lines ------------------------------------------------------------------------------------------

class ProgressLines(Callback):
    """One line per finished trial on stdout or stderr (Tune's own status table is off: noisy in logs).

    Only picklable configuration is kept: Ray pickles callbacks into the experiment and a resumed sweep
    uses the unpickled copy.
    """

    def __init__(self, space: SweepSpace, loss_name: str, total: int, stream: str = "stdout"):
        self.space, self.loss_name, self.total, self.stream = space, loss_name, total, stream
        self.t0 = time.time()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.t0 = time.time()  # a resumed sweep counts its own time

    def _line(self, trials: list, trial: Any, text: str) -> None:
        from ray.tune.experiment.trial import Trial

        done = sum(t.status in (Trial.TERMINATED, Trial.ERROR) for t in trials)
        if self.stream in ("stdout", "stderr"):
            print(f"[{time.time() - self.t0:6.0f} s] trial {done}/{self.total} {trial.trial_id}: {text}",
                  file=getattr(sys, self.stream), flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        shown = {k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in trial.config.items()}
        if last.get("failed"):
            self._line(trials, trial, f"{shown} failed: {last.get('error')}")
        elif not last.get("final"):
            self._line(trials, trial, f"{shown} early-stopped at epoch {last.get('epoch')}")
        else:
            self._line(trials, trial, f"{shown} -> {MEM} {last.get(MEM, math.nan):.2f}, "
                              f"{self.loss_name} {last.get(self.loss_name, math.nan):.3f} "
                              f"({last.get('seconds_mitigate', math.nan):.1f} s mitigate)")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(trials, trial, "errored (recorded as failed)")


# --- running ---------------------------------------------------------------------------------------------------

@dataclass
class SweepOutcome:
    """What `run_sweep` returns; `to_json()` is the `--json` object."""

    plan: SweepPlan
    experiment_id: str
    parent_run_id: str
    bases: dict[str, dict[str, Any]]
    report: Any  # sweeps.results.Report
    interrupted: bool
    wall_seconds: float
    ray_start_seconds: float

    def to_json(self) -> dict[str, Any]:
        rep = self.report
        bases = {p: b["metrics"] for p, b in self.bases.items()}
        return {
            "experiment": self.plan.experiment,
            "sweep_id": self.plan.sweep_id,
            "mlflow_experiment_id": self.experiment_id,
            "mlflow_parent_run_id": self.parent_run_id,
            "tracking_uri": self.plan.tracking_uri,
            "trials": rep.counts["trials"],
            "completed": rep.counts["completed"],
            "failed": rep.counts["failed"],
            "early_stopped": rep.counts["early_stopped"],
            "interrupted": self.interrupted,
            "objectives": self.plan.objectives,
            "base": bases[self.plan.space.presets[0]] if len(bases) == 1 else bases,
            "pareto": rep.pareto_records(),
            "best_paper_rule": rep.best_record(),
            "pareto_csv": rep.csv_path,
            "pareto_png": rep.png_path,
            "trials_csv": rep.trials_csv_path,
            "wall_seconds": self.wall_seconds,
            "ray_start_seconds": self.ray_start_seconds,
            "mlflow_ui": rep.ui_hint,
        }


def _record(plan: SweepPlan, experiment_id: str, parent_run_id: str, bases: dict[str, Any]) -> dict[str, Any]:
    opts = asdict(plan.options)
    opts.pop("resume", None)
    return {"experiment": plan.experiment, "sweep_id": plan.sweep_id, "created_unix": time.time(),
            "command": plan.options.command, "options": opts, "space": plan.space.to_dict(), "kinds": plan.kinds,
            "objectives": plan.objectives, "tracking_uri": plan.tracking_uri, "mlflow_experiment_id": experiment_id,
            "mlflow_parent_run_id": parent_run_id, "ray_experiment_path": plan.ray_path,
            "bases": {p: {k: v for k, v in b.items() if k != "model_dir"} for p, b in bases.items()}}


def _start_parent(plan: SweepPlan, client: Any, experiment_id: str, bases: dict[str, Any]) -> str:
    """Create the sweep's parent run and log what defines the sweep."""
    import yaml

    o = plan.options
    run = client.create_run(experiment_id, run_name=f"sweep-{plan.sweep_id}",
                            tags={"tinymem.role": "sweep", "tinymem.sweep_id": plan.sweep_id, "state": "running"})
    rid = run.info.run_id
    log_params(client, rid, {
        "method": ",".join(plan.space.methods), "preset": ",".join(plan.space.presets),
        "sampler": "grid:paper" if o.grid else o.sampler, "scheduler": o.scheduler,
        "num_samples": o.num_samples, "max_concurrent": o.max_concurrent, "cpus_per_trial": o.cpus_per_trial,
        "gpus_per_trial": o.gpus_per_trial, "seed": o.seed, "storage": plan.storage,
        "objectives": ",".join(plan.objectives), "task": plan.kind, "ray_address": o.address or "local",
        "command": o.command})
    set_tags(client, rid, {
        "mlflow.note.content": f"TinyMem sweep `{plan.experiment}` / `{plan.sweep_id}`\n\n    {o.command}\n",
        "tinymem.sweep": {"kind": plan.kind, "objectives": plan.objectives, "methods": plan.space.methods,
                          "presets": plan.space.presets,
                          "searched": sorted({n for sp in plan.space.spaces.values()
                                              for n in (list(sp.params) + list(sp.paper_grid))})},
        "tinymem.base": {p: b["metrics"] for p, b in bases.items()},
        "tinymem.base_keys": {p: b["key"] for p, b in bases.items()},
    })
    for preset, b in bases.items():
        prefix = "base_" if len(bases) == 1 else f"base_{preset}_"
        log_metrics(client, rid, {f"{prefix}{k}": v for k, v in b["metrics"].items()})
    local = storage.local_dir(plan.sweep_dir)
    (local / "search_space.yaml").write_text(yaml.safe_dump(plan.space.to_dict(), sort_keys=False))
    client.log_artifact(rid, str(local / "search_space.yaml"))
    return rid


def _artifact_location(plan: SweepPlan) -> str | None:
    """Artifacts beside the SQLite file under the storage root (MLflow's default would be ./mlruns in
    whatever directory the sweep was started from). A tracking server chooses its own."""
    if plan.tracking_uri.startswith("sqlite:"):
        return storage.join(plan.storage, "mlartifacts", plan.experiment) if storage.is_remote(plan.storage) \
            else "file://" + storage.join(plan.storage, "mlartifacts", plan.experiment)
    return None


def run_sweep(plan: SweepPlan, say: Callable[[str], None] = print, stream: str = "stdout",
              trainable_fn: Callable[[dict[str, Any], TrialStatic], None] | None = None) -> SweepOutcome:
    """Run (or resume) a planned sweep to the end and build its report.

    `say` prints the sweep's own lines; `stream` (stdout | stderr | none) is where per-trial lines go.
    `trainable_fn` replaces `sweep_trainable` (same signature and reports), e.g. the synthetic trial of
    `bench/scale_sim.py`, which measures the engine's own overhead; everything else runs unchanged.
    """
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from sweeps import checkpoints
    from sweeps.readback import build_from_mlflow

    t_start = time.time()
    o = plan.options
    _quiet_libraries()
    # Per-epoch results carry the ASHA guard, not the objectives the searcher waits for (those come with the
    # final report); Tune's strict check would otherwise fail every iterative trial at its first epoch.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    t0 = time.time()
    started = connect_ray(o.address)
    ray_start = time.time() - t0
    if started:
        say(f"Ray: {'joined ' + o.address if o.address else 'local runtime on 127.0.0.1'} ({ray_start:.1f} s)")
    try:
        if o.gpus_per_trial == AUTO:
            resolve_auto_gpus(plan, say)
        check_trial_fits(o, say)
        client = mlflow_client(plan.tracking_uri)
        if plan.resumed:
            bases = plan.record["bases"]
            experiment_id = plan.record["mlflow_experiment_id"]
            parent_run_id = plan.record["mlflow_parent_run_id"]
            client.update_run(parent_run_id, status="RUNNING")
            set_tags(client, parent_run_id, {"state": "running",
                                             "tinymem.resumed": str(int(time.time()))})
            # The base models may be gone from a fresh cluster's local disks; make sure (cheap if present).
            prepare_bases(plan, say)
            say(f"resuming sweep {plan.sweep_id} of {plan.experiment} (MLflow parent run {parent_run_id})")
        else:
            bases = prepare_bases(plan, say)
            experiment_id = ensure_experiment(client, plan.experiment, _artifact_location(plan))
            parent_run_id = _start_parent(plan, client, experiment_id, bases)
            storage.write_json(storage.join(plan.sweep_dir, SWEEP_RECORD),
                               _record(plan, experiment_id, parent_run_id, bases))

        run_map_path = storage.join(plan.sweep_dir, "mlflow_runs.json")
        static = TrialStatic(space=plan.space, storage=plan.storage, device=o.device, seed=o.seed,
                             cpus=o.cpus_per_trial, kinds=plan.kinds, method_modules=_method_modules(plan),
                             hf_options=tuple(sorted(source_config(o).items())),
                             checkpoint_work_dir=checkpoints.work_dir_is_node_local(plan.storage))
        resources = {"cpu": o.cpus_per_trial, "gpu": o.gpus_per_trial}
        trainable = tune.with_resources(tune.with_parameters(trainable_fn or sweep_trainable, static=static), resources)

        if o.grid:
            points = plan.space.grid_points(limit=o.num_samples, seed=o.seed)
            total = len(points)
        else:
            total = o.num_samples or DEFAULT_NUM_SAMPLES
        logger = TrialLogger(plan.tracking_uri, experiment_id, parent_run_id, run_map_path, plan.space,
                             plan.loss_name)
        callbacks = [logger, ProgressLines(plan.space, plan.loss_name, total, stream)]

        if plan.resumed and tune.Tuner.can_restore(plan.ray_path):
            # Our callbacks come back unpickled from the experiment: they keep no state beyond files.
            tuner = tune.Tuner.restore(plan.ray_path, trainable=trainable, resume_unfinished=True,
                                       resume_errored=False, restart_errored=False)
        else:
            if o.grid:
                search_alg = GridSearcher(points)
            else:
                search_alg = make_searcher(plan, total)
            scheduler = None
            if o.scheduler == "asha":
                scheduler = ASHAScheduler(time_attr="epoch", metric=ASHA_GUARD, mode="min",
                                          max_t=plan.space.max_epochs() or 100, grace_period=1,
                                          reduction_factor=3, stop_last_trials=False)
            tune_config = tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, num_samples=total,
                                          max_concurrent_trials=o.max_concurrent,
                                          reuse_actors=True)
            # A metric/mode here would silently make the multi-objective study single-objective.
            assert tune_config.metric is None and tune_config.mode is None, "TuneConfig must not set metric/mode"
            run_config = tune.RunConfig(
                name=plan.sweep_id, storage_path=plan.ray_parent, callbacks=callbacks, verbose=0,
                failure_config=tune.FailureConfig(max_failures=o.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1))
            tuner = tune.Tuner(trainable, param_space={}, tune_config=tune_config, run_config=run_config)
        say(f"sweep {plan.experiment}/{plan.sweep_id}: {total} trial(s) of {plan.space.methods} on "
            f"{plan.space.presets}, {'paper grid' if o.grid else o.sampler}, objectives {plan.objectives}")
        tuner.fit()  # on Ctrl-C, Tune saves its state and returns: the report below covers what finished

        rep = build_from_mlflow(client, parent_run_id, out_dir=plan.sweep_dir,
                                tracking_uri=plan.tracking_uri, experiment_id=experiment_id)
        rep.publish(client, parent_run_id)
        c = rep.counts
        interrupted = c["completed"] + c["failed"] + c["early_stopped"] < total
        if interrupted:
            set_tags(client, parent_run_id, {"state": "interrupted"})
            client.set_terminated(parent_run_id, status="KILLED")
        else:
            set_tags(client, parent_run_id, {"state": "finished"})
            log_metrics(client, parent_run_id, {"trials": rep.counts["trials"], "completed": rep.counts["completed"],
                                                "failed": rep.counts["failed"],
                                                "early_stopped": rep.counts["early_stopped"],
                                                "wall_seconds": time.time() - t_start})
            client.set_terminated(parent_run_id, status="FINISHED")
        return SweepOutcome(plan=plan, experiment_id=experiment_id, parent_run_id=parent_run_id, bases=bases,
                            report=rep, interrupted=interrupted, wall_seconds=time.time() - t_start,
                            ray_start_seconds=ray_start)
    finally:
        if started:
            ray.shutdown()


def _quiet_libraries() -> None:
    """Keep the terminal for our own lines: MLflow's table-migration notes, Optuna's 'new study' and Tune's
    configuration box say nothing a user needs here (MLflow and the report keep everything)."""
    import optuna

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("mlflow", "alembic", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)
