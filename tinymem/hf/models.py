"""Production-grade models: any Hugging Face causal LM (GPT-2, GPT-NeoX / Pythia, Llama families) as a base model.

A model source is written `hf:NAME_OR_PATH[@REVISION]`:

- `hf:/data/pythia-2.8b-deduped` or `hf:./my-model`: a local `save_pretrained` directory (never touches the
  network);
- `hf:EleutherAI/pythia-2.8b-deduped@step143000`: a hub model at a revision (branch, tag or commit). Without
  network this fails in seconds with one clear line, unless the model is already in the local Hugging Face
  cache (read with `local_files_only`, also what `HF_HUB_OFFLINE=1` asks for).

`load_hf_model` loads it with `AutoModelForCausalLM` + the matching `AutoTokenizer`, in a chosen dtype, on the
chosen device: one GPU when the model fits, otherwise `device_map="auto"` over the node's GPUs (needs
`accelerate`; a clear error without it). `load_trial_base` is what `run_trial` calls for a config with
`model: "hf:..."`: model + a `verbatim` data bundle built from memorized-sequence files (`tinymem.memfile`) +
the base key that caches the base evaluation. `estimate_gpus` sizes a trial's GPU share from the model size.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tinymem.errors import ConfigError, TinyMemError
from tinymem.hf.options import HF_PREFIX, HFSourceOptions, is_hf_source
from tinymem.util import model_device

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
DEVICES = ("auto", "cpu", "cuda")
# A model is put on one GPU when its weights take at most this share of the GPU's memory; the rest is the
# method's working memory (gradients, scores, activations). Beyond it, the weights are spread over the GPUs.
SINGLE_GPU_WEIGHT_SHARE = 0.5
KEY_VERSION = 1  # bump when the meaning of a cached base evaluation changes


# ------------------------------------------------------------------------------------------------ sources


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: a local directory (`local` set) or a hub name at an optional revision."""

    name: str
    revision: str | None = None
    local: Path | None = None

    @property
    def text(self) -> str:
        """The source as the user writes it (`hf:NAME[@REVISION]`)."""
        return HF_PREFIX + self.name + (f"@{self.revision}" if self.revision else "")


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name in (".", "..")


def parse_source(value: str) -> ModelSource:
    """Parse `hf:NAME_OR_PATH[@REVISION]`. An existing directory is local (even if its name holds '@')."""
    if not is_hf_source(value):
        raise ConfigError(f"model source {value!r} must start with {HF_PREFIX!r}: hf:NAME_OR_PATH[@REVISION]")
    body = value[len(HF_PREFIX):].strip()
    if not body:
        raise ConfigError(f"model source {value!r} names no model; expected hf:NAME_OR_PATH[@REVISION], e.g. "
                          "hf:EleutherAI/pythia-2.8b-deduped@step143000 or hf:/path/to/model_dir")
    whole = Path(body).expanduser()
    if whole.is_dir():
        return ModelSource(name=body, local=whole.resolve())
    name, revision = body.rsplit("@", 1) if "@" in body else (body, None)
    if revision is not None and not revision.strip():
        raise ConfigError(f"model source {value!r} has an empty revision after '@'")
    path = Path(name).expanduser()
    if path.is_dir():
        if revision:
            raise ConfigError(f"model source {value!r}: a revision (@{revision}) applies to hub models only; "
                              f"{name!r} is a local directory")
        return ModelSource(name=name, local=path.resolve())
    if _looks_like_path(name) or path.exists():
        raise ConfigError(f"model directory {name!r} does not exist (or is not a directory); for a hub model use "
                          "hf:ORG/NAME[@REVISION]")
    return ModelSource(name=name, revision=revision)


def parse_dtype(name: str | None) -> torch.dtype:
    """`float32` | `bfloat16` | `float16` -> torch dtype (None -> float32)."""
    key = (name or "float32").strip().lower()
    if key not in DTYPES:
        raise ConfigError(f"dtype {name!r} is not allowed; choose from {list(DTYPES)}")
    return DTYPES[key]


def dtype_name(dtype: torch.dtype) -> str:
    return next(k for k, v in DTYPES.items() if v == dtype)


def parse_device(name: str | None) -> str:
    """Validate a device name: auto | cpu | cuda | cuda:N. `cuda` without a GPU is an error, not a fallback."""
    d = (name or "auto").strip().lower()
    if d not in DEVICES and not (d.startswith("cuda:") and d[5:].isdigit()):
        raise ConfigError(f"device {name!r} is not allowed; choose from {list(DEVICES)} (or cuda:N)")
    if d.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but torch sees no CUDA GPU here; use --device cpu or auto")
    return d


# ------------------------------------------------------------------------------------------------ placement


@dataclass(frozen=True)
class Placement:
    """How to place a model: one device (`device`), or spread by accelerate (`device_map="auto"`)."""

    device: str
    device_map: str | None = None

    @property
    def spread(self) -> bool:
        return self.device_map is not None


