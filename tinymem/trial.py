"""One trial, without Ray: base model from the store (trained if missing), apply one method, evaluate
before and after with the one metric engine, and time each phase. The sweep engine wraps exactly this.

    result = run_trial({"method": "balanced_subnet", "params": {"ratio": 0.3}, "preset": "math-demo"})

Config keys (only `method` is required):

- `method`, `params`: the registered method and its hyperparameters (validated).
- `preset` (default `math-demo`) and `set` ({key: value} spec overrides), or `model_dir`: an existing model
  directory (with its data bundle) instead of a preset.
- Or a Hugging Face causal LM (`tinymem.hf.models`): `model` (`hf:NAME_OR_PATH[@REVISION]`), `dtype`
  (float32 | bfloat16 | float16), `forget_file` (memorized sequences), `retain_file` / `test_file` (clean data
  for retain and perplexity), `metric_preset` (default `pythia`), `prompt_len`, `k`, `seq_len`
  (`tinymem.memfile`). Its base key covers the model source, revision and dtype and the files' sha256.
- `storage`: model-store root (default `./tinymem-runs`). `device`: auto | cpu | cuda. `seed`.
- `out_dir`: save the mitigated model there as a model directory with its tokenizer and a model card
  (`README.md`, `tinymem.card`) (default: not saved).
- `progress`: show progress bars.
- `work_dir`: the method's directory for caches and resume files (default: beside the base evaluation's cache).
  `resume_scope`: whose resume files the method may pick up (default empty: any interrupted run of the same
  configuration; a sweep passes each trial's id, so only a retry of that trial resumes).
- `heldout_frac`: withhold this seeded fraction of the unlearning set from the method and report
  `heldout_mem_pct` on it (default 0: the method sees every memorized row, as in the paper).
- `robustness`: robustness metrics to add (`tinymem.robustness`): "all", a comma list or a list of
  `relearn_mem_pct`, `relearn_benign_mem_pct`, `sampled_mem_pct`, `perturbed_mem_pct`, `nll_gap` (default none).
  They are computed after the method and for the base model (cached per metric beside the base evaluation),
  and timed apart: `seconds["robustness"]` and `seconds["base_robustness"]`, never method time.
- `anytime`: evaluate an anytime method (`Mitigation.anytime`) at checkpoints of its run
  (`tinymem.mitigations._anytime`: every epoch up to 20 epochs, a geometric set beyond), each with the final
  evaluation below, so a candidate at epoch e has the numbers of a run with `epochs = e`; `anytime_from`: the
  first epoch evaluated (default 1); `anytime_at`: instead of that schedule, exactly these epochs (a list or a
  comma list of integers >= 1; those below the run's epoch count are evaluated: a grid's other epoch counts).
  The candidates go to `callback` with their epoch (`checkpoint = 1`) and to
  `TrialResult.candidates`; their time is method time, also reported apart (`info["seconds_checkpoint_evals"]`).
  A method that is not anytime ignores it.

The base evaluation (metrics and which forget rows are memorized) is computed once per base model and cached
beside the store (`<storage>/cache/<key>/`), so every trial of a sweep shares it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tinymem.build import ensure_base_model, load_model_dir
from tinymem.card import CARD, render_card
from tinymem.data.bundle import DataBundle
from tinymem.data.math import with_math_tokenizer
from tinymem.errors import ConfigError
from tinymem.hf.models import load_trial_base
from tinymem.hf.options import HFSourceOptions
from tinymem.metrics import Extraction, deltas, evaluate, forget_extraction, rate_with_interval
from tinymem.mitigations import get_method
from tinymem.mitigations._anytime import CheckpointEvaluator, checkpoint_epochs, no_checkpoint
from tinymem.mitigations.base import MitigationContext
from tinymem.models import pick_device
from tinymem.presets import DEFAULT_PRESET, get_preset
from tinymem.robustness import cached_robustness, parse_names, probe, robustness_metrics
from tinymem.specs import BaseSpec, spec_hash
from tinymem.store import DEFAULT_ROOT, ModelStore, read_manifest, write_manifest
from tinymem.util import atomic_path, atomic_write_text, evaluation

TRIAL_KEYS = ("method", "params", "preset", "set", "model_dir", "storage", "device", "seed", "out_dir",
              "progress", "work_dir", "resume_scope", "heldout_frac", "robustness", "anytime", "anytime_from",
              "anytime_at") + HFSourceOptions.keys()


@dataclass(frozen=True)
class TrialConfig:
    """A trial's configuration, typed (the keys of the module docstring). The base model is `source.model`
    (an `hf:` model, with its data options in `source`), else `model_dir`, else `preset` (+ `set`
    overrides; None: `DEFAULT_PRESET`). A plain dict appears only at the boundaries (the CLI, the sweep's
    Ray trainable): `from_dict` / `to_dict` convert."""

    method: str = ""  # empty for the base-model part alone (`prepare_base`)
    params: dict[str, Any] = field(default_factory=dict)
    preset: str | None = None
    set: dict[str, Any] = field(default_factory=dict)
    model_dir: str | None = None
    source: HFSourceOptions = field(default_factory=HFSourceOptions)
    storage: str = DEFAULT_ROOT
    device: str = "auto"
    seed: int = 0
    out_dir: str | None = None
    progress: bool = False
    work_dir: str | None = None
    resume_scope: str = ""  # whose resume files the method may pick up (`MitigationContext.resume_scope`)
    heldout_frac: float = 0.0  # share of the unlearning set withheld from the method (heldout_mem_pct)
    robustness: tuple[str, ...] = ()  # robustness metric names (`tinymem.robustness.NAMES`), none by default
    anytime: bool = False  # evaluate an anytime method at checkpoints of its run (candidates)
    anytime_from: int = 1  # the first epoch a checkpoint is evaluated at
    anytime_at: tuple[int, ...] = ()  # exactly these checkpoint epochs instead of the schedule (empty: the schedule)

    def __post_init__(self) -> None:
        if self.source.model and (self.model_dir or self.preset):
            raise ConfigError("trial config: give one base model: 'model' (hf:...), 'model_dir' or 'preset'")

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], *, require_method: bool = True) -> "TrialConfig":
        """Validate and type a dict config: unknown keys, a missing 'method' (unless `require_method` is
        False) and more than one base model are ConfigErrors. Empty values mean the defaults."""
        unknown = sorted(set(config) - set(TRIAL_KEYS))
        if unknown:
            raise ConfigError(f"unknown trial config key(s) {unknown}; allowed: {list(TRIAL_KEYS)}")
        if require_method and "method" not in config:
            raise ConfigError("trial config needs 'method'")
        source = HFSourceOptions.from_object(dict(config))
        return cls(method=config.get("method", ""), params=dict(config.get("params") or {}),
                   preset=config.get("preset") or None, set=dict(config.get("set") or {}),
                   model_dir=_opt_str(config.get("model_dir")), source=source,
                   storage=str(config.get("storage") or DEFAULT_ROOT), device=str(config.get("device") or "auto"),
                   seed=int(config.get("seed", 0)), out_dir=_opt_str(config.get("out_dir")),
                   progress=bool(config.get("progress")), work_dir=_opt_str(config.get("work_dir")),
                   resume_scope=str(config.get("resume_scope") or ""),
                   heldout_frac=float(config.get("heldout_frac") or 0.0),
                   robustness=parse_names(config.get("robustness")), anytime=_flag(config.get("anytime"), "anytime"),
                   anytime_from=_positive_int(config.get("anytime_from", 1), "anytime_from"),
                   anytime_at=_epoch_list(config.get("anytime_at")))

    def to_dict(self) -> dict[str, Any]:
        """The dict form (`from_dict(c.to_dict()) == c`): unset values and an empty method left out."""
        d = {"method": self.method or None, "params": dict(self.params), "preset": self.preset,
             "set": dict(self.set), "model_dir": self.model_dir, "storage": self.storage, "device": self.device,
             "seed": self.seed, "out_dir": self.out_dir, "progress": self.progress, "work_dir": self.work_dir,
             "resume_scope": self.resume_scope or None, "heldout_frac": self.heldout_frac or None,
             "robustness": list(self.robustness) or None,
             "anytime": self.anytime or None, "anytime_from": self.anytime_from if self.anytime_from != 1 else None,
             "anytime_at": list(self.anytime_at) or None,
             **self.source.as_config()}
        return {k: v for k, v in d.items() if v is not None}


def _opt_str(value: Any) -> str | None:
    return str(value) if value else None


def _flag(value: Any, name: str) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name}={value!r} is not allowed; choose from [true, false]")


def _positive_int(value: Any, name: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if isinstance(value, bool) or number < 1 or float(value) != number:
        raise ConfigError(f"{name}={value!r} is not allowed; allowed: an integer >= 1")
    return number


def _epoch_list(value: Any) -> tuple[int, ...]:
    """`anytime_at` as sorted distinct epochs: a list or a comma list of integers >= 1 (empty: none)."""
    if value is None or value == "":
        return ()
    items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)
    try:
        return tuple(sorted({_positive_int(v, "anytime_at") for v in items}))
    except ConfigError:
        raise ConfigError(f"anytime_at={value!r} is not allowed; allowed: a list or a comma list of integers >= 1, "
                          f"e.g. '1,10'") from None


def _trial_config(config: TrialConfig | Mapping[str, Any], require_method: bool = True) -> TrialConfig:
    return config if isinstance(config, TrialConfig) else TrialConfig.from_dict(config,
                                                                                require_method=require_method)


@dataclass
class TrialResult:
    """What a trial produced. `before`/`after` map metric names to values; `seconds` has one entry per phase."""

    method: str
    params: dict[str, Any]
    before: dict[str, float]
    after: dict[str, float]
    seconds: dict[str, float]
    model_dir: str | None
    base_key: str
    info: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    candidates: list[dict[str, float]] = field(default_factory=list)  # anytime checkpoints: `epoch` + metrics

    @property
    def deltas(self) -> dict[str, float]:
        return deltas(self.after, self.before)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["deltas"] = self.deltas
        return d


@dataclass
class BaseEvaluation:
    """Base-model metrics and the unlearning set (indices of memorized forget rows), computed once."""

    metrics: dict[str, float]
    memorized_rows: torch.Tensor
    seconds: float


# Bump when the meaning of a cached base evaluation changes (its metrics or its unlearning set): the cache
# directory of every base model then moves, so nothing computed by older code is reused.
# 2: the unlearning set is the memorized rows that are also counted (noise inside the window).
EVAL_VERSION = 2


def _cache_dir(storage: str, key: str) -> Path | None:
    store = ModelStore(storage)
    name = f"{key}-eval{EVAL_VERSION}"
    if store.remote:
        return store.cache / "evals" / name
    return Path(store.root) / "cache" / name


def unlearning_rows(extraction: Extraction) -> torch.Tensor:
    """Indices of the unlearning set: forget rows the model reproduces AND that count (noise inside the
    window). A forget row without noise in the window that the model reproduces has learned the task, not
    memorized noise; it never enters the set (for backdoor and verbatim data every row counts)."""
    return torch.nonzero(extraction.memorized & extraction.counted).flatten()


def cached_evaluation(cache_dir: Path | None) -> BaseEvaluation | None:
    """The base evaluation cached in `cache_dir` by `base_evaluation`; None when it is not (yet) there."""
    if cache_dir is None or not (cache_dir / "base_eval.json").exists():
        return None
    meta = json.loads((cache_dir / "base_eval.json").read_text())
    rows = load_file(str(cache_dir / "base_eval.safetensors"))["memorized_rows"]
    return BaseEvaluation(metrics=meta["metrics"], memorized_rows=rows, seconds=meta["seconds"])


def base_evaluation(model: torch.nn.Module, bundle: DataBundle, cache_dir: Path | None,
                    progress: bool = False) -> BaseEvaluation:
    """Metrics of the base model plus which forget rows it memorizes; cached in `cache_dir` (`progress`: a bar)."""
    cached = cached_evaluation(cache_dir)
    if cached is not None:
        return cached
    t0 = time.perf_counter()
    metrics = evaluate(model, bundle, progress=progress)
    rows = unlearning_rows(forget_extraction(model, bundle))
    seconds = time.perf_counter() - t0
    if cache_dir is not None:
        with atomic_path(cache_dir / "base_eval.safetensors") as tmp:
            save_file({"memorized_rows": rows.contiguous()}, str(tmp))
        # Written last: marks the cache complete. Plain json.dumps (not atomic_write_json): a NaN metric must
        # read back as NaN, not None.
        atomic_write_text(cache_dir / "base_eval.json", json.dumps({"metrics": metrics, "seconds": seconds}))
    return BaseEvaluation(metrics=metrics, memorized_rows=rows, seconds=seconds)


def resolve_base(config: TrialConfig) -> tuple[BaseSpec | None, str]:
    """(spec, key) of a TinyMem base model: from `preset` + `set`, or from `model_dir`'s manifest."""
    if config.model_dir:
        manifest = read_manifest(Path(config.model_dir), verify=False)
        spec = BaseSpec.from_dict(manifest["spec"]) if "spec" in manifest else None
        return spec, manifest.get("key") or spec_hash(str(Path(config.model_dir).resolve()))
    spec = get_preset(config.preset or DEFAULT_PRESET, {k: str(v) for k, v in config.set.items()})
    return spec, spec.key()


