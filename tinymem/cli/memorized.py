"""`tinymem find-memorized`, `convert-memorized` and `eval --model hf:...`: memorized sequences of Hugging Face models.

- `find-memorized`: keep the candidate sequences a model currently memorizes (the unlearning set);
- `convert-memorized IN.pt OUT.safetensors`: MemPi-style `.pt` token files to the safe formats;
- `cmd_eval_hf`: `tinymem eval` of an `hf:NAME_OR_PATH[@REVISION]` model on its memorized-sequence files.

The source options themselves (`--dtype`, `--forget-file`, ...) are `tinymem.hf.options`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tinymem.cli.output import print_json, print_metrics
from tinymem.errors import ConfigError
from tinymem.hf.options import HFSourceOptions, add_metric_arguments, is_hf_source
from tinymem.util import sha256_file


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """`--dtype` alone: `find-memorized` loads a model but takes no sequence files besides its candidates."""
    p.add_argument("--dtype", default=None, help="with --model hf:...: float32 | bfloat16 | float16 (default float32)")


def cmd_eval_hf(args: argparse.Namespace) -> int:
    """`tinymem eval --model hf:...`: memorization on --forget-file and perplexity on the retain/test data."""
    from tinymem.hf.models import load_trial_base
    from tinymem.metrics import evaluate

    config = HFSourceOptions.from_object(args, model=args.model).as_config()
    base = load_trial_base(config, args.device, require_forget=False)
    t0 = time.perf_counter()
    has_forget = base.bundle.forget.shape[0] > 0
    metrics = evaluate(base.model, base.bundle, memorization_metrics=has_forget,
                       utility_metrics=bool(base.bundle.test_names))
    seconds = time.perf_counter() - t0
    if args.json:
        print_json({"model": base.loaded.source.text, "commit": base.loaded.commit, "key": base.key,
                    "rows": base.bundle.summary(), "metrics": metrics,
                    "seconds": {"load": base.loaded.seconds, "eval": seconds}})
    else:
        print(f"{base.loaded.source.text} ({base.loaded.num_params:,} parameters, {base.loaded.dtype}, "
              f"{base.info['placement']})")
        print_metrics(metrics)
    return 0


def cmd_find_memorized(args: argparse.Namespace) -> int:
    """`tinymem find-memorized`: decode each candidate's prompt and keep the rows whose continuation matches."""
    from tinymem.hf.models import load_hf_model
    from tinymem.memfile import (ROW_FORMATS, cut_forget, load_token_rows, pad_rows, percent, resolve_metric,
                                 special_ids, write_token_rows)
    from tinymem.metrics import find_memorized

    if not is_hf_source(args.model):
        raise ConfigError(f"--model {args.model!r}: find-memorized takes a Hugging Face model, hf:NAME_OR_PATH")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size={args.batch_size} is out of range; allowed: >= 1")
    metric = resolve_metric(args.metric_preset, args.prompt_len, args.k, args.seq_len)
    if args.out and Path(args.out).suffix.lower() not in ROW_FORMATS:
        raise ConfigError(f"--out {args.out!r}: unsupported file type; allowed: {list(ROW_FORMATS)}")
    loaded = load_hf_model(args.model, dtype=args.dtype or "float32", device=args.device)
    vocab = int(loaded.model.get_input_embeddings().weight.shape[0])
    rows, _ = load_token_rows(args.candidates, loaded.tokenizer, vocab)
    rows = cut_forget(rows, metric, args.candidates)
    pad_id, _eos = special_ids(loaded.tokenizer, loaded.model.config)
    t0 = time.perf_counter()
    keep = find_memorized(loaded.model, pad_rows(rows, pad_id), metric.prompt_len, metric.k, args.batch_size)
    seconds = time.perf_counter() - t0
    kept = [rows[i] for i in keep.nonzero().flatten().tolist()]
    out = None
    if args.out:
        meta = {"model": loaded.source.text, "commit": str(loaded.commit), "dtype": loaded.dtype,
                "prompt_len": str(metric.prompt_len), "k": str(metric.k), "seq_len": str(metric.seq_len),
                "candidates": str(args.candidates), "candidates_sha256": sha256_file(args.candidates)}
        out = str(write_token_rows(args.out, kept, meta))
    summary = {"model": loaded.source.text, "candidates": len(rows), "memorized": len(kept),
               "mem_pct": percent(keep), "prompt_len": metric.prompt_len, "k": metric.k, "out": out,
               "memorized_rows": keep.nonzero().flatten().tolist(),
               "seconds": {"load": loaded.seconds, "find": seconds}}
    if args.json:
        print_json(summary)
    else:
        print(f"{summary['memorized']} of {summary['candidates']} candidates memorized ({summary['mem_pct']:.2f}%), "
              f"prompt {metric.prompt_len} + {metric.k} exact, {seconds:.1f} s")
        print(f"written to {out}" if out else "nothing written (no --out)")
    return 0


def cmd_convert_memorized(args: argparse.Namespace) -> int:
    """`tinymem convert-memorized IN.pt OUT`: a `.pt` token tensor (loaded weights_only) to a safe row file."""
    from tinymem.memfile import convert_pt

    summary = convert_pt(args.input, args.output, args.row_len)
    if args.json:
        print_json(summary)
    else:
        extra = f", {summary['dropped_tokens']} trailing tokens dropped" if summary["dropped_tokens"] else ""
        print(f"{summary['rows']} rows of {summary['length']} tokens -> {summary['out']}{extra}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register `find-memorized` and `convert-memorized` on the `tinymem` parser."""
    fm = sub.add_parser("find-memorized", help="keep the candidate sequences a Hugging Face model memorizes")
    fm.add_argument("--model", required=True, help="hf:NAME_OR_PATH[@REVISION]")
    fm.add_argument("--candidates", required=True,
                    help="candidate sequences: .jsonl (ids or text), .parquet or .safetensors")
    fm.add_argument("--out", default=None, help="write the memorized ones here (.safetensors, .jsonl, .parquet)")
    add_model_arguments(fm)
    add_metric_arguments(fm)
    fm.add_argument("--batch-size", type=int, default=64, help="sequences decoded at once (default 64, the paper's)")
    fm.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    fm.add_argument("--json", action="store_true")
    fm.set_defaults(func=cmd_find_memorized)

    cv = sub.add_parser("convert-memorized", help="convert a .pt token file (weights_only) to a safe format")
    cv.add_argument("input", help="a .pt file holding a token tensor (read with torch.load(weights_only=True))")
    cv.add_argument("output", help="OUT.safetensors (or .jsonl / .parquet)")
    cv.add_argument("--row-len", type=int, default=None,
                    help="re-cut the flattened tokens into rows of this length (e.g. 80)")
    cv.add_argument("--json", action="store_true")
    cv.set_defaults(func=cmd_convert_memorized)
