"""The mitigation interface: one small class per method, its hyperparameters a typed dataclass.

A method file looks like::

    @dataclass(frozen=True)
    class Params(Hyperparams):
        ratio: float = hp(0.05, "fraction of MLP weights pruned", low=0.0, high=1.0, log=True)
        epochs: int = hp(10, "passes over the data", low=1, high=1000)

    @register
    class BalancedSubnet(Mitigation):
        name = "balanced_subnet"
        family = "unlearn_weight"
        Params = Params

        def apply(self, ctx: MitigationContext) -> MitigationOutput: ...

Families: `regularizer` (trains a new model with a training hook), `finetune` (continues training the base
model), `unlearn_neuron` (scores MLP neurons and ablates the top `ratio` per layer), `unlearn_weight` (edits
individual weights). `apply` receives everything through a `MitigationContext` and returns the mitigated
model; it must not import ray/optuna/mlflow.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from tinymem.adapter import ModelAdapter
from tinymem.data.bundle import DataBundle
from tinymem.errors import ConfigError
from tinymem.mitigations._anytime import no_checkpoint
from tinymem.mitigations.memory import MethodMemory
from tinymem.specs import BaseSpec, coerce, spec_hash

FAMILIES = ("regularizer", "finetune", "unlearn_neuron", "unlearn_weight")


def hp(default: Any, help: str, *, low: float | None = None, high: float | None = None,
       choices: tuple | None = None, log: bool = False, attribution: bool = True) -> Any:
    """A hyperparameter field: default, meaning, and valid range (inclusive) or choices.

    `attribution=False` (neuron methods): the value is applied after the neuron attribution (`ratio`), so it
    does not key the cached attribution; every other hyperparameter does (`NeuronMitigation`).
    """
    return field(default=default, metadata={"help": help, "low": low, "high": high, "choices": choices,
                                            "log": log, "attribution": attribution})


@dataclass(frozen=True)
class Hyperparams:
    """Base class of every method's hyperparameter dataclass."""

    @classmethod
    def spec(cls) -> list[dict[str, Any]]:
        """Name, type, default, meaning and range of each hyperparameter (for `tinymem methods`)."""
        hints = typing.get_type_hints(cls)
        out = []
        for f in dataclasses.fields(cls):
            m = dict(f.metadata)
            out.append({"name": f.name, "type": getattr(hints[f.name], "__name__", str(hints[f.name])),
                        "default": f.default, "help": m.get("help", ""), "low": m.get("low"),
                        "high": m.get("high"), "choices": list(m["choices"]) if m.get("choices") else None,
                        "log": m.get("log", False)})
        return out

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None, method: str = "") -> "Hyperparams":
        """Typed, validated params; an unknown key or out-of-range value is a ConfigError naming it."""
        values = dict(values or {})
        names = cls.names()
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ConfigError(f"unknown hyperparameter(s) {unknown} for method {method or cls.__qualname__}; "
                              f"allowed: {names}")
        hints = typing.get_type_hints(cls)
        typed = {k: coerce(v, hints[k], k) for k, v in values.items()}
        obj = cls(**typed)
        obj.validate(method)
        return obj

    def validate(self, method: str = "") -> None:
        where = f" of {method}" if method else ""
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            m = f.metadata
            if m.get("choices") is not None and v not in m["choices"]:
                raise ConfigError(f"{f.name}={v!r}{where} is not allowed; choose from {list(m['choices'])}")
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                if isinstance(v, float) and math.isnan(v):
                    raise ConfigError(f"{f.name}=nan{where} is not a number")
                lo, hi = m.get("low"), m.get("high")
                if (lo is not None and v < lo) or (hi is not None and v > hi):
                    raise ConfigError(f"{f.name}={v}{where} is out of range; allowed: [{lo}, {hi}]")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resume_key(parts: dict[str, Any], base_key: str, seed: int, scope: str = "") -> str:
    """The name of a run's resume files: its configuration (`parts`: method, params, ...), base model and seed,
    and the scope that owns them (`MitigationContext.resume_scope`)."""
    key = {**parts, "base": base_key, "seed": seed}
    if scope:  # left out when empty: an unscoped run's name is the one it had before scopes existed
        key["scope"] = scope
    return spec_hash(key, 16)


