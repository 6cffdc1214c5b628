"""Shared mechanics of the five neuron-level unlearning methods.

Every neuron method has the same shape: score each MLP neuron of each layer (an *attribution*
[num_layers, inner_dim]), then silence the `k = int(inner_dim * ratio)` highest-scoring neurons of every layer
by zeroing their input weights and biases (`ModelAdapter.ablate_neurons`). What lives here, once:

- `ForgetSet`: the forget rows and the positions whose loss counts. **Loss positions:** the memorized suffix
  only, as MemPi does: position t counts when it predicts token t+1 with t+1 >= the row's suffix start
  (`prompt_len` for noise data; the position right after the trigger for backdoor data) and token t+1 is not
  padding. The clean prompt is shared with the clean distributions, so attributing its loss would pick
  neurons that carry general ability rather than the memorized continuation.
- activation patching through `ModelAdapter.neuron_hook(s)`: `capture_activations`, `scaled_neurons`.
- `suffix_loss_sums`: per-row sums of suffix cross-entropy from logits.
- `train_gates`: the gate-training loop shared by Slimming and Hard Concrete (Adam on one gate vector per
  layer, gradients zeroed every step, the penalty stop checked every epoch, one `ctx.report` per epoch). Adam
  at a constant learning rate with row order and gate noise drawn epoch after epoch from the seed: the gates
  after epoch e are those of a run with `epochs = e`, so both are `anytime` (`ablated_copy` is the candidate).
  An attribution taken from the cache trains nothing and so makes no candidates.
- `top_neurons` / `ablate_top`: the edit. Layers come from the adapter by index, so the paper's substring
  layer matching (which sends layers 0-5 to 10-15 on 16-layer models) cannot happen.
- `AttributionCache` and `attribute_and_ablate`: attributions are computed once per (base model, method,
  attribution settings = every hyperparameter except `ratio`, forget set) and reused when only `ratio`
  changes. They are stored as safetensors under `ctx.work_dir` with the seconds they took, so a cache hit
  reports `seconds_cached_work` (added to `mitigate_total` by `run_trial`) and the time stays honest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from tinymem.adapter import ModelAdapter
from tinymem.errors import ConfigError
from tinymem.mitigations.base import Mitigation, MitigationContext, MitigationOutput, family_base
from tinymem.mitigations.memory import MethodMemory
from tinymem.util import atomic_path, eval_mode, model_device, progress_bar

# Bump when an attribution algorithm changes, so stale cache files are not reused.
ATTRIBUTION_VERSION = 1
# Tokens per forward pass when a method expands its batch (neurons x sequences, IG steps x positions):
# large enough to keep the matmuls efficient on a CPU, small enough for a laptop's memory.
TOKENS_PER_BATCH = 32_768

Scores = torch.Tensor  # float32 [num_layers, inner_dim]

RATIO_HELP = "fraction of each layer's MLP neurons ablated: k = int(inner_dim * ratio) per layer"
# Default `ratio` of all five methods: 0.05, the top of the paper's grid {0.001, 0.01, 0.05}; at 0.01 no method
# changed math-demo's memorization much (measured, see docs/defaults.md).
DEFAULT_RATIO = 0.05


# ----------------------------------------------------------------------------------------------------------
# The family


@family_base
class NeuronMitigation(Mitigation):
    """Base of the neuron-level unlearning methods (`unlearn_neuron`): implement `attribute`.

    `apply` takes the attribution from the cache or from `attribute(ctx)`, then ablates the top `ratio`
    neurons of every layer (`attribute_and_ablate`). The cache key is derived from `Params`: every
    hyperparameter keys the attribution except those declared `hp(..., attribution=False)` (applied after
    it: `ratio`), and so does the trial seed unless the class declares `deterministic_attribution` (no
    sampling, no shuffling). A new hyperparameter therefore keys the cache without further code.
    """

    family = "unlearn_neuron"
    # The most any neuron method holds: a backward pass over TOKENS_PER_BATCH tokens with every layer's MLP
    # activations kept.
    memory = MethodMemory(1, 0, True, tokens=TOKENS_PER_BATCH, captures_neurons=True)
    deterministic_attribution: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        names = cls.Params.names()
        if "ratio" not in names or "ratio" not in cls.post_attribution_fields():
            raise TypeError(f"{cls.__name__}.Params needs `ratio` declared hp(..., attribution=False): it is "
                            "applied after the attribution")
        if "seed" in names:
            raise TypeError(f"{cls.__name__}.Params: `seed` is the trial's, it cannot be a hyperparameter")

    @classmethod
    def post_attribution_fields(cls) -> frozenset[str]:
        """The hyperparameters applied after the attribution (`hp(..., attribution=False)`)."""
        return frozenset(f.name for f in dataclasses.fields(cls.Params)
                         if not f.metadata.get("attribution", True))

    def attribution_settings(self, ctx: MitigationContext) -> dict[str, Any]:
        """What determines the attribution: every hyperparameter but the post-attribution ones, plus the
        trial seed unless the attribution is deterministic."""
        post = self.post_attribution_fields()
        settings = {k: v for k, v in self.params.to_dict().items() if k not in post}
        if not self.deterministic_attribution:
            settings["seed"] = ctx.seed
        return settings

    def attribution_key(self, ctx: MitigationContext) -> str:
        """The attribution cache key of this method, its settings and the context's model and forget set."""
        return AttributionCache.key(ctx, self.name, self.attribution_settings(ctx))

    def attribute(self, ctx: MitigationContext) -> Scores | tuple[Scores, dict[str, float]]:
        """The attributions [num_layers, inner_dim] (and optional info) of `ctx.model` on the forget set."""
        raise NotImplementedError

    def apply(self, ctx: MitigationContext) -> MitigationOutput:
        return attribute_and_ablate(ctx, self.name, self.params.ratio, self.attribution_settings(ctx),
                                    lambda: self.attribute(ctx))