@dataclass
class LoadedBase:
    """A trial's base model, loaded: model, bundle, spec (None for Hugging Face models), cache key, the device
    inputs go to, its directory (the `hf:` source for Hugging Face models) and whether it was just trained."""

    model: torch.nn.Module
    bundle: DataBundle
    spec: BaseSpec | None
    key: str
    device: torch.device
    model_dir: str
    created: bool


def load_base(config: TrialConfig) -> LoadedBase:
    """Load the base model of `config`: a Hugging Face model (loaded, never trained or stored), a model
    directory, or a preset's model from the store (trained into it if missing)."""
    device = pick_device(config.device)
    if config.source.model:
        hf = load_trial_base(config.source, config.device)
        # with device_map the model spans GPUs; inputs go to its embedding's device
        return LoadedBase(model=hf.model, bundle=hf.bundle, spec=None, key=hf.key, device=hf.device,
                          model_dir=str(config.source.model), created=False)
    spec, key = resolve_base(config)
    created = False
    if config.model_dir:
        model_dir = Path(config.model_dir)
    else:
        stored = ensure_base_model(spec, config.storage, device=str(device), progress=config.progress)
        model_dir, created = stored.directory, stored.created
    loaded = load_model_dir(model_dir, device=str(device))
    return LoadedBase(model=loaded.model, bundle=loaded.bundle, spec=spec, key=key, device=device,
                      model_dir=str(model_dir), created=created)


