"""A sweep logging to a real `mlflow server` over HTTP on 127.0.0.1. (The interrupted-and-resumed sweep, Ctrl-C
in a real driver process, is `tests/sweeps/test_anytime.py`'s: it checks the trials and their candidates.)"""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from sweeps import tags as T
from tests.sweeps.conftest import run_cli
from tests.sweeps.mlflow_server import MlflowServer


def _children(uri: str, parent_run_id: str):
    client = MlflowClient(uri)
    exp_id = client.get_run(parent_run_id).info.experiment_id
    return client.search_runs([exp_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")


@pytest.mark.slow
def test_sweep_against_a_real_mlflow_server(ray_runtime, sweep_args, tmp_path, capsys):
    with MlflowServer(f"sqlite:///{tmp_path / 'server.db'}", tmp_path) as server:
        uri = server.wait_ready()
        args = sweep_args("durable", "t-server", "--num-samples", "2")
        args[args.index("--tracking-uri") + 1] = uri
        code, out, err = run_cli(args, capsys)
        assert code == 0, err
        assert out["tracking_uri"] == uri and out["completed"] == 2
        assert out["mlflow_ui"].startswith(f"open {uri}/#/experiments/")
        runs = _children(uri, out["mlflow_parent_run_id"])
        assert len(runs) == 2 and all(r.data.tags[T.STATE] == "completed" for r in runs)
        arts = {a.path for a in MlflowClient(uri).list_artifacts(out["mlflow_parent_run_id"])}
        assert {"pareto.csv", "pareto.png"} <= arts
        # The runs went over HTTP into the server's own store, and its artifacts under its destination.
        assert (tmp_path / "server.db").stat().st_size > 0
        assert list((tmp_path / "server-artifacts").rglob("pareto.png"))
        # The pick's kept model is a logged model on the server, and --from-run reads its config over REST.
        from tinymem.cli.from_run import trial_config_from_run

        best = out["best_paper_rule"]
        assert MlflowClient(uri).get_logged_model(best["model_id"]).source_run_id == best["run_id"]
        assert list((tmp_path / "server-artifacts").rglob("model.safetensors"))
        config = trial_config_from_run(best["run_id"], uri)
        assert config["method"] == "durable" and config["params"]["ratio"] == best["params"]["ratio"]
