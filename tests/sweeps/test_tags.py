"""MLflow conventions of a sweep without Ray: MLflow's system tags, the front's search filter on a real SQLite
store, the printed UI hint, and a sweep logged before the `tinymem.` namespace read back (bare tags)."""

from __future__ import annotations

import getpass
import json
import subprocess
import urllib.parse
from pathlib import Path

from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import (MLFLOW_GIT_BRANCH, MLFLOW_GIT_COMMIT, MLFLOW_PARENT_RUN_ID, MLFLOW_SOURCE_NAME,
                                      MLFLOW_SOURCE_TYPE, MLFLOW_USER)

from sweeps import tags as T
from sweeps.readback import build_from_mlflow, latest_parent_run
from sweeps.results import front_url
from tests.sweeps.conftest import REPO

ENTRY = str(REPO / "sweeps" / "run.py")


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def test_system_tags_are_mlflows_own_for_the_entry_script(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)  # the user then comes from the OS
    tags = T.system_tags(ENTRY)
    assert tags[MLFLOW_USER] == getpass.getuser()
    assert tags[MLFLOW_SOURCE_NAME] == ENTRY and tags[MLFLOW_SOURCE_TYPE] == "LOCAL"
    commit = _git("rev-parse", "HEAD")
    if commit is None:  # a source tree without git: MLflow records no commit, nor do we
        assert MLFLOW_GIT_COMMIT not in tags
    else:
        assert tags[MLFLOW_GIT_COMMIT] == commit
        branch = _git("rev-parse", "--abbrev-ref", "HEAD")
        if branch and branch != "HEAD":  # a detached HEAD has no branch
            assert tags[MLFLOW_GIT_BRANCH] == branch
    # Outside any checkout: the user and source, no git tags.
    assert MLFLOW_GIT_COMMIT not in T.system_tags("/")


def test_read_falls_back_to_the_bare_tag_of_an_older_sweep():
    assert T.read({T.STATE: "completed", "state": "running"}, T.STATE) == "completed"
    assert T.read({"state": "failed"}, T.STATE) == "failed"
    assert T.read({}, T.PARETO, "false") == "false"


def _old_sweep(client: MlflowClient, artifacts: Path) -> tuple[str, dict[str, str]]:
    """A sweep as the sweeps logged it before the `tinymem.` namespace: bare `state` / `pareto` / `error` tags
    on the children and `state` on the parent. Returns (parent run id, trial id -> run id)."""
    exp = client.create_experiment("t-old", artifact_location=artifacts.as_uri())
    sweep = {"kind": "math", "objectives": ["mem_pct", "val_acc_drop"], "methods": ["durable"],
             "presets": ["math-tiny"], "searched": ["ratio"]}
    parent = client.create_run(exp, tags={T.ROLE: "sweep", T.SWEEP_ID: "old", "state": "finished",
                                          T.SWEEP: json.dumps(sweep),
                                          T.BASE: json.dumps({"math-tiny": {"mem_pct": 40.0, "val_acc": 90.0}})})
    pid = parent.info.run_id
    trials = {"a": ("completed", 0.0, 5.0, 0.1), "b": ("completed", 10.0, 1.0, 0.01),
              "c": ("completed", 20.0, 6.0, 0.02), "d": ("failed", None, None, 0.3)}
    ids = {}
    for tid, (state, mem, drop, ratio) in trials.items():
        run = client.create_run(exp, tags={MLFLOW_PARENT_RUN_ID: pid, T.TRIAL_ID: tid, "method": "durable",
                                           "preset": "math-tiny", "state": state, "pareto": "false",
                                           **({"error": "ConfigError: bad"} if state == "failed" else {})})
        rid = ids[tid] = run.info.run_id
        for k, v in {"method": "durable", "preset": "math-tiny", "ratio": str(ratio)}.items():
            client.log_param(rid, k, v)
        if mem is not None:
            client.log_metric(rid, "mem_pct", mem)
            client.log_metric(rid, "val_acc_drop", drop)
            client.log_metric(rid, "val_acc", 90.0 - drop)
        client.set_terminated(rid, "FINISHED" if state == "completed" else "FAILED")
    return pid, ids


def test_a_sweep_logged_with_bare_tags_reads_back(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'old.db'}"
    client = MlflowClient(uri)
    pid, ids = _old_sweep(client, tmp_path / "artifacts")
    assert latest_parent_run(client, "t-old")[1] == pid
    rep = build_from_mlflow(client, pid, out_dir=str(tmp_path / "report"), tracking_uri=uri)
    assert {k: rep.counts[k] for k in ("trials", "completed", "failed", "running")} == \
        {"trials": 4, "completed": 3, "failed": 1, "running": 0}
    assert set(rep.front["run_id"]) == {ids["a"], ids["b"]}  # c is dominated by b, d failed
    assert rep.trials.set_index("trial_id").loc["d", "error"] == "ConfigError: bad"
    # Publishing the front writes the namespaced tag, which the printed filter then finds.
    rep.publish(client, pid)
    found = client.search_runs([client.get_run(pid).info.experiment_id], filter_string=T.PARETO_FILTER)
    assert {r.info.run_id for r in found} == {ids["a"], ids["b"]}
    assert list((tmp_path / "artifacts").rglob("pareto.csv"))  # the report went to the parent run

    from sweeps.report import main as report_main

    capsys.readouterr()
    assert report_main(["--experiment", "t-old", "--tracking-uri", uri, "--out", str(tmp_path / "r2"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["trials"], out["completed"], out["failed"]) == (4, 3, 1)
    assert {r["trial_id"] for r in out["pareto"]} == {"a", "b"}


def test_ui_hint_names_the_command_the_pages_and_the_front_filter(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    pid, _ = _old_sweep(client, tmp_path / "artifacts")
    exp = client.get_run(pid).info.experiment_id
    for uri, ui in (("sqlite:////tmp/x/mlflow.db", "http://127.0.0.1:5000"),
                    ("http://10.0.0.5:5001/", "http://10.0.0.5:5001")):
        hint = build_from_mlflow(client, pid, out_dir=None, tracking_uri=uri).ui_hint
        assert "\n" not in hint and T.PARETO_FILTER in hint
        assert f"{ui}/#/experiments/{exp}/runs/{pid}" in hint and front_url(ui, exp) in hint
        if uri.startswith("sqlite"):
            assert hint.startswith(f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000  # then open ")
        else:
            assert hint.startswith(f"open {ui}/#/experiments/")
    # The UI reads its search box from the route's query string: the filter comes back out of the URL intact.
    query = urllib.parse.urlsplit(urllib.parse.urlsplit(front_url("http://h:1", exp)).fragment).query
    assert urllib.parse.parse_qs(query)["searchFilter"] == [T.PARETO_FILTER]