@dataclass
class PreparedBase:
    """A trial config's base model, ready: stored (trained if it was missing) and evaluated (cached)."""

    key: str
    model_dir: str
    created: bool
    seconds: float
    evaluation: BaseEvaluation
    data: dict[str, dict[str, Any]]  # `DataBundle.digests()` of its data: which rows its numbers come from


def prepare_base(config: TrialConfig | Mapping[str, Any]) -> PreparedBase:
    """Do the base-model part of `run_trial` alone: make sure the base model of `config` is in the store and
    its base evaluation is cached, so that a sweep can do it once before its trials (which then only load).
    A dict config needs no 'method'."""
    config = _trial_config(config, require_method=False)
    t0 = time.perf_counter()
    base = load_base(config)
    evaluation = base_evaluation(base.model, base.bundle, _cache_dir(config.storage, base.key))
    return PreparedBase(key=base.key, model_dir=base.model_dir, created=base.created,
                        seconds=time.perf_counter() - t0, evaluation=evaluation, data=base.bundle.digests())


def stored_base(config: TrialConfig | Mapping[str, Any]) -> PreparedBase | None:
    """What `prepare_base` would return, when there is nothing for it to do: a TinyMem preset's model already in a
    local store with its base evaluation cached (read, never trained, evaluated or fetched; no weights loaded).
    None otherwise. A sweep driver asks this first and starts a Ray task only for what is missing, since the
    task's worker costs seconds of start-up to find a model that is there."""
    config = _trial_config(config, require_method=False)
    if config.source.model or config.model_dir:
        return None
    store = ModelStore(config.storage)
    if store.remote:
        return None
    t0 = time.perf_counter()
    _spec, key = resolve_base(config)
    if not store.has(key):  # the cheap check first: a missing model needs no cache read
        return None
    evaluation = cached_evaluation(_cache_dir(config.storage, key))
    if evaluation is None:
        return None
    directory, _manifest = store.load(key)  # checksums verified, as a trial's load would
    return PreparedBase(key=key, model_dir=str(directory), created=False, seconds=time.perf_counter() - t0,
                        evaluation=evaluation, data=DataBundle.load(directory).digests())


