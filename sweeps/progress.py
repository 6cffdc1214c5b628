"""Per-trial progress lines of a sweep: one line per finished trial, on stdout or stderr.

Tune's own status table is off: it is noisy in logs.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

from ray.tune import Callback

from sweeps.pareto import MEM
from sweeps.space import SweepSpace


class ProgressLines(Callback):
    """One line per finished trial on stdout or stderr, counting the trials done.

    Only picklable configuration is kept: Ray pickles callbacks into the experiment and a resumed sweep
    uses the unpickled copy.
    """

    def __init__(self, space: SweepSpace, loss_name: str, total: int, stream: str = "stdout"):
        self.space, self.loss_name, self.total, self.stream = space, loss_name, total, stream
        self.t0 = time.time()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.t0 = time.time()  # a resumed sweep counts its own time

    def _line(self, trials: list, trial: Any, text: str) -> None:
        from ray.tune.experiment.trial import Trial

        done = sum(t.status in (Trial.TERMINATED, Trial.ERROR) for t in trials)
        if self.stream in ("stdout", "stderr"):
            print(f"[{time.time() - self.t0:6.0f} s] trial {done}/{self.total} {trial.trial_id}: {text}",
                  file=getattr(sys, self.stream), flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        shown = {k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in trial.config.items()}
        if last.get("failed"):
            self._line(trials, trial, f"{shown} failed: {last.get('error')}")
        elif not last.get("final"):
            self._line(trials, trial, f"{shown} early-stopped at epoch {last.get('epoch')}")
        else:
            self._line(trials, trial, f"{shown} -> {MEM} {last.get(MEM, math.nan):.2f}, "
                              f"{self.loss_name} {last.get(self.loss_name, math.nan):.3f} "
                              f"({last.get('seconds_mitigate', math.nan):.1f} s mitigate)")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(trials, trial, "errored (recorded as failed)")
