"""A trial retried "on another node" resumes from its Tune checkpoint when its work directory is node-local.

On one machine: the sweep is told its work directories are node-local (as with an `s3://` --storage), the
probe method checkpoints per epoch into its work directory, and after epoch 2 it wipes that directory (the
new node's disk has none of it) and crashes once. Tune retries the trial; the retry must get its files back
from the checkpoint Tune persisted with the epoch-2 report and continue at epoch 3.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from sweeps import checkpoints
from sweeps import tags as T
from tests.sweeps.conftest import run_cli


def _children(uri: str, parent_run_id: str) -> list:
    client = MlflowClient(uri)
    exp_id = client.get_run(parent_run_id).info.experiment_id
    return client.search_runs([exp_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")


@pytest.mark.slow  # about 30 s on a busy 2-core machine: two trials, one retried
def test_trial_retried_after_losing_its_node_local_work_dir_resumes(ray_runtime, sweep_root, sweep_args,
                                                                     tracking_uri, capsys, tmp_path, monkeypatch):
    # The decision is made on the driver and shipped to the trials in TrialStatic: force it for a local root.
    monkeypatch.setattr(checkpoints, "work_dir_is_node_local", lambda root: True)
    marker = tmp_path / "crashed"
    space = tmp_path / "probe_lose_node.yaml"
    space.write_text("method: sweep_probe\nparams:\n  ratio: {type: float, low: 0.0, high: 0.5}\n"
                     f"fixed: {{epochs: 4, crash_epoch: 2, marker: '{marker}'}}\n"
                     "paper_grid:\n  fail: [lose_node, none]\n  ratio: [0.05]\n")
    # One at a time: the two trials share the method's work directory, which the crash wipes.
    args = sweep_args("sweep_probe", "t-node-local", "--grid", "paper", "--max-failures", "1",
                      "--max-concurrent", "1")
    args[args.index("--search-space") + 1] = str(space)
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert (out["trials"], out["completed"], out["failed"]) == (2, 2, 0), out
    assert marker.exists(), "the lose_node trial never crashed"

    client = MlflowClient(tracking_uri)
    runs = {r.data.params["fail"]: r for r in _children(tracking_uri, out["mlflow_parent_run_id"])}
    lost, straight = runs["lose_node"], runs["none"]
    assert lost.data.tags[T.STATE] == "completed" and lost.data.tags.get(T.RETRIES) == "1"
    assert "lost its node after epoch 2" in lost.data.tags.get(T.LAST_ERROR, "")

    def epochs(run) -> list[int]:
        # `forget_loss` is in the probe's per-epoch reports only; logged with step = epoch, in report order.
        return [m.step for m in sorted(client.get_metric_history(run.info.run_id, "forget_loss"),
                                       key=lambda m: (m.timestamp, m.step))]

    # Epochs 1-2 from the first attempt, 3-4 from the retry: nothing redone.
    assert epochs(lost) == [1, 2, 3, 4], epochs(lost)
    assert epochs(straight) == [1, 2, 3, 4], epochs(straight)
    assert lost.data.metrics["info_resumed_from_epoch"] == 2.0
    assert straight.data.metrics["info_resumed_from_epoch"] == 0.0
    # The interrupted trial ends where the uninterrupted one does: the accumulated state and the metrics.
    assert lost.data.metrics["info_acc"] == straight.data.metrics["info_acc"]
    for k in ("mem_pct", "test_acc"):
        assert lost.data.metrics[k] == straight.data.metrics[k], k
    # Finished runs leave no resume files behind: in the work directories, nor in their last Tune checkpoint.
    assert not list(Path(sweep_root).glob("cache/*/sweep_probe/probe-*.json"))
    trial_dirs = list((Path(sweep_root) / "ray" / "t-node-local" / out["sweep_id"]).glob("sweep_trainable_*"))
    assert len(trial_dirs) == 2 and all(list(d.glob("checkpoint_*")) for d in trial_dirs)
    assert not list(Path(sweep_root, "ray", "t-node-local", out["sweep_id"]).rglob("probe-*.json"))


def test_resume_files_carry_only_what_the_trial_wrote_and_come_back(tmp_path, monkeypatch):
    """The helper alone (no Ray runtime): written/changed files travel, read-only and hidden ones do not,
    and a restore into an empty directory (a new node) brings them back."""
    from ray import tune

    work = tmp_path / "node1" / "work"
    (work / "attributions").mkdir(parents=True)
    (work / "attributions" / "shared.safetensors").write_bytes(b"read only")  # a shared cache it only reads
    (work / "stale.pt").write_bytes(b"old")
    monkeypatch.setattr(tune, "get_checkpoint", lambda: None)
    files = checkpoints.ResumeFiles()
    files.restore(work)  # no checkpoint yet: only the snapshot
    assert files.restored == []
    (work / "stale.pt").write_bytes(b"new state")  # changed
    (work / "finetune" / "run1").mkdir(parents=True)
    (work / "finetune" / "run1" / "train_state.pt").write_bytes(b"epoch 2")  # new
    (work / "finetune" / ".run1.lock").write_text("")  # hidden: lock files and temporaries never travel
    assert files.changed() == ["finetune/run1/train_state.pt", "stale.pt"]
    with files.checkpoint() as ckpt:
        assert ckpt is not None
        kept = tmp_path / "persisted"  # what Tune does during report: persist a copy
        ckpt.to_directory(str(kept))
    assert not list(work.parent.glob(".tune-checkpoint-*")), "the staging directory is removed"

    monkeypatch.setattr(tune, "get_checkpoint", lambda: tune.Checkpoint.from_directory(str(kept)))
    new_work = tmp_path / "node2" / "work"  # the retry's node has nothing
    again = checkpoints.ResumeFiles()
    again.restore(new_work)
    assert again.restored == ["finetune/run1/train_state.pt", "stale.pt"]
    assert (new_work / "finetune" / "run1" / "train_state.pt").read_bytes() == b"epoch 2"
    assert (new_work / "stale.pt").read_bytes() == b"new state"
    assert not (new_work / "attributions").exists()
    assert (kept / checkpoints.FILES / "stale.pt").exists(), "a restore copies; the checkpoint stays whole"
    # Restored files are the trial's own: they travel with its next checkpoint even if not rewritten.
    assert again.changed() == ["finetune/run1/train_state.pt", "stale.pt"]
    with again.checkpoint() as ckpt2:
        assert ckpt2 is not None
    # Once the run deletes its resume files, an empty checkpoint replaces the last one (Tune keeps one).
    for rel in again.changed():
        (new_work / rel).unlink()
    with again.checkpoint() as ckpt3:
        assert ckpt3 is not None
        with ckpt3.as_directory() as d:
            assert not [p for p in Path(d).rglob("*") if p.is_file()]


def test_no_checkpoint_when_nothing_changed(tmp_path, monkeypatch):
    from ray import tune

    monkeypatch.setattr(tune, "get_checkpoint", lambda: None)
    files = checkpoints.ResumeFiles()
    files.restore(tmp_path / "missing")  # a work directory that does not exist yet
    with files.checkpoint() as ckpt:
        assert ckpt is None
    assert checkpoints.work_dir_is_node_local("s3://bucket/root")
    assert not checkpoints.work_dir_is_node_local(str(tmp_path))
