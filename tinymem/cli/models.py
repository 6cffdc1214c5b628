"""`tinymem presets`, `tinymem train` and `tinymem eval`: list the base-model presets, train one, evaluate a model.

Torch is imported inside the command functions, so that building the parser stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tinymem.cli.memorized import cmd_eval_hf
from tinymem.cli.output import print_json, print_metrics
from tinymem.hf.options import HFSourceOptions, add_source_arguments, is_hf_source
from tinymem.store import DEFAULT_ROOT, read_manifest


def cmd_presets(args: argparse.Namespace) -> int:
    """`tinymem presets`: one line (or one JSON entry) per base-model preset."""
    from tinymem.presets import all_presets, describe

    presets = all_presets()
    if args.json:
        print_json({name: spec.to_dict() for name, spec in presets.items()})
    else:
        for name, spec in presets.items():
            print(f"{name:24s} {describe(spec)}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """`tinymem train`: train the preset's base model, or load it from the store when it is already there."""
    from tinymem.presets import get_preset
    from tinymem.specs import parse_set_args
    from tinymem.store import ModelStore
    from tinymem.util import library_bars

    spec = get_preset(args.preset, parse_set_args(args.set))  # bad input answered before torch is imported
    from tinymem.build import ensure_base_model

    library_bars(not args.json and sys.stderr.isatty())
    store = ModelStore(args.root)
    if not args.json:
        print(f"preset {args.preset} (key {spec.key()}) in store {store.root}", file=sys.stderr)
    stored = ensure_base_model(spec, store, device=args.device, progress=None if not args.json else False)
    if args.json:
        print_json({"model_dir": str(stored.directory), "key": stored.key, "created": stored.created,
                    "seconds": stored.seconds, "spec": spec.to_dict(), "metrics": stored.metrics})
    else:
        verb = "trained" if stored.created else "loaded from the store"
        print(f"{verb} in {stored.seconds:.1f} s: {stored.directory}")
        print_metrics(stored.metrics, "base metrics")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """`tinymem eval`: the metrics of a TinyMem model directory, or of an `hf:` model on its sequence files."""
    from tinymem.util import library_bars

    show = not args.json and sys.stderr.isatty()  # bars on a terminal's stderr only
    library_bars(show)
    if is_hf_source(args.model):  # a Hugging Face model with memorized-sequence files
        return cmd_eval_hf(args)
    HFSourceOptions.from_object(args).reject(args.model)
    read_manifest(Path(args.model), verify=False)  # not a model directory: said before torch is imported

    from tinymem.build import load_model_dir
    from tinymem.metrics import evaluate

    loaded = load_model_dir(args.model, device=args.device)
    metrics = evaluate(loaded.model, loaded.bundle, progress=show)
    if args.json:
        print_json({"model_dir": str(loaded.directory), "metrics": metrics})
    else:
        print_metrics(metrics)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register `presets`, `train` and `eval` on the `tinymem` parser."""
    pr = sub.add_parser("presets", help="list the base-model presets")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=cmd_presets)

    tr = sub.add_parser("train", help="train a base model from a preset (reuses the model store)")
    tr.add_argument("--preset", default="math-demo", help="preset name (default: math-demo; see `tinymem presets`)")
    tr.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a spec field, e.g. epochs=10")
    tr.add_argument("--root", default=DEFAULT_ROOT,
                    help=f"model store root: path or URI (default {DEFAULT_ROOT})")
    tr.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    tr.add_argument("--json", action="store_true", help="print one JSON object: model_dir, spec, metrics")
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="evaluate a model directory")
    ev.add_argument("--model", required=True, help="model directory (from train or mitigate), or a Hugging Face "
                                                   "model hf:NAME_OR_PATH[@REVISION] with --forget-file etc.")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(func=cmd_eval)
    add_source_arguments(ev)