# ----------------------------------------------------------------------------------------------------------
# The forget set and its loss positions


@dataclass
class ForgetSet:
    """Forget rows and the positions whose next-token loss counts (the memorized suffix)."""

    tokens: torch.Tensor  # int64 [F, T]
    mask: torch.Tensor  # bool [F, T-1]: position t predicts tokens[:, t+1], a suffix token

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def subset(self, rows: torch.Tensor) -> "ForgetSet":
        return ForgetSet(self.tokens[rows], self.mask[rows])


def suffix_starts(ctx: MitigationContext) -> torch.Tensor:
    """Per forget row, the index of the first memorized token ([F] int64).

    Noise data: `prompt_len` (the window the memorization metric checks starts there). Backdoor data: the
    position right after the trigger (`forget_prompt_len` of the row in the bundle); rows that cannot be
    matched to the bundle (hand-built contexts) fall back to the first position where the row differs from
    its clean counterpart.
    """
    n, t = ctx.forget.shape
    bundle = ctx.bundle
    if bundle.kind != "backdoor":
        return torch.full((n,), int(bundle.prompt_len), dtype=torch.long)
    differs = ctx.forget != ctx.forget_clean
    first_diff = torch.where(differs.any(dim=1), differs.float().argmax(dim=1), torch.full((n,), t))
    if "forget_prompt_len" not in bundle:
        return first_diff.long()
    index = {tuple(row.tolist()): i for i, row in enumerate(bundle.forget)}
    lens = bundle["forget_prompt_len"]
    out = first_diff.clone().long()
    for r, row in enumerate(ctx.forget):
        i = index.get(tuple(row.tolist()))
        if i is not None:
            out[r] = int(lens[i])
    return out


