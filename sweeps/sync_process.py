"""The MLflow writer as a process of its own: the sweep driver hands it trial events and never waits for MLflow.

Why a process and not a thread: MLflow's client is Python through and through (SQLAlchemy, requests), ~17 ms
of CPU per trial on SQLite; in a thread of the driver it would hold the GIL the driver needs to schedule the
next trials. Here the driver's cost per event is one ledger line and one pipe write.

Protocol (JSON lines): the driver writes the `SyncContext` first, then every ledger event it appends, then
`{"close": SECONDS}`: the writer finishes what it holds, waiting at most that long for an unreachable MLflow,
and answers one summary line on its stdout. If the driver dies, the writer sees end-of-input, tries for
`ORPHAN_GRACE_S` more and exits; whatever is left waits in the ledger for the next replay. One writer per sweep
at a time (a file lock), so a resumed driver's writer never races a dying one's.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sweeps.mlflow_sync import LedgerSync, SyncContext, by_trial, sync_all, with_retry

NICE = 10  # the writer's niceness over the driver's
ORPHAN_GRACE_S = 30.0  # how long a writer whose driver died keeps trying before it leaves the rest on disk
LOCK_WAIT_S = 120.0  # how long a new writer waits for the previous one of the same sweep to exit
_REPO = str(Path(__file__).resolve().parent.parent)
_WRITERS: dict[str, "SyncWriter"] = {}  # sweep dir -> this driver process's writer (Tune unpickles callbacks)


class SyncWriter:
    """The driver's end of a sweep's MLflow writer process."""

    def __init__(self, ctx: SyncContext):
        self.ctx = ctx
        self.proc: subprocess.Popen | None = None
        self.summary: dict[str, Any] | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([_REPO, *filter(None, [os.environ.get("PYTHONPATH")])])}
        self.proc = subprocess.Popen([sys.executable, "-m", "sweeps.sync_process"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, cwd=_REPO, text=True, bufsize=1)
        self._write(asdict(self.ctx))

    def _write(self, obj: dict[str, Any]) -> None:
        self.proc.stdin.write(json.dumps(obj, default=str) + "\n")
        self.proc.stdin.flush()

    def send(self, event: dict[str, Any]) -> None:
        """Hand on one event the driver has appended to the ledger. A writer that died is started again: it
        replays from the ledger, which already holds this event."""
        if self.proc is None:
            self.start()
            return
        try:
            self._write(event)
        except (BrokenPipeError, ValueError, OSError):
            self.proc.wait()
            self.start()

    def close(self, wait_s: float) -> dict[str, Any]:
        """Let the writer finish, giving an unreachable MLflow up to `wait_s`; its summary (`complete`: MLflow
        holds every event; `unsynced`: events left for `report.py --sync` or `--resume`)."""
        if self.proc is None:
            return {"complete": True, "unsynced": 0}
        try:
            self._write({"close": wait_s})
        except (BrokenPipeError, ValueError, OSError):
            pass
        try:  # closes its input (end of events), then waits for the summary
            out, _ = self.proc.communicate(timeout=wait_s + 30.0)
        except subprocess.TimeoutExpired:  # stuck inside one MLflow call: everything is on disk anyway
            self.proc.kill()
            out, _ = self.proc.communicate()
        lines = [ln for ln in (out or "").splitlines() if ln.startswith("{")]
        self.summary = json.loads(lines[-1]) if lines else {"complete": False, "unsynced": None}
        self.proc = None
        return self.summary


def writer_for(ctx: SyncContext) -> SyncWriter:
    """This process's writer of the sweep, started on first use."""
    w = _WRITERS.get(ctx.sweep_dir)
    if w is None:
        w = _WRITERS[ctx.sweep_dir] = SyncWriter(ctx)
        w.start()
    return w