@dataclass
class MitigationContext:
    """Everything a method may use. Methods edit `model` in place or return a new one.

    - `forget` / `forget_clean`: the unlearning set: the forget rows the base model currently memorizes
      (the paper's `mem_seq`), and their clean versions, row aligned.
    - `retain`: clean training data that never contains a forget row (the paper's code mixed them).
    - `report(metrics)`: iterative methods call it after each epoch with `evaluate(model)`-style metrics and
      `epoch`; a sweep scheduler may use it to stop bad trials early.
    - `evaluate(model)`: the metric engine bound to this bundle.
    - `work_dir`: a per-(model, method) directory for caches (neuron attributions) and checkpoints that a
      retried trial resumes from. `store_root` is the model-store root (regularizers store trained models).
    - `resume_scope`: whose resume files a run may pick up (`resume_key`). Empty (the CLI): any run of the same
      configuration resumes where an interrupted one stopped. A sweep gives each trial its own (its trial id): a
      retry of that trial resumes, but another trial of the same configuration (a rerun sweep with the same seed,
      another arm of a bench) starts at epoch 0, so it evaluates every anytime checkpoint and pays its own CPU.
    - `checkpoint(epoch, model_fn)`: anytime methods call it after each epoch and add what it returns to that
      epoch's report: the candidate's metrics when the trial asked for anytime candidates and the epoch is on
      the schedule (`tinymem.mitigations._anytime`), else {}. `model_fn()` builds the model of `epochs = epoch`.
    """

    model: nn.Module
    bundle: DataBundle
    forget: torch.Tensor
    forget_clean: torch.Tensor
    retain: torch.Tensor
    base_spec: BaseSpec | None = None
    base_key: str = ""
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    report: Callable[[dict[str, float]], None] = lambda metrics: None
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None
    work_dir: Path | None = None
    resume_scope: str = ""
    store_root: str | None = None
    progress: bool = False
    checkpoint: Callable[[int, Callable[[], nn.Module]], dict[str, float]] = no_checkpoint

    def resume_key(self, **parts: Any) -> str:
        """The name of this run's resume files under `work_dir` (`resume_key` of its configuration `parts`)."""
        return resume_key(parts, self.base_key, self.seed, self.resume_scope)

    @property
    def adapter(self) -> ModelAdapter:
        return ModelAdapter(self.model)

    @property
    def pad_id(self) -> int:
        return self.bundle.pad_id


@dataclass
class MitigationOutput:
    """The mitigated model and what the method wants recorded (e.g. `seconds_attribution`, steps)."""

    model: nn.Module
    info: dict[str, float] = field(default_factory=dict)


class Mitigation:
    """Base class: set `name`, `family`, `Params`, implement `apply`.

    `memory`: what a trial holds on a GPU at its peak (`tinymem.hf.memory.estimate_method_gb`); a method
    that leaves it None gets its family base's (`FAMILY_BASES`). Regularizers have none: they train a TinyMem
    model from scratch and do not run on Hugging Face models.
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    Params: ClassVar[type[Hyperparams]] = Hyperparams
    iterative: ClassVar[bool] = False  # reports per-epoch metrics through ctx.report
    control: ClassVar[bool] = False  # a random control (edits without looking at the forget set)
    memory: ClassVar[MethodMemory | None] = None
    # Epoch e of a run is exactly a run with `epochs = e` (nothing depends on the total count: constant learning
    # rate, batches from (seed, e)), and the method calls `ctx.checkpoint` each epoch: a sweep evaluates it
    # there, each checkpoint a candidate configuration (`tinymem.mitigations._anytime`).
    anytime: ClassVar[bool] = False

    def __init__(self, params: Hyperparams | dict[str, Any] | None = None):
        if not isinstance(params, Hyperparams):
            params = self.Params.from_dict(params, self.name)
        else:
            params.validate(self.name)  # a dataclass built by hand skips from_dict's range checks
        self.params = params

    def apply(self, ctx: MitigationContext) -> MitigationOutput:
        raise NotImplementedError

    def matched_control(self) -> tuple[str, dict[str, Any]] | None:
        """(method, params) of the random control that edits as much of the model as this configuration,
        without looking at the forget set; None where no control matches. A method's removal counts only
        by how far it beats its control. Neuron methods: the same share of random neurons."""
        ratio = getattr(self.params, "ratio", None)
        if self.family == "unlearn_neuron" and ratio is not None and self.name != "random_neurons":
            return "random_neurons", {"ratio": ratio}
        return None

    @classmethod
    def describe(cls) -> dict[str, Any]:
        doc = (cls.__doc__ or "").strip().splitlines()
        return {"name": cls.name, "family": cls.family, "iterative": cls.iterative, "anytime": cls.anytime,
                "control": cls.control,
                "summary": doc[0] if doc else "", "hyperparameters": cls.Params.spec()}


# The base class of each family whose methods run on Hugging Face models; its `memory` is the family's worst
# case, used for a method that states none and for `estimate_method_gb` without a method.
FAMILY_BASES: dict[str, type[Mitigation]] = {}


def family_base(cls: type[Mitigation]) -> type[Mitigation]:
    """Class decorator: `cls` is the base class of its family (one per family, with a `memory`)."""
    if cls.family not in FAMILIES or cls.memory is None:
        raise TypeError(f"{cls.__name__} needs a family in {FAMILIES} and a memory")
    if FAMILY_BASES.get(cls.family, cls) is not cls:
        raise TypeError(f"family {cls.family!r} has two base classes: {FAMILY_BASES[cls.family].__name__}, "
                        f"{cls.__name__}")
    FAMILY_BASES[cls.family] = cls
    return cls


@family_base
class WeightMitigation(Mitigation):
    """Base of the weight-level unlearning methods (`unlearn_weight`)."""

    family = "unlearn_weight"
    # The most any weight method holds: the loss-based baselines' weights, gradients and two AdamW moments of
    # every parameter (greedy: 3), subnet's scores, score gradients, momentum, mask and masked weight, 64-row
    # batches.
    memory = MethodMemory(4, 5, True, rows=64)
