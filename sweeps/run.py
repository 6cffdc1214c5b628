"""`python sweeps/run.py --method NAME` or `tinymem-sweep`: a memorization-mitigation sweep (Ray Tune + Optuna + MLflow).

A thin command line over `sweeps.plan` and `sweeps.engine`: parse flags, plan (every input check, in seconds,
before any trial), run, print the Pareto table (or one JSON object with --json). Bad input, argparse's own
complaints included, prints one line `error: ...` naming the problem and the allowed values, and exits with
status 2. `--help` imports no Ray, Optuna or MLflow; a bad flag is answered before torch is imported, and a
bad search space before Ray or MLflow are.

Output: on a terminal one live progress bar (`sweeps.progress`); in a pipe or log one line per finished trial;
with --json the JSON object alone on stdout and every human line on stderr.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    # As a script, sweeps/ (report, storage, errors, ...) must not shadow top-level modules: the repo root instead.
    _here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import contextlib
import json
import shlex

from sweeps import options
from sweeps.errors import EXIT_TRACKING_PENDING, SweepError, TrackingPending
from tinymem.errors import TinyMemError
from tinymem.hf.options import HFSourceOptions, add_source_arguments
from tinymem.presets import DEFAULT_PRESET
from tinymem.repeats import add_trust_arguments
from tinymem.store import DEFAULT_ROOT
from tinymem.util import json_safe


SCRIPT, CONSOLE = "python sweeps/run.py", "tinymem-sweep"


def invoked_as() -> str:
    """How the user started the sweep, to repeat it in help, the recorded command and the resume hint: the
    console script `tinymem-sweep` (pyproject.toml) or the repository's script."""
    return CONSOLE if Path(sys.argv[0]).name == CONSOLE else SCRIPT


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line like every other bad input (no usage block: --help has it)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=invoked_as(),
        description="Sweep a memorization-mitigation method's hyperparameters with Ray Tune + Optuna, log every "
                    "trial to MLflow, and print the Pareto front of memorization vs utility loss.",
        epilog="Example: python sweeps/run.py --method balanced_subnet   (then open MLflow as printed at the end); "
               "a Hugging Face model: python sweeps/run.py --method balanced_subnet --model hf:./my-model "
               "--forget-file memorized.jsonl --retain-file retain.jsonl")
    p.add_argument("--method", required=False, default=None,
                   help="registered method to sweep (`tinymem methods` lists them); a comma list runs a "
                        "cross-method sweep with the method as a search dimension (required)")
    p.add_argument("--preset", default=None,
                   help="base model preset; a comma list makes the base model a search dimension (all base "
                        f"models are made up front, in parallel) (default: {DEFAULT_PRESET}, unless --model)")
    p.add_argument("--model", default=None, metavar="hf:NAME_OR_PATH[@REVISION]",
                   help="a Hugging Face causal LM as the base model instead of --preset, with --forget-file and "
                        "--retain-file (options below, as in `tinymem mitigate --model hf:...`) (default: off)")
    p.add_argument("--num-samples", type=int, default=None,
                   help=f"trials to run (default: {options.DEFAULT_NUM_SAMPLES}; with --grid paper: the whole "
                        f"grid, or a seeded random subset of this size)")
    p.add_argument("--max-concurrent", type=int, default=None,
                   help="most trials at once (default: as many as the CPUs/GPUs allow)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs reserved per trial; also its torch threads (default: %(default)s)")
    p.add_argument("--gpus-per-trial", default=None, metavar="N|auto",  # checked by the engine's plan
                   help="GPUs per trial; a fraction packs several trials on one GPU (logical, no memory isolation); "
                        "auto (--model only) sizes it from the model, the methods and a GPU of the cluster "
                        "(default: 0 for presets, auto for --model)")
    p.add_argument("--sampler", default=None, choices=options.SAMPLERS,  # None: not given (it conflicts with --grid)
                   help="Optuna multi-objective sampler: auto (gp while the study holds at most about 500 "
                        "points, trials and anytime candidates, tpe beyond: docs/study.md), tpe (MO-TPE), gp "
                        "(Gaussian process, logEHVI; slower per suggestion, for small budgets), nsga2 (NSGA-II) "
                        "or random; tpe and gp start from space-filling (Sobol) points after the warm start "
                        f"(default: {options.SweepOptions.sampler})")
    p.add_argument("--max-utility-loss", default=None, metavar="X|none",
                   help="constraint: a trial whose utility loss (val accuracy drop in points, or val perplexity "
                        "increase in percent) exceeds X is infeasible; the sampler is told and the report shows "
                        "the feasible front first (default: 1 for math presets, none for language)")
    p.add_argument("--optuna-storage", default=None, metavar="PATH|URL",
                   help="where the sweep's Optuna study lives: a journal file PATH, or an RDB URL such as "
                        "postgresql://HOST/DB (default: <storage>/optuna.journal, or "
                        f"{DEFAULT_ROOT}/optuna.journal when --storage is an object store); open it with "
                        "optuna-dashboard PATH|URL")
    p.add_argument("--grid", default=None, choices=options.GRIDS,
                   help="run the paper's grid from the search space file instead of a sampler; paper-anytime: "
                        "the same configurations, an anytime method's smaller epoch counts evaluated as "
                        "checkpoints of its run at the largest (docs/anytime.md) (default: off, sample with "
                        "--sampler)")
    p.add_argument("--no-anytime", dest="anytime", action="store_false",
                   help="anytime methods (docs/anytime.md) evaluate no checkpoints: each trial is one configuration "
                        "(default: they do, when the space searches epochs)")
    p.add_argument("--scheduler", default="none", choices=options.SCHEDULERS,
                   help=f"asha: stop iterative trials early on the per-epoch guard metric `{options.ASHA_GUARD}`; "
                        f"dominated: stop an anytime trial whose last checkpoints neither improve on its own nor "
                        f"beat other trials' points; no-effect: stop an anytime trial whose first 3 checkpoints "
                        f"all leave memorization at the base model's (docs/anytime.md); early-stopped trials are "
                        f"tagged and never "
                        f"enter the front, their checkpoints do (default: %(default)s)")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS") or None,
                   help="an existing Ray cluster (HOST:PORT, ray://HOST:PORT or auto; default: $RAY_ADDRESS, "
                        "else a fresh local runtime on 127.0.0.1)")
    p.add_argument("--storage", default=DEFAULT_ROOT,
                   help="root for base models, Ray results and reports: a path, or a URI such as s3://bucket/x "
                        "(shared storage on a cluster; needs the [s3] or [gcs] extra) (default: %(default)s)")
    p.add_argument("--tracking-uri", default=None,
                   help=f"MLflow tracking URI (default: sqlite:///<storage>/mlflow.db, or {DEFAULT_ROOT}/mlflow.db "
                        "when --storage is an object store; http://HOST:PORT for a server)")
    p.add_argument("--experiment", default=None,
                   help="experiment name in MLflow and under <storage>/sweeps (default: <methods>-<presets>, or "
                        "<methods>-<model name> with --model)")
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="SWEEP_ID",
                   help="resume an interrupted sweep of --experiment (the latest one, or SWEEP_ID): finished "
                        "trials are kept once, unfinished ones continue, MLflow runs are continued (default: off)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler and of every trial (default: %(default)s)")
    p.add_argument("--search-space", default=None, metavar="FILE",
                   help="search space YAML (default: search_spaces/<method>.yaml; a comma list for several methods)")
    p.add_argument("--max-failures", type=int, default=1,
                   help="retries of a trial that crashed (lost worker, OOM); a bad value or NaN is not retried "
                        "(default: %(default)s)")
    p.add_argument("--objectives", default=None, metavar="A,B[,C...]",
                   help="what the Pareto front and the sampler minimise, a comma list of two or more, e.g. "
                        "mem_pct,relearn_mem_pct,val_acc_drop (robustness metrics are computed when named; a "
                        "test_* utility loss is selected on its val twin) (default: mem_pct and the val utility "
                        "loss)")
    p.add_argument("--robustness", default=None, metavar="all|NAME,...",
                   help="robustness metrics to compute and log beside the objectives (relearning, sampling, "
                        "perturbed prompts, NLL gap; docs/metrics.md) (default: those the objectives name)")
    p.add_argument("--keep-models", default="pareto", choices=options.KEEP_MODELS,
                   help="which trials' mitigated models stay as model directories (HF model, tokenizer, model "
                        "card) under <storage>/sweeps/<experiment>/<sweep id>/models/<trial id>/, each logged to "
                        "its MLflow run as a logged model: pareto (the front and the paper rule's pick), all "
                        "(every completed trial) or none (default: %(default)s)")
    p.add_argument("--register-model", default=None, metavar="NAME[:TRIAL_ID]",
                   help="register the paper rule's pick (or the kept model of trial TRIAL_ID) in the MLflow Model "
                        "Registry as a new version of NAME; works with --resume on a finished sweep (default: off)")
    p.add_argument("--time-budget", default=None, metavar="SECONDS|none",
                   help="wall-clock budget from the start (base training included), e.g. 540, 9m, 1.5h: then the "
                        "running trials stop at their last result (an anytime trial keeps its checkpoints) and no "
                        f"more start (default: {options.DEFAULT_TIME_BUDGET:.0f} s for a sampled sweep of the "
                        "default trial count, none with --num-samples or --grid)")
    p.add_argument("--sync-wait", type=float, default=options.SweepOptions.sync_wait, metavar="SECONDS",
                   help="after the last trial, how long to wait for an unreachable MLflow server; trials' results "
                        "wait on disk meanwhile and after it (write them later with sweeps/report.py --sync; exit "
                        "status 3) (default: %(default)s)")
    add_trust_arguments(p)  # --repeats, --heldout-frac, as `tinymem mitigate` takes them
    p.add_argument("--device", default="auto", help="torch device inside trials: auto, cpu or cuda (default: %(default)s)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object on stdout; progress goes to stderr (default: off)")
    add_source_arguments(p)  # --dtype, --forget-file, ... exactly as `tinymem mitigate --model hf:...` takes them
    return p


