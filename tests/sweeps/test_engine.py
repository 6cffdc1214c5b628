"""Real sweeps on the session's Ray runtime, MLflow in temporary SQLite files, math-tiny base model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE, MLFLOW_USER

from sweeps import tags as T
from tests.sweeps.conftest import run_cli
from tinymem.data.bundle import DataBundle
from tinymem.store import ModelStore


def children(uri: str, parent_run_id: str):
    client = MlflowClient(uri)
    exp_id = client.get_run(parent_run_id).info.experiment_id
    return client.search_runs([exp_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")


def _inputs(run) -> dict[str, tuple[str, str, str]]:
    """A run's dataset inputs: context (forget / retain / val / test) -> (name, digest, source)."""
    out = {}
    for i in run.inputs.dataset_inputs:
        context = {t.key: t.value for t in i.tags}[MLFLOW_DATASET_CONTEXT]
        assert context not in out, f"two inputs with context {context}"
        out[context] = (i.dataset.name, i.dataset.digest, i.dataset.source)
    return out


def test_durable_sweep_end_to_end(ray_runtime, sweep_args, sweep_root, tracking_uri, capsys):
    code, out, err = run_cli(sweep_args("durable", "t-durable", "--num-samples", "4"), capsys)
    assert code == 0, err
    for key in ("experiment", "mlflow_parent_run_id", "tracking_uri", "trials", "completed", "failed",
                "early_stopped", "base", "pareto", "best_paper_rule", "pareto_csv", "pareto_png"):
        assert key in out, key
    assert (out["trials"], out["completed"], out["failed"], out["early_stopped"]) == (4, 4, 0, 0)
    assert out["tracking_uri"] == tracking_uri and out["experiment"] == "t-durable"
    assert out["base"]["mem_pct"] > 0 and "test_acc" in out["base"]
    assert out["pareto"], "a completed sweep has a non-empty front"
    for rec in out["pareto"]:
        assert set(rec["params"]) >= {"ratio", "batch_size"}
        for k in ("mem_pct", "val_acc_drop", "test_acc_drop", "test_acc", "seconds_mitigate"):
            assert isinstance(rec[k], float)
    assert Path(out["pareto_csv"]).is_file() and Path(out["pareto_png"]).stat().st_size > 1000
    assert "mlflow ui --backend-store-uri" in out["mlflow_ui"]

    runs = children(tracking_uri, out["mlflow_parent_run_id"])
    assert len(runs) == 4
    ratios = sorted(float(r.data.params["ratio"]) for r in runs)
    assert 0.01 in ratios  # the method's default, evaluated first as a warm start
    front_ids = {rec["run_id"] for rec in out["pareto"]}
    for r in runs:
        assert r.info.status == "FINISHED" and r.data.tags[T.STATE] == "completed"
        assert r.data.tags[T.PARETO] == ("true" if r.info.run_id in front_ids else "false")
        assert {"mem_pct", "test_acc", "val_acc_drop", "test_acc_drop", "test_ppl", "seconds_mitigate", "seconds_load", "info_unlearn_rows", "mem_pct_ci_high"} <= set(r.data.metrics)
        assert r.data.params["method"] == "durable" and r.data.params["preset"] == "math-tiny"
    client = MlflowClient(tracking_uri)
    parent = client.get_run(out["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED"
    # The printed filter is MLflow's search syntax for the dotted tag: on the store it selects the front exactly.
    assert T.PARETO_FILTER in out["mlflow_ui"]
    found = client.search_runs([parent.info.experiment_id], filter_string=T.PARETO_FILTER)
    assert {r.info.run_id for r in found} == front_ids
    # MLflow's system tags, resolved once on the driver, on every run of the sweep.
    for r in [parent, *runs]:
        assert r.data.tags[MLFLOW_SOURCE_TYPE] == "LOCAL" and r.data.tags[MLFLOW_SOURCE_NAME] == sys.argv[0]
        assert r.data.tags[MLFLOW_USER]
    # The base model's data are the inputs of every run: four splits, one digest each, the same on every trial
    # and on the parent, computed from the stored tensors.
    contexts = [_inputs(client.get_run(r.info.run_id)) for r in [parent, *runs]]
    assert set(contexts[0]) == {"forget", "retain", "val", "test"}
    assert all(c == contexts[0] for c in contexts)
    key = json.loads(parent.data.tags[T.BASE_KEYS])["math-tiny"]
    digests = DataBundle.load(ModelStore(sweep_root).local_dir(key)).digests()
    for split, (name, digest, source) in contexts[0].items():
        assert name == f"math-tiny/{split}" and digests[split]["digest"].startswith(digest) and len(digest) >= 8
        assert json.loads(source)["uri"].endswith(f"models/{key}/data.safetensors")
    assert parent.data.metrics["base_mem_pct"] == pytest.approx(out["base"]["mem_pct"])
    assert "--method durable" in parent.data.params["command"]
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"pareto.csv", "pareto.png", "trials.csv", "search_space.yaml"} <= arts

    # The report rebuilds the same front from MLflow alone.
    from sweeps.report import main as report_main

    capsys.readouterr()
    assert report_main(["--experiment", "t-durable", "--tracking-uri", tracking_uri, "--out",
                        str(Path(out["pareto_csv"]).parent / "rebuilt"), "--json"]) == 0
    rebuilt = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in rebuilt["pareto"]] == [r["run_id"] for r in out["pareto"]]
    assert rebuilt["best_paper_rule"]["run_id"] == out["best_paper_rule"]["run_id"]


