"""The trial ledger and what a resumed sweep makes of it, without Ray trials: the journal on a local root and on
an object store (fsspec's in-memory filesystem), the searchers catching up with trials finished after Tune's
last save, and the MLflow writer settling the runs a dead driver left (real MLflow SQLite storage)."""

from __future__ import annotations

import json
import pickle
import uuid

import pytest
from mlflow import MlflowClient

from sweeps import storage
from sweeps import tags as T
from sweeps.ledger import EVENTS_DIR, LEDGER, LOST, SYNC_LEDGER, TrialLedger, is_finished
from sweeps.mlflow_io import log_metrics, mlflow_client
from sweeps.mlflow_sync import LedgerSync, SyncContext, sync_all
from sweeps.options import SweepOptions
from sweeps.plan import plan_sweep
from sweeps.study import make_storage
from sweeps.searchers import GridSearcher, make_searcher
from sweeps.tracking import final_result

RESULT = {"mem_pct": 10.0, "val_acc_drop": 0.5, "final": 1, "failed": 0, "epoch": 0, "trial_config": "{}"}


def test_ledger_folds_events_and_survives_a_torn_last_line(tmp_path):
    ledger = TrialLedger(str(tmp_path))
    ledger.append("t1", "created", run_id="r1", config={"ratio": 0.1}, state="running")
    ledger.append("t2", "created", run_id="r2", config={"ratio": 0.2}, state="running")
    ledger.append("t1", "finished", state="completed", result=RESULT, result_ms=5)
    again = TrialLedger(str(tmp_path))  # what a resumed driver reads
    assert again.get("t1") == {"run_id": "r1", "config": {"ratio": 0.1}, "state": "completed", "result": RESULT,
                               "result_ms": 5}
    assert is_finished(again.get("t1")) and not is_finished(again.get("t2"))
    assert again.finished_results() == {"t1": RESULT}
    # The driver died in the middle of a line: the half line is skipped and the next append starts afresh.
    with open(tmp_path / LEDGER, "a") as f:
        f.write('{"trial_id": "t2", "event": "finished", "state": "comp')
    torn = TrialLedger(str(tmp_path))
    assert torn.get("t2")["state"] == "running"
    torn.append("t2", "finished", state="failed", result={"error": "x"})
    assert TrialLedger(str(tmp_path)).get("t2")["state"] == "failed"
    lines = (tmp_path / LEDGER).read_text().splitlines()
    assert len(lines) == 5 and json.loads(lines[-1])["state"] == "failed"


def test_ledger_reads_the_run_map_of_a_sweep_started_before_it(tmp_path):
    storage.write_json(str(tmp_path / "mlflow_runs.json"),
                       {"trials": {"t1": {"run_id": "r1", "state": "completed"}, "t2": {"run_id": "r2",
                                                                                       "state": "running"}}})
    ledger = TrialLedger(str(tmp_path))
    assert ledger.get("t1") == {"run_id": "r1", "state": "completed"}
    ledger.append("t2", "finished", state="completed", result=RESULT, result_ms=1)
    again = TrialLedger(str(tmp_path))
    assert again.get("t2")["run_id"] == "r2" and again.get("t2")["state"] == "completed"
    assert json.loads((tmp_path / "mlflow_runs.json").read_text())["trials"]["t2"]["state"] == "running"  # untouched


def test_ledger_on_an_object_store_is_one_object_per_event():
    import fsspec

    root = f"memory://ledger-{uuid.uuid4().hex[:8]}/sweeps/e/s1"
    ledger = TrialLedger(root)
    for i in range(3):
        ledger.append(f"t{i}", "created", run_id=f"r{i}", state="running")
    resumed = TrialLedger(root)
    assert sorted(resumed.trials) == ["t0", "t1", "t2"]
    resumed.append("t0", "finished", state="completed", result=RESULT, result_ms=1)  # numbered after the others
    fs = fsspec.filesystem("memory")
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(root.removeprefix("memory://") + "/" + EVENTS_DIR,
                                                         detail=False))
    assert [n.split("-")[0] for n in names] == ["0000000000", "0000000001", "0000000002", "0000000003"]
    assert TrialLedger(root).get("t0")["state"] == "completed"


