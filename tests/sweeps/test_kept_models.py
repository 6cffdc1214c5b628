"""From the Pareto pick to a model in the user's hands: one real sweep (math-tiny, the session's Ray runtime, MLflow in
SQLite) with the default `--keep-models pareto` and `--register-model`, then what a user does with its models:
load them with `transformers`, evaluate them, rerun the printed command, rebuild one from its MLflow run."""

from __future__ import annotations

import contextlib
import io
import json
import shlex
from pathlib import Path

import pytest
from mlflow import MlflowClient

REGISTERED = "tinymem-kept-test"


@pytest.fixture(scope="module")
def kept_sweep(ray_runtime, sweep_root, spaces_dir, tmp_path_factory):
    """One durable sweep of 3 trials; its JSON outcome, tracking URI and sweep directory."""
    from sweeps.run import main

    uri = f"sqlite:///{tmp_path_factory.mktemp('kept-mlflow') / 'mlflow.db'}"
    argv = ["--method", "durable", "--preset", "math-tiny", "--storage", sweep_root, "--tracking-uri", uri,
            "--experiment", "t-kept", "--search-space", str(spaces_dir / "durable.yaml"), "--num-samples", "3",
            "--register-model", REGISTERED, "--json"]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    assert code == 0, err.getvalue()[-3000:]
    data = json.loads(out.getvalue())
    sweep_dir = Path(sweep_root) / "sweeps" / "t-kept" / data["sweep_id"]
    return data, uri, sweep_dir


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """`tinymem ARGV` in this process, on one torch thread as the sweep's trials ran (1 CPU per trial)."""
    import torch

    from tinymem.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    capsys.readouterr()
    try:
        code = main(argv)
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr()
    return code, out.out, out.err


def _front_and_pick(data: dict) -> dict[str, dict]:
    records = {r["trial_id"]: r for r in data["pareto"]}
    records.setdefault(data["best_paper_rule"]["trial_id"], data["best_paper_rule"])
    return records


def test_default_sweep_keeps_the_front_and_the_pick_as_loadable_logged_models(kept_sweep):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data, uri, sweep_dir = kept_sweep
    assert data["completed"] == 3
    kept = _front_and_pick(data)
    assert sorted(p.name for p in (sweep_dir / "models").iterdir()) == sorted(kept)
    client = MlflowClient(uri)
    for trial_id, rec in kept.items():
        model_dir = Path(rec["model_dir"])
        assert model_dir == sweep_dir / "models" / trial_id
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        tok = AutoTokenizer.from_pretrained(model_dir)
        assert model.config.vocab_size == 14 and tok("^1 8 15").input_ids == [10, 1, 12, 8, 12, 1, 5]
        card = (model_dir / "README.md").read_text()
        assert card.startswith("---\nlibrary_name: transformers\n") and "# durable on math-tiny" in card
        assert rec["mitigate_command"].split(" --out ")[0] in card  # the same command, saving elsewhere
        logged = client.get_logged_model(rec["model_id"])
        assert logged.source_run_id == rec["run_id"] and str(logged.status) == "READY"
        assert logged.tags["tinymem.trial_id"] == trial_id
        assert {a.path for a in client.list_logged_model_artifacts(rec["model_id"])} >= {
            "model.safetensors", "config.json", "tokenizer.json", "README.md"}
        tags = client.get_run(rec["run_id"]).data.tags
        assert tags["tinymem.model_dir"] == str(model_dir) and tags["tinymem.model_id"] == rec["model_id"]
    # A trial off the front has no model directory, but its run still holds the config that rebuilds it.
    parent = data["mlflow_parent_run_id"]
    runs = client.search_runs([data["mlflow_experiment_id"]], f"tags.mlflow.parentRunId = '{parent}'")
    assert len(runs) == 3 and all("tinymem.trial_config" in r.data.tags for r in runs)
    for r in runs:
        assert ("tinymem.model_dir" in r.data.tags) == (r.data.tags["tinymem.trial_id"] in kept)

    reg = data["registered_model"]
    assert reg["name"] == REGISTERED and reg["trial_id"] == data["best_paper_rule"]["trial_id"]
    version = client.get_model_version(REGISTERED, reg["version"])
    assert version.source == f"models:/{reg['model_id']}" and version.run_id == data["best_paper_rule"]["run_id"]


def test_register_a_chosen_trial_and_an_unknown_one(kept_sweep):
    from sweeps.errors import SweepError
    from sweeps.models import register_model
    from sweeps.readback import build_from_mlflow

    data, uri, _sweep_dir = kept_sweep
    client = MlflowClient(uri)
    rep = build_from_mlflow(client, data["mlflow_parent_run_id"], None)
    kept = {t: {"model_id": r["model_id"], "run_id": r["run_id"]} for t, r in _front_and_pick(data).items()}
    trial_id = sorted(kept)[-1]
    reg = register_model(f"{REGISTERED}:{trial_id}", rep, kept, client, uri)
    assert int(reg["version"]) == int(data["registered_model"]["version"]) + 1 and reg["trial_id"] == trial_id
    with pytest.raises(SweepError, match=r"trial 'nope' has no kept model; allowed: \[") as e:
        register_model(f"{REGISTERED}:nope", rep, kept, client, uri)
    assert trial_id in str(e.value)