def options_from_args(args: argparse.Namespace, argv: list[str]) -> options.SweepOptions:
    return options.SweepOptions(
        source=HFSourceOptions.from_object(args), method=args.method or "", preset=args.preset,
        num_samples=args.num_samples, max_concurrent=args.max_concurrent, cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial, sampler=args.sampler or options.SweepOptions.sampler, grid=args.grid,
        scheduler=args.scheduler,
        address=args.address, storage=args.storage, tracking_uri=args.tracking_uri, experiment=args.experiment,
        resume=args.resume, seed=args.seed, search_space=args.search_space, max_failures=args.max_failures,
        device=args.device, repeats=args.repeats, heldout_frac=args.heldout_frac, keep_models=args.keep_models,
        objectives=args.objectives, robustness=args.robustness, max_utility_loss=args.max_utility_loss,
        optuna_storage=args.optuna_storage, sync_wait=args.sync_wait, time_budget=args.time_budget,
        anytime=args.anytime,
        register_model=args.register_model, command=shlex.join([*invoked_as().split(), *argv]))


def main(argv: list[str] | None = None) -> int:
    began = time.time()  # --time-budget counts from here: before planning imports torch, Ray and MLflow
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)

    def say(line: str) -> None:
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    try:
        if not args.method and not args.resume:
            from tinymem.mitigations import method_names

            raise SweepError(f"--method is required; allowed: {method_names()}")
        if args.grid and args.sampler:
            raise SweepError(f"--sampler {args.sampler} chooses configurations, but --grid {args.grid} runs the "
                             f"grid's own; give one of them")
        opts = options_from_args(args, argv)
        options.check_flags(opts)  # before planning imports torch
        from sweeps.plan import plan_sweep

        plan = plan_sweep(opts)
        from sweeps.engine import run_sweep  # Ray and MLflow: only once the plan holds

        # Ray prints cluster events on stdout from a background thread; with --json, stdout holds only the JSON.
        with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
            outcome = run_sweep(plan, say=say, stream="stderr" if args.json else "stdout", began=began)
    except TrackingPending as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_TRACKING_PENDING
    except (SweepError, TinyMemError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)  # one line, whatever the message holds
        return 2
    if args.json:
        # JSON has no NaN: a missing value is null, so every consumer can parse the object.
        print(json.dumps(json_safe(outcome.to_json()), indent=1, default=str))
    else:
        print()
        print(outcome.report.summary())
        print(f"wall time {outcome.wall_seconds:.0f} s (Ray start {outcome.ray_start_seconds:.1f} s)")
    if outcome.interrupted:
        print(f"interrupted: resume with  {invoked_as()} --experiment {plan.experiment} --resume "
              f"{plan.sweep_id} --storage {plan.storage}",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
