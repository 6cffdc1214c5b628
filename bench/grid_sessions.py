"""The paper grid of `bench/search_efficiency.py` measured over more than one session.

On a slow 2-core machine one seed of the math-demo grid outlasts a session. `--harvest SWEEP_DIR` keeps what
an interrupted grid finished: its completed trials go to `--out` as a partial line, with the machine it ran on
and the base model's file hashes, and the base model itself goes to an archive beside `--out` (the next machine
may train a different one: float results differ between CPUs). A later run of the grid arm at that seed then
restores that base model, runs only the grid points still missing (as product sub-grids, each point once), and
first runs a calibration sub-grid of points that are already done. Their CPU-seconds on the new machine over
those on the old one give one scale, by which the harvested trials' CPU-seconds are multiplied, so that the
whole grid is costed at the speed of the machine its sampler arms run on. The measured CPU-seconds stay in each
trial (`cpu_s_measured`) and the line records the scale, the calibration points and every session.
"""

from __future__ import annotations

import itertools
import os
import platform
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

ALONG = "epochs"  # the calibration sub-grid spans this parameter: the cost of a trial grows with it


def machine() -> dict:
    """What a CPU-second here is worth, in words: the CPU model, the core count, the software."""
    info = {"model name": platform.processor() or platform.machine()}
    try:  # the first processor's block; family/model/stepping tell CPU generations apart where the name does not
        for line in Path("/proc/cpuinfo").read_text().split("\n\n", 1)[0].splitlines():
            name, _, value = line.partition(":")
            info[name.strip()] = value.strip()
    except OSError:
        pass
    cpu = " ".join([info["model name"], *[f"{k.split()[-1]} {info[k]}" for k in ("cpu family", "model", "stepping")
                                          if k in info]])
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:  # the bench needs torch; the record just says so
        torch_version = None
    return {"cpu": cpu, "mhz": info.get("cpu MHz"), "avx512": "avx512f" in info.get("flags", "").split(),
            "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch_version,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def _value(v: object) -> object:
    """One spelling per grid value (1 and 1.0, 1e-05 and 0.00001 are the same point)."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


def point_key(params: dict, names: list[str]) -> tuple:
    return tuple(_value(params[n]) for n in names)


def missing_subgrids(grid: dict[str, list], done: list[dict]) -> list[dict[str, list]]:
    """Product sub-grids of `grid` that together hold each of its points not in `done` (params dicts) exactly
    once: the points are grouped by the first parameter's value, values whose remaining points are the same set
    share one sub-grid, and the remaining parameters are factored the same way."""
    names = list(grid)
    have = {point_key(p, names) for p in done}
    missing = [k for k in itertools.product(*[[_value(v) for v in grid[n]] for n in names]) if k not in have]
    out = []
    for sub in _factor(missing, len(names)):
        out.append({n: [_original(grid[n], v) for v in values] for n, values in zip(names, sub)})
    return out


def _original(values: list, v: object) -> object:
    return next(x for x in values if _value(x) == v)


def _factor(points: list[tuple], width: int) -> list[list[list]]:
    if not points:
        return []
    if width == 1:
        return [[[p[0] for p in points]]]
    rests: dict[object, list[tuple]] = {}
    for p in points:
        rests.setdefault(p[0], []).append(p[1:])
    groups: dict[frozenset, list] = {}
    for head, rest in rests.items():  # dicts keep order: the grid's loop order survives
        groups.setdefault(frozenset(rest), []).append(head)
    return [[heads, *tail] for heads in groups.values() for tail in _factor(rests[heads[0]], width - 1)]


def calibration_subgrid(grid: dict[str, list], done: list[dict]) -> dict[str, list]:
    """A sub-grid of points already done to run again on the new machine: the first done group that has every
    value of `ALONG` (the other parameters fixed), so that short and long trials both weigh in; else the
    largest done group."""
    if not done:
        raise ValueError("no grid point is done yet: there is nothing to calibrate against; run the grid whole")
    names = list(grid)
    others = [n for n in names if n != ALONG]
    groups: dict[tuple, set] = {}
    for p in done:
        groups.setdefault(point_key(p, others), set()).add(_value(p[ALONG]))
    full = {_value(v) for v in grid[ALONG]}
    head = next((k for k, vals in groups.items() if vals >= full), None)
    if head is None:
        head = max(groups, key=lambda k: len(groups[k]))
    fixed = dict(zip(others, head))
    return {n: ([_original(grid[n], v) for v in grid[ALONG] if _value(v) in groups[head]] if n == ALONG
                else [_original(grid[n], fixed[n])]) for n in names}


def cpu_scale(old: list[dict], new: list[dict], names: list[str]) -> tuple[float, list[dict]]:
    """(new machine's CPU-seconds over the old one's on the same points, the matched points): one ratio of sums,
    so the long trials, which make most of a grid's cost, weigh most."""
    before = {point_key(t["params"], names): t for t in old}
    pairs = [(before[point_key(t["params"], names)], t) for t in new if point_key(t["params"], names) in before]
    if not pairs or any(o["cpu_s"] is None or n["cpu_s"] is None for o, n in pairs):
        raise ValueError(f"calibration: {len(pairs)} of {len(new)} rerun points match a harvested one with a "
                         "CPU figure on both sides; cannot scale the harvested CPU-seconds")
    scale = sum(n["cpu_s"] for _, n in pairs) / sum(o["cpu_s"] for o, _ in pairs)
    matched = [{"params": n["params"], "old_cpu_s": o["cpu_s"], "new_cpu_s": n["cpu_s"],
                "old_points": o["points"], "new_points": n["points"]} for o, n in pairs]
    return scale, matched


def scale_by_epochs(old: list[dict], new: list[dict]) -> float | None:
    """A cross-check of the calibration that needs no rerun: per `ALONG` value, the new trials' median CPU over
    the old ones', weighted by the old trials' CPU at that value. It uses every trial, so a drift of the old
    machine's speed within its session (seen: +15% over one grid) weighs less than in the calibration's three
    points, but it assumes that a trial's cost depends on `ALONG` alone."""
    import statistics

    def by(trials: list[dict]) -> dict:
        out: dict = {}
        for t in trials:
            out.setdefault(_value(t["params"][ALONG]), []).append(t["cpu_s"])
        return out

    before, after = by(old), by(new)
    shared = [v for v in before if v in after]
    if not shared:
        return None
    weight = {v: sum(before[v]) for v in shared}
    return sum(weight[v] * statistics.median(after[v]) / statistics.median(before[v]) for v in shared) / sum(
        weight.values())


def combine(partial: dict, calibration: list[dict], parts: list[dict], names: list[str], session: dict) -> dict:
    """The whole grid's line: the harvested trials at the new machine's speed, then the new trials."""
    scale, matched = cpu_scale(partial["trials"], [t for c in calibration for t in c["trials"]], names)
    old = [{**t, "cpu_s": t["cpu_s"] * scale, "cpu_s_measured": t["cpu_s"]} for t in partial["trials"]]
    new = [t for p in parts for t in p["trials"]]
    have = [point_key(t["params"], names) for t in old + new]
    if len(set(have)) != len(have):
        raise ValueError("combined grid holds a point twice; the harvested line and the new sub-grids overlap")
    rec = {k: v for k, v in partial.items() if k not in ("partial", "trials", "sessions", "wall_s")}
    return {**rec, "trials": old + new, "wall_s": partial["wall_s"] + sum(p["wall_s"] for p in parts),
            "cpu_scale": scale, "cpu_scale_by_epochs": scale_by_epochs(partial["trials"], new),
            "calibration": matched,
            "calibration_wall_s": sum(c["wall_s"] for c in calibration),
            "sessions": [*partial["sessions"], session]}


def archive_base(model_dir: Path, dest: Path, sha: str) -> Path:
    """`model_dir` as `<dest>/<key>-<model sha[:12]>.tar.gz`, the files at the archive's top level."""
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / f"{model_dir.name}-{sha[:12]}.tar.gz"
    if not out.exists():
        tmp = out.with_suffix(".tmp")
        with tarfile.open(tmp, "w:gz") as tar:
            for p in sorted(model_dir.iterdir()):
                if p.is_file() and not p.name.startswith("."):
                    tar.add(p, arcname=p.name)
        tmp.replace(out)
    return out


def restore_base(models_dir: Path, key: str, files: dict[str, str], archive: Path) -> str:
    """Make `<models_dir>/<key>` the harvested base model: 'present' when it already is, 'restored' after
    unpacking `archive`; an error when the store holds a different model under the key."""
    from tinymem.store import MANIFEST, read_manifest

    target = models_dir / key
    if (target / MANIFEST).exists():
        have = read_manifest(target, verify=True)["files"]
        if have.get("model.safetensors") != files.get("model.safetensors"):
            raise ValueError(f"the store's base model {target} has model.safetensors "
                             f"{str(have.get('model.safetensors'))[:12]}, the harvested grid's is "
                             f"{str(files.get('model.safetensors'))[:12]}; use a fresh --storage, into which the "
                             f"bench unpacks {archive}")
        return "present"
    if not archive.exists():
        raise ValueError(f"the harvested grid's base model archive {archive} is missing; without it the rest of "
                         "the grid would run on another base model")
    models_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=models_dir))
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(staging, filter="data")
    got = read_manifest(staging, verify=True)["files"]  # every file's hash against the manifest
    if got != files:
        shutil.rmtree(staging)
        raise ValueError(f"{archive} does not hold the harvested grid's base model (its files' hashes differ)")
    staging.replace(target)
    return "restored"

