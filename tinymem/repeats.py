"""Repeats over base-model seeds: one trial config per seed, and the mean over seeds with its 95% interval.

One base model is one draw: its noise, its initialisation, which rows it memorizes. A claim that a
configuration removes memorization at a utility cost holds only as a mean over several base models, with an
interval; the sweeps and `tinymem mitigate --repeats N` both repeat a configuration over base-model seeds.
"""

from __future__ import annotations

import math

from collections.abc import Sequence
from typing import Any

from tinymem.errors import ConfigError
from tinymem.stats import mean_interval


def base_seeds(config: dict[str, Any], repeats: int) -> list[int]:
    """The base-model seeds of `repeats` repeats of a trial config: the preset's own seed, then the next ones."""
    from tinymem.presets import DEFAULT_PRESET, get_preset

    if repeats < 1:
        raise ConfigError(f"repeats={repeats} is out of range; allowed: >= 1")
    if repeats > 1 and (config.get("model") or config.get("model_dir")):
        raise ConfigError("repeats over base-model seeds need a preset (each seed trains its own base model); "
                          f"got {'model ' + str(config.get('model') or config.get('model_dir'))}")
    sets = {k: str(v) for k, v in (config.get("set") or {}).items()}
    first = get_preset(config.get("preset") or DEFAULT_PRESET, sets).seed
    return [first + i for i in range(repeats)]


def seed_config(config: dict[str, Any], seed: int) -> dict[str, Any]:
    """`config` on the base model of `seed` (the preset with its `seed` field set)."""
    return {**config, "set": {**(config.get("set") or {}), "seed": seed}}


def summarize_seeds(per_seed: Sequence[dict[str, float]], seeds: Sequence[int]) -> dict[str, float]:
    """For every metric all seeds have: `<m>` the mean over seeds, `<m>_seeds_ci_low/high` its Student-t 95%
    interval (NaN for one seed) and `<m>_seed<s>` each seed's value. A rate (a metric with its own binomial
    interval, `<m>_ci_low`) has its t-interval clipped to [0, 100]: a bound outside says nothing more."""
    if len(per_seed) != len(seeds):
        raise ValueError(f"{len(per_seed)} results for {len(seeds)} seeds")
    keys = [k for k in per_seed[0] if all(k in d for d in per_seed)] if per_seed else []
    out: dict[str, float] = {}
    for k in keys:
        values = [d[k] for d in per_seed]
        if not all(isinstance(v, (int, float)) for v in values):
            continue
        mean, low, high = mean_interval([float(v) for v in values])
        if f"{k}_ci_low" in per_seed[0] and not math.isnan(low):
            low, high = max(low, 0.0), min(high, 100.0)
        out[k] = mean
        out[f"{k}_seeds_ci_low"], out[f"{k}_seeds_ci_high"] = low, high
        for s, v in zip(seeds, values):
            out[f"{k}_seed{s}"] = float(v)
    return out


def pooled_rates(per_seed: Sequence[dict[str, float]]) -> dict[str, float]:
    """Exact 95% intervals of every memorization rate over the rows of all seeds pooled (`<name>_ci_low/high`
    from the summed `<stem>_rows` of `<stem>_counted`): the per-seed intervals do not average."""
    from tinymem.stats import binomial_interval

    out: dict[str, float] = {}
    for key in per_seed[0] if per_seed else []:
        if not key.endswith("_ci_low"):
            continue
        name = key[: -len("_ci_low")]
        stem = name[: -len("_pct")] if name.endswith("_pct") else name
        if not all(f"{stem}_rows" in d and f"{stem}_counted" in d for d in per_seed):
            continue
        rows = int(sum(d[f"{stem}_rows"] for d in per_seed))
        counted = int(sum(d[f"{stem}_counted"] for d in per_seed))
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = binomial_interval(rows, counted)
        out[f"{stem}_rows"], out[f"{stem}_counted"] = float(rows), float(counted)
    return out


def add_trust_arguments(p: Any) -> None:
    """`--repeats N` and `--heldout-frac F` on an argparse parser: the same two flags for `tinymem mitigate`
    and `sweeps/run.py`."""
    p.add_argument("--repeats", type=int, default=1, metavar="N",
                   help="evaluate on N base-model seeds (the preset's seed and the next ones; each base model "
                        "trained once) and report the mean with its 95%% interval (default: 1)")
    p.add_argument("--heldout-frac", type=float, default=0.0, metavar="F",
                   help="withhold this fraction of the memorized rows from the method and report "
                        "heldout_mem_pct on them (default: 0, the paper's procedure)")
