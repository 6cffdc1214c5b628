"""Pareto selection and the paper's scalar rule, on hand-made trial tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from sweeps.pareto import non_dominated, paper_score, pareto_mask, select, utility_loss


def test_non_dominated_basic_and_duplicates():
    pts = np.array([[0.0, 5.0], [1.0, 1.0], [5.0, 0.0], [2.0, 2.0], [1.0, 1.0], [0.0, 6.0]])
    keep = non_dominated(pts)
    # (2,2) is dominated by (1,1); (0,6) by (0,5); the two (1,1) do not dominate each other.
    assert keep.tolist() == [True, True, True, False, True, False]


def test_non_dominated_matches_brute_force_on_random_points():
    rng = np.random.default_rng(0)
    pts = rng.integers(0, 6, size=(60, 2)).astype(float)
    keep = non_dominated(pts)
    for i, p in enumerate(pts):
        dominated = any(np.all(q <= p) and np.any(q < p) for q in pts)
        assert keep[i] == (not dominated)


def frame(rows):
    return pd.DataFrame(rows, columns=["trial_id", "state", "preset", "mem_pct", "test_acc_drop", "test_acc"])


def test_front_excludes_failed_early_stopped_and_nan():
    df = frame([
        ("a", "completed", "p", 10.0, 0.5, 96.5),
        ("b", "completed", "p", 0.0, 2.0, 95.0),
        ("c", "early_stopped", "p", 0.0, 0.0, 97.0),  # would dominate everything: excluded
        ("d", "failed", "p", math.nan, math.nan, math.nan),
        ("e", "completed", "p", 20.0, 1.0, 96.0),  # dominated by a
        ("f", "completed", "p", math.nan, 0.1, 96.9),  # no objective: excluded
    ])
    mask = pareto_mask(df, ["mem_pct", "test_acc_drop"])
    assert df.loc[mask, "trial_id"].tolist() == ["a", "b"]


def test_utility_loss_math_and_language():
    assert utility_loss({"val_acc": 96.0}, {"val_acc": 97.0}, "math") == pytest.approx(1.0)
    assert utility_loss({"val_ppl": 11.0}, {"val_ppl": 10.0}, "language") == pytest.approx(10.0)
    assert math.isnan(utility_loss({}, {"val_acc": 97.0}, "math"))
    # selection reads the val split only; the test split is reported, never selected on
    assert math.isnan(utility_loss({"test_acc": 96.0}, {"test_acc": 97.0}, "math"))
    assert utility_loss({"test_acc": 96.0}, {"test_acc": 97.0}, "math", "test") == pytest.approx(1.0)


def test_paper_score_math_matches_the_reconstructed_rule():
    # the paper's rule: score = perc_mem_diff - mean(acc relative diffs); the greedy row check.
    base = {"mem_pct": 100.0, "test_acc_2": 100.0, "test_acc_7": 100.0}
    row = pd.Series({"mem_pct": 74.998, "test_acc_2": 99.887, "test_acc_7": 99.887})
    assert paper_score(row, base, "math", "test") == pytest.approx(-0.25002 + 0.00113, abs=1e-9)


def test_paper_score_penalises_no_memorization_change_and_language_form():
    base = {"mem_pct": 50.0, "test_ppl": 10.0}
    unchanged = pd.Series({"mem_pct": 50.0, "test_ppl": 10.0})
    assert paper_score(unchanged, base, "language", "test") == pytest.approx(100.0)
    better = pd.Series({"mem_pct": 0.0, "test_ppl": 10.5})
    assert paper_score(better, base, "language", "test") == pytest.approx(-1.0 + 0.05)


def test_select_marks_front_and_paper_pick_per_preset_base():
    df = pd.DataFrame([
        {"trial_id": "a", "state": "completed", "preset": "p1", "mem_pct": 0.0, "val_acc_drop": 3.0, "val_acc": 94.0},
        {"trial_id": "b", "state": "completed", "preset": "p1", "mem_pct": 5.0, "val_acc_drop": 0.1, "val_acc": 96.9},
        {"trial_id": "c", "state": "early_stopped", "preset": "p1", "mem_pct": 0.0, "val_acc_drop": 0.0, "val_acc": 97.0},
    ])
    annotated, best = select(df, {"p1": {"mem_pct": 50.0, "val_acc": 97.0}}, "math")
    assert annotated["pareto"].tolist() == [True, True, False]
    assert math.isnan(annotated.loc[2, "paper_score"])  # early-stopped trials are not scored
    # a: -1 + 3/97 ~ -0.969; b: -0.9 + 0.1/97 ~ -0.899 -> a wins
    assert annotated.loc[best, "trial_id"] == "a"
