"""A sweep's objectives (`--objectives`): which metrics the Pareto front, the Optuna study and the report minimise.

The default is two: `mem_pct` and the utility loss on the selection split (`val_acc_drop` for math,
`val_ppl_increase_pct` for language). `--objectives` takes a comma list of two or more, all minimised, e.g.
`mem_pct,relearn_mem_pct,val_acc_drop`: memorization that survives a few relearning steps is then a cost of its
own. A utility loss named on the reported split (`test_acc_drop`) is selected on its `val` twin instead: the
`test` half is only ever reported, so choosing on it would make the reported numbers optimistic.

The utility loss objective may also be bounded (`--max-utility-loss X`): a trial whose loss exceeds X is
infeasible. The sampler is told so (an Optuna constraint, `sweeps.study`) and the report shows the feasible
part of the front first. The default is 1 point of accuracy for math presets (the bar of a hit in the
project's search-efficiency measurements, docs/defaults.md), and none for language, whose perplexity increase
has no measured scale to pick a bound from; `none` switches it off.

Robustness metrics (`tinymem.robustness`) cost extra evaluation time; a sweep computes exactly the ones its
objectives name, plus any `--robustness` asks for (`all` or a comma list).
"""

from __future__ import annotations

from dataclasses import dataclass

from sweeps.errors import SweepError
from sweeps.options import parse_max_loss
from sweeps.pareto import MEM, REPORT_SPLIT, SELECT_SPLIT, objectives_of, utility_loss_name
from tinymem.errors import ConfigError
from tinymem.robustness import NAMES as ROBUSTNESS, parse_names

# Memorization-style metrics every trial already reports (`tinymem.metrics`), 0-100, lower is better.
PLAIN = (MEM, "paper_mem_pct", "approx_mem_pct", "heldout_mem_pct")
DEFAULT_MAX_LOSS = {"math": 1.0, "language": None}  # --max-utility-loss not given


@dataclass(frozen=True)
class Objectives:
    """The resolved objectives of a sweep, and the robustness metrics its trials must compute."""

    names: tuple[str, ...]
    robustness: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # what was rewritten (test_* -> val_*), printed once by the driver


def allowed(kind: str) -> list[str]:
    """Every name `--objectives` accepts for a task kind (math or language)."""
    return list(PLAIN) + list(ROBUSTNESS) + [utility_loss_name(kind)]


def resolve(text: str | None, kind: str, *, heldout_frac: float = 0.0, robustness: str | None = None
            ) -> Objectives:
    """Parse `--objectives` (None: the default two) and `--robustness`; a bad name is a SweepError naming it."""
    extra = _robustness(robustness)
    if not text:
        return Objectives(tuple(objectives_of(kind)), extra)
    names, notes = [], []
    report_twin, select_twin = utility_loss_name(kind, REPORT_SPLIT), utility_loss_name(kind, SELECT_SPLIT)
    other_kind = "language" if kind == "math" else "math"
    for raw in (t.strip() for t in text.split(",")):
        if not raw:
            continue
        name = raw
        if raw == report_twin:
            name = select_twin
            notes.append(f"objective {raw}: the sweep selects on {select_twin} ({REPORT_SPLIT} is only reported, "
                         f"beside it)")
        elif raw in (utility_loss_name(other_kind), utility_loss_name(other_kind, REPORT_SPLIT)):
            raise SweepError(f"objective {raw!r} is the {other_kind} utility loss; this sweep's base models are "
                             f"{kind}: use {select_twin}")
        if name not in allowed(kind):
            raise SweepError(f"unknown objective {raw!r}; allowed: {allowed(kind)}")
        if name in names:
            raise SweepError(f"--objectives names {name!r} twice: {text!r}")
        names.append(name)
    if len(names) < 2:
        raise SweepError(f"--objectives needs at least two (a front of one objective is a single point); got "
                         f"{names}; allowed: {allowed(kind)}")
    if select_twin not in names:
        raise SweepError(f"--objectives {text!r} has no utility loss: every edit that breaks the model would "
                         f"look perfect; add {select_twin}")
    if "heldout_mem_pct" in names and not heldout_frac:
        raise SweepError("objective heldout_mem_pct needs --heldout-frac > 0 (the withheld memorized rows)")
    wanted = set(extra) | {n for n in names if n in ROBUSTNESS}
    return Objectives(tuple(names), tuple(n for n in ROBUSTNESS if n in wanted), tuple(notes))


def resolve_max_loss(text: str | None, kind: str) -> float | None:
    """The bound on the utility loss of a sweep on `kind` data (None: unconstrained)."""
    value = parse_max_loss(text)
    if value is None:
        return DEFAULT_MAX_LOSS[kind]
    return None if isinstance(value, str) else value


def _robustness(text: str | None) -> tuple[str, ...]:
    try:
        return parse_names(text)
    except ConfigError as e:  # the library's message, as a sweep error
        raise SweepError(f"--robustness: {e}") from None
