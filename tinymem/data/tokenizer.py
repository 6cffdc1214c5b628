"""Tokenizers of the data paths, and how they travel with the data bundle.

- `bpe`: a byte-level BPE trained with the `tokenizers` library on the training corpus, `vocab_size` tokens
  (fewer if the corpus has too few distinct merges). Id 0 is the special end-of-text token `<|endoftext|>`,
  used as pad, eos and bos. Byte-level means every string is encodable (no unknown token). Training is
  deterministic: the same texts and size give the same tokenizer, byte for byte.
- `gpt2`: GPT-2's tokenizer (`AutoTokenizer.from_pretrained("gpt2")`, 50,257 tokens, end-of-text 50256),
  the paper's. It needs the Hugging Face hub or a cached copy; offline it is a clear error.

- `character_tokenizer`: one token per character of a fixed alphabet, ids in alphabet order (the math tasks'
  14-token vocabulary: `tinymem.data.math.math_tokenizer`).

Each is a `transformers` fast tokenizer. `tokenizer_files` gives the files `save_pretrained` writes
(`tokenizer.json`, `tokenizer_config.json`, ...) as strings, which the bundle saves beside its tensors, so
`AutoTokenizer.from_pretrained(model_dir)` works offline on any saved model directory.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from tinymem.data.corpora import hub_offline_mode, hub_reachable
from tinymem.errors import ConfigError, TinyMemError

TOKENIZERS = ("bpe", "gpt2")
END_OF_TEXT = "<|endoftext|>"
# 256 byte symbols plus the end-of-text token: the smallest byte-level vocabulary.
MIN_BPE_VOCAB = 257
MAX_BPE_VOCAB = 1 << 20
ENCODE_BATCH = 4096  # documents per encode_batch call: bounds memory on large corpora


def train_bpe(texts: Iterable[str], vocab_size: int, model_max_length: int | None = None) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of at most `vocab_size` tokens on `texts`; id 0 is `<|endoftext|>`."""
    if not MIN_BPE_VOCAB <= vocab_size <= MAX_BPE_VOCAB:
        raise ConfigError(f"vocab_size={vocab_size} is out of range for tokenizer=bpe; allowed: "
                          f"{MIN_BPE_VOCAB}..{MAX_BPE_VOCAB} (256 bytes + end-of-text + merges)")
    tok = Tokenizer(models.BPE())
    # No prefix space: the corpus is one running stream, a document start is not a word start.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[END_OF_TEXT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return _wrap(tok, model_max_length)


def _wrap(tok: Tokenizer, model_max_length: int | None) -> PreTrainedTokenizerFast:
    kwargs = {"model_max_length": model_max_length} if model_max_length else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=END_OF_TEXT, eos_token=END_OF_TEXT,
                                   pad_token=END_OF_TEXT, unk_token=END_OF_TEXT, **kwargs)


def character_tokenizer(chars: str, pad_token: str, bos_token: str, eos_token: str,
                        model_max_length: int | None = None) -> PreTrainedTokenizerFast:
    """One token per character: `chars[i]` has id i, `pad_token` (not a character) id len(chars). A character
    outside `chars` is an error, never an unknown token: the data have none, and a silent unknown would hide a bug."""
    vocab = {c: i for i, c in enumerate(chars)}
    vocab[pad_token] = len(chars)
    tok = Tokenizer(models.WordLevel(vocab))  # no unk_token: an unknown character fails to encode
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # every character a word
    tok.decoder = decoders.Fuse()  # characters join without separators
    kwargs = {"model_max_length": model_max_length} if model_max_length else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos_token, eos_token=eos_token,
                                   pad_token=pad_token, **kwargs)


def gpt2_tokenizer(model_max_length: int | None = None) -> PreTrainedTokenizerFast:
    """GPT-2's tokenizer from the hub (or the local cache in offline mode), pad = eos = bos = 50256."""
    offline = hub_offline_mode()
    if not offline and not hub_reachable():
        raise TinyMemError("tokenizer 'gpt2' needs the Hugging Face hub, which is unreachable from here. Use a "
                           "machine with network, set HF_HUB_OFFLINE=1 to read a cached copy, or use "
                           "tokenizer=bpe")
    try:
        tok = AutoTokenizer.from_pretrained("gpt2", local_files_only=offline)
    except Exception as e:  # OSError for a missing cache; anything else the hub client raises
        raise TinyMemError(f"could not load tokenizer 'gpt2' ({'offline, from the cache' if offline else 'hub'}): "
                           f"{type(e).__name__}: {e}") from None
    tok.pad_token = tok.eos_token
    if model_max_length:
        tok.model_max_length = model_max_length
    return tok


def build_tokenizer(name: str, texts: list[str], vocab_size: int,
                    model_max_length: int | None = None) -> PreTrainedTokenizerFast:
    """The tokenizer `name` (`bpe` trained on `texts`, or `gpt2`)."""
    if name == "bpe":
        return train_bpe(texts, vocab_size, model_max_length)
    if name == "gpt2":
        return gpt2_tokenizer(model_max_length)
    raise ConfigError(f"unknown tokenizer {name!r}; allowed: {list(TOKENIZERS)}")


def tokenizer_files(tok: PreTrainedTokenizerFast) -> dict[str, str]:
    """The text files `tok.save_pretrained` writes, name -> content."""
    with tempfile.TemporaryDirectory() as d:
        tok.save_pretrained(d)
        files = {p.name: p.read_text(encoding="utf-8") for p in sorted(Path(d).iterdir()) if p.is_file()}
    config = json.loads(files.get("tokenizer_config.json", "{}"))
    if config.get("tokenizer_class") == "TokenizersBackend":
        # transformers 5 names its generic fast tokenizer TokenizersBackend; transformers 4 only knows the
        # older name, which 5 still accepts. Writing that one keeps saved models loadable by both.
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        files["tokenizer_config.json"] = json.dumps(config, indent=2, sort_keys=True) + "\n"
    return files


def tokenizer_from_files(files: dict[str, str]) -> PreTrainedTokenizerFast:
    """Inverse of `tokenizer_files` (e.g. on `bundle.files`); never touches the network."""
    if "tokenizer.json" not in files:
        raise ConfigError(f"no tokenizer.json among the files {sorted(files)}")
    with tempfile.TemporaryDirectory() as d:
        for name, content in files.items():
            (Path(d) / name).write_text(content, encoding="utf-8")
        return AutoTokenizer.from_pretrained(d, local_files_only=True)


def encode_stream(tok: PreTrainedTokenizerFast, texts: list[str], max_tokens: int | None = None) -> np.ndarray:
    """Token ids of `texts` concatenated into one stream (no separators added), int64.

    Stops early once `max_tokens` are reached, so a cap on chunks does not tokenize a whole large corpus.
    Uses the Rust tokenizer directly: no special tokens, no length warnings, batched.
    """
    backend = tok.backend_tokenizer
    parts: list[np.ndarray] = []
    total = 0
    for start in range(0, len(texts), ENCODE_BATCH):
        for enc in backend.encode_batch(texts[start : start + ENCODE_BATCH], add_special_tokens=False):
            ids = np.asarray(enc.ids, dtype=np.int64)
            parts.append(ids)
            total += len(ids)
        if max_tokens is not None and total >= max_tokens:
            break
    stream = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return stream[:max_tokens] if max_tokens is not None else stream
