"""A trial's resume files carried in Ray Tune checkpoints, for trials whose work directory is node-local.

Iterative methods write their per-epoch checkpoints (and caches) into the trial's work directory
(`MitigationContext.work_dir`), and resume from them when a trial is retried. With a local or NFS `--storage`
that directory is on the shared storage, so a retry on any node finds them. With an object-store `--storage`
(`s3://`, `gs://`) it is a node-local cache, and a trial retried on another node after its node was lost would
start over. There, the sweep trainable sends the files the trial wrote with every per-epoch report, as that
report's Tune checkpoint (Tune persists it under the experiment on the storage), and a retried trial puts the
latest checkpoint's files back into its work directory before the method runs.

Only what the trial itself wrote or changed since it started is sent (an mtime/size/inode snapshot taken when
it starts), not the shared caches it only read. A concurrent trial of the same method on the same node shares
the directory, so its files may travel too; that is harmless: files are keyed by their run's hyperparameters,
so they are valid states of that run only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sweeps import storage
from tinymem.util import atomic_path

FILES = "work_dir"  # sub-directory of a Tune checkpoint that holds the work-directory files (relative paths)


def work_dir_is_node_local(storage_root: str) -> bool:
    """True when a trial's work directory is a node-local cache rather than a folder on the shared storage:
    the model store keeps it on local disk exactly when the root is an object-store URI."""
    return storage.is_remote(storage_root)


def _hidden(rel: Path) -> bool:
    # Dot-names are this code's lock files and half-written temporaries: never resume files.
    return any(part.startswith(".") for part in rel.parts)


def _snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """relative path -> (mtime_ns, size, inode) of every regular file under `root` (empty if missing)."""
    out: dict[str, tuple[int, int, int]] = {}
    if not root.is_dir():
        return out
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath, name)
            rel = p.relative_to(root)
            if _hidden(rel):
                continue
            try:
                st = p.stat()
            except FileNotFoundError:  # removed meanwhile (a temporary renamed away)
                continue
            out[str(rel)] = (st.st_mtime_ns, st.st_size, st.st_ino)
    return out


class ResumeFiles:
    """One trial's resume files: restored from Tune's checkpoint at start, attached to every epoch report.

    Use `restore` as `run_trial`'s `on_work_dir` hook (it learns the work directory there, before the method
    runs), and `checkpoint()` around each `tune.report`.
    """

    def __init__(self) -> None:
        self.work_dir: Path | None = None
        self.restored: list[str] = []
        self._start: dict[str, tuple[int, int, int]] = {}
        self._sent = False

    def restore(self, work_dir: Path) -> None:
        """Snapshot `work_dir`, then copy the files of the trial's latest Tune checkpoint (if any) into it."""
        from ray import tune

        self.work_dir = Path(work_dir)
        # Snapshot first, so restored files count as the trial's own and travel with its next checkpoint.
        self._start = _snapshot(self.work_dir)
        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            return
        self._sent = True  # the bucket holds a checkpoint of this trial: a later one must replace it
        with checkpoint.as_directory() as d:
            src = Path(d) / FILES
            for rel in sorted(_snapshot(src)):
                # Copy, never move (a local checkpoint directory is the checkpoint itself); atomic: no half file.
                with atomic_path(self.work_dir / rel) as tmp:
                    shutil.copyfile(src / rel, tmp)
                self.restored.append(rel)

    def changed(self) -> list[str]:
        """Files under the work directory that are new or changed since `restore` (relative paths)."""
        if self.work_dir is None:
            return []
        now = _snapshot(self.work_dir)
        return sorted(rel for rel, st in now.items() if self._start.get(rel) != st)

    @contextlib.contextmanager
    def checkpoint(self) -> Iterator[Any]:
        """A `ray.tune.Checkpoint` holding the changed files; valid inside the `with` (Tune persists it during
        `tune.report`, which is where it is used). None while the trial has written nothing; once it has
        sent files, an empty checkpoint when they are gone (a finished run deleted its resume state), so
        that it replaces the last one in the bucket (Tune keeps one) instead of leaving it there."""
        rels = self.changed()
        if not rels and not self._sent:
            yield None
            return
        from ray import tune

        assert self.work_dir is not None
        # Beside the work directory: no snapshot counts it, and hard links work (large files are not copied).
        self.work_dir.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".tune-checkpoint-", dir=self.work_dir.parent) as d:
            (Path(d) / FILES).mkdir()
            for rel in rels:
                src, dst = self.work_dir / rel, Path(d) / FILES / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(src, dst)
                except FileNotFoundError:  # gone since the snapshot (e.g. a finished run's cleanup)
                    continue
                except OSError:  # no hard links here (another filesystem, or not supported)
                    shutil.copyfile(src, dst)
            self._sent = True
            yield tune.Checkpoint.from_directory(d)