def test_failing_and_nan_trials_are_recorded_and_the_sweep_goes_on(ray_runtime, sweep_args, spaces_dir,
                                                                      tracking_uri, capsys, tmp_path):
    space = tmp_path / "probe_fail.yaml"
    space.write_text("method: sweep_probe\nparams:\n  ratio: {type: float, low: 0.0, high: 0.5}\n"
                     "paper_grid:\n  fail: [none, raise, nan, crash]\n  ratio: [0.05]\n")
    args = sweep_args("sweep_probe", "t-fail", "--grid", "paper", "--max-failures", "0", "--max-concurrent", "2")
    args[args.index("--search-space") + 1] = str(space)
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert (out["trials"], out["completed"], out["failed"]) == (4, 1, 3)
    by_fail = {r.data.params["fail"]: r for r in children(tracking_uri, out["mlflow_parent_run_id"])}
    assert by_fail["none"].data.tags[T.STATE] == "completed"
    for fail, needle in (("raise", "ConfigError: sweep_probe was asked to fail"),
                         ("nan", "NaN"), ("crash", "RuntimeError: sweep_probe crashed")):
        run = by_fail[fail]
        assert run.data.tags[T.STATE] == "failed" and run.info.status == "FAILED"
        assert needle in run.data.tags[T.ERROR], run.data.tags[T.ERROR]
        assert run.data.tags[T.PARETO] == "false"
    assert [r["params"]["fail"] for r in out["pareto"]] == ["none"]


