"""A sweep's results (`Report`): every trial annotated with `pareto` and `paper_score`, as table, CSV, PNG and tags.

`sweeps.readback` builds a `Report` from MLflow alone; the files go under the sweep's directory on the
storage root and are attached to the sweep's parent run. Its rows are the trials (`source` trial) and their
anytime candidates (`source` checkpoint, `sweeps.candidates`), which are eligible for the front; counts are of
trials.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pandas as pd

from sweeps import storage
from sweeps import tags as T
from sweeps.candidates import CHECKPOINT, SOURCE, TRIAL
from sweeps.pareto import MEM, REPORT_SPLIT, objectives_of, utility_loss_name
from sweeps.mlflow_io import set_tags
from tinymem.util import json_safe

LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui --host 127.0.0.1 --port 5000` serves
# Beside the objectives: the interval of mem_pct (over rows, or over base-model seeds with --repeats) and the
# utility loss on the reported split, which selection never saw.
INTERVAL_COLUMNS = ("mem_pct_ci_low", "mem_pct_ci_high", "mem_pct_seeds_ci_low", "mem_pct_seeds_ci_high")
UTILITY_COLUMNS = {"math": [utility_loss_name("math", REPORT_SPLIT), "test_acc"],
                   "language": [utility_loss_name("language", REPORT_SPLIT), "test_ppl"]}


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
    objective_names: list[str] | None = None  # what the front minimises (None: mem_pct and the utility loss)
    notes: list[str] = field(default_factory=list)  # more lines for `summary` (kept models: sweeps.models)
    max_loss: float | None = None  # the bound on the utility loss (--max-utility-loss); None: unconstrained

    @property
    def loss_name(self) -> str:
        return utility_loss_name(self.kind)

    @property
    def objectives(self) -> list[str]:
        return list(self.objective_names or objectives_of(self.kind))

    @property
    def trial_rows(self) -> pd.DataFrame:
        """The trials themselves, without their anytime candidates (`sweeps.candidates`)."""
        if self.trials.empty or SOURCE not in self.trials.columns:
            return self.trials
        return self.trials[self.trials[SOURCE] != CHECKPOINT]

    @property
    def counts(self) -> dict[str, int]:
        trials = self.trial_rows
        states = trials["state"].value_counts().to_dict() if not trials.empty else {}
        return {"trials": int(len(trials)), "completed": int(states.get("completed", 0)),
                "failed": int(states.get("failed", 0)), "early_stopped": int(states.get("early_stopped", 0)),
                "running": int(states.get("running", 0))}

    @property
    def constrained(self) -> bool:
        return self.max_loss is not None and "feasible" in self.trials.columns

    @property
    def front(self) -> pd.DataFrame:
        """The front's trials by the objectives, with a constraint the feasible ones first."""
        if self.trials.empty:
            return self.trials
        front = self.trials[self.trials["pareto"]]
        if self.constrained:
            return front.assign(_infeasible=~front["feasible"].astype(bool)).sort_values(
                ["_infeasible", *self.objectives]).drop(columns="_infeasible")
        return front.sort_values(self.objectives)

    def _columns(self, all_params: bool = False) -> list[str]:
        multi_method = self.trials["method"].nunique() > 1 if not self.trials.empty else False
        multi_preset = self.trials["preset"].nunique() > 1 if not self.trials.empty else False
        cols = ["trial_id", SOURCE] + (["method"] if multi_method else []) + (["preset"] if multi_preset else [])
        shown = [p for p in self.param_names if all_params or p in (self.searched or self.param_names)]
        cols += [p for p in shown if p in self.trials.columns]
        cols += [MEM, *INTERVAL_COLUMNS, *self.objectives, self.loss_name] + UTILITY_COLUMNS[self.kind] + [
            "seconds_mitigate", "paper_score", "feasible", "run_id"]
        return [c for c in dict.fromkeys(cols) if c in self.trials.columns]

    def _record(self, row: pd.Series) -> dict[str, Any]:
        def clean(v: Any) -> Any:  # numpy scalars to Python, NaN to None (JSON has no NaN)
            return json_safe(v.item() if hasattr(v, "item") else v)

        params = {p: clean(row[p]) for p in self.param_names if p in row.index and not _missing(row[p])}
        rec = {"trial_id": row["trial_id"], "run_id": row["run_id"], "method": row["method"],
               "preset": row["preset"], "params": params, SOURCE: row.get(SOURCE, TRIAL)}
        for c in [MEM, *INTERVAL_COLUMNS, *self.objectives, self.loss_name] + UTILITY_COLUMNS[self.kind] + [
                "seconds_mitigate", "paper_score", "feasible", "info_unlearn_rows"]:
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
        """How to see the sweep in the MLflow UI, on one line: for a local store the `mlflow ui` command, then the
        parent run's page and the page of the front (the runs that the search filter `tags."tinymem.pareto" =
        'true'` selects, by mem_pct). Everything after `#` is a shell comment, so the line can be pasted."""
        remote = self.tracking_uri.startswith(("http://", "https://"))
        base = self.tracking_uri.rstrip("/") if remote else LOCAL_UI
        pages = (f"{base}/#/experiments/{self.experiment_id}/runs/{self.parent_run_id}  "
                 f"(the front, filter {T.PARETO_FILTER}: {front_url(base, self.experiment_id)})")
        if remote:
            return f"open {pages}"
        return f"mlflow ui --backend-store-uri {self.tracking_uri} --host 127.0.0.1 --port 5000  # then open {pages}"

    def summary(self) -> str:
        c = self.counts
        feasible = ""
        if self.constrained:
            n = int(self.front["feasible"].astype(bool).sum())
            feasible = (f"; feasible: {self.loss_name} <= {self.max_loss:g} ({n} of {len(self.front)} on the front, "
                        f"listed first)")
        lines = [f"trials: {c['trials']} ({c['completed']} completed, {c['failed']} failed, "
                 f"{c['early_stopped']} early-stopped)",
                 f"Pareto front on ({', '.join(self.objectives)}), all minimised{feasible}; * = the paper's scalar "
                 f"rule:",
                 self.table()]
        best = self.best_record()
        if best is not None and (self.best_index not in self.front.index):
            lines.append("the paper's rule picks a trial off the front:")
            lines.append(self.table(self.trials.loc[[self.best_index]]))
        if self.csv_path:
            lines.append(f"CSV: {self.csv_path}   PNG: {self.png_path}   all trials: {self.trials_csv_path}")
        lines.extend(self.notes)
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
        """pareto.png: the front on two objectives, or a pair plot of every pair beyond two (`sweeps.plots`)."""
        from sweeps.plots import plot_report

        plot_report(self, path)

    def publish(self, client: Any, parent_run_id: str) -> None:
        """Tag each child `tinymem.pareto` (and with a constraint `tinymem.feasible`) true/false and attach the CSVs
        and the PNG to the parent run. A run is on the front when its trial or one of its anytime candidates is;
        `tinymem.pareto_checkpoints` then lists the candidates' epochs."""
        for run_id, rows in (self.trials.groupby("run_id", sort=False) if not self.trials.empty else []):
            trial = rows[rows.get(SOURCE, pd.Series(TRIAL, index=rows.index)) != CHECKPOINT]
            tags = {T.PARETO: "true" if bool(rows["pareto"].any()) else "false"}
            if self.constrained:
                tags[T.FEASIBLE] = "true" if bool(trial["feasible"].any()) else "false"
            if self.best_index in rows.index:
                tags[T.PAPER_RULE_BEST] = "true"
            front = rows[rows["pareto"] & ~rows.index.isin(trial.index)]
            if len(front):
                tags[T.PARETO_CHECKPOINTS] = ",".join(str(int(e)) for e in sorted(front["epochs"]))
            set_tags(client, run_id, tags)
        for name, local in self.local_files.items():
            client.log_artifact(parent_run_id, local)


def front_url(ui: str, experiment_id: str) -> str:
    """The MLflow UI's runs page of an experiment showing only the front, sorted by mem_pct. The UI keeps its
    search box and sort in the query string of its `#/experiments/<id>/runs` route; a sort other than by date
    also lists child runs flat instead of folded under their parent."""
    query = urlencode({"searchFilter": T.PARETO_FILTER, "orderByKey": f"metrics.`{MEM}`", "orderByAsc": "true"},
                      quote_via=quote)
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))
