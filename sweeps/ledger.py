"""The trial ledger: what the driver knows of each trial, one appended JSON line per event, folded on reading.

It is the sweep's one source of truth about its trials, written before MLflow and independent of Ray Tune's
experiment state (which Tune saves at most every ~10 s, so after a SIGKILL it lags behind what really
finished). Events, each one line `{"trial_id": ..., "event": ..., fields}` (`TrialLogger` writes them):

- `created`: the trial's Ray config, its MLflow run id, state `running`;
- `state`: a state change (a retried or resumed trial running again);
- `finished`: the terminal state (completed | failed | early_stopped), the final result as the trainable
  reported it and the timestamp its metrics carry in MLflow, appended BEFORE the MLflow calls of that event;
- `logged`: MLflow holds all of it (after those calls); a finished trial without it is replayed on resume;
- `lost`: the trial was running when its driver died and the resumed Ray experiment does not know it.

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
EVENTS_DIR = LEDGER + ".d"  # object stores: one object per event
LEGACY_RUN_MAP = "mlflow_runs.json"
FINISHED = ("completed", "failed", "early_stopped")
LOST = "lost"

log = logging.getLogger("sweeps")


def is_finished(entry: dict[str, Any] | None) -> bool:
    """Whether a folded entry is a trial that ended on its own (a lost one did not: it died with its driver)."""
    return bool(entry) and entry.get("state") in FINISHED


class TrialLedger:
    """The ledger of one sweep directory (a path or an object-store URI); read once, then kept folded."""

    def __init__(self, sweep_dir: str):
        self.sweep_dir = sweep_dir
        self.remote = storage.is_remote(sweep_dir)
        self._trials: dict[str, dict[str, Any]] | None = None
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

    def append(self, trial_id: str, event: str, **fields: Any) -> None:
        """Write one event (durably, before returning), then fold it into the state."""
        trials = self.trials
        line = json.dumps({"trial_id": trial_id, "event": event, "at": round(time.time(), 3), **fields},
                          default=str) + "\n"
        if self.remote:
            name = f"{self._seq:010d}-{uuid.uuid4().hex[:8]}.json"
            storage.write_text(storage.join(self.sweep_dir, EVENTS_DIR, name), line)
            self._seq += 1
        else:
            path = Path(self.sweep_dir, LEDGER)
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

    def finished_results(self) -> dict[str, dict[str, Any]]:
        """trial id -> final result, of every finished trial whose result the ledger holds."""
        return {t: e["result"] for t, e in self.trials.items() if is_finished(e) and isinstance(e.get("result"), dict)}

    # -- reading

    def _load(self) -> dict[str, dict[str, Any]]:
        legacy = storage.read_json(storage.join(self.sweep_dir, LEGACY_RUN_MAP)) or {}
        trials: dict[str, dict[str, Any]] = {t: dict(e) for t, e in legacy.get("trials", {}).items()}
        for event in self._events():
            fields = {k: v for k, v in event.items() if k not in ("trial_id", "event", "at")}
            trials.setdefault(str(event["trial_id"]), {}).update(fields)
        return trials

    def _events(self) -> list[dict[str, Any]]:
        if self.remote:
            texts = self._remote_texts()
        else:
            path = Path(self.sweep_dir, LEDGER)
            raw = path.read_bytes() if path.exists() else b""
            self._torn_tail = bool(raw) and not raw.endswith(b"\n")
            texts = raw.decode("utf-8", errors="replace").split("\n")
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
        named = storage.read_texts(storage.join(self.sweep_dir, EVENTS_DIR), ".json")
        if named:
            self._seq = int(named[-1][0].split("-", 1)[0]) + 1
        return [text for _name, text in named]