def test_asha_early_stopped_trials_are_tagged_and_never_on_the_front(ray_runtime, sweep_args, tracking_uri,
                                                                     capsys, tmp_path):
    # The probe reports `guard` as retain_loss every epoch, so ASHA's choices are predictable: after the warm
    # start (guard 1.0) a trial with a larger guard is stopped at the first rung.
    space = tmp_path / "probe_asha.yaml"
    space.write_text("method: sweep_probe\nparams:\n  guard: {type: float, low: 0.0, high: 50.0}\n"
                     "fixed: {epochs: 3, ratio: 0.0}\n")
    args = sweep_args("sweep_probe", "t-asha", "--scheduler", "asha", "--num-samples", "4",
                      "--max-concurrent", "1")
    args[args.index("--search-space") + 1] = str(space)
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert out["early_stopped"] >= 1 and out["completed"] >= 1
    assert out["completed"] + out["early_stopped"] == 4
    runs = children(tracking_uri, out["mlflow_parent_run_id"])
    early = {r.info.run_id for r in runs if r.data.tags[T.STATE] == "early_stopped"}
    assert len(early) == out["early_stopped"]
    assert not early & {rec["run_id"] for rec in out["pareto"]}
    for r in runs:
        if r.info.run_id in early:
            assert r.data.tags[T.PARETO] == "false" and int(r.data.tags[T.EARLY_STOPPED_AT_EPOCH]) < 3
            assert "mem_pct" not in r.data.metrics  # a partial edit is never evaluated as if final


def test_cross_method_sweep(ray_runtime, sweep_args, tracking_uri, capsys):
    code, out, err = run_cli(sweep_args("durable,sweep_probe", "t-cross", "--num-samples", "4"), capsys)
    assert code == 0, err
    runs = children(tracking_uri, out["mlflow_parent_run_id"])
    methods = {r.data.params["method"] for r in runs}
    assert methods == {"durable", "sweep_probe"}  # both defaults are warm starts
    for r in runs:  # hyperparameters are logged under their own names, per method
        assert "ratio" in r.data.params
        assert ("guard" in r.data.params) == (r.data.params["method"] == "sweep_probe")
    assert out["completed"] == 4


@pytest.mark.parametrize("extra, needle", [
    (["--method", "nope"], "unknown method 'nope'; allowed: ["),
    (["--method", "durable", "--preset", "math-huge"], "unknown preset 'math-huge'; allowed: ["),
    (["--method", "durable", "--scheduler", "asha"], "--scheduler asha stops trials between epochs"),
    (["--method", "durable", "--num-samples", "0"], "--num-samples must be >= 1"),
    (["--method", "durable", "--address", "127.0.0.1:1"], "Ray cluster at --address 127.0.0.1:1 is unreachable"),
    (["--method", "durable", "--tracking-uri", "http://127.0.0.1:1"], "tracking server http://127.0.0.1:1 is unreachable"),
    (["--method", "durable", "--tracking-uri", "file:///tmp/mlruns"], "file store, which MLflow 3 refuses"),
    (["--resume", "--experiment", "never-ran"], "nothing to resume"),
    (["--method", "durable", "--storage", "memory://no-such-bucket/runs"], "cannot list bucket 'no-such-bucket'"),
    (["--method", "durable", "--storage", "nosuch://b/runs"], "no filesystem for nosuch://"),
])
def test_bad_input_fails_fast_with_one_line(extra, needle, sweep_root, spaces_dir, capsys):
    import time

    from sweeps.run import main

    args = ["--storage", sweep_root, "--json", *extra]
    if "--method" in extra and extra[extra.index("--method") + 1] == "durable":
        args += ["--search-space", str(spaces_dir / "durable.yaml")]
    t0 = time.time()
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert needle in err and err.startswith("error: ") and "\n" not in err, err
    assert time.time() - t0 < 15


