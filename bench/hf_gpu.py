"""balanced_subnet on a Pythia-shaped GPT-NeoX with random weights: seconds per optimisation step, peak GPU memory.

Self-contained and offline, so it runs as is on a GPU machine without network. It

1. builds a GPT-NeoX of a Pythia shape with random weights directly on the target device, in the target dtype,
   and saves it as a Hugging Face directory in a temporary folder (no tokenizer: the data files hold token ids);
2. writes the memorized-sequence files that `tinymem.memfile` reads: random retain / perplexity rows, and forget
   rows made of random 32-token prompts followed by *the model's own greedy continuation* (decoded with the same
   `tinymem.decoding.greedy_continue` and batch size the metric uses, on the model as `run_trial` loads it).
   A random model memorizes nothing, and `run_trial` unlearns only the forget rows the base model memorizes (an
   empty set is an error), so this is what makes the forget set non-empty: base `mem_pct` is 100 by
   construction. The memorization numbers are therefore no evidence about unlearning; only speed and memory are;
3. runs `tinymem.trial.run_trial({"method": "balanced_subnet", "model": "hf:DIR", ...})`, the code path of
   `tinymem mitigate --model hf:DIR --forget-file ... --retain-file ...`, with a few steps (default 1 epoch,
   batch 32: 128 forget + 512 retain rows = 20 optimisation steps), and measures
   - seconds per optimisation step: a global optimizer step hook (`register_optimizer_step_post_hook`, with a
     CUDA synchronize) timestamps every `opt.step()`; the interval between consecutive steps is one full step
     (batch, forward, backward, SGD on the scores). Reported: median / mean / min / max over the intervals
     that do not span an epoch end (the per-epoch probe and score checkpoint), plus the first step (from the
     start of the method: score initialisation included) and `seconds['mitigate'] / steps` (everything);
   - peak GPU memory (`max_memory_allocated` / `max_memory_reserved`): of load + base evaluation; of the
     mitigation alone (reset just before the method's `apply`, read just after it: score setup, all steps,
     the probes, the score checkpoint, the bake); and of mitigation + final evaluation (read at the end);
   - run_trial's phase seconds: load, base_eval, mitigate, eval, total.

It prints one table and writes the same numbers as JSON to `--json` (default `$OUT/hf_gpu.json` when the `OUT`
environment variable is set). A CUDA out-of-memory error is caught and reported (JSON `status: "oom"`, exit code
3); any other error is reported too (`status: "error"`, exit code 1).

    python bench/hf_gpu.py --shape pythia-2.8b                      # on a GPU: bfloat16, cuda
    python bench/hf_gpu.py --shape all --dry-run                    # parameter counts only (meta device)
    nice -n 19 python bench/hf_gpu.py --shape tiny --device cpu --threads 1   # CPU smoke test

Runs from a plain checkout: it puts the repository root on `sys.path`, so `tinymem` needs no installation
(only torch, transformers, safetensors, tokenizers and numpy, which transformers already requires).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `import tinymem` from a plain checkout, without `pip install -e .`
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never touch the network (the model is a local directory anyway)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

# Pythia shapes, from the EleutherAI/pythia-*-deduped config.json files (Biderman et al. 2023, Table 1):
# all use GPT-NeoX with rotary embeddings on 25% of each head (rotary_pct 0.25, base 10000), parallel residual
# (use_parallel_residual True), GeLU, LayerNorm eps 1e-5, 2048 positions, untied input/output embeddings,
# bos = eos = 0 (<|endoftext|>), initializer_range 0.02. The embedding has 50304 rows (the 50277-token tokenizer
# padded to a multiple of 128), 50432 for 6.9B and 12B. Parameter counts in the Pythia paper: 1.4B
# 1,414,647,808; 2.8B 2,775,208,960; 6.9B 6,857,302,016 (`--dry-run` counts them on the meta device).
PYTHIA_COMMON: dict[str, Any] = dict(
    max_position_embeddings=2048, rotary_pct=0.25, rotary_emb_base=10000, use_parallel_residual=True,
    hidden_act="gelu", layer_norm_eps=1e-5, initializer_range=0.02, tie_word_embeddings=False,
    bos_token_id=0, eos_token_id=0, attention_dropout=0.0, hidden_dropout=0.0, use_cache=True)
SHAPES: dict[str, dict[str, Any]] = {
    "pythia-6.9b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, intermediate_size=16384,
                        vocab_size=50432),
    "pythia-2.8b": dict(hidden_size=2560, num_hidden_layers=32, num_attention_heads=32, intermediate_size=10240,
                        vocab_size=50304),
    "pythia-1.4b": dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=16, intermediate_size=8192,
                        vocab_size=50304),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, vocab_size=1024),
}
PYTHIA_TEXT_TOKENS = 50277  # ids the Pythia tokenizer really uses (the rest of the embedding is padding)
FIRST_ID = 2  # random rows avoid 0 (<|endoftext|>, here also the pad id: padding is masked out of losses) and 1
DECODE_BATCH = 512  # the batch size of tinymem's memorization metric (metrics.forget_extraction)
GiB = 2**30


def make_config(shape: str):
    from transformers import GPTNeoXConfig

    cfg = GPTNeoXConfig(**PYTHIA_COMMON, **SHAPES[shape])
    # transformers 5 keeps rotary settings in rope_parameters, 4.x as attributes; check they took either way.
    rope = getattr(cfg, "rope_parameters", None) or {}
    pct = rope.get("partial_rotary_factor", getattr(cfg, "rotary_pct", None))
    if pct is None or abs(float(pct) - PYTHIA_COMMON["rotary_pct"]) > 1e-9:
        raise RuntimeError(f"GPTNeoXConfig did not take rotary_pct=0.25 (got {pct!r}); transformers version issue")
    return cfg


def count_params(cfg) -> dict[str, int]:
    """Total / MLP / embedding parameters, counted on the meta device (nothing allocated)."""
    from transformers import GPTNeoXForCausalLM

    with torch.device("meta"):
        model = GPTNeoXForCausalLM(cfg)
    total = sum(p.numel() for p in model.parameters())
    mlp = sum(p.numel() for n, p in model.named_parameters() if ".mlp." in n and n.endswith("weight"))
    emb = model.get_input_embeddings().weight.numel() + model.get_output_embeddings().weight.numel()
    return {"total": total, "mlp_weights": mlp, "embeddings": emb}


def gib(x: float | int | None) -> str:
    return "-" if x is None else f"{x / GiB:.2f} GiB"


class Recorder:
    """Timestamps of every optimizer step and epoch report, peak memory at the phase boundaries."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.steps: list[float] = []
        self.epochs: list[float] = []
        self.mitigate_start: float | None = None
        self.mem: dict[str, int] = {}
        self.history: list[dict[str, float]] = []

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def peaks(self, prefix: str) -> None:
        if self.cuda:
            self.sync()
            self.mem[f"{prefix}_allocated"] = torch.cuda.max_memory_allocated()
            self.mem[f"{prefix}_reserved"] = torch.cuda.max_memory_reserved()

    def reset(self) -> None:
        if self.cuda:
            self.sync()
            torch.cuda.reset_peak_memory_stats()

    # hooks -----------------------------------------------------------------------------------------------
    def on_step(self, _optimizer, _args, _kwargs) -> None:
        self.sync()
        self.steps.append(time.perf_counter())

    def before_method(self) -> None:  # run_trial has loaded the model and evaluated the base
        self.peaks("peak_load_and_base_eval")
        self.reset()
        self.mitigate_start = time.perf_counter()

    def after_method(self) -> None:  # covers score setup, every step, the probes, the checkpoint, the bake
        self.peaks("peak_mitigation")

    def on_epoch(self, metrics: dict[str, float]) -> None:
        self.sync()
        self.epochs.append(time.perf_counter())
        self.history.append(dict(metrics))

    @contextmanager
    def around(self, method_cls):
        """Wrap the method class's `apply` (what run_trial calls between base evaluation and final
        evaluation), so the timing and memory hooks need nothing from run_trial but its ordinary path."""
        original = method_cls.__dict__.get("apply")
        inherited = method_cls.apply

        def apply(method_self, ctx):
            self.before_method()
            try:
                return inherited(method_self, ctx)
            finally:
                self.after_method()

        method_cls.apply = apply
        try:
            yield
        finally:
            if original is None:
                del method_cls.apply
            else:
                method_cls.apply = original

    def step_stats(self) -> dict[str, float]:
        """Seconds per step from consecutive step timestamps, leaving out intervals that span an epoch end."""
        out: dict[str, float] = {"steps_timed": float(len(self.steps))}
        if self.steps and self.mitigate_start is not None:
            out["first_step_s_incl_setup"] = self.steps[0] - self.mitigate_start
        iv = [b - a for a, b in zip(self.steps, self.steps[1:]) if not any(a < e < b for e in self.epochs)]
        if iv:
            out.update(step_s_median=statistics.median(iv), step_s_mean=statistics.fmean(iv), step_s_min=min(iv),
                       step_s_max=max(iv), step_intervals=float(len(iv)))
        if len(self.steps) > 1:
            out["loop_s_first_to_last_step"] = self.steps[-1] - self.steps[0]
        return out


