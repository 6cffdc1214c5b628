"""A grid measured over two sessions (`bench/grid_sessions.py`): the missing points as sub-grids that hold each
exactly once, the calibration that puts the harvested CPU-seconds at the new machine's speed, and the base model
carried between machines through a real model-store entry."""

from __future__ import annotations

import importlib.util
import itertools
import json
import random
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


G = _load("grid_sessions")
B = _load("search_efficiency")
GRID = {"ratio": [1e-5, 0.01, 0.1, 0.5], "epochs": [1, 10, 20], "loss_weighting": [0.9, 0.7, 0.5]}
NAMES = list(GRID)


def _points(grid: dict) -> list[tuple]:
    return list(itertools.product(*[[float(v) for v in grid[n]] for n in NAMES]))


def _params(key: tuple) -> dict:
    return dict(zip(NAMES, key))


@pytest.mark.parametrize("seed", range(6))
def test_the_missing_sub_grids_hold_each_missing_point_exactly_once(seed):
    every = _points(GRID)
    done = random.Random(seed).sample(every, seed * 6)  # 0 to 30 of the 36 points, scattered
    subs = G.missing_subgrids(GRID, [_params(k) for k in done])
    got = [p for sub in subs for p in _points(sub)]
    assert sorted(got) == sorted(set(every) - set(done))
    assert len(got) == len(set(got))


def test_a_grid_cut_in_loop_order_resumes_in_a_few_sub_grids():
    # The sweep runs ratio-major: cut after 1 whole ratio and 4 points of the next, the rest is 3 sub-grids.
    every = _points(GRID)
    subs = G.missing_subgrids(GRID, [_params(k) for k in every[:13]])
    assert len(subs) == 3
    assert subs[-1] == {"ratio": [0.1, 0.5], "epochs": [1, 10, 20], "loss_weighting": [0.9, 0.7, 0.5]}
    assert G.missing_subgrids(GRID, [_params(k) for k in every]) == []


def test_the_calibration_reruns_done_points_from_the_shortest_to_the_longest_trial():
    every = _points(GRID)
    cal = G.calibration_subgrid(GRID, [_params(k) for k in every[:13]])
    assert cal == {"ratio": [1e-5], "epochs": [1, 10, 20], "loss_weighting": [0.9]}
    assert set(_points(cal)) <= set(every[:13])
    with pytest.raises(ValueError, match="nothing to calibrate"):
        G.calibration_subgrid(GRID, [])


def _trial(key: tuple, cpu: float, mem: float = 50.0) -> dict:
    return {"trial_id": str(key), "params": _params(key), "cpu_s": cpu, "start_ms": 0, "end_ms": 1000,
            "state": "completed",
            "points": [{"at_ms": 1000, "mem_pct": mem, "val_acc_drop": 0.0, "test_acc_drop": 0.0,
                        "source": "trial", "epochs": int(key[1])}]}


