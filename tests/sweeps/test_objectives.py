"""`--objectives`: more than two objectives through the plan, the Optuna study, the front, the table and the plot."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from mlflow import MlflowClient
from PIL import Image

from sweeps.errors import SweepError
from sweeps.objectives import resolve
from sweeps.pareto import select
from sweeps.results import Report
from tests.sweeps.conftest import run_cli

THREE = "mem_pct,relearn_mem_pct,val_acc_drop"


def test_the_default_is_memorization_and_the_val_utility_loss():
    assert resolve(None, "math").names == ("mem_pct", "val_acc_drop")
    assert resolve(None, "language").names == ("mem_pct", "val_ppl_increase_pct")
    assert resolve(None, "math").robustness == ()


def test_robustness_objectives_ask_the_trials_for_their_metrics():
    goals = resolve(THREE, "math")
    assert goals.names == ("mem_pct", "relearn_mem_pct", "val_acc_drop")
    assert goals.robustness == ("relearn_mem_pct",)
    assert resolve(None, "math", robustness="nll_gap,relearn_mem_pct").robustness == ("relearn_mem_pct", "nll_gap")


def test_a_test_split_objective_is_selected_on_its_val_twin_and_says_so():
    goals = resolve("mem_pct,relearn_mem_pct,test_acc_drop", "math")
    assert goals.names == ("mem_pct", "relearn_mem_pct", "val_acc_drop")
    assert any("test_acc_drop" in n and "val_acc_drop" in n for n in goals.notes)


@pytest.mark.parametrize("text, kind, needle", [
    ("mem_pct,bogus,val_acc_drop", "math", "'bogus'"),
    ("mem_pct", "math", "at least two"),
    ("mem_pct,relearn_mem_pct", "math", "no utility loss"),
    ("mem_pct,mem_pct,val_acc_drop", "math", "twice"),
    ("mem_pct,val_ppl_increase_pct", "math", "language utility loss"),
    ("mem_pct,val_acc_drop", "language", "math utility loss"),
    ("heldout_mem_pct,val_acc_drop", "math", "--heldout-frac"),
])
def test_bad_objectives_name_the_problem(text, kind, needle):
    with pytest.raises(SweepError, match="allowed|needs|twice|utility") as e:
        resolve(text, kind)
    assert needle in str(e.value)


def _trials() -> pd.DataFrame:
    # b is dominated by a on (mem, loss) but not on all three: relearning brings a's memorization back.
    rows = [("a", 0.0, 80.0, 0.5), ("b", 0.0, 10.0, 0.6), ("c", 5.0, 90.0, 0.9), ("d", 50.0, 50.0, 0.1)]
    return pd.DataFrame([{"trial_id": t, "run_id": t * 8, "state": "completed", "method": "m", "preset": "p",
                          "mem_pct": m, "relearn_mem_pct": r, "val_acc_drop": u, "test_acc_drop": u,
                          "test_acc": 90.0, "val_acc": 90.0, "mem_pct_ci_low": 0.0, "mem_pct_ci_high": m + 5,
                          "relearn_mem_pct_ci_low": max(r - 10, 0), "relearn_mem_pct_ci_high": min(r + 10, 100)}
                         for t, m, r, u in rows])


def test_the_front_on_three_objectives_keeps_what_two_would_drop():
    bases = {"p": {"mem_pct": 80.0, "val_acc": 90.0, "test_acc": 90.0}}
    two, _ = select(_trials(), bases, "math")
    three, _ = select(_trials(), bases, "math", ["mem_pct", "relearn_mem_pct", "val_acc_drop"])
    assert set(two.loc[two["pareto"], "trial_id"]) == {"a", "d"}
    assert set(three.loc[three["pareto"], "trial_id"]) == {"a", "b", "d"}


def test_report_table_and_pair_plot_show_all_three(tmp_path):
    objectives = ["mem_pct", "relearn_mem_pct", "val_acc_drop"]
    bases = {"p": {"mem_pct": 80.0, "val_acc": 90.0, "test_acc": 90.0}}
    df, best = select(_trials(), bases, "math", objectives)
    rep = Report(trials=df, param_names=[], kind="math", bases=bases, best_index=best, objective_names=objectives)
    text = rep.summary()
    assert "Pareto front on (mem_pct, relearn_mem_pct, val_acc_drop)" in text
    assert "relearn_mem_pct" in text.splitlines()[2]  # the table's header
    assert all("relearn_mem_pct" in r for r in rep.pareto_records())
    two = Report(trials=select(_trials(), bases, "math")[0], param_names=[], kind="math", bases=bases,
                 best_index=best)
    rep.plot(tmp_path / "three.png")
    two.plot(tmp_path / "two.png")
    w3, _ = Image.open(tmp_path / "three.png").size
    w2, _ = Image.open(tmp_path / "two.png").size
    assert w3 > 2 * w2  # three panels side by side (each pair of objectives) against one


def test_the_optuna_study_has_one_direction_per_objective(sweep_root, spaces_dir):
    from sweeps.options import SweepOptions
    from sweeps.plan import plan_sweep
    from sweeps.searchers import make_searcher

    plan = plan_sweep(SweepOptions(method="durable", preset="math-tiny", storage=sweep_root, objectives=THREE,
                                   search_space=str(spaces_dir / "durable.yaml"),
                                   tracking_uri=f"sqlite:///{sweep_root}/unused.db"))
    searcher = make_searcher(plan, 8)
    assert searcher.metric == ["mem_pct", "relearn_mem_pct", "val_acc_drop"]
    assert len(searcher.study.directions) == 3


def test_a_three_objective_sweep_end_to_end(ray_runtime, sweep_args, sweep_root, tracking_uri, capsys):
    code, out, err = run_cli(sweep_args("durable", "t-three", "--num-samples", "3", "--objectives",
                                        "mem_pct,relearn_mem_pct,test_acc_drop"), capsys)
    assert code == 0, err
    assert "selects on val_acc_drop" in err
    assert out["objectives"] == ["mem_pct", "relearn_mem_pct", "val_acc_drop"] and out["completed"] == 3
    runs = MlflowClient(tracking_uri).search_runs(
        [out["mlflow_experiment_id"]], filter_string=f"tags.mlflow.parentRunId = '{out['mlflow_parent_run_id']}'")
    assert len(runs) == 3
    for r in runs:
        m = r.data.metrics
        assert math.isfinite(m["relearn_mem_pct"]) and 0.0 <= m["relearn_mem_pct"] <= 100.0
        assert m["relearn_mem_pct_ci_low"] <= m["relearn_mem_pct"] <= m["relearn_mem_pct_ci_high"]
    for rec in out["pareto"]:
        assert isinstance(rec["relearn_mem_pct"], float)
    # the resumed plan keeps the objectives (from the sweep record)
    from sweeps.options import SweepOptions
    from sweeps.plan import plan_sweep

    resumed = plan_sweep(SweepOptions(experiment="t-three", resume="latest", storage=sweep_root))
    assert resumed.objectives == ["mem_pct", "relearn_mem_pct", "val_acc_drop"]