def split_heldout(rows: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(shown, held out): a seeded `fraction` of the unlearning set is withheld from the method, to ask whether
    removal generalises to memorized rows it was not shown. 0 shows every row (the paper's procedure)."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"heldout_frac={fraction} is out of range; allowed: [0, 1)")
    n_held = min(int(round(fraction * rows.numel())), max(rows.numel() - 1, 0))
    if n_held == 0:
        return rows, rows[:0]
    order = torch.randperm(rows.numel(), generator=torch.Generator().manual_seed(int(seed) + 7919))
    held = torch.zeros(rows.numel(), dtype=torch.bool)
    held[order[:n_held]] = True
    return rows[~held], rows[held]


def heldout_memorization(model: torch.nn.Module, bundle: DataBundle, heldout: torch.Tensor) -> dict[str, float]:
    """`heldout_mem_pct` (with its interval and counts): how many withheld memorized rows are still extracted."""
    ex = forget_extraction(model, bundle)
    among = torch.zeros_like(ex.counted)
    among[heldout] = True
    return rate_with_interval(ex.memorized, ex.counted & among, "heldout_mem_pct")


@contextmanager
def _phase(seconds: dict[str, float], name: str):
    t0 = time.perf_counter()
    try:
        yield
    finally:
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t0


def run_trial(config: TrialConfig | Mapping[str, Any], callback: Callable[[dict[str, float]], None] | None = None,
              on_work_dir: Callable[[Path], None] | None = None,
              on_base: Callable[[dict[str, float]], None] | None = None) -> TrialResult:
    """Run one mitigation trial (see the module docstring); a dict config is read by `TrialConfig.from_dict`.
    `callback` receives intermediate metrics (with `epoch`) from iterative methods. `on_work_dir(path)` is
    called with the method's work directory just before the method runs (a sweep puts a retried trial's
    resume files back there). `on_base(before)` gets the base model's metrics before the method runs (a sweep
    scores each anytime candidate against them as it arrives)."""
    config = _trial_config(config)
    method_cls = get_method(config.method)
    method = method_cls(config.params)  # validates before any expensive work
    storage, seed = config.storage, config.seed
    split_heldout(torch.empty(0, dtype=torch.long), config.heldout_frac, 0)  # range check, before any work
    seconds: dict[str, float] = {}
    total0 = time.perf_counter()

    with _phase(seconds, "load"):
        loaded = load_base(config)
        model, bundle, spec, key, device = loaded.model, loaded.bundle, loaded.spec, loaded.key, loaded.device

    with _phase(seconds, "base_eval"):
        base = base_evaluation(model, bundle, _cache_dir(storage, key), config.progress)
    before = base.metrics
    if config.robustness:
        probe(bundle)  # an unsupported data kind is refused before the method runs
        with _phase(seconds, "base_robustness"):
            robust, _ = cached_robustness(model, bundle, config.robustness, base.memorized_rows,
                                          _cache_dir(storage, key))
        before = {**before, **robust}

    shown, heldout = split_heldout(base.memorized_rows, config.heldout_frac, seed)
    rows = shown
    history: list[dict[str, float]] = []
    if on_base is not None:
        on_base(dict(before))

    def evaluate_after(m: torch.nn.Module, progress: bool = False) -> dict[str, float]:
        """The evaluation after the method, one code path for the final model and every anytime candidate."""
        with evaluation(m):  # one mask computation for both (see `evaluation`)
            metrics = evaluate(m, bundle, progress=progress)
            if heldout.numel():
                metrics.update(heldout_memorization(m, bundle, heldout))
        return metrics

    checkpoints = None
    if config.anytime and method_cls.anytime and "epochs" in method.params.names():
        epochs = int(method.params.epochs)
        at = [e for e in config.anytime_at if e < epochs] if config.anytime_at else \
            checkpoint_epochs(epochs, config.anytime_from)
        checkpoints = CheckpointEvaluator(evaluate_after, frozenset(at))

    def report(metrics: dict[str, float]) -> None:
        history.append(dict(metrics))
        if callback is not None:
            callback(dict(metrics))

    work_dir = Path(config.work_dir) if config.work_dir else (_cache_dir(storage, key) or Path(".")) / method.name
    ctx = MitigationContext(
        model=model, bundle=bundle, forget=bundle.forget[rows], forget_clean=bundle.forget_clean[rows],
        retain=bundle.retain, base_spec=spec, base_key=key, seed=seed, device=device, report=report,
        evaluate=lambda m: evaluate(m, bundle), work_dir=work_dir, resume_scope=config.resume_scope,
        store_root=storage, progress=config.progress,
        checkpoint=checkpoints if checkpoints is not None else no_checkpoint)
    if on_work_dir is not None:
        on_work_dir(work_dir)
    torch.manual_seed(seed)
    with _phase(seconds, "mitigate"):
        out = method.apply(ctx)
    mitigated = out.model.eval()

    with _phase(seconds, "eval"):
        after = evaluate_after(mitigated, config.progress)
    bad = [k for k in ("mem_pct", "test_acc", "test_ppl") if k in after and isinstance(after[k], float)
           and math.isnan(after[k]) and not math.isnan(base.metrics.get(k, 0.0))]
    if bad:
        raise FloatingPointError(f"metrics {bad} are NaN after {method.name}: the mitigated model is broken")
    robust_seconds: dict[str, float] = {}
    if config.robustness:
        with _phase(seconds, "robustness"):
            robust, robust_seconds = robustness_metrics(mitigated, bundle, config.robustness, base.memorized_rows)
        after.update(robust)

    saved = None
    if config.out_dir:
        with _phase(seconds, "save"):
            saved = save_mitigated(mitigated, bundle, Path(config.out_dir), spec, key, method.name,
                                   method.params.to_dict(), after, before=before, config=config.to_dict(),
                                   family=method.family)
    seconds["total"] = time.perf_counter() - total0
    # Time the method really cost, including cached work it reused (e.g. neuron attributions).
    seconds["mitigate_total"] = seconds["mitigate"] + float(out.info.get("seconds_cached_work", 0.0))
    info = {**out.info, "unlearn_rows": float(shown.numel()), "heldout_rows": float(heldout.numel()),
            **{f"seconds_{name}": sec for name, sec in robust_seconds.items()}}
    if checkpoints is not None:  # inside seconds["mitigate"]; apart here, so a sweep can say what it cost
        info.update({"seconds_checkpoint_evals": checkpoints.seconds,
                     "checkpoints": float(len(checkpoints.candidates))})
    return TrialResult(method=method.name, params=method.params.to_dict(), before=before, after=after,
                       seconds=seconds, model_dir=saved, base_key=key, info=info, history=history,
                       candidates=list(checkpoints.candidates) if checkpoints is not None else [])


def save_mitigated(model: torch.nn.Module, bundle: DataBundle, out_dir: Path, spec: BaseSpec | None, key: str,
                   method: str, params: dict[str, Any], metrics: dict[str, float], *,
                   before: dict[str, float] | None = None, config: Mapping[str, Any] | None = None,
                   family: str = "") -> str:
    """Save a mitigated model as a self-contained model directory: HF files, the data bundle with its tokenizer
    (a math bundle stored without one gains it), a model card (`README.md`, when `config`, the trial's dict
    config, says how to rebuild it) and `tinymem.json` last."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in out_dir.glob("tinymem.json"):
        f.unlink()  # the manifest goes last; an interrupted save leaves no stale, complete-looking manifest
    model.save_pretrained(out_dir)
    bundle = with_math_tokenizer(bundle)
    bundle.save(out_dir)
    model_key = f"{key}-{method}-{spec_hash(params, 8)}"
    if config is not None:
        # the card's command names every hyperparameter, not only those the trial was given
        card = render_card({**config, "params": params}, method=method, params=params, key=model_key, base_key=key, before=before or {},
                           after=metrics, out_dir=str(out_dir), family=family,
                           tokenizer="tokenizer.json" in bundle.files)
        atomic_write_text(out_dir / CARD, card)
    info = {"key": model_key, "base_key": key, "method": method, "params": params, "metrics": metrics}
    if spec is not None:
        info["spec"] = spec.to_dict()
    write_manifest(out_dir, info)
    return str(out_dir)