def test_bad_search_space_files_fail_before_any_trial(sweep_root, capsys, tmp_path):
    from sweeps.run import main

    bad_key = tmp_path / "bad_key.yaml"
    bad_key.write_text("method: durable\nparams:\n  ratoi: {type: float, low: 0.001, high: 0.1}\n")
    malformed = tmp_path / "malformed.yaml"
    malformed.write_text("method: durable\nparams: [ratio: {\n")
    for path, needle in ((bad_key, "params.ratoi is not a hyperparameter of durable; allowed: ['ratio', 'batch_size']"),
                         (malformed, "malformed YAML in")):
        code = main(["--method", "durable", "--storage", sweep_root, "--search-space", str(path)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and needle in err and "\n" not in err, err


def test_cli_process_bad_method_exits_2_quickly():
    """The real entry point, as a user runs it: one line on stderr, status 2, no traceback."""
    import subprocess
    import sys
    import time

    repo = Path(__file__).resolve().parents[2]
    t0 = time.time()
    p = subprocess.run([sys.executable, str(repo / "sweeps" / "run.py"), "--method", "nope"], capture_output=True,
                       text=True, timeout=120, cwd=repo)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().startswith("error: unknown method 'nope'; allowed: [")
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert time.time() - t0 < 60  # mostly interpreter + torch import; no Ray is started


def test_help_explains_every_flag_with_its_default(monkeypatch):
    from sweeps.run import build_parser

    # argparse wraps at the terminal's width (also at hyphens, "./tinymem-" / "runs"): read it unwrapped
    monkeypatch.setenv("COLUMNS", "1000")
    text = " ".join(build_parser().format_help().split())
    for flag in ("--method", "--preset", "--num-samples", "--max-concurrent", "--cpus-per-trial", "--gpus-per-trial",
                 "--sampler", "--grid", "--scheduler", "--address", "--storage", "--tracking-uri", "--experiment",
                 "--resume", "--seed", "--search-space", "--json"):
        assert flag in text
    assert "default: math-demo" in text and "default: auto" in text and "default: ./tinymem-runs" in text


# Runs sweeps/run.py as `python sweeps/run.py --help` does (runpy, as __main__), then says what got imported.
HELP_PROBE = """
import contextlib, io, json, runpy, sys
sys.argv = [{script!r}, "--help"]
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        runpy.run_path({script!r}, run_name="__main__")
    except SystemExit as e:
        code = e.code
print(json.dumps({{"code": code, "help": out.getvalue(),
                  "imported": [m for m in ("ray", "optuna", "mlflow") if m in sys.modules]}}))
"""


def test_help_imports_no_ray_optuna_or_mlflow(monkeypatch):
    """`--help` is answered from the flags alone: the heavy libraries load only when a sweep runs."""
    import json
    import os
    import subprocess
    import sys

    from sweeps.run import build_parser

    repo = Path(__file__).resolve().parents[2]
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "COLUMNS": "1000"}
    p = subprocess.run([sys.executable, "-c", HELP_PROBE.format(script=str(repo / "sweeps" / "run.py"))],
                       capture_output=True, text=True, timeout=120, cwd=repo, env=env)
    assert p.returncode == 0, p.stderr
    probe = json.loads(p.stdout)
    assert probe["code"] == 0 and probe["imported"] == [], probe["imported"]
    # the help is whole: the same text as the parser's, every flag there, the Hugging Face group included
    monkeypatch.setenv("COLUMNS", "1000")
    assert probe["help"] == build_parser().format_help()
    for flag in ("--method", "--model", "--json", "--dtype", "--forget-file", "--retain-file", "--test-file",
                 "--metric-preset", "--prompt-len", "--k", "--seq-len"):
        assert f" {flag} " in probe["help"] or f" {flag}\n" in probe["help"], flag


def test_multi_objective_study_is_not_downgraded(sweep_root, spaces_dir):
    """The searcher holds both objectives and Tune's TuneConfig gets no metric/mode (one there would make the
    study single-objective)."""
    from sweeps.options import SweepOptions
    from sweeps.plan import plan_sweep
    from sweeps.searchers import make_searcher

    plan = plan_sweep(SweepOptions(method="durable", preset="math-tiny", storage=sweep_root,
                                   search_space=str(spaces_dir / "durable.yaml"),
                                   tracking_uri=f"sqlite:///{sweep_root}/unused.db"))
    searcher = make_searcher(plan, 8)
    assert searcher.metric == ["mem_pct", "val_acc_drop"] and searcher.mode == ["min", "min"]
    assert len(searcher.study.directions) == 2


@pytest.mark.parametrize("flag, value", [("--gpus-per-trial", "1"), ("--cpus-per-trial", "64")])
def test_a_trial_no_node_can_hold_is_an_error_before_any_trial(ray_runtime, sweep_args, capsys, flag, value):
    code, out, err = run_cli(sweep_args("durable", "t-fit", flag, value), capsys)
    assert code == 2
    assert "error: no Ray node can hold one trial" in err and flag in err


def test_names_pickled_by_earlier_sweeps_still_resolve():
    """Tune pickles the searcher, the callbacks and the space into an experiment by module path; sweeps started
    before these classes had their own modules must still unpickle on --resume."""
    import pickle

    from sweeps import searchers, space
    from sweeps.progress import ProgressLines

    for module, name, cls in (("sweeps.engine", "ParetoOptunaSearch", searchers.ParetoOptunaSearch),
                              ("sweeps.engine", "GridSearcher", searchers.GridSearcher),
                              ("sweeps.engine", "ProgressLines", ProgressLines),
                              ("sweeps.space", "SweepSpace", space.SweepSpace),
                              ("sweeps.space", "SearchSpace", space.SearchSpace),
                              ("sweeps.space", "Distribution", space.Distribution)):
        # protocol 0 by hand: the global `module name`, as an old pickle holds it
        assert pickle.loads(f"c{module}\n{name}\n.".encode()) is cls, (module, name)


def test_repeats_evaluate_each_configuration_on_several_base_models(ray_runtime, sweep_args, tracking_uri, capsys):
    """--repeats 2: each trial runs on base-model seeds 0 and 1, the front uses the means, intervals shown."""
    code, out, err = run_cli(sweep_args("durable", "t-repeats", "--num-samples", "2", "--repeats", "2"), capsys)
    assert code == 0, err
    assert out["completed"] == 2
    runs = children(tracking_uri, out["mlflow_parent_run_id"])
    for r in runs:
        m = r.data.metrics
        assert m["mem_pct"] == (m["mem_pct_seed0"] + m["mem_pct_seed1"]) / 2
        assert m["mem_pct_seeds_ci_low"] <= m["mem_pct"] <= m["mem_pct_seeds_ci_high"]
        assert m["val_acc_drop"] == (m["val_acc_drop_seed0"] + m["val_acc_drop_seed1"]) / 2
        # the two seeds are two base models (their unlearning sets differ in size or their accuracy does)
        assert (m["info_unlearn_rows_seed0"], m["test_acc_seed0"]) != (m["info_unlearn_rows_seed1"], m["test_acc_seed1"])
        assert m["mem_counted"] == m["mem_counted"] and m["mem_pct_ci_low"] <= m["mem_pct"] <= m["mem_pct_ci_high"]
    for rec in out["pareto"]:
        assert rec["mem_pct_seeds_ci_low"] <= rec["mem_pct"] <= rec["mem_pct_seeds_ci_high"]
    # The kept model is the first base seed's: its rebuild command names that seed, its metrics are seed 0's.
    from tinymem.store import read_manifest

    by_run = {r.info.run_id: r.data.metrics for r in runs}
    for rec in out["pareto"]:
        assert "--spec-set seed=0" in rec["mitigate_command"]
        manifest = read_manifest(Path(rec["model_dir"]))
        assert manifest["spec"]["seed"] == 0
        assert manifest["metrics"]["mem_pct"] == by_run[rec["run_id"]]["mem_pct_seed0"]


def test_bad_repeats_and_heldout_are_refused_before_any_trial(sweep_args, capsys):
    code, _, err = run_cli(sweep_args("durable", "t-bad-repeats", "--repeats", "0"), capsys)
    assert code == 2 and "--repeats must be >= 1, got 0" in err
    code, _, err = run_cli(sweep_args("durable", "t-bad-heldout", "--heldout-frac", "1.5"), capsys)
    assert code == 2 and "--heldout-frac must be in [0, 1), got 1.5" in err
