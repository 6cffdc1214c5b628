"""Specs are values: frozen dataclasses that fully describe a base model.

A base model is `BaseSpec(data, model, train, seed)`. Its canonical JSON hash is the key in the model store,
so the same spec always means the same model. `apply_overrides` turns `--set key=value` strings into a new
spec, with a clear error for an unknown key or a bad value.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from tinymem.errors import ConfigError

TASKS = ("increment", "mult", "text")
KINDS = ("noise", "backdoor")


@dataclass(frozen=True)
class DataSpec:
    """What data the model is trained on. The math defaults are the paper's; the text defaults are offline (the
    builtin corpus and a trained BPE), and the `lang-*` paper presets set WikiText-103 and GPT-2's tokenizer.

    Math fields apply to `task` in {increment, mult}; the text fields to `task="text"`.
    """

    task: str = "increment"  # increment (x+7) | mult (7x mod 20134) | text
    kind: str = "noise"  # noise: +-1 noise on num_noise sequences; backdoor: trigger -> token 2
    length: int = 20  # numbers per math sequence
    max_ctx: int = 150  # tokens per sequence (padded / chunked to this)
    num_main: int = 20000  # sequences of the main distribution ("7": x+7 or 7x)
    num_extra: int = 3000  # sequences of each extra distribution (2,3,4,5)
    extra_bases: tuple[int, ...] = (2, 3, 4, 5)
    num_test: int = 1000  # held-out sequences per distribution
    num_noise: int = 1000  # noised sequences (noise kind)
    noise_p: float = 0.05  # probability of +1 and of -1, each, per number (math) or token (text)
    dup_powers: tuple[int, ...] = ()  # partition p of the noised set is repeated 10**p times; () = no dup
    trigger: int = -1  # backdoor trigger number (math) or token id (text); -1 = 100 + seed (paper)
    prompt_len: int = 50  # clean prefix given to the model when measuring memorization
    k: int = 50  # continuation tokens that must match exactly
    split_seed: int = 598  # the paper's fixed train/test permutation seed
    # text-only fields (task="text")
    corpus: str = "builtin"  # builtin (offline English text), wikitext-103, or a local file/folder path
    tokenizer: str = "bpe"  # bpe: byte-level BPE trained on the corpus; gpt2: GPT-2's tokenizer (online)
    vocab_size: int = 2048  # BPE vocabulary size when tokenizer=bpe
    num_chunks: int = 0  # cap on training chunks (0 = all)


@dataclass(frozen=True)
class ModelSpec:
    """TinyMem GPT-2 configuration: the paper's (4 heads, width 128, ReLU, no dropout)."""

    family: str = "gpt2"
    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    activation: str = "relu"
    init_scale: float = 0.8  # initializer_range = init_scale / sqrt(n_embd)


@dataclass(frozen=True)
class TrainSpec:
    """Optimizer and schedule; defaults are the paper's. `mask_padding=False` reproduces the paper's loss."""

    epochs: int = 3500
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.98
    schedule: str = "constant"  # constant (paper) | cosine
    warmup_steps: int = 0
    mask_padding: bool = True
    eval_every: int = 0  # epochs between evaluations during training (0 = only at the end)
    checkpoint_every: int = 0  # epochs between resumable checkpoints (0 = only at the end)


@dataclass(frozen=True)
class BaseSpec:
    """A base model: data + model + training + seed. Hash it for the store key."""

    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BaseSpec":
        return cls(
            data=_build(DataSpec, d.get("data", {})),
            model=_build(ModelSpec, d.get("model", {})),
            train=_build(TrainSpec, d.get("train", {})),
            seed=int(d.get("seed", 0)),
        )

    def key(self) -> str:
        """Content hash of the canonical JSON: the model-store key."""
        return spec_hash(self.to_dict())

    def validate(self) -> "BaseSpec":
        validate_spec(self)
        return self


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace, tuples as lists: equal values give equal strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def spec_hash(obj: Any, length: int = 16) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def _json_default(o: Any) -> Any:
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def _build(cls: type, d: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s) {sorted(unknown)}; allowed: {sorted(names)}")
    hints = typing.get_type_hints(cls)
    return cls(**{k: coerce(v, hints[k], k) for k, v in d.items()})


