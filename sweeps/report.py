"""`python sweeps/report.py --experiment NAME`: rebuild a sweep's Pareto table, CSV and PNG from MLflow alone.

    python sweeps/report.py --experiment balanced_subnet-math-demo [--tracking-uri URI] [--run-id PARENT]

(default: the latest sweep of that experiment in the default SQLite file under the default storage root,
`tinymem.store.DEFAULT_ROOT`). A finished sweep builds the same report itself (`sweeps.readback`). For each
member of the front (and the paper rule's pick) it shows the kept model directory and the `tinymem mitigate`
command that rebuilds the model (`sweeps.models`, from the runs' tags).

    python sweeps/report.py --sync --experiment NAME [--sweep-id ID] [--storage ROOT] [--wait SECONDS]

first writes to MLflow what a sweep's trials left waiting in its ledger (MLflow was unreachable when the sweep
ended: `sweeps.mlflow_sync`), then ends the sweep as its driver would have (`sweeps.finish`) and reports.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

if __package__ in (None, ""):
    # As a script, sweeps/ (report, storage, errors, ...) must not shadow top-level modules: the repo root instead.
    _here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sweeps import storage
from sweeps.errors import EXIT_TRACKING_PENDING, SweepError, TrackingPending
from sweeps.models import detail_lines, model_details, with_details
from sweeps.readback import build_from_mlflow, latest_parent_run
from sweeps.mlflow_io import mlflow_client
from sweeps.tracking_uri import check_tracking_uri, default_tracking_uri
from tinymem.store import DEFAULT_ROOT
from tinymem.util import json_safe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python sweeps/report.py",
        description="Rebuild a sweep's Pareto table, CSV and PNG from MLflow alone.")
    parser.add_argument("--experiment", required=True, help="MLflow experiment name (as printed by run.py)")
    parser.add_argument("--tracking-uri", default=None,
                        help=f"MLflow tracking URI (default: sqlite:///<{DEFAULT_ROOT}>/mlflow.db)")
    parser.add_argument("--run-id", default=None, help="the sweep's parent run id (default: the latest sweep)")
    parser.add_argument("--out", default=None,
                        help="directory for pareto.csv, trials.csv, pareto.png "
                             f"(default: {DEFAULT_ROOT}/reports/<experiment>/<run id>)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--sync", action="store_true",
                        help="first write what the sweep's trials left waiting for an unreachable MLflow, and end "
                             "the sweep (front tags, kept models, parent run closed)")
    parser.add_argument("--sweep-id", default=None, help="with --sync: the sweep (default: the latest of --experiment)")
    parser.add_argument("--storage", default=DEFAULT_ROOT, help="with --sync: the sweep's storage root "
                                                                "(default: %(default)s)")
    parser.add_argument("--wait", type=float, default=600.0, metavar="SECONDS",
                        help="with --sync: how long to keep retrying an unreachable MLflow (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.sync:
        try:
            return sync(args)
        except SweepError as e:
            print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
            return EXIT_TRACKING_PENDING if isinstance(e, TrackingPending) else 2
    try:
        uri = args.tracking_uri or default_tracking_uri(storage.normalize_root(DEFAULT_ROOT))
        check_tracking_uri(uri)
        client = mlflow_client(uri)
        if args.run_id:
            experiment_id, run_id = client.get_run(args.run_id).info.experiment_id, args.run_id
        else:
            experiment_id, run_id = latest_parent_run(client, args.experiment)
        out = args.out or storage.join(storage.normalize_root(DEFAULT_ROOT), "reports", args.experiment, run_id)
        rep = build_from_mlflow(client, run_id, out, tracking_uri=uri, experiment_id=experiment_id)
        storage_root = client.get_run(run_id).data.params.get("storage", storage.normalize_root(DEFAULT_ROOT))
        models = model_details(client, rep, storage_root)
        rep.notes.extend(detail_lines(models))
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(json_safe({"experiment": args.experiment, "mlflow_parent_run_id": run_id,
                                    "tracking_uri": uri, **rep.counts,
                                    "pareto": [with_details(r, models) for r in rep.pareto_records()],
                                    "best_paper_rule": with_details(rep.best_record(), models), "pareto_csv": rep.csv_path,
                                    "pareto_png": rep.png_path}), indent=1, default=str))
    else:
        print(rep.summary())
    return 0


def sync(args: argparse.Namespace) -> int:
    """`--sync`: replay the sweep's ledger into MLflow, then end the sweep and print its report."""
    import time

    from sweeps.finish import finish_sweep, sweep_total
    from sweeps.inputs import dataset_specs
    from sweeps.mlflow_sync import LedgerSync, SyncContext, sync_all
    from sweeps.options import SweepOptions
    from sweeps.plan import plan_sweep
    from sweeps.sync_process import writer_lock
    from sweeps.tags import system_tags

    if not (args.wait >= 0 and args.wait < float("inf")):
        raise SweepError(f"--wait must be a finite number of seconds >= 0, got {args.wait}")
    plan = plan_sweep(SweepOptions(experiment=args.experiment, resume=args.sweep_id or "latest", storage=args.storage))
    rec = plan.record
    if not rec.get("mlflow_parent_run_id"):
        raise SweepError(f"sweep {plan.sweep_id} of {plan.experiment} never reached MLflow (no parent run); "
                         f"resume it with sweeps/run.py --resume")
    ctx = SyncContext(plan.tracking_uri, rec["mlflow_experiment_id"], rec["mlflow_parent_run_id"], plan.sweep_dir,
                      system_tags(), dataset_specs(rec.get("bases") or {}, plan.storage, plan.options.source))
    say = (lambda line: print(line, file=sys.stderr, flush=True))
    with writer_lock(plan.sweep_dir):
        s = LedgerSync(ctx, say=say)
        before = len(s.pending())
        if not sync_all(s, deadline=lambda end=time.monotonic() + args.wait: end, on_down=lambda e: say(
                f"MLflow at {plan.tracking_uri} is unreachable ({type(e).__name__}); retrying for {args.wait:.0f} s")):
            raise TrackingPending(f"MLflow at {plan.tracking_uri} is still unreachable after {args.wait:.0f} s; "
                                  f"the sweep's events stay in {plan.sweep_dir}; run this again later")
    say(f"synced sweep {plan.sweep_id}: {before} trial(s) were waiting, {s.applied} event(s) written")
    client = mlflow_client(plan.tracking_uri)
    done = finish_sweep(plan, client, ctx.experiment_id, ctx.parent_run_id, sweep_total(plan), None, say)
    print(done.report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
