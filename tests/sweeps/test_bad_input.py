"""Bad input at scale: malformed search spaces and flag combinations, each answered by `sweeps/run.py` with one
`error:` line that names the bad value, exit status 2, no traceback, and nothing written (no storage root, no
mlflow.db, no sweep or Ray directory), before any trial.

The table runs through `sweeps.run.main` in this process (the command's own code path, without the interpreter
start); a few cases also run as real processes, and one process shows that a bad flag is answered before torch
is imported and a bad search space before Ray, Optuna or MLflow are.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUN = str(REPO / "sweeps" / "run.py")

# A valid space; every case below breaks it (or the command line) in one way.
GOOD = """\
method: balanced_subnet
description: a valid space that each case breaks one way
params:
  ratio: {type: float, low: 0.01, high: 0.5, log: true}
  epochs: {type: int, low: 1, high: 3}
  loss_weighting: {type: categorical, choices: [0.9, 0.7]}
fixed: {lr: 0.1}
paper_grid:
  ratio: [0.01, 0.3]
  epochs: [1, 3]
paper_fixed:
  batch_size: 64
"""

# Billion laughs: one value of 9 levels of 9 aliases each, 9**9 numbers once expanded; any message that shows it
# (`bad value [[[...` for a float) would expand it.
BOMB = "method: balanced_subnet\nfixed:\n  lr: [&a0 [1, 1, 1, 1, 1, 1, 1, 1, 1], " + ", ".join(
    f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)) + "]\n"
# 50 values for each of 5 hyperparameters: 3.1e8 points, refused before anything enumerates them.
HUGE_GRID = GOOD.split("paper_grid:")[0] + "paper_grid:\n" + "".join(
    f"  {name}: [{', '.join(str(round(step * (i + 1), 3)) for i in range(50))}]\n"
    for name, step in (("ratio", 0.01), ("epochs", 1), ("loss_weighting", 0.01), ("momentum", 0.01),
                       ("weight_decay", 0.001)))


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]  # after the base flags; "{in}" is the folder holding the space file
    needles: tuple[str, ...]  # each must be in the error line: the bad value and what is allowed
    space: str | bytes = GOOD


def space(case_id: str, text: str | bytes, *needles: str) -> Case:
    return Case(case_id, (), needles, text)


def flags(case_id: str, argv: list[str], *needles: str) -> Case:
    return Case(case_id, tuple(argv), needles)


def edit(old: str, new: str) -> str:
    assert GOOD.count(old) == 1, old  # the edit must hit the place it means
    return GOOD.replace(old, new)


CASES = [
    # wrong types
    space("low-is-a-string", edit("low: 0.01,", "low: abc,"), "params.ratio low: expected a number, got 'abc'"),
    space("type-is-a-list", edit("{type: float", "{type: [float]"),
          "params.ratio: unknown type ['float']; allowed: ['float', 'int', 'categorical']"),
    space("bool-for-a-bound", edit("low: 1, high: 3", "low: true, high: 3"),
          "params.epochs low: expected a number, got True"),
    space("bool-for-a-fixed-float", edit("fixed: {lr: 0.1}", "fixed: {lr: yes}"), "fixed.lr", "True",
          "expected float"),
    space("section-is-a-list", edit("fixed: {lr: 0.1}", "fixed: []"), "'fixed' must be a mapping, got list"),
    space("description-is-a-list", edit("description: a valid space that each case breaks one way", "description: [a]"),
          "'description' must be one line of text, got ['a']"),
    # bounds and choices
    space("inverted-bounds", edit("low: 1, high: 3", "low: 3, high: 1"), "params.epochs: low=3 must be <= high=1"),
    space("empty-choices", edit("choices: [0.9, 0.7]", "choices: []"),
          "params.loss_weighting: categorical needs a non-empty list 'choices'"),
    space("log-with-low-zero", edit("low: 0.01, high: 0.5, log: true", "low: 0.0, high: 0.5, log: true"),
          "params.ratio: log: true needs low > 0, got low=0.0"),
    space("nan-bound", edit("low: 0.01,", "low: .nan,"), "params.ratio low: expected a finite number, got nan"),
    space("inf-bound", edit("high: 3}", "high: .inf}"), "params.epochs high: expected a finite number, got inf"),
    space("overflowing-bound", edit("high: 3}", "high: 1e400}"), "params.epochs high: expected a finite number"),
    # unknown keys at every level
    space("unknown-top-level-key", GOOD + "descripton: typo\n", "unknown top-level key(s) ['descripton']",
          "allowed: ['method', 'description', 'params', 'fixed', 'paper_grid', 'paper_fixed']"),
    space("unknown-top-level-keys-of-mixed-types", GOOD + "1: a\nzz: b\n", "unknown top-level key(s) [1, 'zz']"),
    space("unknown-key-in-a-params-entry", edit("high: 3}", "high: 3, steps: 2}"),
          "params.epochs: unknown key(s) ['steps'] for type int; allowed: ['high', 'log', 'low', 'step', 'type']"),
    space("unknown-keys-of-mixed-types-in-a-params-entry", edit("high: 3}", "high: 3, 7: x, z: y}"),
          "params.epochs: unknown key(s) [7, 'z']"),
    space("unknown-hyperparameter-in-params", edit("  epochs: {type: int", "  ig_steps: {type: int"),
          "params.ig_steps is not a hyperparameter of balanced_subnet; allowed: ['ratio', 'epochs'"),
    space("unknown-key-in-fixed", edit("fixed: {lr: 0.1}", "fixed: {learning_rate: 0.1}"),
          "fixed.learning_rate is not a hyperparameter of balanced_subnet; allowed: ["),
    space("unknown-key-in-paper-grid", edit("  epochs: [1, 3]", "  epoch: [1, 3]"),
          "paper_grid.epoch is not a hyperparameter of balanced_subnet"),
    space("unknown-key-in-paper-fixed", edit("  batch_size: 64", "  batchsize: 64"),
          "paper_fixed.batchsize is not a hyperparameter of balanced_subnet"),
    space("file-for-another-method", edit("method: balanced_subnet", "method: balanced_subnett"),
          "is for method 'balanced_subnett', not 'balanced_subnet'"),
    # values outside the method's own ranges
    space("fixed-out-of-range", edit("fixed: {lr: 0.1}", "fixed: {lr: 1000.0}"),
          "fixed.lr: lr=1000.0 of balanced_subnet is out of range; allowed: [1e-05, 100.0]"),
    space("grid-value-out-of-range", edit("ratio: [0.01, 0.3]", "ratio: [0.01, 1.5]"),
          "paper_grid.ratio value 1.5", "out of range; allowed: [0.0, 0.99]"),
    Case("huge-grid", ("--grid", "paper"), ("paper_grid has 3.12e+08 points (50 x 50 x 50 x 50 x 50); at most 10000",),
         HUGE_GRID),
    # the file itself
    space("not-utf8", GOOD.encode().replace(b"a valid", b"a \xff valid"), "is not UTF-8 text: byte 0xff at offset"),
    space("alias-bomb", BOMB, "line 3, column 8: YAML anchors and aliases", "are not allowed"),
    space("merge-key", edit("fixed: {lr: 0.1}", "fixed: {<<: {lr: 0.1}}"), "YAML merge keys (<<) are not allowed"),
    space("python-object-tag", edit("fixed: {lr: 0.1}", "fixed: !!python/object/apply:os.system ['echo pwned']"),
          "YAML tag 'tag:yaml.org,2002:python/object/apply:os.system' is not allowed"),
    space("custom-tag", edit("low: 1, high: 3", "low: !int 1, high: 3"), "YAML tag '!int' is not allowed"),
    space("duplicate-key", edit("  epochs: {type: int, low: 1, high: 3}", "  ratio: {type: float, low: 0.1, high: 1}"),
          "line 5, column 3: duplicate key 'ratio'"),
    space("deep-nesting", "method: balanced_subnet\nfixed: {lr: " + "[" * 5000 + "]" * 5000 + "}\n",
          "nested deeper than 16 levels"),
    space("empty-file", "", "is empty; expected a mapping with keys ['method'"),
    space("list-document", "- ratio\n- epochs\n", "expected a mapping with keys", "got list"),
    space("scalar-document", "balanced_subnet\n", "expected a mapping with keys", "got str"),
    space("malformed-yaml", edit("high: 3}", "high: 3"), "malformed YAML in", "line"),
    flags("search-space-is-a-directory", ["--search-space", "{in}"], "is a directory; expected a YAML file"),
    flags("missing-search-space", ["--search-space", "{in}/nope.yaml"],
          "nope.yaml does not exist (expected ", "or pass --search-space FILE)"),
    flags("search-space-is-a-device", ["--search-space", os.devnull], "is not a regular file"),
    flags("one-file-for-two-methods", ["--method", "balanced_subnet,durable"],
          "--search-space names 1 file(s) for 2 method(s)"),
    # flags
    flags("unknown-method", ["--method", "nope"], "unknown method 'nope'; allowed: ['activations', "),
    flags("num-samples-zero", ["--num-samples", "0"], "--num-samples must be >= 1, got 0"),
    flags("num-samples-negative", ["--num-samples", "-3"], "--num-samples must be >= 1, got -3"),
    flags("num-samples-not-a-number", ["--num-samples", "ten"], "argument --num-samples: invalid int value: 'ten'"),
    flags("max-concurrent-zero", ["--max-concurrent", "0"], "--max-concurrent must be >= 1, got 0"),
    flags("repeats-zero", ["--repeats", "0"], "--repeats must be >= 1, got 0"),
    flags("heldout-frac-above-one", ["--heldout-frac", "1.5"], "--heldout-frac must be in [0, 1), got 1.5"),
    flags("objectives-unknown", ["--objectives", "mem_pct,nope,val_acc_drop"], "unknown objective 'nope'; allowed:"),
    flags("objectives-one", ["--objectives", "mem_pct"], "--objectives needs at least two"),
    flags("objectives-without-utility", ["--objectives", "mem_pct,relearn_mem_pct"], "has no utility loss"),
    flags("robustness-unknown", ["--robustness", "sampled"], "--robustness: robustness metric 'sampled' is unknown"),
    flags("cpus-per-trial-inf", ["--cpus-per-trial", "inf"], "--cpus-per-trial must be a finite number > 0, got inf"),
    flags("gpus-per-trial-nan", ["--gpus-per-trial", "nan"], "--gpus-per-trial must be a finite number >= 0",
          "got nan"),
    flags("seed-negative", ["--seed", "-1"], "--seed must be in [0, 4294967295]", "got -1"),
    flags("unknown-device", ["--device", "tpu"], "bad --device 'tpu'; allowed: ['auto', 'cpu', 'cuda'] or cuda:N"),
    flags("keep-models-bad-value", ["--keep-models", "best"], "argument --keep-models: invalid choice: 'best'",
          "'pareto', 'all', 'none'"),
    flags("register-model-with-a-slash", ["--register-model", "team/model"],
          "bad --register-model 'team/model'", "may not contain '/' or ':'"),
    flags("register-model-with-two-colons", ["--register-model", "a:b:c"], "the model name 'a:b' may not contain"),
    flags("register-model-with-keep-none", ["--register-model", "m", "--keep-models", "none"],
          "--keep-models none keeps none; allowed with --register-model: ['pareto', 'all']"),
    flags("max-utility-loss-negative", ["--max-utility-loss", "-1"], "bad --max-utility-loss '-1'",
          "allowed: a finite number >= 0", "or 'none'"),
    flags("max-utility-loss-nan", ["--max-utility-loss", "nan"], "bad --max-utility-loss 'nan'"),
    flags("max-utility-loss-not-a-number", ["--max-utility-loss", "one"], "bad --max-utility-loss 'one'"),
    flags("time-budget-zero", ["--time-budget", "0"], "bad --time-budget '0'", "a number of seconds > 0",
          "or 'none'"),
    flags("time-budget-unknown-unit", ["--time-budget", "9d"], "bad --time-budget '9d'", "9m, 1.5h"),
    flags("optuna-storage-unknown-scheme", ["--optuna-storage", "redis://127.0.0.1/0"],
          "bad --optuna-storage 'redis://127.0.0.1/0'", "or an RDB URL such as sqlite:///PATH.db"),
    flags("optuna-storage-without-a-path", ["--optuna-storage", "sqlite://"], "bad --optuna-storage 'sqlite://'"),
    flags("optuna-storage-under-a-file", ["--optuna-storage", "sqlite:///{in}/space.yaml/optuna.db"],
          "space.yaml is not a writable directory"),
    flags("optuna-journal-under-a-file", ["--optuna-storage", "{in}/space.yaml/optuna.journal"],
          "space.yaml is not a writable directory"),
    flags("optuna-journal-a-directory", ["--optuna-storage", "{in}"], "is a directory; allowed: a file path"),
    flags("unknown-sampler", ["--sampler", "cmaes"], "argument --sampler: invalid choice: 'cmaes'",
          "'auto', 'tpe', 'gp', 'nsga2', 'random'"),
    flags("grid-with-a-sampler", ["--grid", "paper", "--sampler", "nsga2"], "--sampler nsga2", "--grid paper"),
    flags("grid-with-asha", ["--grid", "paper", "--scheduler", "asha"], "--scheduler asha cannot be combined"),
    flags("preset-twice", ["--preset", "math-tiny,math-tiny"], "--preset lists a preset twice"),
    flags("storage-is-a-file", ["--storage", "{in}/space.yaml"], "space.yaml is a file; expected a directory"),
    flags("storage-under-a-file", ["--storage", "{in}/space.yaml/runs"], "space.yaml is a file; expected a directory"),
    flags("blank-experiment", ["--experiment", " "], "bad --experiment ' '", "not blank"),
    flags("experiment-with-a-line-break", ["--experiment", "a\nb"], "bad --experiment 'a\\nb'"),
    flags("hf-option-without-model", ["--forget-file", "rows.jsonl"], "--forget-file", "--model hf:"),
    flags("unreachable-cluster", ["--address", "127.0.0.1:1"], "Ray cluster at --address 127.0.0.1:1 is unreachable"),
    flags("resume-without-experiment", ["--resume"], "--resume needs --experiment NAME"),
]


def base_argv(inputs: Path, root: Path) -> list[str]:
    return ["--method", "balanced_subnet", "--preset", "math-tiny", "--storage", str(root),
            "--search-space", str(inputs / "space.yaml")]


def write_space(inputs: Path, text: str | bytes) -> None:
    inputs.mkdir(parents=True, exist_ok=True)
    target = inputs / "space.yaml"
    target.write_bytes(text if isinstance(text, bytes) else text.encode())


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under `folder` with its size and mtime: what a refused command must leave as it was."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def run_in_process(argv: list[str]) -> tuple[int, str, str]:
    """`sweeps.run.main(argv)` as the command runs it: (exit status, stdout, stderr); argparse exits too."""
    from sweeps.run import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


def assert_one_error_line(code: int, out: str, err: str, needles: tuple[str, ...]) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and not out.strip(), (out, err)
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture
def no_sweep_may_start(monkeypatch):
    """A case that passes every check would start a real sweep; fail it at once instead."""
    import sweeps.engine

    def refuse(*_args, **_kwargs):
        raise AssertionError("the input was accepted: a sweep would start")

    monkeypatch.setattr(sweeps.engine, "run_sweep", refuse)


def test_the_base_input_is_valid(tmp_path, no_sweep_may_start):
    """Each case fails for its own edit: unedited, the same command passes every check."""
    write_space(tmp_path / "in", GOOD)
    with pytest.raises(AssertionError, match="a sweep would start"):
        run_in_process(base_argv(tmp_path / "in", tmp_path / "runs"))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, monkeypatch, no_sweep_may_start):
    inputs = tmp_path / "in"
    write_space(inputs, case.space)
    monkeypatch.chdir(tmp_path)  # a relative default (./tinymem-runs, ./mlruns) would land here
    before = snapshot(tmp_path)
    argv = base_argv(inputs, tmp_path / "runs") + [a.replace("{in}", str(inputs)) for a in case.argv]
    t0 = time.perf_counter()
    code, out, err = run_in_process(argv)
    assert time.perf_counter() - t0 < 5, "bad input must be answered in seconds"
    assert_one_error_line(code, out, err, case.needles)
    assert snapshot(tmp_path) == before, "a refused command wrote something"


def test_table_covers_at_least_25_cases():
    assert len(CASES) >= 25 and len({c.id for c in CASES}) == len(CASES)


def test_resume_cannot_change_the_method_or_the_preset(tmp_path, monkeypatch, no_sweep_may_start):
    """A recorded sweep (its record written by the engine's own `sweep_record`) resumed with another --method or
    --preset is refused: those name what the sweep is."""
    from sweeps import storage
    from sweeps.engine import sweep_record
    from sweeps.options import SWEEP_RECORD, SweepOptions
    from sweeps.plan import plan_sweep

    write_space(tmp_path / "in", GOOD)
    root = tmp_path / "runs"
    plan = plan_sweep(SweepOptions(method="balanced_subnet", preset="math-tiny", storage=str(root),
                                   search_space=str(tmp_path / "in" / "space.yaml"), experiment="exp"))
    storage.write_json(storage.join(plan.sweep_dir, SWEEP_RECORD), sweep_record(plan, "0", "parent", bases={}))
    before = snapshot(tmp_path)
    for extra, needles in (
            (["--method", "durable"], ("was started with --method balanced_subnet, not durable",
                                       "resume it without --method")),
            (["--preset", "math-demo"], ("was started with --preset math-tiny, not math-demo",)),
            (["--num-samples", "0"], ("--num-samples must be >= 1, got 0",))):
        code, out, err = run_in_process(["--resume", "--experiment", "exp", "--storage", str(root), *extra])
        assert_one_error_line(code, out, err, needles)
    assert snapshot(tmp_path) == before


# The real command, as a user runs it: two bad flags (answered before torch) and a bad file (after it), started
# together since each pays for its own interpreter and imports.
PROCESS_CASES = ["num-samples-zero", "keep-models-bad-value", "alias-bomb"]


def test_real_processes_answer_bad_input_in_one_line(tmp_path):
    by_id = {c.id: c for c in CASES}
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    started = []
    for case_id in PROCESS_CASES:
        case, work = by_id[case_id], tmp_path / case_id
        write_space(work / "in", case.space)
        argv = base_argv(work / "in", work / "runs") + [a.replace("{in}", str(work / "in")) for a in case.argv]
        started.append((case, work, snapshot(work), time.perf_counter(),
                        subprocess.Popen([sys.executable, RUN, *argv], cwd=work, env=env, text=True,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)))
    for case, work, before, t0, proc in started:
        out, err = proc.communicate(timeout=120)
        assert_one_error_line(proc.returncode, out, err, case.needles)
        assert snapshot(work) == before, case.id
        assert time.perf_counter() - t0 < 60, case.id  # started together on shared cores; alone each takes seconds


# Runs sweeps/run.py as `python sweeps/run.py ...` does (runpy, as __main__), once per command line, and says
# which heavy libraries each had imported when it exited.
IMPORT_PROBE = """
import contextlib, io, json, runpy, sys
report = []
for argv in json.loads(sys.argv[1]):
    sys.argv = [{script!r}, *argv]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            runpy.run_path({script!r}, run_name="__main__")
        except SystemExit as e:
            code = e.code
    report.append({{"code": code, "err": err.getvalue(),
                   "imported": [m for m in ("torch", "ray", "optuna", "mlflow") if m in sys.modules]}})
print(json.dumps(report))
"""


def test_bad_flags_are_answered_before_torch_and_bad_spaces_before_ray_and_mlflow(tmp_path):
    write_space(tmp_path / "in", BOMB)
    argv = base_argv(tmp_path / "in", tmp_path / "runs")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    p = subprocess.run([sys.executable, "-c", IMPORT_PROBE.format(script=RUN),
                        json.dumps([argv + ["--num-samples", "0"], argv])],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr
    flag, bad_space = json.loads(p.stdout)
    assert flag["code"] == 2 and "--num-samples must be >= 1" in flag["err"] and flag["imported"] == [], flag
    assert bad_space["code"] == 2 and "anchors and aliases" in bad_space["err"], bad_space
    assert bad_space["imported"] == ["torch"], bad_space  # the method registry needs torch; Ray and MLflow wait
