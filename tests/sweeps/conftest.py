"""Sweep fixtures: one local Ray runtime for the whole test session, MLflow in temporary SQLite files, and
small search spaces over the session's `math-tiny` base model (the root conftest's `tiny_store`).

Other test folders may reuse `ray_runtime`; it is session-scoped because `ray.init` costs seconds.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest

import tests.sweeps.probe_method  # noqa: F401  (registers the test-only `sweep_probe` method)

os.environ.pop("RAY_ADDRESS", None)
# Keep the test runtime on loopback and quiet: nothing a test starts listens on the network.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

REPO = Path(__file__).resolve().parents[2]

SPACES = {
    # Small ranges so a trial on math-tiny takes seconds.
    "durable": """
method: durable
description: test space (weights zeroed by gradient magnitude)
params:
  ratio: {type: float, low: 1.0e-3, high: 0.1, log: true}
fixed: {}
paper_grid:
  ratio: [1.0e-3, 0.01, 0.05]
""",
    "balanced_subnet": """
method: balanced_subnet
description: test space
params:
  ratio: {type: float, low: 0.01, high: 0.5, log: true}
  epochs: {type: int, low: 1, high: 3}
  loss_weighting: {type: categorical, choices: [0.9, 0.7, 0.5]}
fixed: {}
paper_grid:
  ratio: [0.01, 0.3]
  epochs: [1, 3]
  loss_weighting: [0.7]
""",
    "sweep_probe": """
method: sweep_probe
description: test-only probe
params:
  ratio: {type: float, low: 0.0, high: 0.5}
fixed: {epochs: 3}
paper_grid:
  ratio: [0.0, 0.1]
""",
}


@pytest.fixture(scope="session")
def ray_runtime():
    """One local Ray runtime (2 CPUs, 127.0.0.1, no dashboard) shared by every test of the session."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def sweep_root(request) -> str:
    """A storage root whose model store already holds math-tiny (trained once per session by the root
    conftest's `tiny_store`). For quicker local iterations, TINYMEM_SWEEP_TEST_STORE may name a root that
    already holds it (it is written to: Ray results, sweep records)."""
    preset = os.environ.get("TINYMEM_SWEEP_TEST_STORE")
    if preset:
        return str(Path(preset).resolve())
    root, _stored = request.getfixturevalue("tiny_store")
    return str(root)


@pytest.fixture(scope="session")
def spaces_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("spaces")
    for name, text in SPACES.items():
        (d / f"{name}.yaml").write_text(text)
    return d


@pytest.fixture(scope="session")
def mlflow_db_template(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store with its tables made: creating them (MLflow's migrations) costs ~2 s, a copy
    of the file nothing."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def tracking_uri(tmp_path, mlflow_db_template) -> str:
    """A fresh MLflow store of this test's own (a copy of the empty template)."""
    shutil.copyfile(mlflow_db_template, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def run_cli(argv: list[str], capsys) -> tuple[int, dict | None, str]:
    """Run `sweeps/run.py` in this process (sharing the session's Ray runtime); (exit code, JSON, stderr)."""
    from sweeps.run import main

    capsys.readouterr()
    code = main(argv)
    out = capsys.readouterr()
    data = json.loads(out.out) if code in (0, 130) and "--json" in argv and out.out.strip() else None
    return code, data, out.err


@pytest.fixture
def sweep_args(sweep_root, spaces_dir, tracking_uri):
    """Common flags: math-tiny, the session store, a fresh MLflow file, the test spaces."""

    def make(method: str, experiment: str, *extra: str) -> list[str]:
        files = ",".join(str(spaces_dir / f"{m}.yaml") for m in method.split(","))
        return ["--method", method, "--preset", "math-tiny", "--storage", sweep_root, "--tracking-uri",
                tracking_uri, "--experiment", experiment, "--search-space", files, "--json", *extra]

    return make
