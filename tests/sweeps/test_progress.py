"""A sweep's progress as a user sees it: one live bar on a terminal, plain lines in a pipe, pure JSON with --json.

The sweeps are real (the session's Ray runtime, MLflow in SQLite, the math-tiny base model); only the
terminal is stood in for, by a text stream that says it is a TTY, because the callback draws on the driver.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import random
import re
import sys

import numpy as np
import pytest
from mlflow import MlflowClient

from sweeps import tags as T
from sweeps.pareto import non_dominated
from sweeps.progress import ParetoFront, ProgressLines, live_stream

# 4 trials, 2 at a time: two complete (ratio 0.0 and 0.3), two crash (errored, not retried).
GRID = ("method: sweep_probe\nparams:\n  ratio: {type: float, low: 0.0, high: 0.5}\n"
        "paper_grid:\n  fail: [none, crash]\n  ratio: [0.0, 0.3]\n")


class FakeTTY(io.StringIO):
    """A terminal as far as the code under test can tell: it asks `isatty()`."""

    def isatty(self) -> bool:
        return True


def _front_size(tracking_uri: str, experiment: str) -> int:
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], filter_string=T.PARETO_FILTER)
    return len(runs)


def _sweep(monkeypatch, sweep_args, tmp_path, experiment: str, json_mode: bool, out: io.StringIO,
           err: io.StringIO) -> int:
    """Run the probe grid through `sweeps.run.main` with stdout and stderr replaced by `out` and `err`."""
    from sweeps.run import main

    space = tmp_path / "grid.yaml"
    space.write_text(GRID)
    args = sweep_args("sweep_probe", experiment, "--grid", "paper", "--max-failures", "0", "--max-concurrent", "2")
    args[args.index("--search-space") + 1] = str(space)
    if not json_mode:
        args.remove("--json")
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    try:
        return main(args)
    finally:
        monkeypatch.undo()


def test_a_terminal_shows_one_live_bar_with_the_final_counts(ray_runtime, sweep_args, tracking_uri, tmp_path,
                                                             monkeypatch):
    screen, err = FakeTTY(), FakeTTY()
    code = _sweep(monkeypatch, sweep_args, tmp_path, "t-bar", False, screen, err)
    out = screen.getvalue()
    assert code == 0, err.getvalue()
    front = _front_size(tracking_uri, "t-bar")
    assert front >= 1
    assert "\r" in out  # redrawn in place
    states = re.findall(r"sweep: +\d+%\|[^|]*\| (\d+)/4 \[[^\]]*running (\d+), failed (\d+), front (\d+)", out)
    assert states, out[-2000:]
    assert states[-1] == ("4", "0", "2", str(front))
    assert [int(s[0]) for s in states] == sorted(int(s[0]) for s in states)  # done only grows
    assert re.search(r"4/4 \[\d\d:\d\d<\d\d:\d\d", out)  # tqdm's [elapsed<remaining]
    # no per-trial result lines on a terminal, only the failures above the bar
    assert not re.search(r"trial \d+/4 ", out)
    assert out.count("errored (recorded as failed)") == 2
    assert out.index("Pareto front on (mem_pct") > out.rindex("4/4")  # the summary follows the final bar


def test_json_stdout_is_pure_json_and_a_log_gets_plain_lines(ray_runtime, sweep_args, tmp_path, monkeypatch):
    """--json on a terminal (stdout a TTY) with stderr going to a log: JSON alone on stdout, plain lines on
    stderr, one per finished trial, with the summary fields and no bar."""
    screen, log = FakeTTY(), io.StringIO()
    code = _sweep(monkeypatch, sweep_args, tmp_path, "t-json", True, screen, log)
    err = log.getvalue()
    assert code == 0, err
    data = json.loads(screen.getvalue())  # the whole of stdout
    assert (data["trials"], data["completed"], data["failed"]) == (4, 2, 2)
    assert "\r" not in err and "\x1b[" not in err and "%|" not in err
    lines = re.findall(r"trial (\d)/4 \S+: .* \| running \d+, failed (\d+), front (\d+), ETA \S+", err)
    assert sorted(int(n) for n, _, _ in lines) == [1, 2, 3, 4]
    assert err.count("errored (recorded as failed)") == 2
    assert f"sweep: 4/4 trials done, running 0, failed 2, front {len(data['pareto'])}" in err


@pytest.mark.parametrize("dims", [2, 3])
def test_the_front_grows_incrementally_as_pareto_defines_it(dims):
    rng = random.Random(dims)
    for _ in range(50):
        pts = [tuple(float(rng.randint(0, 5)) for _ in range(dims)) for _ in range(rng.randint(1, 20))]
        front = ParetoFront(dims)
        for i, p in enumerate(pts):
            front.add(p)
            assert len(front) == int(non_dominated(np.array(pts[: i + 1])).sum()), pts[: i + 1]


def test_bars_only_on_a_terminal_stdout(monkeypatch):
    monkeypatch.setattr(sys, "stdout", FakeTTY())
    monkeypatch.setattr(sys, "stderr", FakeTTY())
    assert live_stream("stdout") is sys.stdout
    assert live_stream("stderr") is None  # --json: lines for logs, even on a terminal
    assert live_stream("none") is None
    monkeypatch.setattr(sys, "stdout", sys.stderr)  # run.py --json: stdout pointed at stderr (a resumed callback)
    assert live_stream("stdout") is None
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert live_stream("stdout") is None


def test_the_callback_pickles_with_a_bar_on_screen_and_draws_again_when_restored(monkeypatch):
    """Tune pickles callbacks into the experiment; `--resume` draws with the unpickled copy."""
    from ray import cloudpickle

    screen = FakeTTY()
    monkeypatch.setattr(sys, "stdout", screen)
    cb = ProgressLines(None, ["mem_pct", "val_acc_drop"], 4, "stdout")  # type: ignore[arg-type]  (the space is only carried)
    cb.front.add((1.0, 2.0))
    cb.outcomes["a"] = "completed"
    cb.on_step_end(0, [])  # no bar yet: nothing drawn before the first trial starts
    assert screen.getvalue() == ""
    cb._draw([])
    assert cb._bar is not None and "1/4" in screen.getvalue()
    restored = pickle.loads(cloudpickle.dumps(cb))
    assert (restored.objectives, restored.total, restored.stream) == (["mem_pct", "val_acc_drop"], 4, "stdout")
    assert restored._bar is None and restored.outcomes == {} and len(restored.front) == 0
    restored._draw([])
    assert restored._bar is not None and "0/4" in screen.getvalue()
    cb._bar.close()
    restored._bar.close()


def test_a_callback_pickled_by_an_earlier_version_still_loads():
    """Sweeps started before the bar pickled `t0` beside the configuration: the copy must still restore."""
    cb = ProgressLines.__new__(ProgressLines)
    cb.__setstate__({"space": None, "loss_name": "val_acc_drop", "total": 3, "stream": "stderr", "t0": 0.0})
    assert cb.total == 3 and cb.t0 > 0.0 and cb.outcomes == {}
    assert cb.objectives == ["mem_pct", "val_acc_drop"]  # before --objectives: mem_pct and the utility loss


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_the_closing_line_carries_the_summary_fields(stream, monkeypatch):
    buf = io.StringIO()
    monkeypatch.setattr(sys, stream, buf)
    cb = ProgressLines(None, ["mem_pct", "val_acc_drop"], 2, stream)  # type: ignore[arg-type]
    cb.outcomes.update({"a": "completed", "b": "failed"})
    cb.front.add((0.0, 1.0))
    cb.on_experiment_end([])
    assert re.search(r"sweep: 2/2 trials done, running 0, failed 1, front 1$", buf.getvalue().strip())


def test_a_resumed_sweep_counts_the_trials_only_the_ledger_knows(tmp_path):
    """After a crash Tune's restored trial list lacks the trials that finished after its last save; the
    ledger has them, so the count and the front start from them."""
    from sweeps.ledger import TrialLedger

    ledger = TrialLedger(str(tmp_path))
    ledger.append("a", "created", run_id="r1", state="running")
    ledger.append("a", "finished", state="completed", result={"mem_pct": 0.0, "val_acc_drop": 1.0})
    ledger.append("b", "created", run_id="r2", state="running")
    ledger.append("b", "finished", state="failed", result={"error": "x"})
    ledger.append("c", "created", run_id="r3", state="running")  # died with its driver: not finished
    cb = ProgressLines(None, ["mem_pct", "val_acc_drop"], 4, "none", ledger_dir=str(tmp_path))  # type: ignore[arg-type]
    cb._sync([])
    c = cb.counts([])
    assert (c["done"], c["failed"], c["front"]) == (2, 1, 1)
    assert cb.done_at_start == 2  # finished before this process: not counted in its ETA


def test_the_eta_is_at_most_the_time_budget_left():
    """With a time budget the sweep ends by its deadline, so the ETA says at most that: before the first trial
    (no rate yet) and when the trials' rate would take longer. A resumed callback has no deadline (its budget
    counts again from the resume, in `sweeps.budget`)."""
    import time

    objectives = ["mem_pct", "val_acc_drop"]
    cb = ProgressLines(None, objectives, 40, "none", deadline=time.time() + 30)  # type: ignore[arg-type]
    assert 25 < cb.counts([])["eta"] <= 30
    cb.t0 -= 10.0  # one trial in 10 s: 39 more would take 390 s
    cb.outcomes["a"] = "completed"
    assert 25 < cb.counts([])["eta"] <= 30
    assert math.isnan(ProgressLines(None, ["mem_pct"], 4, "none").counts([])["eta"])  # type: ignore[arg-type]
    assert pickle.loads(pickle.dumps(cb)).deadline is None
