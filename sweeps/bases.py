"""Base models made once per sweep, as Ray tasks, before any trial: trials then only load them from the store.

On a cluster the tasks run on workers, and several presets train in parallel. A Hugging Face model is never
trained or stored: it is loaded and its base evaluation cached. While they are made, a live bar with the
elapsed time shows on a terminal (`sweeps.progress.live_stream`); elsewhere a line says what is being made.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from sweeps.errors import SweepError
from sweeps.pareto import MEM
from sweeps.plan import SweepPlan
from sweeps.progress import live_stream
from tinymem.errors import TinyMemError
from tinymem.hf.options import HFSourceOptions, is_hf_source
from tinymem.repeats import base_seeds, seed_config, summarize_seeds


def base_config(preset: str, source: HFSourceOptions) -> dict[str, Any]:
    """The base-model part of a trial config (`tinymem.trial.run_trial`): a TinyMem preset, or an `hf:` model
    (the sweep's `preset` slot holds its source) with the options that were given."""
    return {"model": preset, **source.given()} if is_hf_source(preset) else {"preset": preset}


def limit_threads(cpus: float) -> None:
    """Use as many torch threads as CPUs were granted (a reused worker keeps no stale setting)."""
    import torch

    n = max(1, int(cpus))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def _build_base(preset: str, storage_root: str, device: str, cpus: float,
                source: HFSourceOptions | None = None, seed: int | None = None) -> dict[str, Any]:
    """Ray task body: make (or find) the base model of `preset` (on base-model `seed`, if given; or of an `hf:`
    model) and its cached base evaluation."""
    from tinymem.trial import prepare_base

    limit_threads(cpus)
    return _info(preset, prepare_base(_config(preset, storage_root, device, source, seed)))


def _config(preset: str, storage_root: str, device: str, source: HFSourceOptions | None, seed: int | None
            ) -> dict[str, Any]:
    config = {**base_config(preset, source or HFSourceOptions()), "storage": storage_root, "device": device}
    return seed_config(config, seed) if seed is not None else config


def _info(preset: str, prepared: Any) -> dict[str, Any]:
    return {"preset": preset, "key": prepared.key, "model_dir": prepared.model_dir, "created": prepared.created,
            "seconds": prepared.seconds, "metrics": prepared.evaluation.metrics, "data": prepared.data}


def _said(say: Callable[[str], None], plan: SweepPlan, preset: str, seed: int | None, info: dict[str, Any]) -> None:
    verb = "trained" if info["created"] else "loaded"
    say(f"base model {preset}{f' seed {seed}' if seed is not None else ''} ({info['key']}): {verb} in "
        f"{info['seconds']:.1f} s; mem_pct {info['metrics'].get(MEM, math.nan):.2f}, "
        + (f"test_acc {info['metrics'].get('test_acc', math.nan):.2f}" if plan.kinds[preset] == "math"
           else f"test_ppl {info['metrics'].get('test_ppl', math.nan):.2f}"))


def prepare_bases(plan: SweepPlan, say: Callable[[str], None], stream: str = "none") -> dict[str, dict[str, Any]]:
    """Make every base model up front, in parallel, as Ray tasks (what a local store already holds is read on the
    driver); returns preset -> info with base metrics. `stream` is where the sweep's progress goes
    (`sweeps.progress.ProgressLines`): a bar there on a terminal."""
    import ray
    from tqdm.auto import tqdm

    from tinymem.trial import stored_base

    presets = plan.space.presets
    repeats = plan.options.repeats
    # With --repeats every preset has one base model per seed; all are made here, in parallel.
    seeds = {p: base_seeds({"preset": p}, repeats) if repeats > 1 else [None] for p in presets}
    say(f"base model(s) {presets}{f' on seeds {seeds[presets[0]]}' if repeats > 1 else ''}: making sure they "
        f"exist in {plan.storage} (trained once if missing) ...")
    # What the store already holds is read here: a task's worker would take seconds to start only to find it.
    got: dict[tuple[str, int | None], dict[str, Any]] = {}
    for p in presets:
        for s in seeds[p]:
            found = stored_base(_config(p, plan.storage, plan.options.device, plan.options.source, s))
            if found is not None:
                got[(p, s)] = _info(p, found)
                _said(say, plan, p, s, got[(p, s)])
    jobs = [(p, s) for p in presets for s in seeds[p] if (p, s) not in got]
    # Give each training task a fair share of one node (more threads train faster), never more than a node has.
    node_cpus = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    biggest = max(node_cpus or [1])
    total = sum(node_cpus or [1])
    cpus = max(min(biggest, total / max(1, len(jobs))), min(plan.options.cpus_per_trial, biggest), 1)
    cpus = float(int(cpus))
    # A model spread over several GPUs (--gpus-per-trial 2) needs them for its base evaluation too.
    gpus = max(1, math.ceil(float(plan.options.gpus_per_trial))) if float(plan.options.gpus_per_trial) > 0 else 0
    task = ray.remote(_build_base).options(num_cpus=cpus, num_gpus=gpus, max_retries=1,
                                           name="tinymem-base-model")
    refs = {(p, s): task.remote(p, plan.storage, plan.options.device, cpus, plan.options.source, s) for p, s in jobs}
    live = live_stream(stream)
    # Training math-demo takes minutes: a bar whose clock keeps running says the sweep is not stuck.
    bar = tqdm(total=len(refs), desc="base models", unit="model", file=live, disable=live is None,
               dynamic_ncols=True, leave=False)
    try:
        for (preset, seed), ref in refs.items():
            try:
                while not ray.wait([ref], timeout=1.0)[0]:
                    bar.refresh()
                info = ray.get(ref)
            except ray.exceptions.RayTaskError as e:
                cause = e.cause if getattr(e, "cause", None) is not None else e
                if isinstance(cause, TinyMemError):
                    raise SweepError(f"base model {preset!r}: {cause}") from None
                raise
            bar.update(1)
            bar.clear()  # the line goes where the bar was; the bar redraws below it
            _said(say, plan, preset, seed, info)
            bar.refresh()
            got[(preset, seed)] = info
    finally:
        bar.close()
    out = {}
    for preset in presets:
        infos = [got[(preset, s)] for s in seeds[preset]]
        out[preset] = dict(infos[0])
        # The data of each base model (one per seed), digested where it was loaded: the MLflow run inputs.
        out[preset]["data"] = [{"seed": s, "key": i["key"], "splits": i["data"]} for s, i in zip(seeds[preset], infos)]
        if repeats > 1:  # the base model of a repeated sweep is the mean over its seeds
            out[preset]["metrics"] = summarize_seeds([i["metrics"] for i in infos], seeds[preset])
            out[preset]["key"] = ",".join(i["key"] for i in infos)
    return out
