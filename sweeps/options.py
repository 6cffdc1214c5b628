"""What a sweep is asked to do: `SweepOptions` (the flags of `sweeps/run.py`) and the allowed values of its flags.

Importable without Ray, Optuna or MLflow, so that `sweeps/run.py --help` and planning stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from tinymem.hf.options import HFSourceOptions
from tinymem.store import DEFAULT_ROOT

SAMPLERS = ("tpe", "nsga2", "random")
SCHEDULERS = ("none", "asha")
GRIDS = ("paper",)
KEEP_MODELS = ("pareto", "all", "none")  # which trials' mitigated models stay as model directories (sweeps.models)
# Sized so that the default sweep (`--method balanced_subnet` on math-demo) fits 15 minutes of a 2-core CPU.
DEFAULT_NUM_SAMPLES = 12
ASHA_GUARD = "retain_loss"  # what iterative methods report per epoch and rises when an edit breaks the model
SWEEP_RECORD = "sweep.json"
AUTO = "auto"  # --gpus-per-trial auto: sized from a Hugging Face model (tinymem.hf.memory.gpus_for_source)


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
    sampler: str = "tpe"
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
    warm_start: bool = True  # evaluate each method's default hyperparameters first (Optuna samplers only)
    repeats: int = 1  # base-model seeds per configuration; objectives are the means over them
    heldout_frac: float = 0.0  # share of the unlearning set withheld from each method (heldout_mem_pct)
    # Comma lists: what the front and the sampler minimise (None: mem_pct and the val utility loss), and the
    # robustness metric groups computed beside them (`sweeps.objectives`).
    objectives: str | None = None
    robustness: str | None = None
    keep_models: str = "pareto"  # pareto: the front and the paper rule's pick; all: every completed trial; none
    # Register the paper rule's pick (NAME) or one trial (NAME:TRIAL_ID) in the MLflow Model Registry. An action of
    # the command that asks for it, not part of the sweep: `--resume` takes it from its own command line.
    register_model: str | None = None
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