def plan_placement(num_params: int, dtype: str, device: str, gpu_memory_bytes: list[int],
                   accelerate_available: bool) -> Placement:
    """Pure placement rule. `device` is auto|cpu|cuda|cuda:N; `gpu_memory_bytes` the total memory per GPU.

    One GPU when the weights take at most `SINGLE_GPU_WEIGHT_SHARE` of it (the rest is the method's working
    memory); otherwise `device_map="auto"` over all GPUs, which needs `accelerate`.
    """
    if device == "cpu" or (device == "auto" and not gpu_memory_bytes):
        return Placement("cpu")
    if not gpu_memory_bytes:
        raise ConfigError(f"device {device!r} asked for, but no GPU is visible")
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= len(gpu_memory_bytes):
        raise ConfigError(f"device {device!r} does not exist; {len(gpu_memory_bytes)} GPU(s) visible")
    weights = num_params * DTYPE_BYTES[dtype]
    if weights <= SINGLE_GPU_WEIGHT_SHARE * gpu_memory_bytes[index] or ":" in device:
        return Placement(f"cuda:{index}")
    gb = weights / 2**30
    if len(gpu_memory_bytes) == 1:
        raise ConfigError(f"the model's weights take {gb:.1f} GiB in {dtype}, more than {SINGLE_GPU_WEIGHT_SHARE:.0%} "
                          f"of the one GPU's {gpu_memory_bytes[0] / 2**30:.0f} GiB; use a smaller dtype or a node "
                          "with more GPUs")
    if not accelerate_available:
        raise ConfigError(f"the model's weights take {gb:.1f} GiB in {dtype}, too much for one GPU "
                          f"({gpu_memory_bytes[index] / 2**30:.0f} GiB); spreading it over the node's "
                          f"{len(gpu_memory_bytes)} GPUs (device_map='auto') needs the `accelerate` package: "
                          "pip install accelerate")
    if weights > 0.9 * sum(gpu_memory_bytes):
        raise ConfigError(f"the model's weights take {gb:.1f} GiB in {dtype}, more than the node's "
                          f"{sum(gpu_memory_bytes) / 2**30:.0f} GiB of GPU memory")
    return Placement("cuda:0", device_map="auto")


def _gpu_memory() -> list[int]:
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())]


# ------------------------------------------------------------------------------------------------ loading


@dataclass
class LoadedHF:
    """A loaded Hugging Face model with its tokenizer (None when the source has none) and provenance."""

    model: nn.Module
    tokenizer: Any
    source: ModelSource
    dtype: str
    num_params: int
    placement: Placement
    commit: str | None
    seconds: float

    @property
    def device(self) -> torch.device:
        return model_device(self.model)


def _hub_offline() -> bool:
    from tinymem.data.corpora import hub_offline_mode

    return hub_offline_mode()


def _resolve_files_only(source: ModelSource) -> bool:
    """`local_files_only` for this source; a hub name without network is a clear error, raised in seconds.

    Hub clients retry for about a minute when the network is down, so reachability is probed first (3 s);
    when the hub is unreachable or HF_HUB_OFFLINE is set, the model must already be in the local cache.
    """
    if source.local is not None:
        return True
    if _hub_offline():
        return True
    from tinymem.data.corpora import hub_reachable

    return not hub_reachable()


def _not_available(source: ModelSource, files_only: bool, err: Exception) -> TinyMemError:
    if source.local is not None:
        return TinyMemError(f"could not load model directory {str(source.local)!r}: {type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else ''}")
    if files_only:
        why = "HF_HUB_OFFLINE is set" if _hub_offline() else "the Hugging Face hub is unreachable from here"
        return TinyMemError(f"model {source.text!r} is not in the local Hugging Face cache and {why}; download it on "
                            "a machine with network (or copy its directory here and use hf:/path/to/dir)")
    return TinyMemError(f"could not load model {source.text!r} from the hub: {type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''}")


def _from_pretrained_kwargs(source: ModelSource, files_only: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"local_files_only": files_only}
    if source.revision:
        kwargs["revision"] = source.revision
    return kwargs


def count_params_meta(config: Any) -> int:
    """Parameters of the model a config describes, counted on the meta device (no memory, no weights read)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def load_config(source: ModelSource) -> tuple[Any, bool]:
    """(transformers config, local_files_only) of a source; unavailable sources are a TinyMemError."""
    from transformers import AutoConfig

    files_only = _resolve_files_only(source)
    name = str(source.local) if source.local is not None else source.name
    try:
        cfg = AutoConfig.from_pretrained(name, **_from_pretrained_kwargs(source, files_only))
    except Exception as e:  # OSError for missing files/cache, HTTP errors, bad JSON: one line each
        raise _not_available(source, files_only, e) from None
    return cfg, files_only


def load_tokenizer(source: ModelSource, files_only: bool = True) -> Any:
    """The source's `AutoTokenizer`, or None if it ships none (token-id files then still work)."""
    from transformers import AutoTokenizer

    name = str(source.local) if source.local is not None else source.name
    try:
        return AutoTokenizer.from_pretrained(name, **_from_pretrained_kwargs(source, files_only))
    except Exception:  # no tokenizer files: only text inputs need one, and they say so
        return None


