"""`python sweeps/report.py --experiment NAME`: rebuild a sweep's Pareto table, CSV and PNG from MLflow alone.

    python sweeps/report.py --experiment balanced_subnet-math-demo [--tracking-uri URI] [--run-id PARENT]

(default: the latest sweep of that experiment in the default SQLite file under the default storage root,
`tinymem.store.DEFAULT_ROOT`). A finished sweep builds the same report itself (`sweeps.readback`). For each
member of the front (and the paper rule's pick) it shows the kept model directory and the `tinymem mitigate`
command that rebuilds the model (`sweeps.models`, from the runs' tags).
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
from sweeps.errors import SweepError
from sweeps.models import detail_lines, model_details, with_details
from sweeps.readback import build_from_mlflow, latest_parent_run
from sweeps.tracking import mlflow_client
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
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