def close_writer(sweep_dir: str, wait_s: float) -> dict[str, Any]:
    """Close the sweep's writer (see `SyncWriter.close`); a sweep that never started one has nothing left."""
    w = _WRITERS.pop(sweep_dir, None)
    return w.close(wait_s) if w else {"complete": True, "unsynced": 0}


@contextlib.contextmanager
def writer_lock(sweep_dir: str) -> Iterator[None]:
    """Held while a sweep's ledger is written to MLflow: by its writer process, or by `report.py --sync`."""
    f = _lock(sweep_dir)
    try:
        yield
    finally:
        f.close()


def _lock(sweep_dir: str) -> Any:
    """An exclusive lock per sweep (a local file: it guards writers on this machine, where a resumed driver
    runs beside its predecessor's writer)."""
    name = "tinymem-sync-" + hashlib.sha256(sweep_dir.encode()).hexdigest()[:16] + ".lock"
    f = open(Path(tempfile.gettempdir(), name), "w")  # noqa: SIM115 - held for the process's life
    end = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return f
        except BlockingIOError:
            if time.monotonic() > end:
                return f  # the other writer is stuck; replaying beside it is safe, only slower
            time.sleep(0.2)


def main() -> int:
    summary_out = sys.stdout  # only the summary goes here; anything a library prints goes to the terminal
    sys.stdout = sys.stderr
    # Background work: where CPUs are short, the driver (scheduling the next trials) and the trials come first;
    # what waits is on disk, and the driver waits for the rest at the end.
    os.nice(NICE)
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731 - the driver's terminal
    ctx = SyncContext(**json.loads(sys.stdin.readline()))
    lock = _lock(ctx.sweep_dir)
    items: queue.Queue = queue.Queue()
    end: list[float | None] = [None]  # the deadline, set when the driver closes or goes away
    done = object()

    def read() -> None:
        for line in sys.stdin:
            msg = json.loads(line)
            if "close" in msg:
                end[0] = time.monotonic() + float(msg["close"])
                break
            items.put(msg)
        if end[0] is None:  # the driver died
            end[0] = time.monotonic() + ORPHAN_GRACE_S
        items.put(done)

    threading.Thread(target=read, daemon=True).start()
    outage = [0.0]

    def down(exc: BaseException) -> None:
        say(f"tracking: MLflow at {ctx.tracking_uri} is unreachable ({type(exc).__name__}); trials go on, their "
            f"results wait in {ctx.sweep_dir} and are written when it is back")

    def up(seconds: float) -> None:
        outage[0] += seconds
        say(f"tracking: MLflow is back after {seconds:.0f} s; writing what waited")

    import logging

    for name in ("mlflow", "alembic", "urllib3"):
        logging.getLogger(name).setLevel(logging.ERROR)
    sync = LedgerSync(ctx, say=say)
    hooks = {"on_down": down, "on_up": up}
    ok = sync_all(sync, lambda: end[0], **hooks)  # what a dead writer or driver left first
    unsynced = 0 if ok else len(sync.replay_events())
    finished = False
    while not finished:
        batch = [items.get()]  # then all that is waiting: a writer that lags writes each trial in one go
        while not items.empty():
            batch.append(items.get())
        finished = batch[-1] is done
        events = [e for e in batch if e is not done]
        for event in events:
            sync.fold(event)
        for trial_id, evs in by_trial(events):
            if ok:
                ok = with_retry(sync, [lambda: sync.apply_trial(trial_id, evs)], lambda: end[0], **hooks)
            unsynced += 0 if ok else len(evs)
    deleted = [0]
    if ok:  # a create call that MLflow's client retried after the server had made the run: a second run
        ok = with_retry(sync, [lambda: deleted.__setitem__(0, sync.recover())], lambda: end[0], **hooks)
    print(json.dumps({"complete": ok, "unsynced": unsynced, "applied": sync.applied, "skipped": sync.skipped,
                      "deleted_runs": deleted[0], "outage_s": round(outage[0], 1)}), file=summary_out, flush=True)
    lock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
