"""A sweep's plan: every flag, search space, base model, tracking URI and cluster address checked before Ray starts.

`plan_sweep` turns `SweepOptions` into a `SweepPlan` (a new sweep, or one rebuilt from its sweep record for
`--resume`), or raises `SweepError` naming the problem; bad input thus fails in seconds, before any trial.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sweeps import storage
from sweeps.candidates import anytime_mode, check_anytime_grid, points_per_trial
from sweeps.stops import check_checkpoint_stop
from sweeps.errors import SweepError
from sweeps.objectives import Objectives, resolve as resolve_objectives, resolve_max_loss
from sweeps.options import (AUTO, DEFAULT_NUM_SAMPLES, SWEEP_RECORD, SweepOptions, check_flags, check_model_options,
                            split_list)
from sweeps.samplers import resolve_sampler
from sweeps.pareto import task_kind, utility_loss_name
from sweeps.ray_runtime import check_ray_address
from sweeps.space import SweepSpace
from sweeps.space_file import default_space_path, load_search_space, parse_search_space
from sweeps.study import check_storage, default_storage
from sweeps.study import normalize as normalize_storage
from sweeps.tracking_uri import check_tracking_uri, default_tracking_uri
from tinymem.errors import ConfigError
from tinymem.hf.models import DEVICES, parse_dtype, parse_source
from tinymem.hf.options import HF_PREFIX
from tinymem.mitigations import get_method, method_names
from tinymem.presets import DEFAULT_PRESET, all_presets, get_preset
from tinymem.store import DEFAULT_ROOT


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
    # the objectives and the robustness metrics trials compute (`sweeps.objectives`); set by both plan paths
    goals: Objectives = field(default_factory=lambda: Objectives(()))
    max_loss: float | None = None  # the bound on the utility loss (--max-utility-loss); None: unconstrained

    @property
    def kind(self) -> str:
        return next(iter(self.kinds.values()))

    @property
    def loss_name(self) -> str:
        return utility_loss_name(self.kind)

    @property
    def objectives(self) -> list[str]:
        return list(self.goals.names)

    @property
    def study_storage(self) -> str:
        """The RDB URL of the sweep's Optuna study (`sweeps.study`)."""
        return self.options.optuna_storage or default_storage(self.storage)

    @property
    def study_name(self) -> str:
        return f"{self.experiment}-{self.sweep_id}"

    @property
    def sweep_dir(self) -> str:
        return storage.join(self.storage, "sweeps", self.experiment, self.sweep_id)

    @property
    def ray_parent(self) -> str:
        return storage.join(self.storage, "ray", self.experiment)

    @property
    def ray_path(self) -> str:
        return storage.join(self.ray_parent, self.sweep_id)


