"""Memorized-sequence and retain files for production models, and the `verbatim` data bundle built from them.

File formats (chosen by the file's extension), each holding one sequence per row:

- `.jsonl`: one JSON value per line: a list of token ids `[12, 7, ...]`, a string (text), or an object with
  a token field (`tokens`, `input_ids`, `token_ids`, `ids`) or a `text` field. Blank lines are skipped.
- `.parquet`: a column named like the token fields above (lists of ids) or `text` (strings).
- `.safetensors`: an integer tensor `tokens` (or the file's only tensor), [rows, length] or [length].
- `.txt` (retain / perplexity data only): the whole file is one text stream.
- `.pt` is refused: convert it first with `tinymem convert-memorized IN.pt OUT.safetensors`, which reads it with
  `torch.load(weights_only=True)` (never unpickles arbitrary objects), e.g. MemPi's `pile_bs0-100-dedup.pt`.

Text is tokenized with the model's own tokenizer, without special tokens (the memorized text is a slice of the
training stream, not a new document).

Metric presets (`METRIC_PRESETS`): `pythia` is the paper's Pythia setting: 80-token
sequences, a 32-token prompt, memorized iff greedy decoding reproduces the next 40 tokens exactly (the last 8
tokens are not compared). `prompt_len`, `k` and `seq_len` override any preset. Forget rows are cut to `seq_len`
tokens and must hold at least `prompt_len + k`; retain/test rows longer than `seq_len` are split into
`seq_len`-token chunks.

Decoding is plain greedy argmax over exactly k tokens (no stop at end-of-text, whose token is ordinary text in
the Pile). The paper generates with `min_length` = the full length, which forbids end-of-text instead; the two
differ only on rows whose continuation contains that token (docs/departures.md).

The bundle (`kind: verbatim`): `forget` (the memorized sequences), `forget_clean` (= `forget`: the target is the
text itself), `retain` (clean data for the methods that balance forgetting against it) and `test/main` (the
perplexity set). Given only one of retain/test, it is split as the paper split its random Pile batch:
first half perplexity, second half retain.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tinymem.data.bundle import DataBundle
from tinymem.errors import ConfigError, TinyMemError
from tinymem.util import atomic_path, sha256_file

TOKEN_FIELDS = ("tokens", "input_ids", "token_ids", "ids")
TEXT_FIELDS = ("text",)
ROW_FORMATS = (".jsonl", ".parquet", ".safetensors")
STREAM_FORMATS = (".txt",)
MEMFILE_VERSION = 1


@dataclass(frozen=True)
class MetricPreset:
    """Sequence length, prompt length and extracted length k of a memorization metric."""

    prompt_len: int
    k: int
    seq_len: int
    about: str = ""


METRIC_PRESETS: dict[str, MetricPreset] = {
    "pythia": MetricPreset(32, 40, 80, "the paper's Pythia setting: 80-token rows, 32-token prompt, next 40 exact"),
    "biderman": MetricPreset(32, 32, 64, "Biderman et al. 2023: 32-token prompt, next 32 exact"),
    "carlini": MetricPreset(50, 50, 100, "Carlini et al. 2023: 50-token prompt, next 50 exact"),
}
DEFAULT_METRIC_PRESET = "pythia"


def _positive(name: str, value: Any) -> int:
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r} is not an integer") from None
    if v < 1 or v != float(value):
        raise ConfigError(f"{name}={value!r} is out of range; allowed: an integer >= 1")
    return v


def resolve_metric(preset: str | None = None, prompt_len: int | None = None, k: int | None = None,
                   seq_len: int | None = None) -> MetricPreset:
    """The preset (default `pythia`) with any of prompt_len / k / seq_len overridden.

    When prompt_len + k outgrow the preset's seq_len and no seq_len is given, seq_len grows to fit.
    """
    name = preset or DEFAULT_METRIC_PRESET
    if name not in METRIC_PRESETS:
        raise ConfigError(f"unknown metric preset {name!r}; allowed: {sorted(METRIC_PRESETS)}")
    base = METRIC_PRESETS[name]
    p = _positive("prompt_len", prompt_len) if prompt_len is not None else base.prompt_len
    kk = _positive("k", k) if k is not None else base.k
    if seq_len is not None:
        s = _positive("seq_len", seq_len)
        if s < p + kk:
            raise ConfigError(f"seq_len={s} is too short for prompt_len={p} + k={kk}; allowed: >= {p + kk}")
    else:
        s = max(base.seq_len, p + kk)
    return MetricPreset(p, kk, s, base.about if (p, kk, s) == (base.prompt_len, base.k, base.seq_len) else "custom")


# ------------------------------------------------------------------------------------------------ reading


@dataclass
class RawRows:
    """Rows as read from a file: token-id lists (`kind="ids"`) or strings (`kind="text"`)."""

    kind: str
    rows: list[Any]
    stream: bool = False  # one running text (a .txt file), to be chunked rather than kept as rows


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def _field(keys: list[str], path: Path) -> tuple[str, str]:
    """(field name, 'ids' | 'text') of a record/table with these keys."""
    for f in TOKEN_FIELDS:
        if f in keys:
            return f, "ids"
    for f in TEXT_FIELDS:
        if f in keys:
            return f, "text"
    raise ConfigError(f"{path}: found fields {sorted(keys)}; expected one of {list(TOKEN_FIELDS + TEXT_FIELDS)}")


def _read_jsonl(path: Path) -> RawRows:
    kinds: set[str] = set()
    rows: list[Any] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if isinstance(value, dict):
                name, kind = _field(list(value), Path(f"{path}:{lineno}"))
                value = value[name]
            elif isinstance(value, list):
                kind = "ids"
            elif isinstance(value, str):
                kind = "text"
            else:
                raise ConfigError(f"{path}:{lineno}: a row must be a list of token ids, a string or an object with "
                                  f"one of {list(TOKEN_FIELDS + TEXT_FIELDS)}; got {type(value).__name__}")
            if kind == "ids" and not isinstance(value, list):
                raise ConfigError(f"{path}:{lineno}: token ids must be a list, got {type(value).__name__}")
            if kind == "text" and not isinstance(value, str):
                raise ConfigError(f"{path}:{lineno}: text must be a string, got {type(value).__name__}")
            kinds.add(kind)
            rows.append(value)
    if len(kinds) > 1:
        raise ConfigError(f"{path}: mixes token-id rows and text rows; use one kind per file")
    return RawRows(kinds.pop() if kinds else "ids", rows)


def _read_parquet(path: Path) -> RawRows:
    import pandas as pd

    try:
        table = pd.read_parquet(path)
    except Exception as e:  # not parquet, damaged, missing engine
        raise ConfigError(f"{path}: cannot read as Parquet: {type(e).__name__}: {e}") from None
    name, kind = _field([str(c) for c in table.columns], path)
    col = table[name]
    if kind == "text":
        return RawRows("text", [str(v) for v in col.tolist()])
    return RawRows("ids", [list(v.tolist() if hasattr(v, "tolist") else v) for v in col.tolist()])


def read_safetensors_tokens(path: Path) -> tuple[torch.Tensor, dict[str, str]]:
    """The token tensor of a safetensors file (`tokens`, or its only tensor) and the file's metadata."""
    try:
        with safe_open(str(path), framework="pt") as f:
            names = list(f.keys())
            meta = dict(f.metadata() or {})
            if "tokens" in names:
                name = "tokens"
            elif len(names) == 1:
                name = names[0]
            else:
                raise ConfigError(f"{path}: holds tensors {names}; expected one named 'tokens' (or a single tensor)")
            t = f.get_tensor(name)
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"{path}: cannot read as safetensors: {type(e).__name__}: {e}") from None
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ConfigError(f"{path}: tensor has dtype {t.dtype}; token ids must be an integer dtype")
    if t.dim() not in (1, 2):
        raise ConfigError(f"{path}: tensor has shape {tuple(t.shape)}; allowed: [rows, length] or [length]")
    return (t[None] if t.dim() == 1 else t).long(), meta