def build_and_save(cfg, dtype: torch.dtype, device: str, model_dir: Path, seed: int) -> dict[str, float]:
    """Random-weight GPT-NeoX built directly on `device` in `dtype`, saved with save_pretrained."""
    from transformers import GPTNeoXForCausalLM

    torch.manual_seed(seed)
    t0 = time.perf_counter()
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # parameters are created (and initialised) in dtype, on device: no copies
    try:
        with torch.device(device):
            model = GPTNeoXForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    if next(model.parameters()).dtype != dtype:
        model = model.to(dtype)
    model.eval()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t1 = time.perf_counter()
    model.save_pretrained(model_dir)
    t2 = time.perf_counter()
    del model
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"build_s": t1 - t0, "save_s": t2 - t1}


def write_data(model_dir: Path, data_dir: Path, args, vocab: int, dtype_name: str) -> dict[str, Any]:
    """Random retain/test rows; forget rows = random prompts + the loaded model's own greedy continuation."""
    from tinymem.decoding import greedy_continue
    from tinymem.hf.models import load_hf_model
    from tinymem.memfile import write_token_rows

    g = torch.Generator().manual_seed(args.seed + 1)
    high = min(vocab, PYTHIA_TEXT_TOKENS)
    retain = torch.randint(FIRST_ID, high, (args.retain_rows, args.seq_len), generator=g)
    test = torch.randint(FIRST_ID, high, (args.test_rows, args.seq_len), generator=g)
    prompts = torch.randint(FIRST_ID, high, (args.forget_rows, args.prompt_len), generator=g)
    files = {"retain_file": str(write_token_rows(data_dir / "retain.safetensors", retain)),
             "test_file": str(write_token_rows(data_dir / "test.safetensors", test))}
    t0 = time.perf_counter()
    # Loaded exactly as run_trial loads it (same loader, dtype, device, attention implementation), so that the
    # metric's greedy decoding of the same prompts in the same batch reproduces these continuations.
    loaded = load_hf_model(f"hf:{model_dir}", dtype=dtype_name, device=args.device, require_adapter=True)
    t1 = time.perf_counter()
    cont = greedy_continue(loaded.model, prompts, args.seq_len - args.prompt_len, eos_id=None, pad_id=None,
                           batch_size=DECODE_BATCH)
    forget = torch.cat([prompts, cont], dim=1)
    t2 = time.perf_counter()
    files["forget_file"] = str(write_token_rows(data_dir / "forget.safetensors", forget))
    distinct = len({tuple(r) for r in cont[:, : args.k].tolist()})
    del loaded
    gc.collect()
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"files": files, "probe_load_s": t1 - t0, "forget_decode_s": t2 - t1,
            "distinct_forget_targets": distinct}