def plan_sweep(opts: SweepOptions) -> SweepPlan:
    """Validate everything that can be checked without starting Ray; raise SweepError on bad input."""
    storage_root = storage.normalize_root(opts.storage or DEFAULT_ROOT)
    storage.check_root(storage_root)
    check_flags(opts)
    if opts.resume:
        return _plan_resume(opts, storage_root)
    methods = split_list(opts.method)
    if not methods:
        raise SweepError(f"--method is required; allowed: {method_names()}")
    for m in methods:
        if m not in method_names():
            raise SweepError(f"unknown method {m!r}; allowed: {method_names()}")
    if len(set(methods)) != len(methods):
        raise SweepError(f"--method lists a method twice: {methods}")
    if opts.source.model:
        opts, label = _plan_model(opts, methods)
        presets = [str(opts.source.model)]  # the base model is the sweep's one "preset" (MLflow param `preset`)
        kinds = {presets[0]: task_kind("verbatim")}
    else:
        try:
            opts.source.reject(None)  # hf-only options given without --model
        except ConfigError as e:
            raise SweepError(str(e)) from None
        presets = split_list(opts.preset) or [DEFAULT_PRESET]
        label = "+".join(presets)
        known = all_presets()
        for p in presets:
            if p not in known:
                raise SweepError(f"unknown preset {p!r}; allowed: {sorted(known)}")
        if len(set(presets)) != len(presets):
            raise SweepError(f"--preset lists a preset twice: {presets}")
        kinds = {p: task_kind(get_preset(p).data.task) for p in presets}
    if len(set(kinds.values())) > 1:
        raise SweepError(f"presets {presets} mix math and language data; their utility losses "
                         f"(accuracy drop vs perplexity increase) cannot share one Pareto front")
    opts = replace(opts, gpus_per_trial=_check_gpus(opts))
    # Trials may run on other machines than this one: the name is checked here, the GPU where the trial runs.
    device = opts.device.strip().lower()
    if device not in DEVICES and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise SweepError(f"bad --device {opts.device!r}; allowed: {list(DEVICES)} or cuda:N")
    if opts.repeats > 1 and opts.source.model:
        raise SweepError(f"--repeats {opts.repeats} repeats over base-model seeds, which a preset trains; "
                         f"--model {opts.source.model} is one fixed model")
    if opts.repeats > 1 and opts.scheduler == "asha":
        raise SweepError("--scheduler asha stops trials on one base model's epochs; it cannot be combined with "
                         f"--repeats {opts.repeats}")
    files = split_list(opts.search_space)
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
    if opts.grid == "paper-anytime":
        check_anytime_grid(space, opts.anytime)
    goals = resolve_objectives(opts.objectives, next(iter(kinds.values())), heldout_frac=opts.heldout_frac,
                               robustness=opts.robustness)
    max_loss = resolve_max_loss(opts.max_utility_loss, next(iter(kinds.values())))
    if opts.scheduler in ("dominated", "no-effect"):
        check_checkpoint_stop(opts.scheduler, space, opts.repeats, bool(opts.grid), goals.names, opts.anytime)
    experiment = opts.experiment if opts.experiment is not None else f"{'+'.join(methods)}-{label}"
    _check_experiment_name(experiment)
    if opts.address:
        check_ray_address(opts.address)
    # Resolved into the options, so the sweep record keeps where the study is and which sampler `auto` chose
    # (a resume uses them).
    opts = replace(opts, optuna_storage=normalize_storage(opts.optuna_storage or default_storage(storage_root)),
                   sampler=resolve_sampler(opts.sampler, opts.num_samples or DEFAULT_NUM_SAMPLES,
                                           points_per_trial(space, opts.repeats, goals.names, anytime_mode(opts))))
    if not opts.grid:  # a grid asks no sampler: no study
        check_storage(opts.optuna_storage)  # creates nothing
    tracking_uri = opts.tracking_uri or default_tracking_uri(storage_root)
    check_tracking_uri(tracking_uri)  # last: it creates the SQLite file
    sweep_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:4]
    return SweepPlan(options=opts, space=space, experiment=experiment, sweep_id=sweep_id, storage=storage_root,
                     tracking_uri=tracking_uri, kinds=kinds, goals=goals, max_loss=max_loss)


def _check_gpus(opts: SweepOptions) -> float | str:
    """--gpus-per-trial: a number >= 0, or `auto` (the default with --model; resolved once Ray is up)."""
    gpus = opts.gpus_per_trial
    if gpus is None:
        return AUTO if opts.source.model else 0.0
    if isinstance(gpus, str) and gpus.strip().lower() == AUTO:
        if not opts.source.model:
            raise SweepError("--gpus-per-trial auto sizes trials from a Hugging Face model's size (--model hf:...); "
                             "for presets give a number >= 0 (default 0)")
        return AUTO
    try:
        value = float(gpus)
    except (TypeError, ValueError):
        raise SweepError(f"bad --gpus-per-trial {gpus!r}; allowed: a number >= 0 or {AUTO!r}") from None
    if not math.isfinite(value):
        raise SweepError(f"--gpus-per-trial must be a finite number >= 0 or {AUTO!r}, got {gpus}")
    if value < 0:
        raise SweepError(f"--gpus-per-trial must be >= 0, got {gpus}")
    return value