def test_the_harvested_cpu_seconds_are_put_at_the_new_machines_speed():
    every = _points(GRID)
    # The old machine was twice as slow: its trials cost 2 CPU-s per epoch, the new one's 1.
    part = {"arm": "grid", "seed": 2, "partial": True, "wall_s": 100.0, "base": {"mem_pct": 50.0},
            "trials": [_trial(k, 2.0 * k[1]) for k in every[:13]], "sessions": [{"cpu": "old"}]}
    cal = {"wall_s": 5.0, "trials": [_trial(k, 1.0 * k[1]) for k in every[:3]]}  # ratio 1e-5 at 0.9: 1, 10, 20
    rest = [{"wall_s": 50.0, "trials": [_trial(k, 1.0 * k[1], mem=0.0 if k[1] == 20 else 50.0)
                                         for k in _points(sub)]}
            for sub in G.missing_subgrids(GRID, [t["params"] for t in part["trials"]])]
    rec = G.combine(part, [cal], rest, NAMES, {"cpu": "new"})
    assert rec["cpu_scale"] == pytest.approx(0.5)
    assert rec["cpu_scale_by_epochs"] == pytest.approx(0.5)  # the cross-check from every trial agrees
    assert len(rec["trials"]) == 36 and "partial" not in rec
    assert [t["cpu_s"] for t in rec["trials"][:13]] == pytest.approx([1.0 * k[1] for k in every[:13]])
    assert rec["trials"][0]["cpu_s_measured"] == pytest.approx(2.0)
    assert rec["wall_s"] == pytest.approx(100.0 + 50.0 * len(rest))
    assert [s["cpu"] for s in rec["sessions"]] == ["old", "new"]
    for i, t in enumerate(rec["trials"]):  # one after the other, as on one slot
        t.update(start_ms=1000 * i, end_ms=1000 * (i + 1), points=[{**t["points"][0], "at_ms": 1000 * (i + 1)}])
    s = B.summarize(rec, rec)  # the combined line is a grid line like any other, costed at the new speed
    assert s["cpu_s"] == pytest.approx(sum(k[1] for k in every))
    assert s["first_hit_val"] is not None and s["first_hit_val"] < s["cpu_s"]
    with pytest.raises(ValueError, match="twice"):
        G.combine(part, [cal], rest + [cal], NAMES, {})
    with pytest.raises(ValueError, match="calibration"):
        G.combine(part, [{"wall_s": 1.0, "trials": [_trial(every[-1], 1.0)]}], rest, NAMES, {})


def _entry(models: Path, key: str, weights: bytes) -> Path:
    from tinymem.store import write_manifest

    d = models / key
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(weights)
    (d / "config.json").write_text(json.dumps({"n_layer": 2}))
    write_manifest(d, {"key": key, "metrics": {"mem_pct": 68.3}})
    return d


def test_the_base_model_travels_in_its_archive_and_a_different_one_is_refused(tmp_path):
    from tinymem.store import ModelStore, read_manifest

    old = _entry(tmp_path / "old" / "models", "k1", b"weights of the old machine")
    files = read_manifest(old)["files"]
    archive = G.archive_base(old, tmp_path / "results" / "base-models", files["model.safetensors"])
    assert archive.name == f"k1-{files['model.safetensors'][:12]}.tar.gz"

    fresh = tmp_path / "fresh"
    assert G.restore_base(fresh / "models", "k1", files, archive) == "restored"
    d, manifest = ModelStore(fresh).load("k1", verify=True)  # the store finds it and its hashes hold
    assert (d / "model.safetensors").read_bytes() == b"weights of the old machine"
    assert G.restore_base(fresh / "models", "k1", files, archive) == "present"

    other = tmp_path / "other"
    _entry(other / "models", "k1", b"weights trained on another CPU")
    with pytest.raises(ValueError, match="fresh --storage"):
        G.restore_base(other / "models", "k1", files, archive)
    with pytest.raises(ValueError, match="missing"):
        G.restore_base(tmp_path / "none" / "models", "k1", files, tmp_path / "no.tar.gz")


def test_a_sub_grid_space_file_loads_with_just_those_points():
    from sweeps.space_file import load_search_space

    sub = {"ratio": [0.1], "epochs": [1, 10, 20], "loss_weighting": [0.9]}
    path, _ = B.bench_space("balanced_subnet", None, grid=sub)
    sp = load_search_space(path, "balanced_subnet")
    assert {k: list(v) for k, v in sp.paper_grid.items()} == sub
    assert sp.params["ratio"].low == pytest.approx(1e-5)  # the ranges stay the whole grid's