def load_hf_model(source: ModelSource | str, *, dtype: str = "float32", device: str = "auto",
                  require_adapter: bool = False) -> LoadedHF:
    """Load a causal LM + tokenizer from `source` in `dtype` on `device` (see `plan_placement`), eval mode."""
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    src = parse_source(source) if isinstance(source, str) else source
    torch_dtype = parse_dtype(dtype)
    dname = dtype_name(torch_dtype)
    dev = parse_device(device)
    cfg, files_only = load_config(src)
    if require_adapter:
        from tinymem.adapter import FAMILIES

        family = getattr(cfg, "model_type", "?")
        if family not in FAMILIES:
            raise ConfigError(f"model {src.text!r} is a {family!r} model; the mitigation methods support "
                              f"{list(FAMILIES)}")
    num_params = count_params_meta(cfg)
    gpus = _gpu_memory() if dev != "cpu" else []
    placement = plan_placement(num_params, dname, dev, gpus, importlib.util.find_spec("accelerate") is not None)
    name = str(src.local) if src.local is not None else src.name
    kwargs = _from_pretrained_kwargs(src, files_only)
    kwargs["dtype"] = torch_dtype
    if placement.spread:
        kwargs["device_map"] = placement.device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except Exception as e:
        raise _not_available(src, files_only, e) from None
    if not placement.spread:
        model = model.to(placement.device)
    model.eval()
    tokenizer = load_tokenizer(src, files_only)
    commit = getattr(model.config, "_commit_hash", None) or getattr(cfg, "_commit_hash", None)
    return LoadedHF(model=model, tokenizer=tokenizer, source=src, dtype=dname, num_params=num_params,
                    placement=placement, commit=commit, seconds=time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------------ trial base


def local_fingerprint(directory: Path) -> str:
    """A cheap identity of a local model directory: name, size and mtime of its files (not their bytes, which
    for a 6.9B model would take a minute to hash); a model rewritten in place gets a new fingerprint."""
    entries = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in directory.iterdir() if p.is_file())
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


def base_key(source: ModelSource, commit: str | None, dtype: str, data_identity: dict[str, Any]) -> str:
    """Cache key of a base evaluation: model source + revision (+ resolved commit, or the local directory's
    fingerprint) + dtype + the memorized/retain files' sha256 and the metric settings."""
    ident = {"v": KEY_VERSION, "source": source.name if source.local is None else str(source.local),
             "revision": source.revision, "commit": commit, "dtype": dtype, "data": data_identity}
    if source.local is not None:
        ident["fingerprint"] = local_fingerprint(source.local)
    return "hf-" + hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class HFBase:
    """What `run_trial` needs of a Hugging Face base model: the model, its verbatim bundle, the cache key."""

    loaded: LoadedHF
    bundle: Any  # DataBundle
    key: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> nn.Module:
        return self.loaded.model

    @property
    def device(self) -> torch.device:
        return self.loaded.device


def load_trial_base(source: HFSourceOptions | Mapping[str, Any], device: str = "auto",
                    require_forget: bool = True) -> HFBase:
    """Load `source.model` (hf:...) and build its verbatim bundle from the source's files. A mapping (a
    trial-config dict: its `model` and option keys) is read with `HFSourceOptions.from_object`."""
    from tinymem.memfile import bundle_from_files, check_data_options

    opts = source if isinstance(source, HFSourceOptions) else HFSourceOptions.from_object(dict(source))
    if not opts.model:
        raise ConfigError("load_trial_base needs a Hugging Face model (model: hf:NAME_OR_PATH[@REVISION])")
    data = opts.data_options()
    check_data_options(**data, require_forget=require_forget)  # fail before a large model loads
    loaded = load_hf_model(str(opts.model), dtype=str(opts.dtype or "float32"), device=device,
                           require_adapter=require_forget)
    vocab = int(loaded.model.get_input_embeddings().weight.shape[0])
    bundle = bundle_from_files(loaded.tokenizer, vocab_size=vocab, model_config=loaded.model.config,
                               require_forget=require_forget, **data)
    bundle.meta["model_source"] = loaded.source.text
    bundle.meta["model_commit"] = loaded.commit
    bundle.meta["dtype"] = loaded.dtype
    key = base_key(loaded.source, loaded.commit, loaded.dtype, bundle.meta["data_identity"])
    return HFBase(loaded=loaded, bundle=bundle, key=key,
                  info={"num_params": loaded.num_params, "placement": loaded.placement.device_map
                        or loaded.placement.device, "seconds_load": loaded.seconds})
