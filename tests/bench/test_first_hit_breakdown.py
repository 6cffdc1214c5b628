"""The arithmetic of `bench/first_hit_breakdown.py` on hand-made trials: which trials the CPU before the first
hit went to, and what stopping the infeasible ones at their third checkpoint would have saved."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
_spec = importlib.util.spec_from_file_location("first_hit_breakdown", BENCH / "first_hit_breakdown.py")
F = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(F)


def _trial(tid: str, start: int, end: int, cpu: float, ratio: float, points: list[tuple[int, float, float]],
           state: str = "completed") -> dict:
    return {"trial_id": tid, "start_ms": start, "end_ms": end, "cpu_s": cpu, "state": state,
            "params": {"ratio": ratio},
            "points": [{"at_ms": at, "mem_pct": m, "val_acc_drop": d, "test_acc_drop": d, "source": "checkpoint",
                        "epochs": i + 1} for i, (at, m, d) in enumerate(points)]}


def test_breakdown_and_the_infeasible_stop_what_if():
    # In sequence: a no-op cut at 1 s, an infeasible trial (mem 0, drop 5 at each of its 6 checkpoints, 6 CPU-s),
    # a low-ratio trial that never hits (2 CPU-s), then the hit's trial (hit at its second checkpoint).
    noop = _trial("a", 0, 1000, 1.0, 0.0001, [(1000, 50.0, 0.0)], state="early_stopped")
    bad = _trial("b", 1000, 7000, 6.0, 0.5, [(1000 + 1000 * (i + 1), 0.0, 5.0) for i in range(6)])
    low = _trial("c", 7000, 9000, 2.0, 0.01, [(8000, 30.0, 0.0), (9000, 20.0, 0.0)])
    hit = _trial("d", 9000, 11000, 2.0, 0.2, [(10000, 10.0, 0.5), (11000, 0.0, 0.5)])
    rec = {"arm": "tpe", "seed": 0, "wall_s": 11.0, "trials": [noop, bad, low, hit], "base": {"mem_pct": 50.0}}
    parts = F.breakdown(rec)
    assert parts["cut by a stop rule"] == (1, pytest.approx(1.0))
    assert parts["infeasible at mem 0"] == (1, pytest.approx(6.0))
    assert parts["ratio < 0.05, no hit"] == (1, pytest.approx(2.0))
    assert parts["the hit's trial"] == (1, pytest.approx(2.0))
    # Stopped at its third checkpoint (3 of its 6 s), the infeasible trial costs 3 CPU-s instead of 6.
    cut = F.with_infeasible_stop(rec)
    assert cut["trials"][1]["cpu_s"] == pytest.approx(3.0) and len(cut["trials"][1]["points"]) == 3
    assert rec["trials"][1]["cpu_s"] == 6.0, "the line read is left as it was"
    first = lambda r: F.se.first_hit(F.se.costed_points(r))  # noqa: E731
    assert first(rec) == pytest.approx(11.0) and first(cut) == pytest.approx(8.0)


def test_stopped_then_hit_counts_what_the_infeasible_stop_would_lose():
    # Both trials are infeasible at mem 0 for their first 3 checkpoints; one recovers to a hit at epoch 5, the
    # other never does. A third trial is feasible from the start and is not stopped at all.
    recovers = _trial("r", 0, 6000, 6.0, 0.45, [(1000 * (i + 1), 0.0, d) for i, d in
                                                enumerate([9.0, 5.0, 2.0, 1.5, 0.8, 0.6])])
    stays = _trial("s", 0, 6000, 6.0, 0.8, [(1000 * (i + 1), 0.0, 9.0) for i in range(6)])
    fine = _trial("f", 0, 6000, 6.0, 0.1, [(1000 * (i + 1), 0.0, 0.5) for i in range(6)])
    rec = {"arm": "gp", "seed": 0, "trials": [recovers, stays, fine]}
    stopped, lost = F.stopped_then_hit([rec])
    assert stopped == 2
    assert [(t["trial_id"], epoch) for t, epoch in lost] == [("r", 5)]
    # The what-if itself drops the recovering trial's hit: its points end at the third checkpoint.
    cut = F.with_infeasible_stop(rec)
    assert [p["epochs"] for p in cut["trials"][0]["points"]] == [1, 2, 3]
    assert not any(F.se.is_hit(p) for p in cut["trials"][0]["points"])
    assert len(cut["trials"][2]["points"]) == 6


def test_prior_free_chance_runs_random_orders_on_the_slots():
    # A pool of a hit (2 CPU-s, the hit at its end) and a miss (4 CPU-s). On 2 slots both start at once, so the
    # hit is known at 2 s, when 4 CPU-s are spent, in every order; on 1 slot, 2 CPU-s in half the orders, 6 in
    # the other half.
    hit = _trial("h", 0, 2000, 2.0, 0.2, [(2000, 0.0, 0.5)])
    miss = _trial("m", 0, 4000, 4.0, 0.01, [(4000, 30.0, 0.0)])
    assert F.prior_free_chance([hit, miss], 4.0, 200, seed=0) == 1.0
    assert F.prior_free_chance([hit, miss], 3.9, 200, seed=0) == 0.0
    assert 0.4 < F.prior_free_chance([hit, miss], 3.0, 2000, seed=0, workers=1) < 0.6


def test_median_within_is_the_chance_that_most_seeds_are():
    q = 0.2
    assert F.median_within([q, q, q]) == pytest.approx(3 * q**2 - 2 * q**3)
    assert F.median_within([1.0, 0.0, 0.0]) == 0.0 and F.median_within([1.0, 1.0, 0.0]) == 1.0
    assert F.median_within([0.3]) == pytest.approx(0.3)


def test_grid_density_weights_give_each_interval_between_grid_values_an_equal_share():
    # Grid ratios 1e-4, 1e-3, 0.1, 1 on a log scale (4 decades; intervals of 1, 2 and 1 decades): a uniform draw
    # of the log puts 1/4, 1/2 and 1/4 of its mass in them, the grid 1/3 each, so the weights are 4/3, 2/3, 4/3.
    # The loss weighting's grid values are evenly spaced (weight 1); lr is fixed in the grid (ignored).
    grid = [{"params": {"ratio": r, "loss_weighting": w, "lr": 0.1}, "trial_id": f"g{r}{w}"}
            for r in (1e-4, 1e-3, 0.1, 1.0) for w in (0.5, 0.7, 0.9)]
    pool = [{"params": {"ratio": r, "loss_weighting": w, "lr": 0.1}} for r, w in
            ((3e-4, 0.55), (0.01, 0.8), (0.5, 0.6), (2.0, 0.9))]
    weights = F.grid_density_weights(pool, grid)
    assert weights == pytest.approx([4 / 3, 2 / 3, 4 / 3, 4 / 3])  # a value past the grid's top: its last interval
    # The draws follow the weights: a trial of weight 0 is never drawn, so only the miss is run.
    hit = _trial("h", 0, 2000, 2.0, 0.2, [(2000, 0.0, 0.5)])
    miss = _trial("m", 0, 4000, 4.0, 0.01, [(4000, 30.0, 0.0)])
    assert F.prior_free_chance([hit, miss], 100.0, 200, seed=0, weights=[0.0, 1.0]) == 0.0
    # Only the hit is drawn: a copy on each slot, so it is known at 2 s, when 4 CPU-s are spent.
    assert F.prior_free_chance([hit, miss], 4.0, 200, seed=0, weights=[1.0, 0.0]) == 1.0
    assert F.prior_free_chance([hit, miss], 3.9, 200, seed=0, weights=[1.0, 0.0]) == 0.0