def run(args, report: dict[str, Any]) -> None:
    from tinymem.hf.memory import Architecture, estimate_method_gb
    from tinymem.memfile import resolve_metric

    shapes = list(SHAPES) if args.shape == "all" else [args.shape]
    for shape in shapes:
        cfg = make_config(shape)
        n = count_params(cfg)
        est = estimate_method_gb(n["total"], args.dtype, "unlearn_weight", "balanced_subnet", seq_len=args.seq_len,
                                 arch=Architecture.from_config(cfg))
        report.setdefault("shapes", {})[shape] = {
            "config": {k: getattr(cfg, k) for k in SHAPES[shape]}, "params": n["total"],
            "mlp_weight_params": n["mlp_weights"], "embedding_params": n["embeddings"],
            "weights_bytes": n["total"] * torch.finfo(getattr(torch, args.dtype)).bits // 8,
            "tinymem_estimate_gib_balanced_subnet": est}
        print(f"{shape:12s} params {n['total']:>14,d} ({n['total'] / 1e9:.3f} B)  MLP weights "
              f"{n['mlp_weights']:>13,d}  embeddings {n['embeddings']:>12,d}  weights {args.dtype} "
              f"{gib(n['total'] * torch.finfo(getattr(torch, args.dtype)).bits // 8)}  "
              f"tinymem estimate (balanced_subnet) {est:.1f} GiB", flush=True)
    if args.dry_run:
        report["status"] = "dry-run"
        return
    if args.shape == "all":
        raise SystemExit("--shape all is for --dry-run only; pick one shape to run")

    metric = resolve_metric("pythia", args.prompt_len, args.k, args.seq_len)
    cuda = args.device.startswith("cuda")
    shape_info = report["shapes"][args.shape]
    tmp = Path(tempfile.mkdtemp(prefix="tinymem-hf-gpu-", dir=args.tmp_dir))
    report["tmp_dir"] = str(tmp)
    free = shutil.disk_usage(tmp).free
    need = shape_info["weights_bytes"] + 2 * shape_info["mlp_weight_params"] * torch.finfo(
        getattr(torch, args.dtype)).bits // 8  # model + one score checkpoint (scores + SGD momentum)
    print(f"temporary folder {tmp} ({gib(free)} free; about {gib(need)} needed)", flush=True)
    if free < need * 1.1:
        print(f"WARNING: {tmp} may be too small; use --tmp-dir DIR", flush=True)
    try:
        report["stage"] = "build"
        model_dir, data_dir = tmp / "model", tmp / "data"
        data_dir.mkdir()
        cfg = make_config(args.shape)
        rec = Recorder(cuda)
        rec.reset()
        report["build"] = build_and_save(cfg, getattr(torch, args.dtype), args.device, model_dir, args.seed)
        rec.peaks("peak_build")
        print(f"built and saved: {report['build']}", flush=True)

        report["stage"] = "data"
        data = write_data(model_dir, data_dir, args, int(cfg.vocab_size), args.dtype)
        report["data"] = {k: v for k, v in data.items() if k != "files"} | {
            "forget_rows": args.forget_rows, "retain_rows": args.retain_rows, "test_rows": args.test_rows,
            "seq_len": metric.seq_len, "prompt_len": metric.prompt_len, "k": metric.k}
        print(f"data written: {report['data']}", flush=True)

        report["stage"] = "run_trial"
        from torch.optim.optimizer import register_optimizer_step_post_hook

        from tinymem.mitigations import get_method
        from tinymem.trial import run_trial

        params = {"epochs": args.epochs, "batch_size": args.batch_size}
        if args.ratio is not None:
            params["ratio"] = args.ratio
        config = {"method": "balanced_subnet", "model": f"hf:{model_dir}", "dtype": args.dtype,
                  "device": args.device, **data["files"], "metric_preset": "pythia",
                  "prompt_len": metric.prompt_len, "k": metric.k, "seq_len": metric.seq_len,
                  "storage": str(tmp / "store"), "work_dir": str(tmp / "work"), "seed": args.seed,
                  "params": params}
        report["trial_config"] = config
        rec.reset()
        handle = register_optimizer_step_post_hook(rec.on_step)
        try:
            with rec.around(get_method("balanced_subnet")):
                result = run_trial(config, callback=rec.on_epoch)
        finally:
            handle.remove()
            report["memory"] = dict(rec.mem)
            report["steps"] = rec.step_stats()
        rec.peaks("peak_mitigation_and_eval")
        report["memory"] = dict(rec.mem)
        steps = int(result.info.get("steps", len(rec.steps)))
        report["steps"]["steps"] = steps
        report["steps"]["mitigate_s_per_step_all_in"] = result.seconds["mitigate"] / max(steps, 1)
        report["seconds"] = result.seconds
        report["info"] = result.info
        report["history"] = rec.history
        keys = ("mem_pct", "token_match", "test_acc", "test_ppl")
        report["before"] = {k: result.before[k] for k in keys if k in result.before}
        report["after"] = {k: result.after[k] for k in keys if k in result.after}
        report["params_used"] = result.params
        report["status"] = "ok"
        report["stage"] = "done"
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}", flush=True)