def _plan(tmp_path, spaces_dir, *, grid: bool = False):
    return plan_sweep(SweepOptions(method="durable", preset="math-tiny", storage=str(tmp_path / "root"),
                                   search_space=str(spaces_dir / "durable.yaml"), grid="paper" if grid else None,
                                   tracking_uri=f"sqlite:///{tmp_path}/unused.db"))


def _pickled_modules(data: bytes) -> set[str]:
    """The modules of the classes a pickle refers to (what unpickling it would import)."""
    import io

    found: set[str] = set()

    class Recorder(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            found.add(module)
            return super().find_class(module, name)

    Recorder(io.BytesIO(data)).load()
    return found


def test_optuna_study_is_reloaded_closed_up_and_told_each_trial_once(tmp_path, spaces_dir):
    """A driver dies with trials Tune never saved: the resumed searcher (unpickled as Tune's experiment holds
    it, then restored from its saved JSON state) reloads the study from SQLite, fails what the dead driver left
    RUNNING, tells each finished ledger trial once, counts it toward the budget, and never unpickles a study."""
    import optuna
    from ray.tune.search import Searcher

    plan = _plan(tmp_path, spaces_dir)
    dead = make_searcher(plan, 5)
    pickled = pickle.dumps(dead)  # what Tune's experiment (tuner.pkl) holds: plain values, no study, no sampler
    assert not [m for m in _pickled_modules(pickled) if m.split(".")[0] == "optuna"]
    ledger = TrialLedger(plan.sweep_dir)
    configs = {}

    def start(tid: str) -> None:
        configs[tid] = dead.suggest(tid)
        ledger.append(tid, "created", run_id=f"r{tid}", config=configs[tid], state="running")

    start("a")  # handed out before Tune's save; still running when the driver dies, Tune resumes it
    saved = tmp_path / "searcher-state"
    dead.save(str(saved))
    assert json.loads(saved.read_text())["handed"] == {"a": 0}
    # After the save: "b" completed and was told, "c" failed and the driver died before telling, "d" died with it.
    for tid in ("b", "c", "d"):
        start(tid)
    ledger.append("b", "finished", state="completed", result=RESULT, result_ms=1)
    dead.on_trial_complete("b", RESULT)
    ledger.append("c", "finished", state="failed", result={**RESULT, "failed": 1}, result_ms=1)
    ledger.append("d", LOST, state=LOST)

    restored = pickle.loads(pickled)
    restored.restore(str(saved))
    # 5 samples: "a" (Tune knows it), "b" and "c" (finished, only the ledger knows them): two more; "d" died.
    fresh = {"e": restored.suggest("e"), "f": restored.suggest("f")}
    assert restored.suggest("g") == Searcher.FINISHED
    assert not [c for c in fresh.values() if c in configs.values()], (fresh, configs)
    restored.on_trial_complete("a", RESULT)  # Tune's resumed trial ends: its Optuna trial was closed on reload
    for tid in fresh:
        restored.on_trial_complete(tid, {**RESULT, "mem_pct": 20.0, "val_acc_drop": 3.0})

    study = optuna.load_study(study_name=plan.study_name, storage=make_storage(plan.study_storage))
    trials = study.get_trials(deepcopy=False)
    by_state: dict[str, list[str]] = {}
    for t in trials:
        name = "CLOSED" if "closed" in t.user_attrs else t.state.name
        by_state.setdefault(name, []).append(t.user_attrs["ray_trial_id"])
    assert sorted(by_state["COMPLETE"]) == ["a", "b", "e", "f"]  # each once
    assert by_state["FAIL"] == ["c"] and sorted(by_state["CLOSED"]) == ["a", "c", "d"]
    assert "RUNNING" not in by_state and "WAITING" not in by_state
    complete = {t.user_attrs["ray_trial_id"]: t for t in trials if t.state.name == "COMPLETE"}
    assert complete["b"].values == [10.0, 0.5] and complete["b"].user_attrs["mlflow_run_id"] == "rb"
    assert complete["a"].user_attrs["mlflow_run_id"] == "ra" and complete["a"].params == configs["a"]
    # The math default --max-utility-loss 1: val_acc_drop 0.5 is feasible (-0.5), 3.0 is not (+2.0).
    assert complete["b"].constraints == {"max_utility_loss": -0.5}
    assert complete["e"].constraints == {"max_utility_loss": 2.0}

    # Tune saves this state, then the driver dies again: nothing is told twice, and the budget is spent.
    restored.save(str(saved))
    again = pickle.loads(pickled)
    again.restore(str(saved))
    assert again.suggest("h") == Searcher.FINISHED
    assert len(again.study.get_trials(deepcopy=False)) == len(trials)


def test_grid_does_not_hand_out_points_of_trials_finished_after_tunes_save(tmp_path, spaces_dir):
    from ray.tune.search import Searcher

    plan = _plan(tmp_path, spaces_dir, grid=True)
    points = plan.space.grid_points()
    assert len(points) == 3
    grid = GridSearcher(points, ledger_dir=plan.sweep_dir)
    assert grid.suggest("a") == points[0]
    saved = tmp_path / "grid.json"
    grid.save(str(saved))
    ledger = TrialLedger(plan.sweep_dir)
    ledger.append("b", "created", run_id="rb", config=points[1], state="running")
    ledger.append("b", "finished", state="completed", result=RESULT, result_ms=1)
    ledger.append("c", "created", run_id="rc", config=points[2], state="running")  # died with the driver

    restored = GridSearcher([], ledger_dir=plan.sweep_dir)
    restored.restore(str(saved))
    assert restored.suggest("d") == points[2]  # point 1 finished; point 2 is run again
    assert restored.suggest("e") == Searcher.FINISHED
    assert pickle.loads(pickle.dumps(restored)).handed == ["a", "d"]


def test_writer_settles_what_a_dead_driver_left_in_mlflow(tmp_path):
    """The MLflow writer's recovery and replay: a trial that finished while MLflow lacked part of it is
    completed from the ledger (metrics not doubled), a lost trial's run is closed as failed, a run made for a
    trial but never recorded is adopted, a second run of a trial is deleted, and an older sweep's run is kept."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow_client(uri)
    exp = client.create_experiment("t-recover")
    parent = client.create_run(exp, tags={T.ROLE: "sweep"}).info.run_id

    def child(trial_id: str, tag: str = T.TRIAL_ID) -> str:
        return client.create_run(exp, tags={"mlflow.parentRunId": parent, tag: trial_id,
                                            T.STATE: "running"}).info.run_id

    done, lost, unrecorded, second = child("done"), child("lost"), child("unrecorded"), child("done")
    old = child("old", tag="trial_id")  # logged before the `tinymem.` namespace, by a sweep whose ledger named it
    sweep = str(tmp_path / "sweep")
    ledger, progress = TrialLedger(sweep), TrialLedger(sweep, SYNC_LEDGER)
    created = {"config": {"ratio": 0.1}, "state": "running", "method": "durable", "preset": "math-tiny",
               "params": {"ratio": 0.1}, "run_name": "x", "start_ms": 1_700_000_000_000}
    for tid in ("done", "lost", "unrecorded"):
        ledger.append(tid, "created", **created)
    ledger.append("old", "created", run_id=old, config={"ratio": 0.1}, state="running")
    progress.append("done", "run", run_id=done)
    progress.append("lost", "run", run_id=lost)
    # "done" finished: the ledger has its result, MLflow its final metrics, and then the driver died.
    ledger.append("done", "finished", state="completed", result=RESULT, result_ms=1_700_000_000_000)
    log_metrics(client, done, RESULT, at_ms=1_700_000_000_000)
    ledger.append("lost", LOST, state=LOST, error="the sweep's driver died while this trial ran")

    ctx = SyncContext(uri, exp, parent, sweep)
    assert sync_all(LedgerSync(ctx))
    finished = client.get_run(done)
    assert finished.info.status == "FINISHED" and finished.data.tags[T.STATE] == "completed"
    assert len(client.get_metric_history(done, "mem_pct")) == 1  # replayed, not doubled
    assert client.get_run(second).info.lifecycle_stage == "deleted"  # one run per trial
    gone = client.get_run(lost)
    assert gone.info.status == "FAILED" and "driver died" in gone.data.tags[T.ERROR]
    adopted = client.get_run(unrecorded)  # made by a writer that died before recording it: adopted, not doubled
    assert adopted.info.lifecycle_stage == "active" and adopted.data.params == {"method": "durable",
                                                                                "preset": "math-tiny", "ratio": "0.1"}
    assert TrialLedger(sweep, SYNC_LEDGER).get("unrecorded")["run_id"] == unrecorded
    assert client.get_run(old).info.status == "RUNNING" and client.get_run(old).info.lifecycle_stage == "active"
    again = LedgerSync(ctx)
    assert again.logged("done") and again.logged("lost") and again.pending() == ["unrecorded", "old"]
    children = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent}'")
    assert len(children) == 4  # done, lost, unrecorded, old: nothing created twice
    assert sync_all(again) and len(client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent}'")) == 4


def test_final_result_keeps_what_the_trainable_reported():
    reported = {**RESULT, "time_total_s": 3.0, "training_iteration": 2, "config": {"ratio": 0.1}, "done": True,
                "trial_id": "x", "hostname": "h", "ray_node_id": "n"}
    assert final_result(reported) == {**RESULT, "ray_node_id": "n"}


@pytest.mark.parametrize("bad", ["not json", "[1, 2]", '{"event": "created"}'])
def test_ledger_skips_unreadable_lines(tmp_path, bad):
    (tmp_path / LEDGER).write_text(f'{bad}\n{{"trial_id": "t1", "event": "created", "state": "running"}}\n')
    assert TrialLedger(str(tmp_path)).trials == {"t1": {"state": "running"}}


def test_refresh_reads_on_what_another_writer_appended(tmp_path):
    reader, writer = TrialLedger(str(tmp_path), SYNC_LEDGER), TrialLedger(str(tmp_path), SYNC_LEDGER)
    assert reader.refresh() == {}  # no file yet
    writer.append("t1", "run", run_id="r1")
    assert reader.refresh() == {"t1": {"run_id": "r1"}}
    with open(tmp_path / SYNC_LEDGER, "a") as f:  # a line still being written is left for the next refresh
        f.write('{"trial_id": "t2", "event": "run", "run_id": "r2"}\n{"trial_id": "t1", "event": "logged", "lo')
    assert reader.refresh() == {"t1": {"run_id": "r1"}, "t2": {"run_id": "r2"}}
    with open(tmp_path / SYNC_LEDGER, "a") as f:
        f.write('gged": true}\n')
    assert reader.refresh()["t1"] == {"run_id": "r1", "logged": True}
    assert [e["event"] for e in reader.history("t1")] == ["run", "logged"]


def test_a_lagging_writer_writes_a_trial_in_one_go_with_the_same_result(tmp_path):
    """Events applied one by one and the same events applied as one group (a writer that lags) give the same
    run; the group takes one run creation, one batch and one close."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow_client(uri)
    exp = client.create_experiment("t-merge")
    parent = client.create_run(exp).info.run_id
    calls: dict[str, int] = {}

    class Counting:
        def __getattr__(self, name):
            calls[name] = calls.get(name, 0) + 1
            return getattr(client, name)

    runs = {}
    for how in ("one by one", "as one group"):
        sweep = str(tmp_path / how.replace(" ", "-"))
        ledger = TrialLedger(sweep)
        ledger.append("t", "created", config={"ratio": 0.1}, state="running", method="durable", preset="math-tiny",
                      params={"ratio": 0.1}, run_name="durable-t", start_ms=1_700_000_000_000)
        ledger.append("t", "result", epoch_result={"retain_loss": 0.5, "ray_node_id": "n1"}, at_ms=1_700_000_000_001,
                      step=1)
        ledger.append("t", "finished", state="completed", result={**RESULT, "ray_node_id": "n1"},
                      result_ms=1_700_000_000_002)
        calls.clear()
        sync = LedgerSync(SyncContext(uri, exp, parent, sweep), client=Counting())
        events = ledger.history("t")
        if how == "one by one":
            for event in events:
                sync.apply(event)
        else:
            sync.apply_trial("t", events)
        rid = TrialLedger(sweep, SYNC_LEDGER).get("t")["run_id"]
        run = client.get_run(rid)
        runs[how] = (run.info.status, run.data.params, run.data.metrics,
                     {k: v for k, v in run.data.tags.items() if k.startswith("tinymem.")}, dict(calls))
        assert sync.logged("t")
    assert runs["one by one"][:4] == runs["as one group"][:4]
    assert runs["one by one"][0] == "FINISHED" and runs["one by one"][3][T.WHERE["ray_node_id"]] == "n1"
    assert runs["as one group"][4] == {"create_run": 1, "log_batch": 1, "set_terminated": 1}
    assert runs["one by one"][4]["log_batch"] == 3
