"""Pareto selection over finished trials (pandas), and the paper's scalar rule for comparison.

Default objectives (`--objectives` chooses others: `sweeps.objectives`), both minimised: memorization
(`mem_pct`) and a utility loss measured against the trial's own base model:

- math (accuracy is a percentage): `val_acc_drop` = base `val_acc` - trial `val_acc`, in points;
- language: `val_ppl_increase_pct` = 100 * (trial `val_ppl` - base `val_ppl`) / base `val_ppl`.

Selection uses the `val` half of the held-out sets; the same losses on the `test` half (`test_acc_drop`,
`test_ppl_increase_pct`) are reported beside them and never used to choose.

With a bound X on the utility loss (`--max-utility-loss`), a completed trial is `feasible` when its loss is at
most X. An infeasible trial never dominates a feasible one (its loss is higher), so the feasible part of the
front is exactly the front of the feasible trials.

Only trials in state `completed` with finite objectives are eligible: failed trials have no metrics, and
trials that ASHA stopped early (`early_stopped`) carry truncated metrics (an under-trained edit can look
spuriously good), so they never enter the front.

The paper's rule: relative changes against the base, `score = mem_diff - mean(acc_diff)` for math (mean over
the test distributions) or `mem_diff + ppl_diff` for language, `+100` when memorization did not move at all;
the minimum score wins. It has no accuracy constraint, so it can pick a run that costs a
lot of utility; we report it beside the front, not instead of it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

MEM = "mem_pct"
ACC_DROP = "val_acc_drop"
PPL_INCREASE = "val_ppl_increase_pct"
SELECT_SPLIT, REPORT_SPLIT = "val", "test"  # sweeps optimise and select on `val`; `test` is only reported
ELIGIBLE_STATE = "completed"
PAPER_NO_CHANGE_PENALTY = 100.0


LANGUAGE_TASKS = ("text", "verbatim")  # verbatim: a Hugging Face model's memorized-sequence files (tinymem.memfile)


def task_kind(task: str) -> str:
    """`math` or `language`: the utility-metric family of a base model's data task. Language bases (TinyMem text
    presets, Hugging Face models with memorized-sequence files) are judged by perplexity."""
    return "language" if task in LANGUAGE_TASKS else "math"


def utility_loss_name(kind: str, split: str = SELECT_SPLIT) -> str:
    """`<split>_acc_drop` (math) or `<split>_ppl_increase_pct` (language)."""
    return f"{split}_acc_drop" if kind == "math" else f"{split}_ppl_increase_pct"


def objectives_of(kind: str) -> list[str]:
    """A sweep's two objectives, both minimised: memorization and the utility loss on the selection split."""
    return [MEM, utility_loss_name(kind)]


def utility_loss(after: dict[str, float], base: dict[str, float], kind: str, split: str = SELECT_SPLIT) -> float:
    """The utility loss of one trial on `split` against its base model (NaN if a metric is missing)."""
    if kind == "math":
        return float(base.get(f"{split}_acc", math.nan)) - float(after.get(f"{split}_acc", math.nan))
    b, a = float(base.get(f"{split}_ppl", math.nan)), float(after.get(f"{split}_ppl", math.nan))
    return 100.0 * (a - b) / b if b and not math.isnan(b) else math.nan


def with_losses(after: dict[str, float], base: dict[str, float], kind: str) -> dict[str, float]:
    """`after` plus its utility loss on the selection split (an objective) and on the reported split: what a
    trial's final result and each anytime candidate carry."""
    return {**after, utility_loss_name(kind): utility_loss(after, base, kind),
            utility_loss_name(kind, REPORT_SPLIT): utility_loss(after, base, kind, REPORT_SPLIT)}


