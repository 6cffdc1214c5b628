"""The MLflow UI in a real browser: a tiny sweep served by a real `mlflow server`, its pages rendered by headless
Chromium, and the rendered DOM checked for the parent run, its child runs and, through the page that the sweep's
own hint prints, the Pareto front.

Skipped when no Chromium is installed (`apt-get install chromium` on Debian; `.ci/run` installs it). A
screenshot of the front's page is kept under the test's tmp dir and copied to `SHOT` (printed).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from sweeps import tags as T
from sweeps.results import LOCAL_UI
from tests.sweeps.conftest import run_cli
from tests.sweeps.mlflow_server import MlflowServer

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
SHOT = Path(os.environ.get("TINYMEM_UI_SHOT", Path(tempfile.gettempdir()) / "tinymem-ui-test" / "front.png"))
# The UI fetches runs after the page has loaded; virtual time lets it finish before the DOM is taken.
BUDGET_MS = 25000


def _browser() -> str | None:
    return next((b for b in map(shutil.which, BROWSERS) if b), None)


def _render(browser: str, url: str, out: Path, screenshot: Path | None = None) -> str:
    """The DOM of `url` after the page has run its scripts (and a PNG of it, if `screenshot`)."""
    args = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1600,1000",
            f"--virtual-time-budget={BUDGET_MS}", "--dump-dom"] + ([f"--screenshot={screenshot}"] if screenshot else [])
    dom = subprocess.run([*args, url], capture_output=True, text=True, timeout=180, check=True).stdout
    out.write_text(dom)  # kept for a look when an assertion fails
    return dom


def _rows(dom: str) -> dict[str, str]:
    """The runs table as rendered: run id -> the markup of its row. The grid draws each row in several column
    containers, each piece marked with `row-id` = the run id; the pieces of one run are joined."""
    marks = list(re.finditer(r'row-id="([0-9a-f]{32})"', dom))
    rows: dict[str, str] = {}
    for m, nxt in zip(marks, marks[1:] + [None]):
        rows[m.group(1)] = rows.get(m.group(1), "") + dom[m.end():nxt.start() if nxt else len(dom)]
    return rows


@pytest.mark.slow
def test_the_mlflow_ui_shows_the_sweep_and_its_front(ray_runtime, sweep_args, tracking_uri, tmp_path, capsys):
    browser = _browser()
    if browser is None:
        pytest.skip(f"no Chromium binary on PATH (looked for {', '.join(BROWSERS)})")
    t0 = time.time()
    MlflowClient(tracking_uri).search_experiments()  # the store's tables exist before the server opens it
    with MlflowServer(tracking_uri, tmp_path / "server") as server:  # starts while the sweep runs
        code, out, err = run_cli(sweep_args("durable", "t-browser", "--grid", "paper"), capsys)  # 3 trials
        assert code == 0, err
        t_sweep = time.time() - t0
        _check_pages(browser, server.wait_ready(), tracking_uri, out, tmp_path)
        t_pages = time.time() - t0 - t_sweep
    shot = tmp_path / "front.png"
    assert shot.stat().st_size > 10_000
    SHOT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, SHOT)
    print(f"\nMLflow UI screenshot of the front: {SHOT} (sweep {t_sweep:.0f} s, then server and pages {t_pages:.0f} s)")


def _check_pages(browser: str, ui: str, tracking_uri: str, out: dict, tmp_path: Path) -> None:
    """The experiment page (runs folded), the flat run list, and the front's page as the sweep printed it."""
    client = MlflowClient(tracking_uri)
    exp, parent_id = out["mlflow_experiment_id"], out["mlflow_parent_run_id"]
    parent = client.get_run(parent_id)
    children = client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    assert len(children) == 3
    names = {r.info.run_id: r.info.run_name for r in [parent, *children]}
    front = {r.info.run_id for r in children if r.data.tags[T.PARETO] == "true"}
    assert front and front == {rec["run_id"] for rec in out["pareto"]}
    datasets = [f"{i.dataset.name} ({i.dataset.digest})" for i in parent.inputs.dataset_inputs]
    assert len(datasets) == 4

    # The experiment page lists runs by date, with the child runs folded under their parent.
    dom = _render(browser, f"{ui}/#/experiments/{exp}/runs", tmp_path / "experiment.html")
    assert set(_rows(dom)) == {parent_id} and "<strong>4</strong> matching runs" in dom
    # Sorted by name the list is flat: the parent and every child, each with its name and the base model's four
    # datasets (name and digest).
    flat = _rows(_render(browser, f"{ui}/#/experiments/{exp}/runs?orderByKey=tags.%60mlflow.runName%60"
                                  f"&orderByAsc=true", tmp_path / "flat.html"))
    assert set(flat) == set(names)
    for run_id, row in flat.items():
        assert f">{names[run_id]}<" in row and all(d in row for d in datasets), (names[run_id], datasets)
    # The front's page exactly as the sweep printed it (on this server's port): the front and nothing else.
    printed = re.findall(re.escape(LOCAL_UI) + r"(/#/[^\s)]*\?[^\s)]*)", out["mlflow_ui"])  # quote() escapes ")"
    assert len(printed) == 1, out["mlflow_ui"]
    shown = _render(browser, ui + printed[0], tmp_path / "front.html", screenshot=tmp_path / "front.png")
    assert set(_rows(shown)) == front
    assert 'value="tags.&quot;tinymem.pareto&quot; = \'true\'"' in shown  # the filter, in the search box