def print_table(r: dict[str, Any]) -> None:
    if r.get("status") not in ("ok",):
        return
    s, st, m, d = r["seconds"], r["steps"], r.get("memory", {}), r["data"]
    shape = r["shapes"][r["args"]["shape"]]

    def nan(key: str) -> float:
        return float(st.get(key, float("nan")))

    rows = [
        ("model", f"{r['args']['shape']} (random weights), {shape['params']:,} params, {r['args']['dtype']}"),
        ("device", r["env"].get("gpu_name") or r["args"]["device"]),
        ("data", f"forget {d['forget_rows']} (memorized by construction) + retain {d['retain_rows']} rows, "
                 f"test {d['test_rows']}; seq {d['seq_len']}, prompt {d['prompt_len']}, k {d['k']}"),
        ("balanced_subnet params", json.dumps(r["params_used"])),
        ("optimisation steps", f"{st['steps']} (batch {r['params_used']['batch_size']} rows x {d['seq_len']} tokens)"),
        ("s / step (median)", f"{nan('step_s_median'):.4f}   (hook timestamps, steady state)"),
        ("s / step (mean, min, max)", f"{nan('step_s_mean'):.4f}, {nan('step_s_min'):.4f}, {nan('step_s_max'):.4f} "
                                      f"over {int(st.get('step_intervals', 0))} intervals"),
        ("first step incl. setup", f"{nan('first_step_s_incl_setup'):.2f} s (score init + step 1)"),
        ("mitigate / steps", f"{st['mitigate_s_per_step_all_in']:.4f} s (all in: setup, probes, checkpoint, bake)"),
        ("peak GPU mem: mitigation", f"{gib(m.get('peak_mitigation_allocated'))} allocated, "
                                     f"{gib(m.get('peak_mitigation_reserved'))} reserved"),
        ("peak GPU mem: mitig.+eval", f"{gib(m.get('peak_mitigation_and_eval_allocated'))} allocated, "
                                      f"{gib(m.get('peak_mitigation_and_eval_reserved'))} reserved"),
        ("peak GPU mem: load+base eval", f"{gib(m.get('peak_load_and_base_eval_allocated'))} allocated, "
                                         f"{gib(m.get('peak_load_and_base_eval_reserved'))} reserved"),
        ("tinymem estimate", f"{shape['tinymem_estimate_gib_balanced_subnet']:.1f} GiB "
                             "(tinymem.hf.memory.estimate_method_gb)"),
        ("build / save model", f"{r['build']['build_s']:.2f} s / {r['build']['save_s']:.2f} s"),
        ("load (run_trial)", f"{s['load']:.2f} s"),
        ("base eval", f"{s['base_eval']:.2f} s"),
        ("mitigate", f"{s['mitigate']:.2f} s"),
        ("eval (after)", f"{s['eval']:.2f} s"),
        ("run_trial total", f"{s['total']:.2f} s"),
        ("mem_pct before -> after", f"{r['before'].get('mem_pct', float('nan')):.1f} -> "
                                    f"{r['after'].get('mem_pct', float('nan')):.1f}  (random weights: forget rows are "
                                    "the model's own greedy output; says nothing about unlearning)"),
        ("test_ppl before -> after", f"{r['before'].get('test_ppl', float('nan')):.1f} -> "
                                     f"{r['after'].get('test_ppl', float('nan')):.1f}  (random tokens)"),
    ]
    w = max(len(k) for k, _ in rows)
    print("\n" + "=" * 100)
    for k, v in rows:
        print(f"{k:{w}s}  {v}")
    print("=" * 100, flush=True)