def read_rows(path: str | os.PathLike, *, allow_stream: bool = False) -> RawRows:
    """Read a memorized-sequence / retain file (see the module docstring for the formats)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"file {str(p)!r} does not exist")
    ext = _suffix(p)
    if ext == ".pt":
        raise ConfigError(f"{p}: .pt files are not read directly (unpickling is unsafe); convert it first: "
                          f"tinymem convert-memorized {p} {p.with_suffix('.safetensors')}")
    if ext == ".jsonl":
        return _read_jsonl(p)
    if ext == ".parquet":
        return _read_parquet(p)
    if ext == ".safetensors":
        return RawRows("ids", read_safetensors_tokens(p)[0].tolist())
    if ext in STREAM_FORMATS and allow_stream:
        return RawRows("text", [p.read_text(encoding="utf-8")], stream=True)
    allowed = ROW_FORMATS + (STREAM_FORMATS if allow_stream else ())
    raise ConfigError(f"{p}: unsupported file type {ext or '(none)'!r}; allowed: {list(allowed)}")


def tokenize(raw: RawRows, tokenizer: Any, path: str | os.PathLike) -> list[list[int]]:
    """Token-id rows of `raw`: id rows as they are; text through the model's tokenizer (no special tokens)."""
    if raw.kind == "ids":
        return raw.rows
    if tokenizer is None:
        raise ConfigError(f"{path} holds text, but the model has no tokenizer; give token ids instead")
    return [list(ids) for ids in tokenizer(raw.rows, add_special_tokens=False)["input_ids"]]