def forget_set(ctx: MitigationContext, max_sequences: int = 0) -> ForgetSet:
    """The forget rows with their suffix-loss mask; at most `max_sequences` rows (0 = all).

    The cap takes evenly spaced rows, so it is deterministic without a seed (and cache keys need none).
    """
    tokens = ctx.forget.long().cpu()
    n, t = tokens.shape
    if t < 2:
        raise ConfigError(f"forget rows have {t} token(s); neuron methods need at least 2")
    starts = suffix_starts(ctx)
    target_pos = torch.arange(1, t)[None, :]
    mask = (target_pos >= starts[:, None]) & (tokens[:, 1:] != ctx.pad_id)
    if n and not mask.any():
        raise ConfigError(f"no forget row has a non-padding token at or after its suffix start (prompt_len="
                          f"{ctx.bundle.prompt_len}, rows of {t} tokens); nothing to attribute")
    fs = ForgetSet(tokens, mask)
    if max_sequences and n > max_sequences:
        rows = torch.linspace(0, n - 1, max_sequences).round().long().unique()
        fs = fs.subset(rows)
    return fs


def suffix_loss_sums(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per row, the sum of next-token cross-entropy over the masked positions ([B], float32).

    `logits` [B, L, V] come from `tokens` [B, L] (possibly a prefix of the rows); `mask` is the rows' full
    suffix mask, cut to the L-1 positions that have a target here.
    """
    lg = logits[:, :-1]
    y = tokens[:, 1:]
    m = mask[:, : y.shape[1]]
    ce = F.cross_entropy(lg.reshape(-1, lg.shape[-1]).float(), y.reshape(-1), reduction="none").view_as(y)
    return (ce * m).sum(dim=1)


def logits_of(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Forward pass without a KV cache: nothing reuses it, and building it costs 10-25% of a CPU forward."""
    return model(input_ids=tokens, use_cache=False).logits


def rows_per_batch(seq_len: int, budget: int = TOKENS_PER_BATCH) -> int:
    return max(1, budget // max(seq_len, 1))


# ----------------------------------------------------------------------------------------------------------
# Activation patching


@contextmanager
def capture_activations(adapter: ModelAdapter, layers: list[int] | None = None
                        ) -> Iterator[dict[int, torch.Tensor]]:
    """Record the neuron activations [B, T, inner] of `layers` (default all) on the next forward pass."""
    store: dict[int, torch.Tensor] = {}

    def recorder(layer: int) -> Callable[[torch.Tensor], None]:
        def fn(a: torch.Tensor) -> None:
            store[layer] = a.detach()
        return fn

    layers = list(range(adapter.num_layers)) if layers is None else layers
    with adapter.neuron_hooks({i: recorder(i) for i in layers}):
        yield store


def scaled_neurons(scale: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """A neuron hook multiplying the activations by `scale` ([inner], [B, inner] or [B, T, inner])."""

    def fn(a: torch.Tensor) -> torch.Tensor:
        s = scale.to(a.dtype)
        if s.dim() == 2:
            s = s[:, None, :]
        return a * s

    return fn


# ----------------------------------------------------------------------------------------------------------
# Gate training (Slimming, Hard Concrete)


@dataclass
class GateTraining:
    """Settings of the gate-training loop shared by Slimming and Hard Concrete."""

    epochs: int
    lr: float
    l1_lambda: float
    stop_loss: float
    batch_size: int
    seed: int


def train_gates(ctx: MitigationContext, fs: ForgetSet, gates: list[torch.Tensor],
                multiplier: Callable[[int, torch.Generator], torch.Tensor],
                penalty: Callable[[], torch.Tensor], cfg: GateTraining, penalty_name: str,
                candidate: Callable[[], nn.Module] | None = None) -> dict[str, float]:
    """Minimise suffix CE(forget) + l1_lambda * penalty() over the per-layer `gates` with Adam.

    `multiplier(layer, generator)` is the factor applied to that layer's activations in a training step.
    Fixes two bugs of the paper's code: gradients are zeroed every step (the paper zeroed them once per epoch, so they
    accumulated over batches), and the `penalty < stop_loss` stop is checked after every epoch (the paper
    checked every 100 epochs, so it never fired). Reports `{epoch, train_loss, <penalty_name>}` each epoch, and
    at anytime checkpoints the metrics of `candidate()` (the model ablated by the gates as they are now); not at
    the epoch the stop fires, which is the run's last.
    """
    model = ctx.model
    adapter = ModelAdapter(model)
    device = model_device(model)
    opt = torch.optim.Adam(gates, lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(fs)
    epochs_run, reg, mean_ce = 0, float(penalty().detach()), float("nan")
    bar = progress_bar(cfg.epochs, "gates", "epoch", ctx.progress)
    for epoch in range(1, cfg.epochs + 1):
        order = torch.randperm(n, generator=gen)
        ce_sum, tok_sum = 0.0, 0.0
        for b in range(0, n, cfg.batch_size):
            idx = order[b : b + cfg.batch_size]
            toks, mask = fs.tokens[idx].to(device), fs.mask[idx].to(device)
            mults = {layer: multiplier(layer, gen) for layer in range(adapter.num_layers)}
            with adapter.neuron_hooks({layer: scaled_neurons(m) for layer, m in mults.items()}):
                logits = logits_of(model, toks)
            sums = suffix_loss_sums(logits, toks, mask)
            tokens = mask.sum().clamp(min=1)
            ce = sums.sum() / tokens
            loss = ce + cfg.l1_lambda * penalty()
            opt.zero_grad(set_to_none=True)
            # Gradients for the gates only: the model's weights are never touched.
            grads = torch.autograd.grad(loss, gates)
            for g, grad in zip(gates, grads):
                g.grad = grad
            opt.step()
            ce_sum += float(sums.sum().detach())
            tok_sum += float(tokens)
        epochs_run = epoch
        reg = float(penalty().detach())
        mean_ce = ce_sum / max(tok_sum, 1.0)
        stopping = reg < cfg.stop_loss
        ckpt = ctx.checkpoint(epoch, candidate) if candidate is not None and not stopping else {}
        ctx.report({"epoch": float(epoch), "train_loss": mean_ce, penalty_name: reg, **ckpt})
        bar.update(1)
        if stopping:
            break
    bar.close()
    return {"epochs_run": float(epochs_run), f"final_{penalty_name}": reg, "final_train_loss": mean_ce}


# ----------------------------------------------------------------------------------------------------------
# The edit


def neurons_per_layer(inner_dim: int, ratio: float) -> int:
    """k = int(inner_dim * ratio), as the paper (ratio 0.001 on 512 neurons is a no-op)."""
    return int(inner_dim * ratio)


def top_neurons(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores; ties go to the lower index (a stable sort, so runs are repeatable)."""
    if k <= 0:
        return torch.empty(0, dtype=torch.long)
    order = torch.sort(scores.float().cpu(), descending=True, stable=True).indices
    return order[:k]


def ablate_top(adapter: ModelAdapter, scores: Scores, ratio: float) -> dict[int, torch.Tensor]:
    """Silence the top `int(inner_dim * ratio)` neurons of every layer; returns {layer: neuron indices}."""
    expected = (adapter.num_layers, adapter.inner_dim)
    if tuple(scores.shape) != expected:
        raise ValueError(f"attributions have shape {tuple(scores.shape)}; the model needs {expected}")
    k = neurons_per_layer(adapter.inner_dim, ratio)
    chosen = {}
    for layer in range(adapter.num_layers):
        idx = top_neurons(scores[layer], k)
        adapter.ablate_neurons(layer, idx)
        chosen[layer] = idx
    return chosen


def ablated_copy(model: nn.Module, scores: Scores, ratio: float) -> nn.Module:
    """A copy of `model` with the top `ratio` neurons of `scores` ablated (the model stays as it is): an anytime
    checkpoint's candidate, the edit `attribute_and_ablate` would make with these scores."""
    import copy

    edited = copy.deepcopy(model)
    ablate_top(ModelAdapter(edited), scores.detach().float().cpu(), ratio)
    return edited


# ----------------------------------------------------------------------------------------------------------
# The attribution cache


def _tensor_digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def model_fingerprint(model: nn.Module) -> str:
    """A digest of every parameter (used when the context has no base-model key)."""
    h = hashlib.sha256()
    for name, p in model.state_dict().items():
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class AttributionCache:
    """Attribution tensors under `work_dir`, one safetensors file per key, written atomically."""

    def __init__(self, work_dir: Path | None):
        self.dir = Path(work_dir) if work_dir is not None else None

    @staticmethod
    def key(ctx: MitigationContext, method: str, settings: dict[str, Any]) -> str:
        ident = {"version": ATTRIBUTION_VERSION, "method": method, "settings": settings,
                 "model": ctx.base_key or model_fingerprint(ctx.model), "forget": _tensor_digest(ctx.forget),
                 "prompt_len": int(ctx.bundle.prompt_len), "pad_id": int(ctx.pad_id)}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]

    def path(self, key: str) -> Path | None:
        return None if self.dir is None else self.dir / f"attributions-{key}.safetensors"

    def load(self, key: str) -> tuple[Scores, float, dict[str, float]] | None:
        """(attributions, seconds it took to compute them, the method's info) or None on a miss."""
        path = self.path(key)
        if path is None or not path.exists():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                scores = f.get_tensor("attributions")
            return scores, float(meta["seconds"]), json.loads(meta.get("info", "{}"))
        except Exception:  # a damaged file is a miss; it is rewritten below
            return None

    def save(self, key: str, scores: Scores, seconds: float, settings: dict[str, Any],
             info: dict[str, float]) -> None:
        path = self.path(key)
        if path is None:
            return
        meta = {"seconds": repr(float(seconds)), "settings": json.dumps(settings, sort_keys=True),
                "info": json.dumps(info)}
        with atomic_path(path) as tmp:
            save_file({"attributions": scores.float().cpu().contiguous()}, str(tmp), metadata=meta)


def attribute_and_ablate(ctx: MitigationContext, method: str, ratio: float, settings: dict[str, Any],
                         compute: Callable[[], Scores | tuple[Scores, dict[str, float]]]) -> MitigationOutput:
    """The common `apply`: attributions from the cache or `compute()`, then the top-`ratio` ablation.

    `settings` are what determines the attributions (`NeuronMitigation.attribution_settings`: every
    hyperparameter but `ratio`, plus the seed for stochastic methods). Info keys: `seconds_attribution` (miss) or `seconds_cached_work` (hit, the original
    compute time), `attribution_cached`, `neurons_per_layer`, `neurons_ablated`, `forget_rows`, and whatever
    `compute` reports (e.g. `epochs_run`).
    """
    adapter = ModelAdapter(ctx.model)
    info: dict[str, float] = {"forget_rows": float(ctx.forget.shape[0])}
    if ctx.forget.shape[0] == 0:
        # Nothing is memorized: any neuron choice would be arbitrary, so leave the model alone.
        info.update({"neurons_per_layer": 0.0, "neurons_ablated": 0.0, "attribution_cached": 0.0,
                     "seconds_attribution": 0.0})
        return MitigationOutput(model=ctx.model, info=info)
    cache = AttributionCache(ctx.work_dir)
    key = AttributionCache.key(ctx, method, settings)
    hit = cache.load(key)
    if hit is not None:
        scores, seconds, extra = hit
        info.update(extra)
        info.update({"attribution_cached": 1.0, "seconds_cached_work": seconds})
    else:
        t0 = time.perf_counter()
        with eval_mode(ctx.model):
            out = compute()
        scores, extra = out if isinstance(out, tuple) else (out, {})
        seconds = time.perf_counter() - t0
        scores = scores.detach().float().cpu()
        if not torch.isfinite(scores).all():
            raise FloatingPointError(f"{method}: attributions contain NaN or inf (settings {settings})")
        cache.save(key, scores, seconds, settings, extra)
        info.update(extra)
        info.update({"attribution_cached": 0.0, "seconds_attribution": seconds})
    chosen = ablate_top(adapter, scores, ratio)
    k = neurons_per_layer(adapter.inner_dim, ratio)
    info.update({"neurons_per_layer": float(k), "neurons_ablated": float(sum(len(v) for v in chosen.values()))})
    return MitigationOutput(model=ctx.model, info=info)
