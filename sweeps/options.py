"""What a sweep is asked to do: `SweepOptions` (the flags of `sweeps/run.py`) and the allowed values of its flags.

Importable without Ray, Optuna, MLflow or torch, so that `sweeps/run.py --help` is fast and `check_flags` answers
a bad flag in a fraction of a second, before planning imports the library.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from sweeps.errors import SweepError
from tinymem.hf.options import HFSourceOptions
from tinymem.store import DEFAULT_ROOT

SAMPLERS = ("auto", "tpe", "gp", "nsga2", "random")  # sweeps.samplers builds them; auto: resolve_sampler
SCHEDULERS = ("none", "asha", "dominated", "no-effect")  # the last two: sweeps.stops
GRIDS = ("paper", "paper-anytime")  # paper-anytime: an anytime method's epoch axis from checkpoints
KEEP_MODELS = ("pareto", "all", "none")  # which trials' mitigated models stay as model directories (sweeps.models)
# Sized so that the default sweep (`--method balanced_subnet` on math-demo), base training included, fits 10
# minutes of a quick 2-core CPU (DEFAULT_TIME_BUDGET holds it to that on a slow one); its anytime checkpoints
# make about 4 configurations of each trial (docs/defaults.md).
DEFAULT_NUM_SAMPLES = 6
# The wall-clock budget of a sweep that takes the default trial count (`--time-budget`, `resolve_time_budget`):
# 9 minutes from the driver's start, base training included, so that the default sweep ends within 10 minutes
# on a slow 2-core host too (the same default sweep took 431 s on one day and 1162 s on another; docs/defaults.md).
DEFAULT_TIME_BUDGET = 540.0
ASHA_GUARD = "retain_loss"  # what iterative methods report per epoch and rises when an edit breaks the model
SWEEP_RECORD = "sweep.json"
AUTO = "auto"  # --gpus-per-trial auto: sized from a Hugging Face model (tinymem.hf.memory.gpus_for_source)
SEED_MAX = 2**32 - 1  # Optuna's samplers seed numpy's RandomState, which takes [0, 2**32 - 1]
NO_LIMIT = ("none", "off")  # --max-utility-loss none: no constraint


def split_list(value: str | None) -> list[str]:
    """The items of a comma-list flag (`--method a,b`), blanks dropped."""
    return [v.strip() for v in (value or "").split(",") if v.strip()]


@dataclass
class SweepOptions:
    """Everything `sweeps/run.py` accepts; defaults are the CLI's."""

    method: str = ""
    preset: str | None = None  # None: DEFAULT_PRESET, unless `source.model` names the base model
    num_samples: int | None = None  # None: DEFAULT_NUM_SAMPLES, or the whole grid with --grid
    max_concurrent: int | None = None  # None: as many as the resources allow
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | str | None = None  # None: "auto" with a model, else 0; run_sweep resolves "auto"
    sampler: str = "auto"  # the plan resolves it to a concrete one (sweeps.samplers.resolve_sampler)
    grid: str | None = None
    scheduler: str = "none"
    address: str | None = None
    storage: str = DEFAULT_ROOT
    tracking_uri: str | None = None
    experiment: str | None = None
    resume: str | None = None  # "latest" or a sweep id
    seed: int = 0
    search_space: str | None = None
    max_failures: int = 1
    device: str = "auto"
    command: str = ""
    anytime: bool = True  # anytime methods evaluate checkpoints as candidates (sweeps.candidates); --no-anytime
    warm_start: bool = True  # evaluate each method's default hyperparameters first (Optuna samplers only)
    repeats: int = 1  # base-model seeds per configuration; objectives are the means over them
    heldout_frac: float = 0.0  # share of the unlearning set withheld from each method (heldout_mem_pct)
    # Comma lists: what the front and the sampler minimise (None: mem_pct and the val utility loss), and the
    # robustness metric groups computed beside them (`sweeps.objectives`).
    objectives: str | None = None
    robustness: str | None = None
    # The constraint on the utility loss objective (points of accuracy, or percent of perplexity): a number, `none`,
    # or None for the task's default (`sweeps.objectives.DEFAULT_MAX_LOSS`).
    max_utility_loss: str | None = None
    optuna_storage: str | None = None  # None: sweeps.study.default_storage(storage); the plan resolves it
    keep_models: str = "pareto"  # pareto: the front and the paper rule's pick; all: every completed trial; none
    # Register the paper rule's pick (NAME) or one trial (NAME:TRIAL_ID) in the MLflow Model Registry. An action of
    # the command that asks for it, not part of the sweep: `--resume` takes it from its own command line.
    register_model: str | None = None
    # After the last trial, how long the driver waits for an unreachable MLflow before it leaves the trials' events
    # on disk for `sweeps/report.py --sync` (`sweeps.sync_process`).
    sync_wait: float = 120.0
    # Wall-clock seconds from the driver's start (base training included) after which the running trials stop
    # at their last result and no more start: a number of seconds, `none`, or None (`resolve_time_budget`).
    time_budget: str | None = None
    # A Hugging Face base model (`--model hf:...`) instead of a preset, with its memorized-sequence options.
    source: HFSourceOptions = field(default_factory=HFSourceOptions)

    @classmethod
    def from_record(cls, options: dict[str, Any]) -> "SweepOptions":
        """The options saved in a sweep record (`asdict` of them), `source` rebuilt as `HFSourceOptions`.

        A record written before `source` existed holds its fields flat, beside the others; those are read too.
        Unknown keys are ignored.
        """
        names = {f.name for f in fields(cls)} - {"source"}
        nested = options.get("source")
        source = HFSourceOptions.from_object(nested if isinstance(nested, dict) else options)
        return cls(source=source, **{k: v for k, v in options.items() if k in names})


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise SweepError(f"unknown {name} {value!r}; allowed: {list(allowed)}")