def test_eval_of_a_kept_model_reproduces_the_trial_to_the_last_digit(kept_sweep, capsys):
    data, uri, _sweep_dir = kept_sweep
    rec = data["best_paper_rule"]
    code, out, err = _cli(["eval", "--model", rec["model_dir"], "--device", "cpu", "--json"], capsys)
    assert code == 0, err
    metrics = json.loads(out)["metrics"]
    run = MlflowClient(uri).get_run(rec["run_id"]).data.metrics
    for k in ("mem_pct", "test_acc", "val_acc"):
        assert metrics[k] == run[k], k


def test_the_printed_command_and_from_run_rebuild_the_trial(kept_sweep, capsys, tmp_path):
    data, uri, _sweep_dir = kept_sweep
    rec = data["best_paper_rule"]
    run = MlflowClient(uri).get_run(rec["run_id"]).data.metrics
    argv = shlex.split(rec["mitigate_command"])
    assert argv[:2] == ["tinymem", "mitigate"] and "--spec-set" not in argv  # one base seed: the preset's
    for name in ("ratio", "batch_size"):  # every hyperparameter, not only the searched ones
        assert any(a.startswith(f"{name}=") for a in argv)
    argv[argv.index("--out") + 1] = str(tmp_path / "printed")
    code, out, err = _cli([*argv[1:], "--json"], capsys)
    assert code == 0, err
    after = json.loads(out)["after"]
    for k in ("mem_pct", "val_acc", "test_acc"):
        assert after[k] == run[k], k

    code, out, err = _cli(["mitigate", "--from-run", rec["run_id"], "--tracking-uri", uri, "--out",
                           str(tmp_path / "from-run"), "--json"], capsys)
    assert code == 0, err
    kept = Path(rec["model_dir"], "model.safetensors").read_bytes()
    assert Path(tmp_path / "from-run" / "model.safetensors").read_bytes() == kept
    assert Path(tmp_path / "printed" / "model.safetensors").read_bytes() == kept


def test_from_run_errors_name_the_problem(kept_sweep, capsys, tmp_path):
    data, uri, _sweep_dir = kept_sweep
    code, _, err = _cli(["mitigate", "--from-run", "0123abcd", "--tracking-uri", uri], capsys)
    assert code == 2 and f"no run '0123abcd' in the MLflow store {uri}" in err
    parent = data["mlflow_parent_run_id"]  # a sweep's parent run is not a trial
    code, _, err = _cli(["mitigate", "--from-run", parent, "--tracking-uri", uri], capsys)
    assert code == 2 and "has no tinymem.trial_config tag" in err
    code, _, err = _cli(["mitigate", "--from-run", parent, "--tracking-uri", "postgresql://db/x"], capsys)
    assert code == 2 and "allowed: ['sqlite:///PATH'" in err
    code, _, err = _cli(["mitigate", "--from-run", parent, "--method", "durable", "--tracking-uri", uri], capsys)
    assert code == 2 and "drop ['--method']" in err


def test_the_report_rebuilt_from_mlflow_shows_the_models_and_their_commands(kept_sweep, capsys, tmp_path):
    from sweeps.report import main as report_main

    data, uri, _sweep_dir = kept_sweep
    base = ["--experiment", "t-kept", "--tracking-uri", uri, "--out", str(tmp_path / "report")]
    capsys.readouterr()
    assert report_main([*base, "--json"]) == 0
    rebuilt = json.loads(capsys.readouterr().out)
    keys = ("trial_id", "model_dir", "model_id", "mitigate_command")
    assert [{k: r[k] for k in keys} for r in rebuilt["pareto"]] == [{k: r[k] for k in keys} for r in data["pareto"]]
    assert report_main(base) == 0
    table = capsys.readouterr().out
    for rec in _front_and_pick(data).values():
        assert f"  {rec['trial_id']}: {rec['model_dir']}\n    {rec['mitigate_command']}\n" in table


def test_which_trials_each_keep_mode_keeps(kept_sweep):
    from sweeps.models import kept_trials
    from sweeps.readback import build_from_mlflow

    data, uri, _sweep_dir = kept_sweep
    rep = build_from_mlflow(MlflowClient(uri), data["mlflow_parent_run_id"], None)
    assert sorted(kept_trials(rep, "pareto")) == sorted(_front_and_pick(data))
    assert sorted(kept_trials(rep, "all")) == sorted(rep.trials["trial_id"])  # all 3 completed
    assert kept_trials(rep, "none") == []


def test_model_flags_are_checked_before_any_trial(sweep_args, capsys):
    from tests.sweeps.conftest import run_cli

    code, _, err = run_cli(sweep_args("durable", "t-kept-bad", "--keep-models", "none", "--register-model", "m"),
                           capsys)
    assert code == 2 and "--keep-models none keeps none; allowed with --register-model: ['pareto', 'all']" in err
    code, _, err = run_cli(sweep_args("durable", "t-kept-bad", "--register-model", "m:"), capsys)
    assert code == 2 and "bad --register-model 'm:'; expected NAME or NAME:TRIAL_ID" in err


def test_a_sweep_record_without_the_model_options_resumes_with_the_defaults():
    from sweeps.options import SweepOptions

    old = {"method": "durable", "preset": "math-tiny", "seed": 3, "command": "python sweeps/run.py"}
    opts = SweepOptions.from_record(old)
    assert (opts.keep_models, opts.register_model, opts.seed) == ("pareto", None, 3)
