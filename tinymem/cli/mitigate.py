"""`tinymem methods` and `tinymem mitigate`: list the registered methods, apply one to a base model (or rebuild a
sweep trial's model from its MLflow run, `--from-run`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tinymem.cli.output import format_rate, print_json
from tinymem.errors import ConfigError
from tinymem.hf.options import HFSourceOptions, add_source_arguments, is_hf_source
from tinymem.repeats import add_trust_arguments
from tinymem.presets import DEFAULT_PRESET
from tinymem.store import DEFAULT_ROOT


def cmd_methods(args: argparse.Namespace) -> int:
    """`tinymem methods`: each method's name, family, summary and hyperparameters (defaults and ranges)."""
    from tinymem.mitigations import get_method, method_names

    described = [get_method(n).describe() for n in method_names()]
    if args.json:
        print_json(described)
        return 0
    for d in described:
        print(f"{d['name']}  [{d['family']}]  {d['summary']}")
        for h in d["hyperparameters"]:
            rng = f"choices {h['choices']}" if h["choices"] else f"range [{h['low']}, {h['high']}]"
            print(f"    {h['name']:18s} {h['type']:6s} default {h['default']!r:10}  {rng}  {h['help']}")
    return 0


def cmd_mitigate(args: argparse.Namespace) -> int:
    """`tinymem mitigate`: one trial (base metrics, the method, metrics after) and the mitigated model saved."""
    from tinymem.repeats import base_seeds, seed_config, summarize_seeds
    from tinymem.trial import run_trial
    from tinymem.util import library_bars

    show = not args.json and sys.stderr.isatty()  # bars on a terminal's stderr only
    library_bars(show)
    config = _config_from_run(args) if args.from_run else _config_from_flags(args)
    config["progress"] = show
    out = Path(args.out) if args.out else None
    if out is None:
        from tinymem.store import ModelStore

        store = ModelStore(config["storage"])
        base = Path(store.root) if not store.remote else store.cache
        out = base / "mitigated" / config["method"]
    config["out_dir"] = str(out)

    def progress(metrics: dict) -> None:
        # Per-epoch metrics only when asked: on a terminal the bars show progress, in a log they are noise.
        if args.verbose and not args.json:
            shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float))
            print(f"  {shown}", file=sys.stderr)

    if args.heldout_frac:
        config["heldout_frac"] = args.heldout_frac
    if args.robustness:
        config["robustness"] = args.robustness  # validated by the trial config, before any work
    if args.anytime:
        config["anytime"] = True
    if args.repeats == 1:
        result = run_trial(config, callback=progress)
        if args.json:
            print_json(_result_json(result))
        else:
            _print_result(result)
        return 0
    seeds = base_seeds(config, args.repeats)  # checks before any training
    results = []
    for seed in seeds:
        if not args.json:
            print(f"base-model seed {seed}:", file=sys.stderr)
        results.append(run_trial({**seed_config(config, seed), "out_dir": str(out / f"seed{seed}")},
                                 callback=progress))
    before = summarize_seeds([r.before for r in results], seeds)
    after = summarize_seeds([r.after for r in results], seeds)
    if args.json:
        print_json({"method": results[0].method, "params": results[0].params, "seeds": seeds,
                    "before": before, "after": after,
                    "repeats": [{"seed": s, **_result_json(r)} for s, r in zip(seeds, results)]})
        return 0
    for seed, r in zip(seeds, results):
        print(f"seed {seed}: mem_pct {format_rate(r.before, 'mem_pct')} -> {format_rate(r.after, 'mem_pct')}, "
              f"test_acc {r.before.get('test_acc', float('nan')):.2f} -> {r.after.get('test_acc', float('nan')):.2f}"
              f", unlearned {int(r.info['unlearn_rows'])} rows, {r.seconds['mitigate']:.1f} s")
    _print_table(results[0].method, results[0].params, before, after)
    print(f"mean over {len(seeds)} base-model seeds {seeds}, 95% t-intervals in brackets; models: {out}/seed<S>")
    return 0


def _config_from_flags(args: argparse.Namespace) -> dict:
    """The trial config that the flags describe (method, base model, hyperparameters, seed, root)."""
    from tinymem.specs import parse_set_args

    if not args.method:
        from tinymem.mitigations import method_names

        raise ConfigError(f"--method is required (or --from-run RUN_ID); allowed: {method_names()}")
    if args.tracking_uri:
        raise ConfigError(f"--tracking-uri {args.tracking_uri} names where --from-run reads a run; give --from-run")
    config = {"method": args.method, "params": parse_set_args(args.set), "storage": args.root or DEFAULT_ROOT,
              "device": args.device, "seed": args.seed or 0}
    if is_hf_source(args.model):  # a Hugging Face model with memorized-sequence files
        if args.spec_set:
            raise ConfigError(f"--spec-set changes a TinyMem preset; it does not apply to --model {args.model}")
        config.update(HFSourceOptions.from_object(args, model=args.model).as_config())
    else:
        HFSourceOptions.from_object(args).reject(args.model)  # hf-only options given for a preset or model dir
        if args.model:
            config["model_dir"] = args.model
        else:
            config["preset"] = args.preset or DEFAULT_PRESET
            config["set"] = parse_set_args(args.spec_set)
    return config


