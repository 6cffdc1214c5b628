"""`pareto.png` of a sweep's report: the front on its two objectives, or a pair plot when there are more.

Every panel shows the completed trials (grey), early-stopped ones (hollow: never on the front), the front (red,
with 95% error bars of each axis that has an interval: over base-model seeds with `--repeats`, else over the
rows of a rate) and the paper rule's pick (a star). With three or more objectives each panel is one pair of them;
the front is the front on all objectives, so a front point can look dominated in a single panel.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pandas as pd

from sweeps.pareto import MEM

RATE_MAX = 100.0


def interval_columns(df: pd.DataFrame, metric: str) -> tuple[str | None, str | None]:
    """The columns of `metric`'s 95% interval: over base-model seeds when the sweep repeats, else over the rows."""
    for lo, hi in ((f"{metric}_seeds_ci_low", f"{metric}_seeds_ci_high"), (f"{metric}_ci_low", f"{metric}_ci_high")):
        if lo in df.columns and hi in df.columns and df[lo].notna().any():
            return lo, hi
    return None, None


def _errors(f: pd.DataFrame, metric: str) -> tuple[list[pd.Series] | None, str]:
    lo, hi = interval_columns(f, metric)
    if lo is None:
        return None, ""
    low, high = f[lo], f[hi]
    if metric.endswith("_pct"):
        # a rate lies in [0, 100]: a t-interval over few seeds can reach past it, so draw the part that can hold
        # (the CSV keeps the raw bounds)
        low, high = low.clip(lower=0.0), high.clip(upper=RATE_MAX)
    return [(f[metric] - low).clip(lower=0), (high - f[metric]).clip(lower=0)], (
        " over base-model seeds" if "seeds" in lo else "")


def _panel(ax: Any, rep: Any, x: str, y: str, step: bool) -> None:
    df = rep.trials
    done = df[df["state"] == "completed"]
    ax.scatter(done[x], done[y], s=22, c="0.65", label="completed trials")
    early = df[df["state"] == "early_stopped"]
    if len(early) and early[[x, y]].notna().all(axis=1).any():
        ax.scatter(early[x], early[y], s=22, facecolors="none", edgecolors="0.5", label="early-stopped (excluded)")
    front = rep.front
    if len(front):
        f = front.sort_values(x)
        yerr, where = _errors(f, y)
        xerr, _ = _errors(f, x)
        if yerr is not None or xerr is not None:
            ax.errorbar(f[x], f[y], yerr=yerr, xerr=xerr, fmt="none", ecolor="tab:red", alpha=0.5, capsize=3,
                        zorder=2, label="95% interval" + where)
        if step:
            ax.step(f[x], f[y], where="post", c="tab:red", lw=1.2)
        ax.scatter(f[x], f[y], s=36, c="tab:red", label="Pareto front", zorder=3)
    if rep.best_index is not None:
        b = df.loc[rep.best_index]
        ax.scatter([b[x]], [b[y]], marker="*", s=180, c="black", zorder=4, label="paper's scalar rule")
    ax.grid(alpha=0.3)


def _label(rep: Any, metric: str) -> str:
    if metric == rep.loss_name:
        unit = "points of val_acc" if rep.kind == "math" else "% of val_ppl"
        return f"{metric} ({unit}; lower is better)"
    return f"{metric} (lower is better)"


def plot_report(rep: Any, path: Path) -> None:
    """Write the report's figure to `path` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    objectives = rep.objectives
    df = rep.trials
    ready = not df.empty and all(c in df.columns for c in objectives)
    # Two objectives: utility loss across, the other up (memorization vs utility, as the paper plots it).
    x_first = rep.loss_name if rep.loss_name in objectives else objectives[-1]
    pairs = [(x_first, next(o for o in objectives if o != x_first))] if len(objectives) == 2 else \
        list(itertools.combinations(objectives, 2))
    cols = min(len(pairs), 3)
    rows = -(-len(pairs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 if cols == 1 else 4.6 * cols, 4.6 * rows), dpi=110,
                             squeeze=False)
    for ax, (x, y) in zip(axes.flat, pairs):
        if ready:
            _panel(ax, rep, x, y, step=len(objectives) == 2)
        else:
            ax.text(0.5, 0.5, "no completed trial", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(_label(rep, x))
        ax.set_ylabel(_label(rep, y))
    for ax in list(axes.flat)[len(pairs):]:
        ax.axis("off")
    first = axes.flat[0]
    if ready:
        first.legend(fontsize=8, loc="best")
    title = "memorization vs utility loss" if objectives == [MEM, rep.loss_name] else \
        f"Pareto front on {', '.join(objectives)}"
    if len(pairs) > 1:
        fig.suptitle(title, fontsize=10)
    else:
        first.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