def non_dominated(points: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows of `points` (n x m, minimised) that no other row dominates.

    A row is dominated if another is <= in every objective and < in at least one; equal rows do not dominate
    each other, so duplicates of a front point are all on the front.
    """
    n = points.shape[0]
    keep = np.ones(n, dtype=bool)
    for i in range(n):
        le = np.all(points <= points[i], axis=1)
        lt = np.any(points < points[i], axis=1)
        if np.any(le & lt):
            keep[i] = False
    return keep


def pareto_mask(df: pd.DataFrame, objectives: list[str]) -> pd.Series:
    """True for eligible trials on the front of `objectives` (all minimised)."""
    mask = pd.Series(False, index=df.index)
    if df.empty:
        return mask
    eligible = df["state"].eq(ELIGIBLE_STATE)
    for col in objectives:
        eligible &= pd.to_numeric(df[col], errors="coerce").map(lambda v: math.isfinite(v) if v == v else False)
    sub = df.loc[eligible, objectives].astype(float).to_numpy()
    if len(sub):
        mask.loc[eligible[eligible].index] = non_dominated(sub)
    return mask


def feasible_mask(df: pd.DataFrame, loss_name: str, max_loss: float) -> pd.Series:
    """True for completed trials whose utility loss is finite and at most `max_loss`."""
    loss = pd.to_numeric(df[loss_name], errors="coerce") if loss_name in df.columns else pd.Series(math.nan,
                                                                                                  index=df.index)
    return df["state"].eq(ELIGIBLE_STATE) & loss.le(max_loss)


def paper_score(row: pd.Series, base: dict[str, float], kind: str, split: str = SELECT_SPLIT) -> float:
    """The paper's scalar score of one trial against its base model (lower is better), on `split` (a pick is a
    selection, so it reads the `val` half, as the front does)."""
    mem, mem0 = float(row.get(MEM, math.nan)), float(base.get(MEM, math.nan))
    if math.isnan(mem) or math.isnan(mem0):
        return math.nan
    mem_diff = (mem - mem0) / mem0 if mem0 else 0.0
    if kind == "math":
        dists = sorted(k for k in base if k.startswith(f"{split}_acc_") and k in row.index)
        names = dists or [f"{split}_acc"]
        diffs = []
        for k in names:
            a, b = float(row.get(k, math.nan)), float(base.get(k, math.nan))
            diffs.append((a - b) / b if b else 0.0)
        utility_term = -float(np.mean(diffs))
    else:
        a, b = float(row.get(f"{split}_ppl", math.nan)), float(base.get(f"{split}_ppl", math.nan))
        utility_term = (a - b) / b if b else 0.0
    score = mem_diff + utility_term
    if mem_diff == 0.0:
        score += PAPER_NO_CHANGE_PENALTY
    return score


def select(df: pd.DataFrame, bases: dict[str, dict[str, float]], kind: str,
           objectives: list[str] | None = None, max_loss: float | None = None) -> tuple[pd.DataFrame, Any]:
    """Annotate trials with `pareto` (on `objectives`, default `objectives_of(kind)`), `paper_score` and, with a
    bound `max_loss` on the utility loss, `feasible`; return (annotated df, index of the paper's pick).

    `bases` maps preset name -> base metrics (the `preset` column picks the base of each row).
    """
    df = df.copy()
    objectives = list(objectives or objectives_of(kind))
    df["pareto"] = pareto_mask(df, objectives) if not df.empty else pd.Series(dtype=bool)
    if max_loss is not None:
        df["feasible"] = feasible_mask(df, utility_loss_name(kind), max_loss) if not df.empty \
            else pd.Series(dtype=bool)
    scores = []
    for _, row in df.iterrows():
        base = bases.get(str(row.get("preset")), next(iter(bases.values()), {}))
        eligible = row.get("state") == ELIGIBLE_STATE
        scores.append(paper_score(row, base, kind) if eligible else math.nan)
    df["paper_score"] = scores
    best = None
    valid = df["paper_score"].dropna() if not df.empty else pd.Series(dtype=float)
    if len(valid):
        best = valid.idxmin()
    return df, best