def _config_from_run(args: argparse.Namespace) -> dict:
    """The config of a sweep trial, read from its MLflow run (`--from-run`): the same base model, method,
    hyperparameters and seed. `--root` and `--device` may differ (another machine); nothing else may be given."""
    from tinymem.cli.from_run import trial_config_from_run
    from tinymem.store import default_tracking_uri

    given = [flag for flag, value in (("--method", args.method), ("--preset", args.preset), ("--model", args.model),
                                      ("--set", args.set), ("--spec-set", args.spec_set),
                                      ("--heldout-frac", args.heldout_frac or None), ("--seed", args.seed),
                                      ("--repeats", None if args.repeats == 1 else args.repeats))
             if value is not None]
    given += ["--" + k.replace("_", "-") for k in HFSourceOptions.from_object(args).given()]
    if given:
        raise ConfigError(f"--from-run {args.from_run} rebuilds that run's trial as it ran; drop {given} "
                          f"(allowed beside it: --out, --root, --tracking-uri, --device, --robustness, --json)")
    uri = args.tracking_uri or default_tracking_uri(args.root or DEFAULT_ROOT)
    config = trial_config_from_run(args.from_run, uri)
    if args.root:
        config["storage"] = args.root
    if args.device != "auto":
        config["device"] = args.device
    return config


RATES = ("mem_pct", "paper_mem_pct", "heldout_mem_pct", "backdoor_asr_pct", "relearn_mem_pct",
         "relearn_benign_mem_pct", "sampled_mem_pct", "perturbed_mem_pct")
SHOWN = ("clean_recovered_pct", "token_match", "nll_gap", "val_acc", "test_acc", "val_ppl", "test_ppl")


def _result_json(result) -> dict:
    out = {"method": result.method, "params": result.params, "before": result.before, "after": result.after,
           "seconds": result.seconds, "model_dir": result.model_dir, "info": result.info}
    if result.candidates:
        out["candidates"] = result.candidates
    return out


def _print_table(method: str, params: dict, before: dict, after: dict) -> None:
    print(f"{method} {params}")
    print(f"  {'metric':20s} {'before':>34s} {'after':>34s}")
    for k in RATES:
        if k in after:
            b = format_rate(before, k) if k in before else "n/a"
            print(f"  {k:20s} {b:>34s} {format_rate(after, k):>34s}")
    for k in SHOWN:
        if k in after:
            print(f"  {k:20s} {before.get(k, float('nan')):34.3f} {after[k]:34.3f}")


def _print_result(result) -> None:
    _print_table(result.method, result.params, result.before, result.after)
    print(f"  unlearning set: {int(result.info.get('unlearn_rows', 0))} rows"
          + (f", {int(result.info['heldout_rows'])} held out" if result.info.get("heldout_rows") else ""))
    print("  seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in result.seconds.items()))
    for c in result.candidates:  # --anytime: the same run after earlier epochs (each an `epochs = e` run)
        print(f"  checkpoint epochs={int(c['epoch'])}: mem_pct {format_rate(c, 'mem_pct')}, "
              f"val_acc {c.get('val_acc', float('nan')):.3f}, test_acc {c.get('test_acc', float('nan')):.3f}")
    print(f"mitigated model: {result.model_dir}")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register `methods` and `mitigate` on the `tinymem` parser."""
    me = sub.add_parser("methods", help="list the mitigation methods and their hyperparameters")
    me.add_argument("--json", action="store_true")
    me.set_defaults(func=cmd_methods)

    mi = sub.add_parser("mitigate", help="apply one mitigation method to a base model")
    mi.add_argument("--method", help="method name (see `tinymem methods`); required unless --from-run")
    mi.add_argument("--preset", default=None, help=f"base-model preset (default {DEFAULT_PRESET})")
    mi.add_argument("--model", help="an existing model directory instead of a preset, or a Hugging Face model "
                                    "hf:NAME_OR_PATH[@REVISION] (with --forget-file, --retain-file)")
    mi.add_argument("--set", action="append", metavar="HP=VALUE", help="a hyperparameter of the method")
    mi.add_argument("--spec-set", action="append", metavar="KEY=VALUE", help="override a base-model spec field")
    mi.add_argument("--out", help="where to save the mitigated model (default <root>/mitigated/<method>)")
    mi.add_argument("--root", default=None, help=f"model store root (default {DEFAULT_ROOT}; with --from-run: "
                                                 "the sweep's)")
    mi.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    mi.add_argument("--seed", type=int, default=None, help="seed of the mitigation (default 0)")
    mi.add_argument("--from-run", metavar="RUN_ID", help="rebuild the model of a sweep trial from its MLflow run "
                                                         "(its config is stored there); with --out")
    mi.add_argument("--tracking-uri", default=None, help="MLflow store of --from-run: sqlite:///PATH or "
                                                         "http(s)://HOST:PORT (default: sqlite under --root)")
    add_trust_arguments(mi)
    mi.add_argument("--robustness", default=None, metavar="all|NAME,...",
                    help="also measure robustness metrics, for the base model and after the method: all, or a "
                         "comma list of relearn_mem_pct, relearn_benign_mem_pct, sampled_mem_pct, "
                         "perturbed_mem_pct, nll_gap (default: none; they cost seconds, in seconds.robustness)")
    mi.add_argument("--anytime", action="store_true",
                    help="an anytime method (`tinymem methods`) is also evaluated after earlier epochs of its run, "
                         "each the result of a run with that many epochs (every epoch up to 20, a geometric set "
                         "beyond; in seconds.mitigate, apart as info.seconds_checkpoint_evals)")
    mi.add_argument("--verbose", action="store_true",
                    help="print an iterative method's metrics after every epoch on stderr (default: off; on a "
                         "terminal, progress bars show on stderr)")
    mi.add_argument("--json", action="store_true", help="print one JSON object: method, params, before, after, "
                                                      "seconds, model_dir")
    mi.set_defaults(func=cmd_mitigate)
    add_source_arguments(mi)
