"""The trial ledger: what the driver knows of each trial, one appended JSON line per event, folded on reading.

It is the sweep's one source of truth about its trials, written before MLflow and independent of Ray Tune's
experiment state (which Tune saves at most every ~10 s, so after a SIGKILL it lags behind what really
finished). Events, each one line `{"trial_id": ..., "event": ..., fields}` (`TrialLogger` writes them):

- `created`: the trial's Ray config, state `running`, and what its MLflow run is made of (run name, start
  time, method, preset, hyperparameters);
- `state`: a state change (a retried or resumed trial running again);
- `result`: an intermediate (per-epoch) result, with the step and timestamp its metrics carry in MLflow;
- `retry`: Tune retries the trial after an error (retries so far, the error's last line);
- `finished`: the terminal state (completed | failed | early_stopped), the final result as the trainable
  reported it and the timestamp its metrics carry in MLflow;
- `lost`: the trial was running when its driver died and the resumed Ray experiment does not know it.

MLflow is written from these events, after them and apart from the driver (`sweeps.mlflow_sync`), which keeps
its own progress in a second ledger of the same format beside this one, `mlflow.jsonl` (`SYNC_LEDGER`: each
trial's run id, and `logged` once MLflow holds all of the trial). Sweeps started before that wrote `run_id`
and `logged` into this ledger; reading both covers them.

Folding updates each trial's fields in order, so the last word wins. A torn last line (the driver died while
writing it) is skipped, and the next append starts on a new line. A sweep started before the ledger has
`mlflow_runs.json` (trial id -> run id and state, rewritten whole on every change): it is read as the state
before the first line, so such a sweep still resumes.

Where it lives: `<sweep dir>/trials.jsonl` on a local or NFS root. An object store (`s3://`, `gs://`) has no
append, so there every event is its own small object, `<sweep dir>/trials.jsonl.d/<sequence>-<random>.json`,
written by one PUT (atomic): as durable as the root, readable by a driver resumed on another machine, and
one request per event as before, of a few hundred bytes instead of the whole map.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

from sweeps import storage

LEDGER = "trials.jsonl"
SYNC_LEDGER = "mlflow.jsonl"  # the MLflow writer's own progress (`sweeps.mlflow_sync`)
EVENTS_DIR = LEDGER + ".d"  # object stores: one object per event (`<name>.d/` for a ledger of another name)
LEGACY_RUN_MAP = "mlflow_runs.json"
FINISHED = ("completed", "failed", "early_stopped")
LOST = "lost"

log = logging.getLogger("sweeps")


def is_finished(entry: dict[str, Any] | None) -> bool:
    """Whether a folded entry is a trial that ended on its own (a lost one did not: it died with its driver)."""
    return bool(entry) and entry.get("state") in FINISHED


def trials_with_runs(sweep_dir: str) -> dict[str, dict[str, Any]]:
    """The folded trials of a sweep with what the MLflow writer recorded for each (`run_id`, `logged`): a run
    id is there once the writer has made the run, which may lag behind the trial (an MLflow outage)."""
    trials = TrialLedger(sweep_dir).trials
    for trial_id, mine in TrialLedger(sweep_dir, SYNC_LEDGER).trials.items():
        if trial_id in trials:
            trials[trial_id].update(mine)
    return trials


class TrialLedger:
    """The ledger of one sweep directory (a path or an object-store URI); read once, then kept folded."""

    def __init__(self, sweep_dir: str, name: str = LEDGER):
        self.sweep_dir = sweep_dir
        self.name = name
        self.remote = storage.is_remote(sweep_dir)
        self._trials: dict[str, dict[str, Any]] | None = None
        self._history: dict[str, list[dict[str, Any]]] = {}  # trial id -> its events, in order
        self._offset = 0  # local file: the bytes read so far (`refresh` reads on from there)
        self._torn_tail = False  # the file ends without a newline: the next append starts a new line
        self._seq = 0  # object stores: the next event's sequence number

    @property
    def trials(self) -> dict[str, dict[str, Any]]:
        """trial id -> its folded fields (run_id, config, state, result, result_ms, logged, error)."""
        if self._trials is None:
            self._trials = self._load()
        return self._trials

    def get(self, trial_id: str) -> dict[str, Any] | None:
        return self.trials.get(trial_id)

    def history(self, trial_id: str) -> list[dict[str, Any]]:
        """The trial's events in the order they were written (what the MLflow writer replays)."""
        self.trials  # noqa: B018 - loads the file once
        return self._history.get(trial_id, [])

    def append(self, trial_id: str, event: str, **fields: Any) -> None:
        """Write one event (durably, before returning), then fold it into the state."""
        trials = self.trials
        record = {"trial_id": trial_id, "event": event, "at": round(time.time(), 3), **fields}
        line = json.dumps(record, default=str) + "\n"
        if self.remote:
            name = f"{self._seq:010d}-{uuid.uuid4().hex[:8]}.json"
            storage.write_text(storage.join(self.sweep_dir, self.name + ".d", name), line)
            self._seq += 1
        else:
            path = Path(self.sweep_dir, self.name)
            path.parent.mkdir(parents=True, exist_ok=True)
            data = (b"\n" if self._torn_tail else b"") + line.encode()
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                while data:  # one write for any line of normal size; the loop only guards against short writes
                    data = data[os.write(fd, data):]
            finally:
                os.close(fd)
            self._torn_tail = False
        trials.setdefault(trial_id, {}).update(fields)
        self._history.setdefault(trial_id, []).append(json.loads(line))
        if not self.remote:
            self._offset += len(data)

    def finished_results(self) -> dict[str, dict[str, Any]]:
        """trial id -> final result, of every finished trial whose result the ledger holds."""
        return {t: e["result"] for t, e in self.trials.items() if is_finished(e) and isinstance(e.get("result"), dict)}

    def refresh(self) -> dict[str, dict[str, Any]]:
        """Take in what another process appended since this one read the ledger: on a local file only the new
        complete lines (cheap at any length); on an object store, everything again."""
        if self._trials is None or self.remote:
            self._trials = None
            return self.trials
        path = Path(self.sweep_dir, self.name)
        if not path.exists():
            return self._trials
        with open(path, "rb") as f:
            f.seek(self._offset)
            new = f.read()
        done = new.rfind(b"\n") + 1  # a line still being written is read next time
        self._offset += done
        for event in self._parse(new[:done].decode("utf-8", errors="replace").split("\n")):
            self._fold(self._trials, event)
        return self._trials

    # -- reading

    def _fold(self, trials: dict[str, dict[str, Any]], event: dict[str, Any]) -> None:
        fields = {k: v for k, v in event.items() if k not in ("trial_id", "event", "at")}
        trials.setdefault(str(event["trial_id"]), {}).update(fields)
        self._history.setdefault(str(event["trial_id"]), []).append(event)

    def _load(self) -> dict[str, dict[str, Any]]:
        legacy = (storage.read_json(storage.join(self.sweep_dir, LEGACY_RUN_MAP)) or {}) if self.name == LEDGER else {}
        trials: dict[str, dict[str, Any]] = {t: dict(e) for t, e in legacy.get("trials", {}).items()}
        self._history = {}
        for event in self._events():
            self._fold(trials, event)
        return trials

    def _events(self) -> list[dict[str, Any]]:
        if self.remote:
            texts = self._remote_texts()
        else:
            path = Path(self.sweep_dir, self.name)
            raw = path.read_bytes() if path.exists() else b""
            self._torn_tail = bool(raw) and not raw.endswith(b"\n")
            self._offset = raw.rfind(b"\n") + 1  # a line still being written is read by `refresh`
            texts = raw.decode("utf-8", errors="replace").split("\n")
        return self._parse(texts)

    def _parse(self, texts: list[str]) -> list[dict[str, Any]]:
        events = []
        for i, text in enumerate(texts):
            if not text.strip():
                continue
            try:
                event = json.loads(text)
            except ValueError:
                event = None
            if not isinstance(event, dict) or "trial_id" not in event:
                # A line the driver died while writing; nothing after it depends on it.
                log.warning("trial ledger of %s: skipping unreadable line %d", self.sweep_dir, i + 1)
                continue
            events.append(event)
        return events

    def _remote_texts(self) -> list[str]:
        named = storage.read_texts(storage.join(self.sweep_dir, self.name + ".d"), ".json")
        if named:
            self._seq = int(named[-1][0].split("-", 1)[0]) + 1
        return [text for _name, text in named]
