"""Search-space files: loading, validation against the method's Params, grids, warm starts, decoding."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from sweeps.errors import SweepError
from sweeps.space import SweepSpace
from sweeps.space_file import SEARCH_SPACE_DIR, load_search_space
from tinymem.mitigations import get_method, method_names

GOOD = """
method: balanced_subnet
description: a good one
params:
  ratio: {type: float, low: 1.0e-5, high: 0.8, log: true}
  epochs: {type: int, low: 1, high: 20}
  loss_weighting: {type: categorical, choices: [0.9, 0.7, 0.5]}
fixed: {lr: 0.1}
paper_grid:
  ratio: [1.0e-5, 1.0e-4]
  epochs: [1, 10, 20]
  loss_weighting: [0.9, 0.7, 0.5]
"""


def write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_good_file_loads_typed(tmp_path):
    s = load_search_space(write(tmp_path, GOOD), "balanced_subnet")
    assert s.params["ratio"].low == 1e-5 and s.params["ratio"].log
    assert s.params["epochs"].type == "int" and s.params["epochs"].high == 20
    assert s.params["loss_weighting"].choices == (0.9, 0.7, 0.5)
    assert s.fixed == {"lr": 0.1}
    grid = s.grid()
    assert len(grid) == 2 * 3 * 3 and grid[0] == {"ratio": 1e-5, "epochs": 1, "loss_weighting": 0.9}
    full = s.resolve({"ratio": 0.3, "epochs": 5, "loss_weighting": 0.7})
    assert full["lr"] == 0.1 and full["ratio"] == 0.3 and "momentum" in full  # defaults filled in


def test_yaml_1_1_exponent_strings_are_numbers(tmp_path):
    # PyYAML reads `1e-5` (no dot) as a string; the loader accepts it as a number.
    text = GOOD.replace("low: 1.0e-5", "low: 1e-5")
    assert load_search_space(write(tmp_path, text), "balanced_subnet").params["ratio"].low == 1e-5


@pytest.mark.parametrize("text, needle", [
    (GOOD.replace("ratio: {type: float", "ratioo: {type: float"), "params.ratioo is not a hyperparameter of balanced_subnet; allowed: ["),
    (GOOD.replace("fixed: {lr: 0.1}", "fixed: {learning_rate: 0.1}"), "fixed.learning_rate is not a hyperparameter"),
    (GOOD.replace("  epochs: [1, 10, 20]", "  epocs: [1, 10, 20]"), "paper_grid.epocs is not a hyperparameter"),
    (GOOD.replace("type: int", "type: integer"), "unknown type 'integer'; allowed: ['float', 'int', 'categorical']"),
    (GOOD.replace("high: 0.8", "high: 1.5"), "out of range; allowed: [0.0, 0.99]"),
    (GOOD.replace("low: 1.0e-5, high: 0.8, log: true", "low: 0.0, high: 0.8, log: true"), "log: true needs low > 0"),
    (GOOD.replace("low: 1, high: 20", "low: 30, high: 20"), "low=30 must be <= high=20"),
    (GOOD.replace("type: int, low: 1", "type: float, low: 1"), "epochs is an int hyperparameter of balanced_subnet"),
    (GOOD.replace("description:", "descripton:"), "unknown top-level key(s) ['descripton']; allowed:"),
    (GOOD.replace("fixed: {lr: 0.1}", "fixed: {epochs: 3}"), "are both searched (params) and fixed"),
    (GOOD.replace("method: balanced_subnet", "method: durable"), "is for method 'durable', not 'balanced_subnet'"),
    (GOOD.replace("choices: [0.9, 0.7, 0.5]", "choices: []"), "categorical needs a non-empty list 'choices'"),
    (GOOD.replace("{type: int, low: 1, high: 20}", "{type: int, low: 1, high: 20, steps: 2}"), "unknown key(s) ['steps']"),
    ("- just\n- a list\n", "expected a mapping"),
])
def test_bad_files_name_the_problem(tmp_path, text, needle):
    path = write(tmp_path, text)
    with pytest.raises(SweepError) as e:
        load_search_space(path, "balanced_subnet")
    msg = str(e.value)
    assert needle in msg, msg
    assert str(path) in msg and "\n" not in msg


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "method: balanced_subnet\nparams:\n  ratio: {type: float, low: 0.1\n")
    with pytest.raises(SweepError, match=r"malformed YAML in .*space.yaml at line \d+, column \d+"):
        load_search_space(path, "balanced_subnet")


def test_missing_file_says_where_it_looked(tmp_path):
    with pytest.raises(SweepError, match="does not exist.*--search-space FILE"):
        load_search_space(tmp_path / "nope.yaml", "balanced_subnet")


def test_repository_search_spaces_are_valid():
    """Every search_spaces/<method>.yaml in the repository validates against its method."""
    files = sorted(SEARCH_SPACE_DIR.glob("*.yaml"))
    for f in files:
        method = f.stem
        if method not in method_names():
            continue  # a space written before its method landed
        s = load_search_space(f, method)
        assert s.method == method
        # Every distribution must be constructible by Optuna itself.
        for d in s.params.values():
            d.to_optuna()


def test_sweep_space_single_method(tmp_path):
    s = load_search_space(write(tmp_path, GOOD), "balanced_subnet")
    space = SweepSpace([s], ["math-tiny"])
    study = optuna.create_study(directions=["minimize", "minimize"])
    trial = study.ask()
    space(trial)
    assert set(trial.params) == {"ratio", "epochs", "loss_weighting"}
    method, preset, params = space.decode(trial.params)
    assert method == "balanced_subnet" and preset == "math-tiny" and params["lr"] == 0.1
    # The method's defaults lie inside the space: they are the warm start, restricted to the swept names.
    d = get_method("balanced_subnet").Params().to_dict()
    assert space.warm_start_points() == [{k: d[k] for k in ("ratio", "epochs", "loss_weighting")}]
    assert space.max_epochs() == 20
    assert len(space.grid_points()) == 18
    sub = space.grid_points(limit=5, seed=1)
    assert len(sub) == 5 and all(p in space.grid_points() for p in sub)
    assert sub == space.grid_points(limit=5, seed=1)  # seeded


def test_sweep_space_cross_method_and_presets(tmp_path):
    bs = load_search_space(write(tmp_path, GOOD), "balanced_subnet")
    du = load_search_space(write(tmp_path, "method: durable\nparams:\n  ratio: {type: float, low: 1.0e-4, high: 0.05, "
                                            "log: true}\npaper_grid:\n  ratio: [0.001, 0.01]\n", "d.yaml"), "durable")
    space = SweepSpace([bs, du], ["math-tiny", "math-demo"])
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        space(trial)
        method, preset, params = space.decode(trial.params)
        seen.add(method)
        assert preset in ("math-tiny", "math-demo")
        # Names are namespaced by method: the two ratio ranges never collide.
        assert all(k in ("method", "preset") or k.startswith(method + ".") for k in trial.params)
        study.tell(trial, [1.0, 1.0])
    assert seen == {"balanced_subnet", "durable"}
    points = space.grid_points()
    assert len(points) == 2 * (18 + 2)
    assert points[0]["preset"] == "math-tiny" and points[0]["method"] == "balanced_subnet"
    assert {"method": "durable", "durable.ratio": 0.01} in [{k: v for k, v in p.items() if k != "preset"}
                                                            for p in space.grid_points()]
    assert space.decode({"method": "durable", "preset": "math-demo", "durable.ratio": 0.01})[2]["ratio"] == 0.01


def test_paper_grid_runs_with_the_values_the_paper_held_fixed():
    space = load_search_space(SEARCH_SPACE_DIR / "balanced_subnet.yaml", "balanced_subnet")
    assert space.paper_fixed["stratified"] is False
    sweep = SweepSpace([space], ["math-demo"])
    points = sweep.grid_points()
    assert len(points) == 90
    # the grid is the paper's procedure (plain shuffle) ...
    assert all(sweep.decode(p)[2]["stratified"] is False for p in points)
    # ... while the sampler keeps our default (stratified batches)
    assert sweep.decode({"ratio": 0.1, "epochs": 2, "loss_weighting": 0.9})[2]["stratified"] is True
    greedy = load_search_space(SEARCH_SPACE_DIR / "greedy.yaml", "greedy")
    assert all(p["max_iterations"] == 0 for p in greedy.grid())  # no iteration cap in the paper


def test_paper_fixed_is_checked(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("method: subnet\nparams: {}\npaper_grid: {epochs: [1]}\npaper_fixed: {epochs: 3}\n")
    with pytest.raises(SweepError, match=r"\['epochs'\] are both in paper_grid and paper_fixed"):
        load_search_space(f, "subnet")
    f.write_text("method: subnet\nparams: {}\npaper_grid: {epochs: [1]}\npaper_fixed: {lr: -1}\n")
    with pytest.raises(SweepError, match="paper_fixed.lr"):
        load_search_space(f, "subnet")