def environment(device: str) -> dict[str, Any]:
    import transformers

    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "transformers": transformers.__version__, "cuda_available": torch.cuda.is_available(),
                           "torch_cuda": torch.version.cuda, "host_cpus": os.cpu_count(),
                           "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        idx = torch.device(device).index or 0 if device.startswith("cuda") else 0
        p = torch.cuda.get_device_properties(idx)
        env.update(gpu_name=p.name, gpu_count=torch.cuda.device_count(), gpu_total_bytes=p.total_memory,
                   gpu_capability=f"{p.major}.{p.minor}")
    return env


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--shape", default="pythia-2.8b", choices=[*SHAPES, "all"], help="model shape (all: --dry-run)")
    ap.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu")
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                    help="default bfloat16 on cuda, float32 on cpu")
    ap.add_argument("--dry-run", action="store_true", help="only build the config and count parameters (meta)")
    ap.add_argument("--forget-rows", type=int, default=128)
    ap.add_argument("--retain-rows", type=int, default=512)
    ap.add_argument("--test-rows", type=int, default=256, help="perplexity rows")
    ap.add_argument("--seq-len", type=int, default=80, help="tinymem's pythia metric preset: 80 / 32 / 40")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--k", type=int, default=40)
    ap.add_argument("--epochs", type=int, default=1, help="balanced_subnet epochs")
    ap.add_argument("--batch-size", type=int, default=32, help="balanced_subnet rows per step")
    ap.add_argument("--ratio", type=float, default=None, help="balanced_subnet ratio (default: the method's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--tmp-dir", default=None, help="where the model and files go (default: the system temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--json", default=None, help="JSON output (default $OUT/hf_gpu.json when OUT is set)")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    args.device = args.device.strip().lower()
    json_path = args.json or (str(Path(os.environ["OUT"]) / "hf_gpu.json") if os.environ.get("OUT") else None)
    report: dict[str, Any] = {"status": "error", "stage": "setup"}

    def finish(code: int) -> int:
        if json_path:
            Path(json_path).parent.mkdir(parents=True, exist_ok=True)
            Path(json_path).write_text(json.dumps(report, indent=2, default=str))
            print(f"wrote {json_path}", flush=True)
        return code

    if args.device.startswith("cuda") and not args.dry_run and not torch.cuda.is_available():
        report["error"] = f"--device {args.device} asked for, but torch {torch.__version__} sees no CUDA GPU"
        print(f"ERROR: {report['error']} (torch.version.cuda={torch.version.cuda}); use --device cpu", flush=True)
        return finish(2)
    if args.device != "cpu" and not args.device.startswith("cuda"):
        print(f"ERROR: --device {args.device!r}: use cuda, cuda:N or cpu", flush=True)
        return finish(2)
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    report["args"] = vars(args)
    report["env"] = environment(args.device)
    print("environment: " + ", ".join(f"{k}={v}" for k, v in report["env"].items()), flush=True)
    try:
        run(args, report)
    except torch.cuda.OutOfMemoryError as e:
        report["status"] = "oom"
        report["error"] = str(e).splitlines()[0] if str(e) else "CUDA out of memory"
        report.setdefault("memory", {})
        if torch.cuda.is_available():
            report["memory"].update(oom_peak_allocated=torch.cuda.max_memory_allocated(),
                                    oom_peak_reserved=torch.cuda.max_memory_reserved())
        print(f"OUT OF MEMORY in stage {report.get('stage')}: {report['error']}\n"
              f"  peak allocated {gib(report['memory'].get('oom_peak_allocated'))}; try --shape pythia-1.4b or a "
              "smaller --batch-size", flush=True)
        return finish(3)
    except Exception as e:  # noqa: BLE001 - report every failure, with where it happened
        report["status"] = "error"
        report["error"] = f"{type(e).__name__}: {e}"
        report["traceback"] = traceback.format_exc()
        print(report["traceback"], flush=True)
        print(f"ERROR in stage {report.get('stage')}: {report['error']}", flush=True)
        return finish(1)
    print_table(report)
    return finish(0)


if __name__ == "__main__":
    sys.exit(main())
