"""The `tinymem` command line: train, eval, presets, methods, mitigate, find-memorized, convert-memorized.

Bad input (unknown preset, key, method or value) prints one line naming it and the allowed values and
exits with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from tinymem.errors import TinyMemError


def _jsonable(x: Any) -> Any:
    """JSON has no NaN/inf: write them as null so every consumer can parse the output."""
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def print_json(obj: Any) -> None:
    print(json.dumps(_jsonable(obj), indent=1, sort_keys=False))


def print_metrics(metrics: dict[str, float], title: str = "metrics") -> None:
    print(f"{title}:")
    for k in sorted(metrics):
        v = metrics[k]
        print(f"  {k:28s} {v:10.4f}" if isinstance(v, float) else f"  {k:28s} {v}")


def cmd_presets(args: argparse.Namespace) -> int:
    from tinymem.presets import all_presets, describe

    presets = all_presets()
    if args.json:
        print_json({name: spec.to_dict() for name, spec in presets.items()})
    else:
        for name, spec in presets.items():
            print(f"{name:24s} {describe(spec)}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from tinymem.build import ensure_base_model
    from tinymem.presets import get_preset
    from tinymem.specs import parse_set_args
    from tinymem.store import ModelStore

    spec = get_preset(args.preset, parse_set_args(args.set))
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
    from tinymem.build import load_model_dir
    from tinymem.metrics import evaluate

    if args.model.startswith("hf:"):  # a Hugging Face model with memorized-sequence files
        from tinymem.cli_hf import cmd_eval_hf

        return cmd_eval_hf(args)
    if hasattr(args, "dtype"):
        from tinymem.cli_hf import reject_source_options

        reject_source_options(args, args.model)
    loaded = load_model_dir(args.model, device=args.device)
    metrics = evaluate(loaded.model, loaded.bundle)
    if args.json:
        print_json({"model_dir": str(loaded.directory), "metrics": metrics})
    else:
        print_metrics(metrics)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tinymem", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    pr = sub.add_parser("presets", help="list the base-model presets")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=cmd_presets)

    tr = sub.add_parser("train", help="train a base model from a preset (reuses the model store)")
    tr.add_argument("--preset", default="math-demo", help="preset name (default: math-demo; see `tinymem presets`)")
    tr.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a spec field, e.g. epochs=10")
    tr.add_argument("--root", default="./tinymem-runs", help="model store root: path or URI (default ./tinymem-runs)")
    tr.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    tr.add_argument("--json", action="store_true", help="print one JSON object: model_dir, spec, metrics")
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="evaluate a model directory")
    ev.add_argument("--model", required=True, help="model directory (from train or mitigate), or a Hugging Face "
                                                   "model hf:NAME_OR_PATH[@REVISION] with --forget-file etc.")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(func=cmd_eval)
    try:  # options of Hugging Face models
        from tinymem.cli_hf import add_source_arguments
    except ImportError:
        pass
    else:
        add_source_arguments(ev)

    try:  # commands of the mitigation layer
        from tinymem.cli_mitigate import add_commands
    except ImportError:
        pass
    else:
        add_commands(sub)
    try:  # commands for Hugging Face models (find-memorized, convert-memorized)
        from tinymem.cli_hf import add_commands as add_hf_commands
    except ImportError:
        pass
    else:
        add_hf_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # keep the CLI output to what the user asked for
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TinyMemError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
