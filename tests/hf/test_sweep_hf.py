"""`python sweeps/run.py --model hf:...`: the sweep engine on Hugging Face models with memorized-sequence files.

The flag checks run before Ray starts (no Ray here); one slow test runs a real 3-trial sweep on the tiny
GPT-NeoX model of `tests/hf/conftest.py` on the session's local Ray runtime, with MLflow in a SQLite file.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from sweeps import storage
from sweeps import tags as T
from sweeps.bases import base_config
from sweeps.engine import sweep_record
from sweeps.errors import SweepError
from sweeps.options import SWEEP_RECORD, SweepOptions
from sweeps.plan import plan_sweep
from sweeps.ray_runtime import auto_gpus_per_trial
from tinymem.hf.options import HFSourceOptions
from tests.hf.conftest import METRIC, build_model
from tests.sweeps.conftest import ray_runtime, run_cli  # noqa: F401  (ray_runtime: the shared Ray fixture)

SPACE = """
method: balanced_subnet
description: test space (tiny model, seconds per trial)
params:
  ratio: {type: float, low: 0.1, high: 0.5, log: true}
  loss_weighting: {type: float, low: 0.5, high: 0.9}
fixed: {epochs: 3, batch_size: 16}
"""


@pytest.fixture(scope="module")
def untrained_dir(tmp_path_factory) -> Path:
    """A randomly initialised tiny GPT-NeoX directory: enough for checks that read only its config."""
    d = tmp_path_factory.mktemp("hf_untrained")
    build_model("gpt_neox").save_pretrained(d)
    return d


@pytest.fixture
def hf_args(untrained_dir, hf_data_dir, tmp_path):
    """Flags of a valid sweep of balanced_subnet on the untrained model; `*extra` are appended."""
    _d, _data, files = hf_data_dir

    def make(*extra: str) -> list[str]:
        return ["--method", "balanced_subnet", "--model", f"hf:{untrained_dir}", "--forget-file",
                str(files["forget"]), "--retain-file", str(files["retain"]), *METRIC, "--storage",
                str(tmp_path / "runs"), *extra]

    return make


def options(args: list[str]) -> SweepOptions:
    from sweeps.run import build_parser, options_from_args

    return options_from_args(build_parser().parse_args(args), args)


@pytest.mark.parametrize("extra, needle", [
    (["--preset", "math-tiny"], "both name the base model; give one"),
    (["--dtype", "fp8"], "dtype 'fp8' is not allowed; choose from ['float32', 'bfloat16', 'float16']"),
    (["--forget-file", "/nonexistent/mem.jsonl"], "file '/nonexistent/mem.jsonl' does not exist"),
    (["--test-file", "data.csv"], "does not exist"),
    (["--metric-preset", "nope"], "unknown metric preset 'nope'; allowed: ['biderman', 'carlini', 'pythia']"),
    (["--model", "hf:./no-such-model-dir"], "model directory './no-such-model-dir' does not exist"),
    (["--model", "my-model"], "must start with 'hf:'"),
    (["--method", "spectral_norm"], "['spectral_norm'] train a TinyMem model from scratch"),
    (["--gpus-per-trial", "-1"], "--gpus-per-trial must be >= 0, got -1"),
])
def test_bad_hf_flags_exit_2_before_ray(hf_args, extra, needle, capsys):
    from sweeps.run import main

    assert main(hf_args(*extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err, err
    assert len(err.strip().splitlines()) == 1


def test_hf_only_flags_are_refused_for_presets(hf_data_dir, tmp_path, capsys):
    from sweeps.run import main

    _d, _data, files = hf_data_dir
    assert main(["--method", "balanced_subnet", "--preset", "math-tiny", "--forget-file", str(files["forget"]),
                 "--dtype", "float16", "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--dtype, --forget-file apply to Hugging Face models only (--model hf:NAME_OR_PATH)" in err
    assert main(["--method", "balanced_subnet", "--preset", "math-tiny", "--gpus-per-trial", "auto",
                 "--storage", str(tmp_path)]) == 2
    assert "--gpus-per-trial auto sizes trials from a Hugging Face model" in capsys.readouterr().err


def test_plan_of_an_hf_sweep(hf_args, untrained_dir, hf_data_dir, monkeypatch):
    data_dir, _data, _files = hf_data_dir
    monkeypatch.chdir(data_dir)  # relative paths, as a user types them
    plan = plan_sweep(options(hf_args("--model", f"hf:{os.path.relpath(untrained_dir)}", "--retain-file",
                                      "retain.jsonl")))
    o = plan.options
    s = o.source
    # paths absolute (trials run in other working directories), the base model in the `preset` slot
    assert s.model == f"hf:{untrained_dir.resolve()}" and plan.space.presets == [s.model]
    assert Path(s.forget_file).is_absolute() and Path(s.retain_file).is_absolute()
    assert (s.prompt_len, s.k, o.preset, o.gpus_per_trial) == (8, 12, None, "auto")
    # perplexity is the utility of a Hugging Face base: test_ppl_increase_pct
    assert plan.kinds == {s.model: "language"} and plan.objectives == ["mem_pct", "val_ppl_increase_pct"]
    # the default experiment name is one directory name
    assert plan.experiment == f"balanced_subnet-{untrained_dir.name}"
    assert base_config(s.model, s) == {
        "model": s.model, "forget_file": s.forget_file, "retain_file": s.retain_file, "prompt_len": 8, "k": 12}
    assert base_config("math-tiny", HFSourceOptions(dtype="float16")) == {"preset": "math-tiny"}


@pytest.mark.parametrize("source, name", [
    ("hf:EleutherAI/pythia-2.8b-deduped@step143000", "balanced_subnet-EleutherAI_pythia-2.8b-deduped@step143000"),
    ("hf:gpt2", "balanced_subnet-gpt2"),
])
def test_default_experiment_name_of_a_hub_model_has_no_slash(hf_args, source, name):
    plan = plan_sweep(options(hf_args("--model", source)))
    assert plan.experiment == name and plan.options.source.model == source


def test_hf_options_survive_resume(hf_args):
    plan = plan_sweep(options(hf_args("--dtype", "bfloat16", "--seq-len", "24", "--experiment", "hf-resume")))
    plan.options.gpus_per_trial = auto_gpus_per_trial(plan.options, None)  # what run_sweep does first
    record = sweep_record(plan, "0", "run", {})
    assert record["options"]["source"]["dtype"] == "bfloat16"  # the source options nested, as one value
    storage.write_json(storage.join(plan.sweep_dir, SWEEP_RECORD), record)
    resumed = plan_sweep(SweepOptions(experiment="hf-resume", resume="latest", storage=plan.storage))
    assert resumed.resumed and resumed.sweep_id == plan.sweep_id
    assert isinstance(resumed.options.source, HFSourceOptions) and resumed.options.source == plan.options.source
    for key in ("gpus_per_trial", "preset", "method", "seed"):
        assert getattr(resumed.options, key) == getattr(plan.options, key), key
    assert resumed.options.gpus_per_trial == 0.0 and resumed.options.source.dtype == "bfloat16"
    assert resumed.kinds == plan.kinds and resumed.space.presets == plan.space.presets


def test_a_flat_record_of_an_earlier_sweep_still_resumes(hf_args):
    """Sweeps recorded before the source options were nested keep them flat, beside the other options."""
    plan = plan_sweep(options(hf_args("--dtype", "bfloat16", "--seq-len", "24", "--experiment", "hf-flat")))
    plan.options.gpus_per_trial = 0.0
    record = sweep_record(plan, "0", "run", {})
    record["options"].update(record["options"].pop("source"))  # the layout before: model, dtype, ... top level
    assert "source" not in record["options"] and record["options"]["dtype"] == "bfloat16"
    storage.write_json(storage.join(plan.sweep_dir, SWEEP_RECORD), record)
    resumed = plan_sweep(SweepOptions(experiment="hf-flat", resume=plan.sweep_id, storage=plan.storage))
    assert resumed.options.source == plan.options.source
    assert resumed.options.gpus_per_trial == 0.0 and resumed.options.method == "balanced_subnet"


def test_gpus_per_trial_auto(hf_args):
    o = plan_sweep(options(hf_args())).options
    assert auto_gpus_per_trial(o, None) == 0.0  # no GPU: CPU trials
    assert auto_gpus_per_trial(o, 80.0) == 1 / 8  # a 30k-parameter model: eight trials per GPU
    o.device = "cpu"
    assert auto_gpus_per_trial(o, 80.0) == 0.0
    explicit = plan_sweep(options(hf_args("--gpus-per-trial", "0.5"))).options
    assert explicit.gpus_per_trial == 0.5  # an explicit value wins
    assert plan_sweep(options(["--method", "durable", "--preset", "math-tiny"])).options.gpus_per_trial == 0.0
    with pytest.raises(SweepError, match="bad --gpus-per-trial 'lots'; allowed: a number >= 0 or 'auto'"):
        plan_sweep(SweepOptions(method="balanced_subnet", source=explicit.source, gpus_per_trial="lots"))


@pytest.mark.slow
def test_three_trial_sweep_on_a_tiny_neox_model(ray_runtime, tiny_neox, tmp_path, capsys):  # noqa: F811
    from mlflow import MlflowClient

    f = tiny_neox.files
    space = tmp_path / "balanced_subnet.yaml"
    space.write_text(SPACE)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code, out, err = run_cli(
        ["--method", "balanced_subnet", "--model", tiny_neox.source, "--forget-file", str(f["forget"]),
         "--retain-file", str(f["retain"]), "--test-file", str(f["test"]), *METRIC, "--num-samples", "3",
         "--storage", str(tmp_path / "runs"), "--tracking-uri", uri, "--search-space", str(space), "--json"],
        capsys)
    assert code == 0, err
    assert out["experiment"] == f"balanced_subnet-{tiny_neox.model_dir.name}"
    assert (out["trials"], out["completed"], out["failed"]) == (3, 3, 0)
    assert out["objectives"] == ["mem_pct", "val_ppl_increase_pct"]
    base = out["base"]
    assert base["mem_pct"] == 100.0 and math.isfinite(base["test_ppl"])
    assert "--gpus-per-trial auto: 0" in err  # no GPU here: CPU trials

    client = MlflowClient(uri)
    parent = client.get_run(out["mlflow_parent_run_id"])
    runs = client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(runs) == 3
    for r in runs:
        assert r.data.tags[T.STATE] == "completed" and r.data.params["preset"] == tiny_neox.source
        for key in ("mem_pct", "val_ppl_increase_pct", "test_ppl_increase_pct", "test_ppl"):
            assert math.isfinite(r.data.metrics[key]), (key, r.data.metrics)
    assert min(r.data.metrics["mem_pct"] for r in runs) < base["mem_pct"]
    assert parent.data.params["gpus_per_trial"] == "0.0"