def validate_ids(rows: list[list[int]], vocab_size: int | None, path: str | os.PathLike) -> None:
    """Every id an int in [0, vocab_size); the first bad one is named with its row."""
    for i, row in enumerate(rows):
        for v in row:
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"{path}: row {i} holds {v!r}; token ids must be integers")
            if v < 0 or (vocab_size is not None and v >= vocab_size):
                raise ConfigError(f"{path}: row {i} holds token id {v}, outside the model's vocabulary "
                                  f"[0, {vocab_size})")


def load_token_rows(path: str | os.PathLike, tokenizer: Any = None, vocab_size: int | None = None,
                    allow_stream: bool = False) -> tuple[list[list[int]], bool]:
    """(token-id rows, is one stream) of a file, tokenized and validated against the vocabulary."""
    raw = read_rows(path, allow_stream=allow_stream)
    rows = tokenize(raw, tokenizer, path)
    if raw.kind == "ids":
        validate_ids(rows, vocab_size, path)
    if not rows:
        raise ConfigError(f"{path}: holds no rows")
    return rows, raw.stream


# ------------------------------------------------------------------------------------------------ writing


def pad_rows(rows: list[list[int]], pad_id: int, length: int | None = None) -> torch.Tensor:
    """[rows, length] int64, right-padded with `pad_id` (length default: the longest row)."""
    n = max((len(r) for r in rows), default=0) if length is None else length
    out = torch.full((len(rows), n), int(pad_id), dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.as_tensor(r[:n], dtype=torch.long)
    return out


def write_token_rows(path: str | os.PathLike, rows: torch.Tensor | list[list[int]],
                     metadata: dict[str, str] | None = None) -> Path:
    """Write token rows as `.safetensors` (tensor `tokens`, rows must be equal length), `.jsonl` or `.parquet`."""
    p = Path(path).expanduser()
    ext = _suffix(p)
    lists = rows.tolist() if isinstance(rows, torch.Tensor) else [list(map(int, r)) for r in rows]
    if ext not in ROW_FORMATS:
        raise ConfigError(f"{p}: unsupported output type {ext or '(none)'!r}; allowed: {list(ROW_FORMATS)}")
    if ext == ".safetensors" and len({len(r) for r in lists}) > 1:
        raise ConfigError(f"{p}: rows have different lengths; a safetensors file needs equal-length rows "
                          "(write .jsonl or .parquet instead)")
    with atomic_path(p) as tmp:  # a reader never sees half a file
        if ext == ".safetensors":
            t = torch.as_tensor(lists, dtype=torch.long).reshape(len(lists), -1)
            save_file({"tokens": t.contiguous()}, str(tmp),
                      metadata={k: str(v) for k, v in (metadata or {}).items()})
        elif ext == ".jsonl":
            tmp.write_text("".join(json.dumps({"tokens": r}) + "\n" for r in lists), encoding="utf-8")
        else:
            import pandas as pd

            pd.DataFrame({"tokens": lists}).to_parquet(tmp, index=False)
    return p


def convert_pt(in_path: str | os.PathLike, out_path: str | os.PathLike, row_len: int | None = None
               ) -> dict[str, Any]:
    """Convert a torch `.pt` token file (MemPi's format) to the safe formats; returns a summary.

    Loaded with `torch.load(weights_only=True)`: tensors, lists and dicts only, never arbitrary pickled objects.
    Accepts a tensor, a list/tuple of equal-length 1-D tensors, or a dict with a `tokens` / single tensor entry.
    `row_len` re-cuts the flattened ids into rows of that length (the paper cut its random Pile batch, rows
    0-2039, into 80-token rows); a remainder shorter than `row_len` is dropped and reported.
    """
    src = Path(in_path).expanduser()
    if not src.is_file():
        raise ConfigError(f"file {str(src)!r} does not exist")
    try:
        obj = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:  # pickled classes that weights_only refuses, or not a torch file at all
        raise TinyMemError(f"{src}: cannot load with torch.load(weights_only=True) ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}); only tensors, lists and dicts are "
                           "accepted, tinymem never unpickles arbitrary objects") from None
    if isinstance(obj, dict):
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if "tokens" in tensors:
            obj = tensors["tokens"]
        elif len(tensors) == 1:
            obj = next(iter(tensors.values()))
        else:
            raise ConfigError(f"{src}: holds a dict with tensors {sorted(tensors)}; expected 'tokens' or one tensor")
    if isinstance(obj, (list, tuple)):
        if not obj or not all(isinstance(t, torch.Tensor) and t.dim() == 1 for t in obj):
            raise ConfigError(f"{src}: holds a list; expected a list of 1-D token tensors")
        if len({t.numel() for t in obj}) > 1:
            raise ConfigError(f"{src}: holds 1-D tensors of different lengths; expected equal-length rows")
        obj = torch.stack(list(obj))
    if not isinstance(obj, torch.Tensor):
        raise ConfigError(f"{src}: holds a {type(obj).__name__}; expected a token tensor")
    if obj.is_floating_point() or obj.is_complex() or obj.dtype == torch.bool:
        raise ConfigError(f"{src}: tensor has dtype {obj.dtype}; token ids must be an integer dtype")
    t = obj.long()
    t = t[None] if t.dim() == 1 else t.reshape(t.shape[0], -1) if t.dim() > 2 else t
    dropped = 0
    if row_len is not None:
        n = _positive("row_len", row_len)
        flat = t.flatten()
        rows = flat.numel() // n
        dropped = flat.numel() - rows * n
        if rows == 0:
            raise ConfigError(f"row_len={n} is longer than the file's {flat.numel()} tokens")
        t = flat[: rows * n].view(rows, n)
    if int(t.min()) < 0:
        raise ConfigError(f"{src}: holds negative token ids (min {int(t.min())})")
    meta = {"source": src.name, "source_sha256": sha256_file(src), "converted_by": "tinymem convert-memorized"}
    out = write_token_rows(out_path, t, meta)
    return {"in": str(src), "out": str(out), "rows": int(t.shape[0]), "length": int(t.shape[1]),
            "dropped_tokens": dropped, "max_id": int(t.max())}


# ------------------------------------------------------------------------------------------------ bundle


def cut_forget(rows: list[list[int]], metric: MetricPreset, path: str | os.PathLike) -> list[list[int]]:
    """Forget rows cut to `seq_len`; a row shorter than prompt_len + k cannot be tested and is an error."""
    need = metric.prompt_len + metric.k
    short = [(i, len(r)) for i, r in enumerate(rows) if len(r) < need]
    if short:
        shown = ", ".join(f"row {i}: {n} tokens" for i, n in short[:3])
        raise ConfigError(f"{path}: {len(short)} row(s) are shorter than prompt_len + k = {need} tokens ({shown}"
                          f"{', ...' if len(short) > 3 else ''}); use shorter --prompt-len/--k or longer rows")
    return [r[: metric.seq_len] for r in rows]


def chunk(rows: list[list[int]], seq_len: int, stream: bool = False) -> list[list[int]]:
    """Rows split into `seq_len`-token pieces (a stream is one long row); pieces under 2 tokens are dropped
    (they have no next-token prediction)."""
    if stream:
        rows = [[t for r in rows for t in r]]
    out = []
    for r in rows:
        for s in range(0, len(r), seq_len):
            piece = r[s : s + seq_len]
            if len(piece) >= 2:
                out.append(piece)
    return out


def special_ids(tokenizer: Any, model_config: Any) -> tuple[int, int | None]:
    """(pad_id, model eos_id): the tokenizer's pad token, else the config's, else end-of-text, else 0.

    Padding is masked out of every loss and perplexity, so a pad id that is also a text token (GPT-2 has no pad
    token; its end-of-text doubles as pad) drops that token from them; rows of equal length need no padding.
    """
    def first(*values: Any) -> int | None:
        return next((int(v) for v in values if isinstance(v, int) and not isinstance(v, bool)), None)

    tok_pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
    tok_eos = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
    cfg_pad = getattr(model_config, "pad_token_id", None)
    cfg_eos = getattr(model_config, "eos_token_id", None)
    cfg_eos = cfg_eos[0] if isinstance(cfg_eos, list) and cfg_eos else cfg_eos
    eos = first(tok_eos, cfg_eos)
    pad = first(tok_pad, cfg_pad, eos)
    return (pad if pad is not None else 0), eos


def _tokenizer_text_files(tokenizer: Any) -> dict[str, str]:
    """The tokenizer's files as text, to travel with the bundle (so a saved mitigated model directory is a
    complete Hugging Face directory). Binary files (sentencepiece models) are skipped; tokenizer.json suffices."""
    if tokenizer is None:
        return {}
    import tempfile

    out = {}
    with tempfile.TemporaryDirectory() as d:
        try:
            tokenizer.save_pretrained(d)
        except Exception:  # a tokenizer that cannot save: the model directory still loads, without it
            return {}
        for p in sorted(Path(d).iterdir()):
            if p.is_file():
                try:
                    out[p.name] = p.read_text(encoding="utf-8")
                except UnicodeDecodeError:
                    continue
    return out


def verbatim_bundle(forget: list[list[int]], retain: list[list[int]], test: list[list[int]], *,
                    metric: MetricPreset, pad_id: int, model_eos_id: int | None, vocab_size: int,
                    meta: dict[str, Any] | None = None, files: dict[str, str] | None = None) -> DataBundle:
    """A `verbatim` DataBundle (see the module docstring) from token-id rows."""
    tensors: dict[str, torch.Tensor] = {}
    if forget:
        f = pad_rows(forget, pad_id)
        tensors["forget"] = f
        tensors["forget_clean"] = f.clone()  # separate storage: safetensors refuses shared tensors
    else:  # evaluation without a forget set (perplexity only): empty tensors keep the bundle's shape
        tensors["forget"] = torch.zeros((0, metric.seq_len), dtype=torch.long)
        tensors["forget_clean"] = tensors["forget"].clone()
    tensors["retain"] = pad_rows(retain, pad_id) if retain else torch.zeros((0, metric.seq_len), dtype=torch.long)
    test_names = []
    if test:
        tensors["test/main"] = pad_rows(test, pad_id)
        test_names = ["main"]
    info = {"kind": "verbatim", "task": "verbatim", "prompt_len": metric.prompt_len, "k": metric.k,
            "seq_len": metric.seq_len, "pad_id": int(pad_id), "eos_id": None, "bos_id": None,
            "model_eos_id": model_eos_id, "vocab_size": int(vocab_size), "trigger": None, "test_names": test_names}
    info.update(meta or {})
    return DataBundle(tensors=tensors, meta=info, files=dict(files or {}))


def split_retain_test(retain: list[list[int]] | None, test: list[list[int]] | None
                      ) -> tuple[list[list[int]], list[list[int]]]:
    """Given one set only, its first half is the perplexity (test) set and its second half the retain set."""
    if retain is not None and test is not None:
        return retain, test
    only = retain if retain is not None else test
    if only is None:
        return [], []
    if len(only) < 2:
        raise ConfigError(f"the retain/perplexity data has {len(only)} row(s); splitting it into a perplexity half "
                          "and a retain half needs at least 2 (or give both --retain-file and --test-file)")
    half = len(only) // 2
    return only[half:], only[:half]


def check_data_options(forget_file: str | None = None, retain_file: str | None = None,
                       test_file: str | None = None, metric_preset: str | None = None,
                       prompt_len: int | None = None, k: int | None = None, seq_len: int | None = None,
                       require_forget: bool = True) -> MetricPreset:
    """Cheap checks before a model is loaded: the metric settings, the files a trial needs (a forget file and
    clean data; with `require_forget=False` any one file), and that each file exists with a known type."""
    metric = resolve_metric(metric_preset, prompt_len, k, seq_len)
    if require_forget and not forget_file:
        raise ConfigError("a Hugging Face model needs a memorized-sequence file: forget_file / --forget-file "
                          f"(formats {list(ROW_FORMATS)}; see tinymem find-memorized)")
    if require_forget and not (retain_file or test_file):
        raise ConfigError("a Hugging Face model needs clean data for retain and perplexity: retain_file / "
                          f"--retain-file (and optionally test_file / --test-file), formats "
                          f"{list(ROW_FORMATS + STREAM_FORMATS)}")
    if not (forget_file or retain_file or test_file):
        raise ConfigError("nothing to evaluate: give --forget-file and/or --retain-file / --test-file")
    for path, allowed in ((forget_file, ROW_FORMATS), (retain_file, ROW_FORMATS + STREAM_FORMATS),
                          (test_file, ROW_FORMATS + STREAM_FORMATS)):
        if not path:
            continue
        p = Path(path).expanduser()
        if not p.is_file():
            raise ConfigError(f"file {str(p)!r} does not exist")
        if _suffix(p) == ".pt":
            read_rows(p)  # raises the conversion hint
        if _suffix(p) not in allowed:
            raise ConfigError(f"{p}: unsupported file type {_suffix(p) or '(none)'!r}; allowed: {list(allowed)}")
    return metric


def bundle_from_files(tokenizer: Any, *, vocab_size: int, model_config: Any = None,
                      forget_file: str | None = None, retain_file: str | None = None,
                      test_file: str | None = None, metric_preset: str | None = None,
                      prompt_len: int | None = None, k: int | None = None, seq_len: int | None = None,
                      require_forget: bool = True) -> DataBundle:
    """Read, tokenize and validate the files and build the verbatim bundle (the trial's data)."""
    metric = check_data_options(forget_file, retain_file, test_file, metric_preset, prompt_len, k, seq_len,
                                require_forget)
    pad_id, eos = special_ids(tokenizer, model_config)
    identity: dict[str, Any] = {"v": MEMFILE_VERSION, "prompt_len": metric.prompt_len, "k": metric.k,
                                "seq_len": metric.seq_len, "pad_id": pad_id}
    forget: list[list[int]] = []
    if forget_file:
        rows, _ = load_token_rows(forget_file, tokenizer, vocab_size)
        forget = cut_forget(rows, metric, forget_file)
        identity["forget"] = sha256_file(forget_file)

    def clean(path: str | None, name: str) -> list[list[int]] | None:
        if not path:
            return None
        rows, stream = load_token_rows(path, tokenizer, vocab_size, allow_stream=True)
        identity[name] = sha256_file(path)
        out = chunk(rows, metric.seq_len, stream)
        if not out:
            raise ConfigError(f"{path}: holds no row of 2 or more tokens")
        return out

    same = retain_file and test_file and Path(retain_file).resolve() == Path(test_file).resolve()
    retain, test = split_retain_test(clean(retain_file, "retain"), None if same else clean(test_file, "test"))
    meta = {"data_identity": identity, "metric": {"prompt_len": metric.prompt_len, "k": metric.k,
                                                  "seq_len": metric.seq_len, "preset": metric_preset or
                                                  DEFAULT_METRIC_PRESET},
            "files": {"forget": forget_file, "retain": retain_file, "test": test_file}}
    return verbatim_bundle(forget, retain, test, metric=metric, pad_id=pad_id, model_eos_id=eos,
                           vocab_size=vocab_size, meta=meta, files=_tokenizer_text_files(tokenizer))


# ------------------------------------------------------------------------------------------------ selection


def percent(mask: torch.Tensor) -> float:
    return 100.0 * float(mask.sum()) / mask.numel() if mask.numel() else math.nan