def _plan_model(opts: SweepOptions, methods: list[str]) -> tuple[SweepOptions, str]:
    """Check a Hugging Face base model and its options as `tinymem mitigate --model hf:...` does, before Ray
    starts. Returns the options with local paths made absolute (trials run in other working directories) and
    a directory-safe label of the model for the default experiment name."""
    from tinymem.memfile import check_data_options

    src = opts.source
    if opts.preset:
        raise SweepError(f"--model {src.model} and --preset {opts.preset} both name the base model; give one")
    regularizers = [m for m in methods if get_method(m).family == "regularizer"]
    if regularizers:
        allowed = [m for m in method_names() if get_method(m).family != "regularizer"]
        raise SweepError(f"{regularizers} train a TinyMem model from scratch and do not apply to --model "
                         f"{src.model}; allowed: {allowed}")
    try:
        source = parse_source(str(src.model))
        parse_dtype(src.dtype)
        check_data_options(**src.data_options())
    except ConfigError as e:
        raise SweepError(str(e)) from None

    def absolute(path: str | None) -> str | None:
        return str(Path(path).expanduser().resolve()) if path else path

    if source.local is not None:
        model, label = HF_PREFIX + str(source.local), source.local.name
    else:
        model, label = source.text, source.text[len(HF_PREFIX):]
    src = replace(src, model=model, forget_file=absolute(src.forget_file), retain_file=absolute(src.retain_file),
                  test_file=absolute(src.test_file))
    return replace(opts, source=src), re.sub(r"[^A-Za-z0-9._@+-]+", "_", label).lstrip("._") or "hf-model"


def _check_experiment_name(name: str) -> None:
    bad = (not name.strip() or "/" in name or "\\" in name or name.startswith(".") or not name.isprintable()
           or len(name.encode()) > 255)  # a file name: at most 255 bytes on common filesystems
    if bad:
        raise SweepError(f"bad --experiment {name[:60]!r}: it names directories, so not blank, at most 255 bytes, "
                         f"no '/', '\\', control characters or leading '.'")


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
    if record.get("ended_by_budget") and not opts.register_model:  # its search is over: a restore runs nothing
        raise SweepError(f"sweep {sweep_id!r} of {opts.experiment!r} ended when its time budget of "
                         f"{record['ended_by_budget']:g} s ran out: it is finished, not interrupted, and a resume "
                         f"would run nothing; start a new sweep (with a larger --time-budget, or --time-budget none)")
    spaces = [parse_search_space(d, f"{SWEEP_RECORD} of {sweep_id} ({m})", m)
              for m, d in record["space"]["methods"].items()]
    space = SweepSpace(spaces, record["space"]["presets"])
    for flag, given, recorded in (("--method", opts.method, space.methods), ("--preset", opts.preset, space.presets)):
        if given and split_list(given) != recorded:  # these name what the sweep is; a resume cannot change them
            raise SweepError(f"sweep {sweep_id!r} of {opts.experiment!r} was started with {flag} "
                             f"{','.join(recorded)}, not {given}; resume it without {flag} (or with that one)")
    saved = SweepOptions.from_record(record["options"])
    # What may differ on resume: where the cluster is now, and the command line that resumed it.
    saved.address = opts.address
    saved.resume = sweep_id
    saved.command = opts.command
    saved.register_model = opts.register_model  # an action of this command, not part of the sweep
    if "max_utility_loss" not in record["options"]:  # started before constraints: it had none
        saved.max_utility_loss = "none"
    given = normalize_storage(opts.optuna_storage) if opts.optuna_storage else None
    if given and saved.optuna_storage and given != saved.optuna_storage:
        raise SweepError(f"sweep {sweep_id!r} keeps its Optuna study in {saved.optuna_storage}; resume it "
                         f"without --optuna-storage (or with that one)")
    saved.optuna_storage = saved.optuna_storage or given or default_storage(storage_root)
    check_model_options(saved)
    tracking_uri = record["tracking_uri"]
    if opts.tracking_uri and opts.tracking_uri != tracking_uri:
        raise SweepError(f"sweep {sweep_id!r} logs to {tracking_uri}; resume it without --tracking-uri "
                         f"(or with that one)")
    if opts.address:
        check_ray_address(opts.address)
    if not saved.grid:
        check_storage(saved.optuna_storage)
    check_tracking_uri(tracking_uri)
    kinds = record["kinds"]
    try:
        goals = resolve_objectives(saved.objectives, next(iter(kinds.values())), heldout_frac=saved.heldout_frac,
                                   robustness=saved.robustness)
        max_loss = resolve_max_loss(saved.max_utility_loss, next(iter(kinds.values())))
    except SweepError as e:
        raise SweepError(f"sweep {sweep_id!r}: its recorded objectives no longer resolve: {e}") from None
    return SweepPlan(options=saved, space=space, experiment=opts.experiment, sweep_id=sweep_id,
                     storage=storage_root, tracking_uri=tracking_uri, kinds=kinds, resumed=True,
                     record=record, goals=goals, max_loss=max_loss)