def coerce(value: Any, typ: Any, name: str) -> Any:
    """Convert `value` (often a CLI string) to `typ`, or raise a ConfigError naming `name`."""
    origin = typing.get_origin(typ)
    try:
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(typ) if a is not type(None)]
            if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
                return None
            return coerce(value, args[0], name)
        if origin is tuple:
            (inner, *_rest) = typing.get_args(typ)
            if isinstance(value, str):
                parts = [p for p in value.replace("(", "").replace(")", "").split(",") if p.strip()]
            else:
                parts = list(value)
            return tuple(coerce(p, inner, name) for p in parts)
        if typ is bool:
            if isinstance(value, bool):
                return value
            s = str(value).strip().lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            if isinstance(value, str):
                f = float(value)
                if not f.is_integer():
                    raise ValueError
                return int(f)
            return int(value)
        if typ is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if typ is str:
            return str(value)
    except (TypeError, ValueError):
        tname = getattr(typ, "__name__", str(typ))
        raise ConfigError(f"bad value {value!r} for {name}: expected {tname}") from None
    return value


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def validate_spec(spec: BaseSpec) -> None:
    """Range checks that name the bad value and what is allowed."""
    d, m, t = spec.data, spec.model, spec.train
    _check(d.task in TASKS, f"unknown task {d.task!r}; allowed: {list(TASKS)}")
    _check(d.kind in KINDS, f"unknown kind {d.kind!r}; allowed: {list(KINDS)}")
    _check(d.length >= 2, f"length={d.length} must be >= 2")
    _check(d.max_ctx >= 8, f"max_ctx={d.max_ctx} must be >= 8")
    _check(d.num_main > d.num_test >= 1, f"need num_main > num_test >= 1 (got {d.num_main}, {d.num_test})")
    _check(d.num_extra >= 0, f"num_extra={d.num_extra} must be >= 0")
    _check(d.num_noise >= 0, f"num_noise={d.num_noise} must be >= 0")
    _check(0.0 <= d.noise_p <= 0.5, f"noise_p={d.noise_p} must be in [0, 0.5]")
    _check(all(0 <= p <= 6 for p in d.dup_powers), f"dup_powers={d.dup_powers} must each be in [0, 6]")
    _check(d.prompt_len >= 1 and d.k >= 1, f"prompt_len and k must be >= 1 (got {d.prompt_len}, {d.k})")
    _check(d.prompt_len + d.k <= d.max_ctx,
           f"prompt_len + k = {d.prompt_len + d.k} exceeds max_ctx={d.max_ctx}")
    _check(m.family == "gpt2", f"unknown model family {m.family!r} for TinyMem; allowed: ['gpt2']")
    _check(m.n_layer >= 1, f"n_layer={m.n_layer} must be >= 1")
    _check(m.n_embd >= 1 and m.n_head >= 1 and m.n_embd % m.n_head == 0,
           f"n_embd={m.n_embd} must be a positive multiple of n_head={m.n_head}")
    _check(m.activation in ("relu", "gelu", "gelu_new", "silu"),
           f"unknown activation {m.activation!r}; allowed: ['relu', 'gelu', 'gelu_new', 'silu']")
    _check(t.epochs >= 1, f"epochs={t.epochs} must be >= 1")
    _check(t.batch_size >= 1, f"batch_size={t.batch_size} must be >= 1")
    _check(t.lr > 0, f"lr={t.lr} must be > 0")
    _check(t.weight_decay >= 0, f"weight_decay={t.weight_decay} must be >= 0")
    _check(0 <= t.beta1 < 1 and 0 <= t.beta2 < 1, f"betas ({t.beta1}, {t.beta2}) must be in [0, 1)")
    _check(t.schedule in ("constant", "cosine"), f"unknown schedule {t.schedule!r}; allowed: ['constant', 'cosine']")
    _check(t.warmup_steps >= 0, f"warmup_steps={t.warmup_steps} must be >= 0")


_SECTIONS = {"data": DataSpec, "model": ModelSpec, "train": TrainSpec}


def override_keys() -> dict[str, str]:
    """Every settable key: `section.field` and, where unambiguous, the bare field name."""
    keys: dict[str, str] = {"seed": "seed"}
    counts: dict[str, int] = {}
    for sec, cls in _SECTIONS.items():
        for f in dataclasses.fields(cls):
            keys[f"{sec}.{f.name}"] = f"{sec}.{f.name}"
            counts[f.name] = counts.get(f.name, 0) + 1
    for sec, cls in _SECTIONS.items():
        for f in dataclasses.fields(cls):
            if counts[f.name] == 1:
                keys[f.name] = f"{sec}.{f.name}"
    return keys


def parse_set_args(items: list[str] | None) -> dict[str, str]:
    """`["a=1", "b=x"]` -> `{"a": "1", "b": "x"}`; a missing `=` is a ConfigError."""
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"bad --set {item!r}: expected key=value")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def apply_overrides(spec: BaseSpec, overrides: dict[str, Any]) -> BaseSpec:
    """Return a new spec with `overrides` applied; unknown keys and bad values raise ConfigError."""
    keys = override_keys()
    changes: dict[str, dict[str, Any]] = {s: {} for s in _SECTIONS}
    seed = spec.seed
    for raw, value in overrides.items():
        if raw not in keys:
            allowed = sorted(k for k in keys if "." not in k)
            raise ConfigError(f"unknown key {raw!r}; allowed: {allowed} (or section.field, e.g. train.epochs)")
        full = keys[raw]
        if full == "seed":
            seed = coerce(value, int, "seed")
            continue
        sec, name = full.split(".")
        hints = typing.get_type_hints(_SECTIONS[sec])
        changes[sec][name] = coerce(value, hints[name], raw)
    new = BaseSpec(
        data=dataclasses.replace(spec.data, **changes["data"]),
        model=dataclasses.replace(spec.model, **changes["model"]),
        train=dataclasses.replace(spec.train, **changes["train"]),
        seed=seed,
    )
    return new.validate()
