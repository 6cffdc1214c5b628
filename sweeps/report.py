"""Sweep reports: the Pareto table, CSV and PNG, built from MLflow alone.

A finished sweep calls `build_from_mlflow` on its own parent run; the same code rebuilds any sweep later:

    python sweeps/report.py --experiment balanced_subnet-math-demo [--tracking-uri URI] [--run-id PARENT]

(default: the latest sweep of that experiment in the default SQLite file under ./tinymem-runs). Everything
needed is in MLflow: the child runs' params, metrics and `state` tags, and the parent run's tags
`tinymem.sweep` (task kind, objectives) and `tinymem.base` (base metrics per preset).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script: sweeps/ must not shadow top-level modules (its files are called report, storage,
    # errors, ...); the repository root goes there instead.
    import os

    _here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd

from sweeps import storage
from sweeps.errors import SweepError
from sweeps.pareto import MEM, select, utility_loss_name
from sweeps.tracking import check_tracking_uri, default_tracking_uri, mlflow_client, set_tags

UTILITY_COLUMNS = {"math": ["test_acc"], "language": ["test_ppl"]}
BASE_COLUMNS = ["trial_id", "run_id", "state", "method", "preset"]


def _parse_param(value: str) -> Any:
    try:
        return json.loads(value)
    except (ValueError, TypeError):
        return value


def runs_dataframe(client: Any, experiment_id: str, parent_run_id: str) -> tuple[pd.DataFrame, list[str]]:
    """All child runs of a sweep: one row each, params and metrics as columns; and the hyperparameter names."""
    rows, param_names, token = [], [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
                                  max_results=1000, page_token=token)
        for run in page:
            tags, params = run.data.tags, run.data.params
            row: dict[str, Any] = {"trial_id": tags.get("tinymem.trial_id", ""), "run_id": run.info.run_id,
                                   "started_ms": run.info.start_time,
                                   "state": tags.get("state", "running"), "method": params.get("method", ""),
                                   "preset": params.get("preset", ""), "error": tags.get("error", "")}
            for k, v in params.items():
                if k not in ("method", "preset"):
                    row[k] = _parse_param(v)
                    if k not in param_names:
                        param_names.append(k)
            row.update(run.data.metrics)
            rows.append(row)
        token = page.token
        if not token:
            break
    df = pd.DataFrame(rows)
    if not df.empty:
        # Trial order = the order they started in (Tune's trial ids are random, not sequential).
        df = df.sort_values(["started_ms", "trial_id"], kind="stable").reset_index(drop=True)
    return df, param_names


@dataclass
class Report:
    """An annotated sweep: every trial with `pareto` / `paper_score`, plus where the files went."""

    trials: pd.DataFrame
    param_names: list[str]
    kind: str
    bases: dict[str, dict[str, float]]
    best_index: Any
    searched: list[str] | None = None
    experiment_id: str = ""
    parent_run_id: str = ""
    tracking_uri: str = ""
    csv_path: str | None = None
    png_path: str | None = None
    trials_csv_path: str | None = None
    local_files: dict[str, str] = field(default_factory=dict)

    @property
    def loss_name(self) -> str:
        return utility_loss_name(self.kind)

    @property
    def objectives(self) -> list[str]:
        return [MEM, self.loss_name]

    @property
    def counts(self) -> dict[str, int]:
        states = self.trials["state"].value_counts().to_dict() if not self.trials.empty else {}
        return {"trials": int(len(self.trials)), "completed": int(states.get("completed", 0)),
                "failed": int(states.get("failed", 0)), "early_stopped": int(states.get("early_stopped", 0)),
                "running": int(states.get("running", 0))}

    @property
    def front(self) -> pd.DataFrame:
        if self.trials.empty:
            return self.trials
        return self.trials[self.trials["pareto"]].sort_values([MEM, self.loss_name])

    def _columns(self, all_params: bool = False) -> list[str]:
        multi_method = self.trials["method"].nunique() > 1 if not self.trials.empty else False
        multi_preset = self.trials["preset"].nunique() > 1 if not self.trials.empty else False
        cols = ["trial_id"] + (["method"] if multi_method else []) + (["preset"] if multi_preset else [])
        shown = [p for p in self.param_names if all_params or p in (self.searched or self.param_names)]
        cols += [p for p in shown if p in self.trials.columns]
        cols += [MEM, self.loss_name] + UTILITY_COLUMNS[self.kind] + ["seconds_mitigate", "paper_score", "run_id"]
        return [c for c in dict.fromkeys(cols) if c in self.trials.columns]

    def _record(self, row: pd.Series) -> dict[str, Any]:
        def clean(v: Any) -> Any:
            if isinstance(v, float) and not math.isfinite(v):
                return None
            return v.item() if hasattr(v, "item") else v

        params = {p: clean(row[p]) for p in self.param_names if p in row.index and not _missing(row[p])}
        rec = {"trial_id": row["trial_id"], "run_id": row["run_id"], "method": row["method"],
               "preset": row["preset"], "params": params}
        for c in [MEM, self.loss_name] + UTILITY_COLUMNS[self.kind] + ["seconds_mitigate", "paper_score"]:
            if c in row.index:
                rec[c] = clean(row[c])
        return rec

    def pareto_records(self) -> list[dict[str, Any]]:
        return [self._record(r) for _, r in self.front.iterrows()]

    def best_record(self) -> dict[str, Any] | None:
        if self.best_index is None:
            return None
        return self._record(self.trials.loc[self.best_index])

    def table(self, rows: pd.DataFrame | None = None) -> str:
        """The front as a fixed-width text table (the paper rule's pick marked with *)."""
        rows = self.front if rows is None else rows
        if rows.empty:
            return "(no completed trial: the Pareto front is empty)"
        cols = self._columns()
        shown = rows[cols].copy()
        shown["run_id"] = shown["run_id"].str[:8]  # enough to find it in the UI; the CSV has the full id
        shown.insert(0, " ", ["*" if i == self.best_index else "" for i in rows.index])
        with pd.option_context("display.width", 250, "display.max_columns", 50, "display.max_colwidth", 40):
            return shown.to_string(index=False, float_format=lambda v: f"{v:.4g}")

    @property
    def ui_hint(self) -> str:
        path = f"#/experiments/{self.experiment_id}/runs/{self.parent_run_id}"
        if self.tracking_uri.startswith(("http://", "https://")):
            return f"open {self.tracking_uri.rstrip('/')}/{path}"
        return (f"mlflow ui --backend-store-uri {self.tracking_uri} --host 127.0.0.1 --port 5000  "
                f"# then open http://127.0.0.1:5000/{path}")

    def summary(self) -> str:
        c = self.counts
        lines = [f"trials: {c['trials']} ({c['completed']} completed, {c['failed']} failed, "
                 f"{c['early_stopped']} early-stopped)",
                 f"Pareto front on ({MEM}, {self.loss_name}), both minimised; * = the paper's scalar rule (§8.1):",
                 self.table()]
        best = self.best_record()
        if best is not None and (self.best_index not in self.front.index):
            lines.append("the paper's rule picks a trial off the front:")
            lines.append(self.table(self.trials.loc[[self.best_index]]))
        if self.csv_path:
            lines.append(f"CSV: {self.csv_path}   PNG: {self.png_path}   all trials: {self.trials_csv_path}")
        lines.append(f"MLflow: {self.ui_hint}")
        return "\n".join(lines)

    # --- files and tags ---------------------------------------------------------------------------------

    def write(self, out_dir: str) -> None:
        """pareto.csv, trials.csv and pareto.png into `out_dir` (local path or URI)."""
        local = storage.local_dir(out_dir)
        cols = self._columns(all_params=True)
        front_csv, all_csv, png = local / "pareto.csv", local / "trials.csv", local / "pareto.png"
        self.front[cols].to_csv(front_csv, index=False)
        extra = [c for c in ["state", "pareto", "error"] if c in self.trials.columns]
        rest = [c for c in self.trials.columns if c not in cols + extra]
        (self.trials[cols + extra + rest] if not self.trials.empty else self.trials).to_csv(all_csv, index=False)
        self.plot(png)
        self.local_files = {"pareto.csv": str(front_csv), "trials.csv": str(all_csv), "pareto.png": str(png)}
        self.csv_path = storage.upload(front_csv, storage.join(out_dir, "pareto.csv"))
        self.trials_csv_path = storage.upload(all_csv, storage.join(out_dir, "trials.csv"))
        self.png_path = storage.upload(png, storage.join(out_dir, "pareto.png"))

    def plot(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=110)
        df = self.trials
        if not df.empty and MEM in df.columns and self.loss_name in df.columns:
            done = df[df["state"] == "completed"]
            ax.scatter(done[self.loss_name], done[MEM], s=22, c="0.65", label="completed trials")
            early = df[df["state"] == "early_stopped"]
            if len(early) and early[MEM].notna().any():
                ax.scatter(early[self.loss_name], early[MEM], s=22, facecolors="none", edgecolors="0.5",
                           label="early-stopped (excluded)")
            front = self.front
            if len(front):
                f = front.sort_values(self.loss_name)
                ax.step(f[self.loss_name], f[MEM], where="post", c="tab:red", lw=1.2)
                ax.scatter(f[self.loss_name], f[MEM], s=36, c="tab:red", label="Pareto front", zorder=3)
            if self.best_index is not None:
                b = df.loc[self.best_index]
                ax.scatter([b[self.loss_name]], [b[MEM]], marker="*", s=180, c="black", zorder=4,
                           label="paper's scalar rule")
        else:
            ax.text(0.5, 0.5, "no completed trial", ha="center", va="center", transform=ax.transAxes)
        unit = "points of test_acc" if self.kind == "math" else "% of test_ppl"
        ax.set_xlabel(f"{self.loss_name} ({unit}; lower is better)")
        ax.set_ylabel(f"{MEM} (lower is better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        ax.set_title("memorization vs utility loss", fontsize=10)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)

    def publish(self, client: Any, parent_run_id: str) -> None:
        """Tag each child `pareto` true/false and attach the CSVs and the PNG to the parent run."""
        for idx, row in self.trials.iterrows():
            tags = {"pareto": "true" if bool(row.get("pareto")) else "false"}
            if idx == self.best_index:
                tags["paper_rule_best"] = "true"
            set_tags(client, row["run_id"], tags)
        for name, local in self.local_files.items():
            client.log_artifact(parent_run_id, local)


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def build_from_mlflow(client: Any, parent_run_id: str, out_dir: str | None, tracking_uri: str = "",
                      experiment_id: str | None = None) -> Report:
    """Read a sweep back from MLflow, select its front, and (if `out_dir`) write CSVs and the PNG."""
    parent = client.get_run(parent_run_id)
    experiment_id = experiment_id or parent.info.experiment_id
    tags = parent.data.tags
    try:
        sweep = json.loads(tags["tinymem.sweep"])
        bases = json.loads(tags["tinymem.base"])
    except (KeyError, ValueError):
        raise SweepError(f"run {parent_run_id} is not a TinyMem sweep parent run (no tinymem.sweep/base tags)"
                         ) from None
    df, param_names = runs_dataframe(client, experiment_id, parent_run_id)
    searched = sweep.get("searched")
    if searched:  # the table shows what was searched; the CSV of all trials keeps every hyperparameter
        param_names = [p for p in param_names if p in searched] + [p for p in param_names if p not in searched]
    kind = sweep["kind"]
    for col in [MEM, utility_loss_name(kind)]:
        if not df.empty and col not in df.columns:
            df[col] = math.nan
    annotated, best = select(df, bases, kind) if not df.empty else (df.assign(pareto=[], paper_score=[]), None)
    rep = Report(trials=annotated, param_names=param_names, kind=kind, searched=searched, bases=bases, best_index=best,
                 experiment_id=experiment_id, parent_run_id=parent_run_id, tracking_uri=tracking_uri)
    if out_dir:
        rep.write(out_dir)
    return rep


def latest_parent_run(client: Any, experiment: str) -> tuple[str, str]:
    """(experiment id, run id) of the most recent sweep parent run of an MLflow experiment."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        raise SweepError(f"no MLflow experiment {experiment!r}; allowed: {names}")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`tinymem.role` = 'sweep'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise SweepError(f"MLflow experiment {experiment!r} has no sweep parent run")
    return exp.experiment_id, runs[0].info.run_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python sweeps/report.py",
        description="Rebuild a sweep's Pareto table, CSV and PNG from MLflow alone.")
    parser.add_argument("--experiment", required=True, help="MLflow experiment name (as printed by run.py)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: sqlite:///<./tinymem-runs>/mlflow.db)")
    parser.add_argument("--run-id", default=None, help="the sweep's parent run id (default: the latest sweep)")
    parser.add_argument("--out", default=None,
                        help="directory for pareto.csv, trials.csv, pareto.png "
                             "(default: ./tinymem-runs/reports/<experiment>/<run id>)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    try:
        uri = args.tracking_uri or default_tracking_uri(storage.normalize_root("./tinymem-runs"))
        check_tracking_uri(uri)
        client = mlflow_client(uri)
        if args.run_id:
            experiment_id, run_id = client.get_run(args.run_id).info.experiment_id, args.run_id
        else:
            experiment_id, run_id = latest_parent_run(client, args.experiment)
        out = args.out or storage.join(storage.normalize_root("./tinymem-runs"), "reports", args.experiment, run_id)
        rep = build_from_mlflow(client, run_id, out, tracking_uri=uri, experiment_id=experiment_id)
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"experiment": args.experiment, "mlflow_parent_run_id": run_id, "tracking_uri": uri,
                          **rep.counts, "pareto": rep.pareto_records(), "best_paper_rule": rep.best_record(),
                          "pareto_csv": rep.csv_path, "pareto_png": rep.png_path}, indent=1, default=str))
    else:
        print(rep.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
