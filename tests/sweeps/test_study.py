"""The sweep's persisted Optuna study, its samplers and the utility constraint: where the study lives, the
space-filling start-up points, GPSampler on a constrained multi-objective study, the feasible front first in the
report, and a real sweep whose study `optuna.load_study` opens (real Ray, MLflow and Optuna SQLite storage).
The resume of a study after a crash: tests/sweeps/test_ledger.py (searcher) and test_crash_resume.py (driver)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from sweeps import study as S
from sweeps import tags as T
from sweeps.errors import SweepError
from sweeps.options import DEFAULT_NUM_SAMPLES, SweepOptions
from sweeps.plan import plan_sweep
from sweeps.results import Report
from sweeps.samplers import startup_size
from sweeps.searchers import make_searcher
from sweeps.study import make_storage
from tests.sweeps.conftest import run_cli
from tinymem.store import DEFAULT_ROOT

# The default sweep's i.i.d. start-up points with seed 0 before this change (TPE's random start-up), as
# (ratio, loss_weighting): one corner of the space.
IID_SEED0 = [(0.111, 0.741), (0.109, 0.758), (0.068, 0.886)]


def _unit(space, ratio: float, w: float) -> tuple[float, float]:
    """(ratio, w) as coordinates in [0, 1]: ratio on its log scale, as the space draws it."""
    r, lw = space.params["ratio"], space.params["loss_weighting"]
    return ((math.log(ratio) - math.log(r.low)) / (math.log(r.high) - math.log(r.low)),
            (w - lw.low) / (lw.high - lw.low))


def _closest_pair(points: list[tuple[float, float]]) -> float:
    return min(math.dist(p, q) for p, q in itertools.combinations(points, 2))


def test_startup_points_of_the_default_sweep_fill_its_space(tmp_path):
    """The default space (balanced_subnet, seed 0) with 40 trials: the warm start, then three Sobol points that
    reach both halves of every dimension, where the i.i.d. draw had loss_weighting only in its upper half. The
    default sweep (6 trials) spends 3 on the start-up: the warm start and the first two of those points."""
    plan = plan_sweep(SweepOptions(method="balanced_subnet", storage=str(tmp_path / "root"),
                                   tracking_uri=f"sqlite:///{tmp_path}/mlflow.db"))
    assert [startup_size(n) for n in (DEFAULT_NUM_SAMPLES, 30, 40, 100, 1000)] == [3, 3, 4, 10, 10]
    searcher = make_searcher(plan, 40)
    configs = [searcher.suggest(f"t{i}") for i in range(4)]
    assert configs[0] == plan.space.warm_start_points()[0]
    space = plan.space.spaces["balanced_subnet"]
    sobol = [_unit(space, c["ratio"], c["loss_weighting"]) for c in configs[1:]]
    iid = [_unit(space, r, w) for r, w in IID_SEED0]
    for dim in (0, 1):
        assert min(p[dim] for p in sobol) < 0.5 < max(p[dim] for p in sobol), sobol
    assert min(p[1] for p in iid) > 0.5  # the comparison means something: the old draw fails it
    epochs = sorted(c["epochs"] for c in configs[1:])
    assert len(set(epochs)) == 3 and epochs[0] <= 4 < epochs[-1], epochs  # 1-8: both halves, no repeat
    assert _closest_pair(sobol) > 3 * _closest_pair(iid), (sobol, iid)
    labels = [t.user_attrs["startup"] for t in searcher.study.get_trials(deepcopy=False)[:4]]
    assert labels == ["warm start", "sobol", "sobol", "sobol"]


def test_gp_sampler_models_a_constrained_multi_objective_study(tmp_path, spaces_dir):
    """`--sampler gp`: after the start-up points, GPSampler itself proposes (its relative params are stored on
    the trial), on two objectives with the constraint the searcher sets."""
    plan = plan_sweep(SweepOptions(method="durable", preset="math-tiny", storage=str(tmp_path / "root"),
                                   search_space=str(spaces_dir / "durable.yaml"), sampler="gp",
                                   tracking_uri=f"sqlite:///{tmp_path}/mlflow.db"))
    searcher = make_searcher(plan, 6)  # start-up of 3 (startup_size): 1 warm start + 2 Sobol points, then the GP
    for i in range(6):
        ratio = searcher.suggest(f"t{i}")["ratio"]
        # memorization falls and the accuracy drop rises with the ratio: a real trade-off for the model
        searcher.on_trial_complete(f"t{i}", {"mem_pct": 100 * (1 - ratio * 9), "val_acc_drop": 20 * ratio,
                                              "final": 1, "failed": 0})
    trials = searcher.study.get_trials(deepcopy=False)
    assert type(searcher.study.sampler).__name__ == "GPSampler"
    assert [t.state.name for t in trials] == ["COMPLETE"] * 6
    assert [any(k.startswith("gp:relative_params") for k in t.system_attrs) for t in trials] == \
        [False] * 3 + [True] * 3
    for t in trials:
        assert t.constraints["max_utility_loss"] == pytest.approx(t.values[1] - 1.0)


def test_where_the_study_lives_and_bad_storages(tmp_path):
    assert S.default_storage(str(tmp_path)) == str(tmp_path / "optuna.journal")
    # A journal cannot be appended to in an object store: the default is a local file under the default root,
    # as MLflow's.
    assert S.default_storage("s3://bucket/runs") == str(Path(DEFAULT_ROOT).resolve() / "optuna.journal")
    for url in (f"sqlite:///{tmp_path}/new/dir/optuna.db", str(tmp_path / "new" / "dir" / "x.journal")):
        S.check_storage(url)  # made when the study opens
    assert not (tmp_path / "new").exists()
    (tmp_path / "file").write_text("x")
    for url, needle in ((f"sqlite:///{tmp_path}/file/optuna.db", "is not a writable directory"),
                        (str(tmp_path / "file" / "optuna.journal"), "is not a writable directory"),
                        (str(tmp_path), "is a directory; allowed: a file path"),
                        ("postgresql://nobody@127.0.0.1:1/db", "is unusable"),
                        ("redis://127.0.0.1", "or an RDB URL such as sqlite:///PATH.db")):
        with pytest.raises(SweepError, match=needle):
            S.check_storage(url)


@pytest.mark.parametrize("kind", ["journal", "rdb"])
def test_a_study_opens_the_same_from_a_journal_and_an_rdb(tmp_path, kind):
    """Both storages hold what the sweep needs; `optuna.load_study` opens either (`make_storage`)."""
    import optuna

    url = str(tmp_path / "s.journal") if kind == "journal" else f"sqlite:///{tmp_path / 's.db'}"
    spec = S.StudySpec(url=url, name="e-s1", objectives=("mem_pct", "val_acc_drop"), sweep_id="s1")
    study = S.open_study(spec, lambda held: optuna.samplers.RandomSampler(seed=held), [({"x": 0.5}, "default")])
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    study.tell(trial, [1.0, 2.0])
    again = optuna.load_study(study_name="e-s1", storage=S.make_storage(url))
    assert [(t.params, t.values, t.user_attrs) for t in again.trials] == [({"x": 0.5}, [1.0, 2.0],
                                                                            {"startup": "default"})]
    assert again.user_attrs["sweep_id"] == "s1" and again.metric_names == ["mem_pct", "val_acc_drop"]


def _report(max_loss: float | None) -> Report:
    rows = [  # (mem_pct, val_acc_drop): a, b and c trade one for the other; c dominates d
        {"trial_id": "a", "mem_pct": 0.0, "val_acc_drop": 4.0},
        {"trial_id": "b", "mem_pct": 5.0, "val_acc_drop": 0.5},
        {"trial_id": "c", "mem_pct": 2.0, "val_acc_drop": 1.5},
        {"trial_id": "d", "mem_pct": 3.0, "val_acc_drop": 1.6},
    ]
    df = pd.DataFrame([{**r, "run_id": f"run-{r['trial_id']}", "state": "completed", "method": "durable",
                        "preset": "math-tiny", "val_acc": 90.0 - r["val_acc_drop"], "ratio": 0.1} for r in rows])
    from sweeps.pareto import select

    annotated, best = select(df, {"math-tiny": {"mem_pct": 50.0, "val_acc": 90.0}}, "math", max_loss=max_loss)
    return Report(trials=annotated, param_names=["ratio"], kind="math", bases={}, best_index=best,
                  max_loss=max_loss)


def test_the_report_lists_the_feasible_front_first():
    rep = _report(1.0)
    assert list(rep.front["trial_id"]) == ["b", "a", "c"]  # b feasible; then a, c by mem_pct
    assert [r["feasible"] for r in rep.pareto_records()] == [True, False, False]
    assert "feasible: val_acc_drop <= 1 (1 of 3 on the front, listed first)" in rep.summary()
    table = rep.table().splitlines()
    assert "feasible" in table[0] and table[1].split()[0] == "b"
    plain = _report(None)  # no constraint: the layout as before
    assert list(plain.front["trial_id"]) == ["a", "c", "b"] and "feasible" not in plain.summary()


def test_a_sweep_study_opens_with_optuna_load_study(ray_runtime, sweep_args, tracking_uri, capsys):
    """One trial per candidate, each with its Ray trial id, MLflow run id and constraint; the study names its
    objectives; the report marks each front member feasible or not."""
    import optuna

    code, out, err = run_cli(sweep_args("sweep_probe", "t-study", "--num-samples", "3", "--max-utility-loss", "2",
                                        "--keep-models", "none"), capsys)
    assert code == 0, err
    assert f"Optuna study {out['optuna_study']} in {out['optuna_storage']}" in err
    study = optuna.load_study(study_name=out["optuna_study"], storage=make_storage(out["optuna_storage"]))
    assert study.metric_names == ["mem_pct", "val_acc_drop"]
    assert study.user_attrs["objectives"] == ["mem_pct", "val_acc_drop"] and study.user_attrs["max_utility_loss"] == 2
    runs = MlflowClient(tracking_uri).search_runs(
        [out["mlflow_experiment_id"]], filter_string=f"tags.mlflow.parentRunId = '{out['mlflow_parent_run_id']}'")
    by_trial = {r.data.tags[T.TRIAL_ID]: r for r in runs}
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 3 and {t.state.name for t in trials} == {"COMPLETE"}
    assert sorted(t.user_attrs["ray_trial_id"] for t in trials) == sorted(by_trial)
    for t in trials:
        run = by_trial[t.user_attrs["ray_trial_id"]]
        assert t.user_attrs["mlflow_run_id"] == run.info.run_id
        assert t.values == [run.data.metrics["mem_pct"], run.data.metrics["val_acc_drop"]]
        assert t.constraints["max_utility_loss"] == pytest.approx(run.data.metrics["val_acc_drop"] - 2)
        assert run.data.tags[T.FEASIBLE] == str(run.data.metrics["val_acc_drop"] <= 2).lower()
    flags = [r["feasible"] for r in out["pareto"]]
    assert flags == sorted(flags, reverse=True)  # feasible first
    for r in out["pareto"]:
        assert r["feasible"] == (r["val_acc_drop"] <= 2)


def test_a_searcher_pickled_before_the_study_was_persisted_resumes(tmp_path, spaces_dir):
    """Tune's experiment of an older sweep holds the searcher with its study inside the pickle: unpickled now,
    that study is dropped and a new one under the root is told the ledger's finished trials."""
    import optuna

    from sweeps.ledger import TrialLedger
    from sweeps.searchers import ParetoOptunaSearch

    plan = plan_sweep(SweepOptions(method="durable", preset="math-tiny", storage=str(tmp_path / "root"),
                                   search_space=str(spaces_dir / "durable.yaml"),
                                   tracking_uri=f"sqlite:///{tmp_path}/mlflow.db"))
    ledger = TrialLedger(plan.sweep_dir)
    ledger.append("old", "created", run_id="r-old", config={"ratio": 0.05}, state="running")
    ledger.append("old", "finished", state="completed", result={"mem_pct": 1.0, "val_acc_drop": 0.2, "final": 1})
    old = {"_space": plan.space, "_metric": ["mem_pct", "val_acc_drop"], "_mode": ["min", "min"],
           "_study_name": plan.study_name, "ledger_dir": plan.sweep_dir, "num_samples": 3, "_told": set(),
           "_sampler": optuna.samplers.TPESampler(seed=0), "_ot_study": object(), "_ot_trials": {"x": object()}}
    searcher = ParetoOptunaSearch.__new__(ParetoOptunaSearch)
    searcher.__setstate__(old)
    assert isinstance(searcher.suggest("new"), dict)
    study = optuna.load_study(study_name=plan.study_name, storage=S.make_storage(str(tmp_path / "root" /
                                                                                 "optuna.journal")))
    assert [(t.user_attrs["ray_trial_id"], t.state.name) for t in study.trials] == [("old", "COMPLETE"),
                                                                                 ("new", "RUNNING")]


def test_auto_sampler_is_the_gp_while_the_study_stays_small(tmp_path):
    """`--sampler auto` (the default) resolves at planning, into the sweep record: the GP while trials and their
    anytime candidates come to at most 500 points, MO-TPE beyond; a named sampler is kept."""
    def sampler(**kw) -> str:
        return plan_sweep(SweepOptions(method="balanced_subnet", storage=str(tmp_path / "root"),
                                       tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", **kw)).options.sampler

    assert sampler() == "gp"  # 6 trials x (1 + 7 / 2) points
    assert sampler(num_samples=110) == "gp" and sampler(num_samples=112) == "tpe"
    assert sampler(num_samples=200, anytime=False) == "gp"  # one point per trial
    assert sampler(num_samples=6, sampler="tpe") == "tpe"