def test_a_harvested_grid_resumes_on_its_own_base_model_and_ends_whole(tmp_path, monkeypatch):
    """`resume_grid` end to end with the sweeps replaced by a stand-in that runs a space file's sub-grid: the
    base model comes out of its archive into a fresh store, the calibration points run first, then exactly the
    missing points, and the line holds the paper grid's 90 points once each."""
    import argparse

    import yaml

    from sweeps.space_file import default_space_path, load_search_space

    grid = dict(load_search_space(default_space_path("balanced_subnet"), "balanced_subnet").paper_grid)
    names, every = list(grid), list(itertools.product(*grid.values()))
    key, _ = B.base_entry(str(tmp_path / "old"), "math-tiny")
    old = _entry(tmp_path / "old" / "models", key, b"old weights")
    files = json.loads((old / "tinymem.json").read_text())["files"]
    out = tmp_path / "results" / "search_efficiency.jsonl"
    archive = G.archive_base(old, out.parent / "base-models", files["model.safetensors"])

    def trial(p: tuple, cpu: float) -> dict:
        return {**_trial(p, cpu), "params": dict(zip(names, p))}

    part = {"preset": "math-tiny", "method": "balanced_subnet", "samples": 0, "startup": 0, "arm": "grid",
            "seed": 2, "partial": True, "wall_s": 10.0, "base": {"mem_pct": 68.3}, "base_key": key,
            "base_files": files, "base_archive": archive.name, "sessions": [{"cpu": "old"}],
            "trials": [trial(p, 3.0) for p in every[:40]]}
    ran = []

    def fake_run_arm(arm, seed, samples, common):
        sub = yaml.safe_load(Path(common["search_space"]).read_text())["paper_grid"]
        ran.append(sub)
        return {"arm": arm, "seed": seed, "wall_s": 1.0, "base": {"mem_pct": 68.3},
                "trials": [trial(p, 1.0) for p in itertools.product(*sub.values())]}

    monkeypatch.setattr(B, "run_arm", fake_run_arm)
    args = argparse.Namespace(method="balanced_subnet", preset="math-tiny", storage=str(tmp_path / "new"),
                              out=str(out))
    rec = B.resume_grid(part, 2, args, {})
    assert (tmp_path / "new" / "models" / key / "model.safetensors").read_bytes() == b"old weights"
    assert ran[0]["epochs"] == [1, 10, 20] and len(ran[0]["ratio"]) == 1  # the calibration first
    assert sorted(point_key(t, names) for t in rec["trials"]) == sorted(point_key(p, names) for p in every)
    assert rec["cpu_scale"] == pytest.approx(1 / 3)
    assert sum(len(list(itertools.product(*s.values()))) for s in ran[1:]) == 90 - 40


def point_key(t, names):
    return G.point_key(t["params"] if isinstance(t, dict) else dict(zip(names, t)), names)


def test_the_table_names_each_seeds_base_model_and_says_which_grid_was_spliced():
    def grid(seed: int, mem: float, **extra) -> dict:
        trials = [{**_trial(k, 1.0, mem=0.0 if i == 0 else mem), "start_ms": 1000 * i, "end_ms": 1000 * (i + 1)}
                  for i, k in enumerate(_points(GRID)[:4])]
        for i, t in enumerate(trials):
            t["points"] = [{**t["points"][0], "at_ms": 1000 * (i + 1)}]
        return {"arm": "grid", "seed": seed, "wall_s": 4.0, "trials": trials, "cpu": 4.0,
                "base": {"mem_pct": mem, "mem_rows": mem * 0.6, "mem_counted": 60, "test_acc": 96.0}, **extra}

    records = {("p", "m", "grid", 0, 0, 0): grid(0, 66.7),
               ("p", "m", "grid", 2, 0, 0): grid(2, 68.3, cpu_scale=0.52, cpu_scale_by_epochs=0.5,
                                                 calibration=[{}] * 3, sessions=[{}, {}])}
    lines = B.table(records, "p", "m", 10, [0, 2], 3)
    assert "mem_pct 66.7" in lines[0] and "(seeds [0])" in lines[0] and "mem_pct 68.3" in lines[0]
    assert lines[-1] == ("grid over sessions: seed 2: 2 sessions, harvested CPU-s x 0.520 (calibration, 3 points; "
                         "by epoch medians 0.500)")
