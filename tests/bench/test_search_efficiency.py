"""The arithmetic of `bench/search_efficiency.py` on hand-made trials: what a point costs (in sequence and
with trials running side by side), the grid's expectation over random orders, and the hypervolume."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "search_efficiency", Path(__file__).resolve().parents[2] / "bench" / "search_efficiency.py")
B = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(B)


def _trial(start: int, end: int, cpu: float, *points: tuple[int, float, float]) -> dict:
    return {"start_ms": start, "end_ms": end, "cpu_s": cpu, "params": {},
            "points": [{"at_ms": at, "mem_pct": m, "val_acc_drop": d, "test_acc_drop": d, "source": "trial",
                        "epochs": 1} for at, m, d in points]}


def test_a_point_costs_what_the_arm_had_spent_when_it_was_known():
    # Two trials side by side: A (0-1000 ms, 4 CPU-s) and B (500-1500 ms, 2 CPU-s). A's checkpoint at 500 ms
    # costs half of A; A's end at 1000 ms costs all of A and half of B.
    a = _trial(0, 1000, 4.0, (500, 10.0, 0.0), (1000, 5.0, 0.0))
    b = _trial(500, 1500, 2.0, (1500, 0.0, 0.5))
    costs = [c for c, _ in B.costed_points({"trials": [a, b]})]
    assert costs == pytest.approx([2.0, 5.0, 6.0])
    # In sequence B then A: B's point costs 2, A's checkpoint 2 + 2, its end 2 + 4.
    costs = [c for c, _ in B.costed_points({"trials": [a, b]}, order=[b, a])]
    assert costs == pytest.approx([2.0, 4.0, 6.0])


def test_first_hit_of_the_grid_is_its_expectation_over_random_orders():
    # Two equal trials, one a hit: in half the orders the hit comes first (cost 1), else second (cost 2).
    # The grid ran them one after the other, so its orders are costed on one slot.
    hit, miss = _trial(0, 1000, 1.0, (1000, 0.0, 0.0)), _trial(1000, 2000, 1.0, (2000, 40.0, 0.0))
    rec = {"arm": "grid", "seed": 0, "wall_s": 1.0, "trials": [hit, miss], "base": {"mem_pct": 50.0}}
    s = B.summarize(rec, rec)
    assert s["first_hit_val"] == pytest.approx(1.5, abs=0.05)
    assert s["hv"]["1.000"] == pytest.approx(B.hypervolume([(0.0, 0.0), (40.0, 0.0)], (50.0, 10.0)))
    side = {**miss, "start_ms": 0, "end_ms": 1000}
    sampler = {**rec, "arm": "tpe", "trials": [side, hit]}  # side by side: the hit is known once both ran
    assert B.summarize(sampler, rec)["first_hit_val"] == pytest.approx(2.0)
    # A grid that ran two at a time is costed two at a time too: the hit pays for the trial beside it.
    both = {**rec, "trials": [hit, side]}
    assert B.concurrency(both["trials"]) == 2
    assert B.summarize(both, both)["first_hit_val"] == pytest.approx(2.0)


def test_an_order_on_two_slots_pays_for_the_trial_running_beside():
    a = _trial(0, 1000, 4.0, (500, 10.0, 0.0), (1000, 5.0, 0.0))  # A: 4 CPU-s, a checkpoint halfway
    b = _trial(0, 1000, 2.0, (1000, 0.0, 0.5))
    c = _trial(0, 1000, 2.0, (1000, 30.0, 0.5))
    # Slots: A on the first from 0 to 4, B on the second from 0 to 2, then C there from 2 to 4.
    costs = [c_ for c_, _ in B.costed_points({"trials": [a, b, c]}, order=[a, b, c], workers=2)]
    assert costs == pytest.approx([4.0, 4.0, 8.0, 8.0])  # B's end (t=2): 2 + 2; A's checkpoint (t=2) the same
    one = [c_ for c_, _ in B.costed_points({"trials": [a, b, c]}, order=[a, b, c], workers=1)]
    assert one == pytest.approx([2.0, 4.0, 6.0, 8.0])


def test_hypervolume_is_the_dominated_share_of_the_box():
    ref = (50.0, 10.0)
    assert B.hypervolume([], ref) == 0.0
    assert B.hypervolume([(0.0, B.LOW_DROP)], ref) == pytest.approx(1.0)
    assert B.hypervolume([(0.0, -5.0)], ref) == pytest.approx(1.0)  # a larger gain counts as the box's edge
    one = B.hypervolume([(25.0, 4.0)], ref)
    assert one == pytest.approx(25 * 6 / (50 * 12))
    assert B.hypervolume([(25.0, 4.0), (30.0, 5.0)], ref) == pytest.approx(one)  # a dominated point adds nothing
    assert B.hypervolume([(25.0, 4.0), (60.0, 0.0)], ref) == pytest.approx(one)  # outside the box: nothing


def test_a_trial_without_a_cpu_figure_is_refused_not_counted_as_free():
    # An early-stopped trial of an old record had no seconds_cpu: counting it as 0 made the arm look cheap.
    free = {**_trial(0, 1000, 1.0, (1000, 0.0, 0.0)), "cpu_s": None, "trial_id": "t_00003"}
    rec = {"arm": "tpe+anytime+stop", "seed": 4, "wall_s": 1.0, "trials": [free], "base": {"mem_pct": 50.0}}
    grid = {"arm": "grid", "seed": 4, "wall_s": 1.0, "trials": [_trial(0, 1000, 1.0, (1000, 0.0, 0.0))],
            "base": {"mem_pct": 50.0}}
    with pytest.raises(ValueError, match=r"tpe\+anytime\+stop seed 4: trials \['t_00003'\] reported no seconds_cpu"):
        B.summarize(rec, grid)


def test_the_values_space_offers_the_grids_own_values_and_an_epoch_range():
    from sweeps.space_file import load_search_space

    path, doc = B.bench_space("balanced_subnet", None, values=True)
    sp = load_search_space(path, "balanced_subnet")
    grid = load_search_space(B.bench_space("balanced_subnet", None)[0], "balanced_subnet").paper_grid
    assert sp.params["ratio"].choices == tuple(sorted(grid["ratio"]))
    assert sp.params["loss_weighting"].choices == tuple(sorted(grid["loss_weighting"]))
    assert (sp.params["epochs"].type, sp.params["epochs"].low, sp.params["epochs"].high) == \
        ("int", min(grid["epochs"]), max(grid["epochs"]))  # a range: anytime checkpoints need one
    assert "+values" not in "".join(B.DEFAULT_ARMS) and "gp+anytime+constraint+values" in B.ARMS


def test_a_trial_that_started_from_another_trials_resume_file_is_flagged():
    # Checkpoints from epoch 1: a fresh run. From epoch 4: it resumed after epoch 3 from a file it did not write.
    fresh = {"trial_id": "a", "points": [{"source": "checkpoint", "epochs": e} for e in (1, 2, 3)]}
    resumed = {"trial_id": "b", "points": [{"source": "checkpoint", "epochs": e} for e in (4, 5)]}
    single = {"trial_id": "c", "points": [{"source": "trial", "epochs": 1}]}  # one epoch: no checkpoint at all
    assert B.resumed_elsewhere({"arm": "tpe+anytime", "trials": [fresh, resumed, single]}) == ["b"]
    # A grid+anytime trial's checkpoints are the grid's own epoch counts, which need not start at 1.
    assert B.resumed_elsewhere({"arm": "grid+anytime", "trials": [resumed]}) == []