def check_flags(opts: SweepOptions) -> None:
    """The flags that can be checked alone (no method, preset, file or server): SweepError naming the flag, the
    bad value and what is allowed. `plan_sweep` calls it; `sweeps/run.py` calls it before importing the plan."""
    _check_choice("--sampler", opts.sampler, SAMPLERS)
    _check_choice("--scheduler", opts.scheduler, SCHEDULERS)
    if opts.grid is not None:
        _check_choice("--grid", opts.grid, GRIDS)
    if opts.num_samples is not None and opts.num_samples < 1:
        raise SweepError(f"--num-samples must be >= 1, got {opts.num_samples}")
    if opts.max_concurrent is not None and opts.max_concurrent < 1:
        raise SweepError(f"--max-concurrent must be >= 1, got {opts.max_concurrent}")
    if not (math.isfinite(opts.cpus_per_trial) and opts.cpus_per_trial > 0):
        raise SweepError(f"--cpus-per-trial must be a finite number > 0, got {opts.cpus_per_trial}")
    if opts.max_failures < 0:
        raise SweepError(f"--max-failures must be >= 0, got {opts.max_failures}")
    if opts.repeats < 1:
        raise SweepError(f"--repeats must be >= 1, got {opts.repeats}")
    if not 0.0 <= opts.heldout_frac < 1.0:  # also refuses nan
        raise SweepError(f"--heldout-frac must be in [0, 1), got {opts.heldout_frac}")
    if not (math.isfinite(opts.sync_wait) and opts.sync_wait >= 0):
        raise SweepError(f"--sync-wait must be a finite number of seconds >= 0, got {opts.sync_wait}")
    if not 0 <= opts.seed <= SEED_MAX:
        raise SweepError(f"--seed must be in [0, {SEED_MAX}] (Optuna's samplers), got {opts.seed}")
    parse_max_loss(opts.max_utility_loss)
    parse_time_budget(opts.time_budget)
    if opts.optuna_storage is not None:
        from sweeps.study import check_storage_url  # the form only: no Optuna import, no connection

        check_storage_url(opts.optuna_storage)
    check_model_options(opts)


def parse_max_loss(text: str | None) -> float | str | None:
    """--max-utility-loss: a finite number >= 0, `none` (no constraint), or None (not given: the task's default,
    which the plan knows). SweepError naming a bad value."""
    if text is None:
        return None
    if str(text).strip().lower() in NO_LIMIT:
        return NO_LIMIT[0]
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value >= 0):  # also refuses nan and inf
        raise SweepError(f"bad --max-utility-loss {text!r}; allowed: a finite number >= 0 (points of accuracy, "
                         f"or percent of perplexity) or {NO_LIMIT[0]!r}")
    return value


def parse_time_budget(text: str | None) -> float | str | None:
    """--time-budget: seconds (`540`, `540s`, `9m`, `1.5h`) > 0, `none` (no budget), or None (not given). SweepError
    naming a bad value."""
    if text is None:
        return None
    t = str(text).strip().lower()
    if t in NO_LIMIT:
        return NO_LIMIT[0]
    scale = {"s": 1.0, "m": 60.0, "h": 3600.0}.get(t[-1:], None)
    try:
        value = float(t[:-1] if scale else t) * (scale or 1.0)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise SweepError(f"bad --time-budget {text!r}; allowed: a number of seconds > 0 (or with s, m or h: 540, "
                         f"9m, 1.5h) or {NO_LIMIT[0]!r}")
    return value


def resolve_time_budget(opts: SweepOptions) -> float | None:
    """The sweep's time budget in seconds, or None for none: the flag's, else DEFAULT_TIME_BUDGET for a sampled
    sweep of the default trial count (the laptop default), else none (a grid, or a sweep sized with
    --num-samples, runs to its end)."""
    value = parse_time_budget(opts.time_budget)
    if value is None:
        return DEFAULT_TIME_BUDGET if opts.num_samples is None and opts.grid is None else None
    return None if value == NO_LIMIT[0] else float(value)


def parse_register(spec: str) -> tuple[str, str | None]:
    """`NAME` or `NAME:TRIAL_ID` (split at the last ':') -> (name, trial id or None).

    NAME follows MLflow's rule for registered models, checked here so that a bad name fails before the sweep
    and not after it: not blank, no '/' or ':', not '.' and not starting with '..'.
    """
    name, sep, trial = spec.rpartition(":") if ":" in spec else (spec, "", "")
    name = name.strip()
    if not name or (sep and not trial.strip()):
        raise SweepError(f"bad --register-model {spec!r}; expected NAME or NAME:TRIAL_ID")
    if "/" in name or ":" in name or name == "." or name.startswith(".."):
        raise SweepError(f"bad --register-model {spec!r}: the model name {name!r} may not contain '/' or ':', "
                         f"be '.' or start with '..' (MLflow's rule)")
    return name, trial.strip() or None


def check_model_options(opts: SweepOptions) -> None:
    """--keep-models and --register-model (kept models are `sweeps.models`' business)."""
    if opts.keep_models not in KEEP_MODELS:
        raise SweepError(f"unknown --keep-models {opts.keep_models!r}; allowed: {list(KEEP_MODELS)}")
    if opts.register_model is not None:
        parse_register(opts.register_model)
        if opts.keep_models == "none":
            raise SweepError("--register-model registers a kept model, but --keep-models none keeps none; "
                             f"allowed with --register-model: {[k for k in KEEP_MODELS if k != 'none']}")
