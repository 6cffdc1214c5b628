"""A sweep's progress on the driver: one live bar on a terminal, else one plain line per finished trial.

Both show the same fields: trials done of the total, running, failed, elapsed time, ETA and the size of the
Pareto front so far (the non-dominated completed trials on the sweep's objectives, by
`sweeps.pareto.non_dominated`, updated as each trial finishes). The bar is drawn only on stdout when it is a
terminal; with `--json` the lines go to stderr and stdout holds only the JSON. Tune's own status table is
off: it is noisy in logs.

Ray pickles callbacks into the experiment and a resumed sweep uses the unpickled copy: only configuration is
pickled (`__getstate__`); the bar, the clock and the counts are rebuilt in the resumed process, where the
trials restored as finished are counted again from Tune's trial list, and from the sweep's trial ledger
(`sweeps.ledger`) those that finished after Tune's last save of its state, which Tune's list lacks after a crash.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

import numpy as np
from ray.tune import Callback

from sweeps.pareto import MEM, non_dominated
from sweeps.space import SweepSpace

CONFIG_FIELDS = ("space", "objectives", "total", "stream", "ledger_dir", "deadline")
REFRESH_S = 1.0  # redraw the bar at least this often, so elapsed time and ETA stay live between trial events


def live_stream(stream: str) -> TextIO | None:
    """The stream to draw live bars on, or None for plain lines: only stdout, and only on a terminal (`stream`
    is stderr with `--json`, whose lines are for logs).

    With `--json` run.py also points stdout at stderr while the sweep runs; a callback restored by `--resume`
    keeps the stream of the first run, so stdout being stderr means `--json` too: lines, no bar.
    """
    out = sys.stdout if stream == "stdout" and sys.stdout is not sys.stderr else None
    return out if out is not None and out.isatty() else None


class ParetoFront:
    """The non-dominated points seen so far (all objectives minimised). A dominated point can never return to
    the front (dominance is transitive), so keeping only the front points is enough."""

    def __init__(self, dims: int = 2) -> None:
        self.points = np.empty((0, dims))

    def add(self, point: tuple[float, ...]) -> None:
        pts = np.vstack([self.points, np.asarray(point, dtype=float)[None, :]])
        self.points = pts[non_dominated(pts)]

    def __len__(self) -> int:
        return int(self.points.shape[0])


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m:02d}:{s:02d}"


class ProgressLines(Callback):
    """The sweep's progress (module docstring) on stdout or stderr (`stream`; `none` prints nothing).

    The name is kept from when it printed lines only: sweeps pickled then refer to it.
    """

    def __init__(self, space: SweepSpace, objectives: list[str], total: int, stream: str = "stdout",
                 ledger_dir: str | None = None, deadline: float | None = None):
        self.space, self.objectives, self.total, self.stream = space, list(objectives), total, stream
        self.ledger_dir = ledger_dir  # the sweep directory, whose ledger a resumed sweep also counts from
        self.deadline = deadline  # when the time budget ends the sweep (unix time): the ETA is at most that
        self._start()

    def __getstate__(self) -> dict[str, Any]:
        return {k: self.__dict__[k] for k in CONFIG_FIELDS}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "objectives" not in state:  # pickled before --objectives: mem_pct and its one utility loss
            state = {**state, "objectives": [MEM, state["loss_name"]]}
        # Pickled before the ledger, or a resumed sweep: its time budget counts again (`sweeps.budget`), unknown here.
        state = {"ledger_dir": None, **state, "deadline": None}
        self.__dict__.update({k: state[k] for k in CONFIG_FIELDS})
        self._start()  # a resumed sweep counts its own time

    def _start(self) -> None:
        self.t0 = time.time()
        self.outcomes: dict[str, str] = {}  # trial id -> completed | failed | early_stopped
        self.front = ParetoFront(len(self.objectives))
        self.done_at_start: int | None = None  # finished before this process began (a resume)
        self._bar: Any = None
        self._drawn = 0.0

    # -- counting

    def _record(self, trial: Any, errored: bool = False) -> None:
        """Count a finished trial once; a completed one with finite objectives may join the front."""
        if trial.trial_id in self.outcomes:
            return
        last = trial.last_result or {}
        if errored or last.get("failed"):
            self.outcomes[trial.trial_id] = "failed"
        elif not last.get("final"):
            self.outcomes[trial.trial_id] = "early_stopped"
        else:
            self.outcomes[trial.trial_id] = "completed"
            self._add_to_front(last)

    def _sync(self, trials: list) -> None:
        """Count trials that finished before this process saw them (restored by `--resume`)."""
        from ray.tune.experiment.trial import Trial

        for t in trials:
            if t.status in (Trial.TERMINATED, Trial.ERROR):
                self._record(t, errored=t.status == Trial.ERROR)
        if self.done_at_start is None:
            self._count_ledger()
            self.done_at_start = len(self.outcomes)

    def _count_ledger(self) -> None:
        """Count the trials the ledger has as finished that Tune's restored list lacks (a resume after a crash)."""
        if not self.ledger_dir:
            return
        from sweeps.ledger import TrialLedger, is_finished

        for trial_id, entry in TrialLedger(self.ledger_dir).trials.items():
            if trial_id in self.outcomes or not is_finished(entry):
                continue
            self.outcomes[trial_id] = entry["state"]
            if entry["state"] == "completed":
                self._add_to_front(entry.get("result") or {})

    def _add_to_front(self, result: dict[str, Any]) -> None:
        """A completed trial joins the front if its objectives are finite."""
        point = tuple(float(result.get(k, math.nan)) for k in self.objectives)
        if all(math.isfinite(v) for v in point):
            self.front.add(point)

    def counts(self, trials: list) -> dict[str, Any]:
        """done, running, failed, front, elapsed and ETA (seconds; NaN before the first trial of this run)."""
        from ray.tune.experiment.trial import Trial

        done = len(self.outcomes)
        running = sum(t.status == Trial.RUNNING and t.trial_id not in self.outcomes for t in trials)
        elapsed = time.time() - self.t0
        here = done - (self.done_at_start or 0)
        eta = elapsed / here * max(self.total - done, 0) if here > 0 else math.nan
        if self.deadline is not None:  # the time budget stops the sweep by then, whatever is left to run
            left = max(0.0, self.deadline - time.time())
            eta = left if math.isnan(eta) else min(eta, left)
        failed = sum(v == "failed" for v in self.outcomes.values())
        return {"done": done, "running": running, "failed": failed, "front": len(self.front),
                "elapsed": elapsed, "eta": eta}

    # -- drawing

    def _postfix(self, c: dict[str, Any]) -> str:
        return f"running {c['running']}, failed {c['failed']}, front {c['front']}"

    def _draw(self, trials: list) -> None:
        out = live_stream(self.stream)
        if out is None:
            return
        from tqdm.auto import tqdm

        c = self.counts(trials)
        if self._bar is None:
            self._bar = tqdm(total=self.total, initial=c["done"], desc="sweep", unit="trial", file=out,
                             dynamic_ncols=True, mininterval=0)
        self._bar.update(c["done"] - self._bar.n)
        self._bar.set_postfix_str(self._postfix(c), refresh=False)
        self._bar.refresh()
        self._drawn = time.time()

    def _say(self, text: str) -> None:
        """A line: above the bar on a terminal, else plainly on the stream."""
        if self.stream not in ("stdout", "stderr"):
            return
        out = getattr(sys, self.stream)
        if self._bar is not None:
            self._bar.write(text, file=out)
        else:
            print(text, file=out, flush=True)

    def _line(self, trials: list, trial: Any, text: str) -> None:
        c = self.counts(trials)
        self._say(f"[{c['elapsed']:6.0f} s] trial {c['done']}/{self.total} {trial.trial_id}: {text} | "
                  f"{self._postfix(c)}, ETA {_clock(c['eta'])}")

    # -- Tune's events

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._sync(trials)
        self._draw(trials)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if self._bar is not None and time.time() - self._drawn >= REFRESH_S:
            self._draw(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._sync(trials)
        self._record(trial)
        last = trial.last_result or {}
        if live_stream(self.stream) is not None:
            if last.get("failed"):  # a failure is worth a line above the bar; results are in the report
                self._say(f"trial {trial.trial_id} failed: {last.get('error')}")
            self._draw(trials)
            return
        shown = {k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in trial.config.items()}
        if last.get("failed"):
            self._line(trials, trial, f"{shown} failed: {last.get('error')}")
        elif not last.get("final"):
            self._line(trials, trial, f"{shown} early-stopped at epoch {last.get('epoch')}")
        else:
            values = ", ".join(f"{k} {last.get(k, math.nan):.3g}" for k in self.objectives)
            self._line(trials, trial, f"{shown} -> {values} ({last.get('seconds_mitigate', math.nan):.1f} s mitigate)")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._sync(trials)
        self._record(trial, errored=True)
        if live_stream(self.stream) is not None:
            self._say(f"trial {trial.trial_id} errored (recorded as failed)")
            self._draw(trials)
        else:
            self._line(trials, trial, "errored (recorded as failed)")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Leave the final bar on screen, or print the same fields as one closing line."""
        self._sync(trials)
        if self._bar is not None:
            self._draw(trials)
            self._bar.close()
            self._bar = None
            return
        if live_stream(self.stream) is None:
            c = self.counts(trials)
            self._say(f"[{c['elapsed']:6.0f} s] sweep: {c['done']}/{self.total} trials done, "
                      f"{self._postfix(c)}")
