"""A sweep whose `--storage` is an `s3://` URI, against a real S3 endpoint (moto's server) on loopback.

`moto.server` speaks the S3 HTTP API on 127.0.0.1; the sweep reaches it through the standard
`AWS_ENDPOINT_URL` variable, which both clients honour (fsspec/s3fs for our files, pyarrow's S3 for Ray Tune's
experiment and checkpoints). The driver is a separate `python sweeps/run.py --storage s3://...` process in an
empty working directory, as on a cluster head. With an object-store root a trial's work directory is a node-local
cache (`TINYMEM_CACHE`), so its resume files travel in Tune checkpoints (sweeps.checkpoints): one trial wipes
that cache after epoch 2 (what a retry on a new node sees) and crashes; the retry must fetch its files back from
the bucket and go on at epoch 3.

Asserted: both trials complete, the lost one resumed at epoch 2 with the same final metrics as the other; the
base model came from the bucket; the Ray experiment, checkpoints, sweep record, trial ledger and reports are objects
in the bucket; the driver wrote nothing locally but its MLflow SQLite file (`./tinymem-runs`, the documented
default for object-store roots).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweeps import tags as T
from tests.cluster.ray_nodes import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BUCKET = "tinymem-test"

SPACE = """method: sweep_probe
params:
  ratio: {type: float, low: 0.0, high: 0.5}
fixed: {epochs: 4, crash_epoch: 2, marker: 'MARKER'}
paper_grid:
  fail: [lose_node, none]
  ratio: [0.05]
"""

# The driver imports the test-only probe method, then runs the real CLI.
DRIVER = ("import sys; sys.path.insert(0, {repo!r}); import tests.sweeps.probe_method; "
          "from sweeps.run import main; sys.exit(main(sys.argv[1:]))")


@pytest.fixture(scope="module")
def s3_env(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 with an empty bucket; the environment that points clients at it."""
    port = free_port("127.0.0.1")
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           # Never look for credentials or a region on the network (the EC2 metadata address) or in ~/.aws.
           "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": os.devnull,
           "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"moto S3 server did not start:\n{log.read_text()[-2000:]}")
                time.sleep(0.2)
        import boto3

        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                     aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(Bucket=BUCKET)
        yield env
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _s3fs(env: dict):
    import s3fs

    return s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=env["AWS_ENDPOINT_URL"],
                             skip_instance_cache=True)


def test_sweep_on_s3_storage_resumes_a_lost_trial_from_the_bucket(s3_env, tiny_store, tmp_path):
    fs = _s3fs(s3_env)
    root = f"{BUCKET}/sweeps-root"
    # The base model is put in the bucket's model store the way a first sweep would have left it.
    src, _stored = tiny_store
    models = Path(src) / "models"
    for f in models.rglob("*"):
        rel = f.relative_to(models)
        if f.is_file() and not any(part.startswith(".") for part in rel.parts):  # no lock files
            fs.put_file(str(f), f"{root}/models/{rel.as_posix()}")
    marker = tmp_path / "crashed"
    space = tmp_path / "probe.yaml"
    space.write_text(SPACE.replace("MARKER", str(marker)))
    cwd = tmp_path / "driver-cwd"
    cwd.mkdir()
    cache = tmp_path / "node-cache"
    env = {**os.environ, **s3_env, "TINYMEM_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-c", DRIVER.format(repo=str(REPO)), "--method", "sweep_probe",
           "--preset", "math-tiny", "--search-space", str(space), "--grid", "paper", "--storage", f"s3://{root}",
           "--experiment", "s3", "--max-failures", "1", "--max-concurrent", "1", "--cpus-per-trial", "1",
           "--json"]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"sweep exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    out = json.loads(proc.stdout)
    assert (out["trials"], out["completed"], out["failed"]) == (2, 2, 0), out
    assert marker.exists(), "the lose_node trial never crashed"
    base_line = [ln for ln in proc.stderr.splitlines() if ln.startswith("base model math-tiny")]
    assert base_line and "loaded in" in base_line[0], f"the base model was not loaded from the bucket: {base_line}"

    # MLflow: the default for an object-store root is ./tinymem-runs/mlflow.db, the only local file.
    assert out["tracking_uri"] == f"sqlite:///{cwd / 'tinymem-runs' / 'mlflow.db'}"
    local = sorted(str(p.relative_to(cwd)) for p in cwd.rglob("*") if p.is_file())
    assert local == ["tinymem-runs/mlflow.db"], local
    from mlflow import MlflowClient

    client = MlflowClient(out["tracking_uri"])
    runs = client.search_runs([out["mlflow_experiment_id"]],
                              filter_string=f"tags.mlflow.parentRunId = '{out['mlflow_parent_run_id']}'")
    by_fail = {r.data.params["fail"]: r for r in runs}
    lost, straight = by_fail["lose_node"], by_fail["none"]
    assert lost.data.tags[T.STATE] == "completed" and lost.data.tags.get(T.RETRIES) == "1", lost.data.tags
    assert lost.data.metrics["info_resumed_from_epoch"] == 2.0
    assert straight.data.metrics["info_resumed_from_epoch"] == 0.0
    assert lost.data.metrics["info_acc"] == straight.data.metrics["info_acc"]
    assert lost.data.metrics["mem_pct"] == straight.data.metrics["mem_pct"]

    # Everything else is in the bucket: Ray's experiment with a checkpoint per trial, our records and reports.
    ray_exp = f"{root}/ray/s3/{out['sweep_id']}"
    trial_dirs = [p for p in fs.ls(ray_exp) if p.rsplit("/", 1)[-1].startswith("sweep_trainable_")]
    assert len(trial_dirs) == 2, fs.ls(ray_exp)
    for d in trial_dirs:
        assert any(p.rsplit("/", 1)[-1].startswith("checkpoint_") for p in fs.ls(d)), fs.ls(d)
    ours = f"{root}/sweeps/s3/{out['sweep_id']}"
    assert fs.ls(f"{ours}/trials.jsonl.d"), fs.ls(ours)  # the trial ledger: one object per event
    for key in ("pareto_csv", "trials_csv"):
        assert out[key].startswith(f"s3://{ours}/") and fs.exists(out[key]), out[key]
    events = [json.loads(fs.cat(p)) for p in fs.ls(f"{ours}/trials.jsonl.d")]
    assert sorted({e["trial_id"] for e in events}) == sorted(r.data.tags[T.TRIAL_ID] for r in runs)
    # The kept models (the front and the pick, the default) are model directories in the bucket, uploaded by the
    # trials, and logged models of their runs; the driver kept no local copy.
    kept = {r["trial_id"]: r for r in out["pareto"] + [out["best_paper_rule"]]}
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{ours}/models")) == sorted(kept)
    for rec in kept.values():
        assert rec["model_dir"].startswith(f"s3://{ours}/models/") and fs.exists(f"{rec['model_dir']}/tinymem.json")
        assert fs.exists(f"{rec['model_dir']}/README.md") and fs.exists(f"{rec['model_dir']}/tokenizer.json")
        assert client.get_logged_model(rec["model_id"]).source_run_id == rec["run_id"]
    # Finished trials leave no resume files in the bucket (their last checkpoint is emptied).
    assert not [p for p in fs.find(ray_exp) if p.rsplit("/", 1)[-1].startswith("probe-")]
