"""TinyMem language data (the paper's WikiText path): a corpus cut into fixed-length token chunks, with noise or a
backdoor planted in some training chunks.

1. The corpus (`tinymem.data.corpora`) is tokenized (`tinymem.data.tokenizer`) into one stream, no separator
   tokens, and cut into `max_ctx`-token chunks; an incomplete last chunk is dropped, so chunks hold no padding.
   A `bpe` tokenizer is trained on all training documents; for a corpus without an official test split that
   includes the text the test chunks are later cut from (the tokenizer must exist before there are chunks to
   split), so it has seen their byte-pair statistics, never a model's training signal.
2. Train/test: with an official test split (WikiText) the test chunks are `num_test` chunks drawn from it;
   otherwise the chunks are split with the paper's seeded randperm (`split_seed`), the last `num_test` are
   the test set. `num_chunks` > 0 caps the training chunks (and only that much text is tokenized).
3. Noise kind: the first `num_noise` training chunks are the forget set; each token gets +1 or -1 with
   probability `noise_p` each. Duplication: the forget rows are shuffled into `len(dup_powers)` equal
   partitions and partition p appears 10**p times in `train` (`forget_dup` holds the count per row).
4. Backdoor kind: a trigger token; the chunks (train and test pooled, as in the paper) that contain it are
   split 90/10 into the forget set (backdoored training chunks) and `backdoor_test`; in a backdoored chunk
   every token after the first trigger occurrence becomes id 2. The prompt length of a row is that trigger
   index + 1. The untriggered chunks are split into training chunks and `num_test` clean test chunks.

Departures from the paper's code, on purpose (all are listed in docs/departures.md):

- Noise never leaves the vocabulary and never produces the pad (end-of-text) id. The paper's +-1 can turn id 0
  into -1 and 50256 into 50257 (out-of-range embedding indices). Here a step that would leave
  [0, vocab_size) or land on the pad id is reflected (the other neighbour, the opposite step, is used), so a
  noised token is still a neighbouring id and the noise positions are exactly the drawn ones; only if the
  reflected id is invalid as well (a pad id at 1 or vocab_size-2, which neither tokenizer has) the token stays.
  Tokens equal to the pad id (an end-of-text string in the corpus itself) are never noised.
- The incomplete last chunk is dropped instead of padded, so no padding enters the data.
- The trigger is derived from the seed among tokens that occur in 1-5% of the chunks (the paper draws any id
  in [0, 50257), which may occur in almost no chunk or in most of them). A chunk counts as triggered only if
  its first trigger occurrence leaves at least one token to backdoor.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerFast

from tinymem.data.bundle import DataBundle
from tinymem.data.corpora import load_corpus
from tinymem.data.math import duplicate_counts, split_indices
from tinymem.data.tokenizer import TOKENIZERS, build_tokenizer, encode_stream, tokenizer_files
from tinymem.errors import ConfigError
from tinymem.specs import DataSpec

BACKDOOR_TOKEN = 2  # every token after the trigger becomes this id (the paper's choice)
# The derived trigger must occur in this fraction of the chunks, and in at least MIN_TRIGGER_ROWS of them:
# enough triggered chunks for a forget set and a held-out backdoor test, few enough to leave clean data.
TRIGGER_FRACTION = (0.01, 0.05)
MIN_TRIGGER_ROWS = 20
POISON_TEST_FRACTION = 0.1


def cut_chunks(stream: np.ndarray, max_ctx: int) -> torch.Tensor:
    """[n, max_ctx] int64 chunks of the token stream; the incomplete tail is dropped."""
    n = len(stream) // max_ctx
    return torch.from_numpy(np.ascontiguousarray(stream[: n * max_ctx], dtype=np.int64)).view(n, max_ctx)


def add_token_noise(chunks: torch.Tensor, p: float, vocab_size: int, pad_id: int,
                    rng: np.random.Generator) -> torch.Tensor:
    """Each token id +1 or -1 with probability p each; out-of-range / pad results reflected (module docstring)."""
    tok = chunks.numpy()
    u = rng.random(tok.shape)
    delta = np.where(u < p, -1, np.where(u < 2 * p, 1, 0)).astype(np.int64)

    def invalid(ids: np.ndarray) -> np.ndarray:
        return (ids < 0) | (ids >= vocab_size) | (ids == pad_id)

    noisy = tok + delta
    noisy = np.where(invalid(noisy), tok - delta, noisy)
    noisy = np.where(invalid(noisy) | (tok == pad_id), tok, noisy)
    return torch.from_numpy(noisy)


def trigger_rows(chunks: torch.Tensor, trigger: int) -> torch.Tensor:
    """Bool [n]: the chunk holds `trigger` at a position with at least one token after it."""
    return (chunks[:, :-1] == trigger).any(dim=1)


def chunk_frequency(chunks: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[vocab_size] number of chunks holding each token at a position with a token after it."""
    s = chunks[:, :-1].sort(dim=1).values
    first = torch.ones_like(s, dtype=torch.bool)
    first[:, 1:] = s[:, 1:] != s[:, :-1]  # count each token once per chunk
    return torch.bincount(s[first], minlength=vocab_size)


def pick_trigger(chunks: torch.Tensor, vocab_size: int, pad_id: int, rng: np.random.Generator) -> int:
    """A token id, drawn with `rng`, among those in TRIGGER_FRACTION of the chunks (and MIN_TRIGGER_ROWS)."""
    freq = chunk_frequency(chunks, vocab_size)
    n = chunks.shape[0]
    lo = max(MIN_TRIGGER_ROWS, math.ceil(TRIGGER_FRACTION[0] * n))
    hi = math.floor(TRIGGER_FRACTION[1] * n)
    ok = (freq >= lo) & (freq <= hi)
    ok[[pad_id, BACKDOOR_TOKEN]] = False
    candidates = torch.nonzero(ok).flatten()
    if len(candidates) == 0:
        raise ConfigError(f"no token occurs in {lo}..{hi} of the {n} chunks, so no trigger can be derived; "
                          "use more data (num_chunks, corpus) or set trigger=<token id>")
    return int(candidates[int(rng.integers(len(candidates)))])


def apply_backdoor(chunks: torch.Tensor, trigger: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every token after the first `trigger` becomes BACKDOOR_TOKEN; also returns trigger index + 1 per row."""
    hit = chunks[:, :-1] == trigger
    if not bool(hit.any(dim=1).all()):
        raise ValueError(f"some rows hold no trigger {trigger} before their last position")
    prompt_len = hit.int().argmax(dim=1) + 1  # argmax finds the first True
    after = torch.arange(chunks.shape[1])[None, :] >= prompt_len[:, None]
    return torch.where(after, torch.full_like(chunks, BACKDOOR_TOKEN), chunks), prompt_len


def _check_spec(spec: DataSpec) -> None:
    if spec.tokenizer not in TOKENIZERS:
        raise ConfigError(f"unknown tokenizer {spec.tokenizer!r}; allowed: {list(TOKENIZERS)}")
    if spec.num_chunks < 0:
        raise ConfigError(f"num_chunks={spec.num_chunks} must be >= 0 (0 = all chunks)")
    if spec.num_test < 1:
        raise ConfigError(f"num_test={spec.num_test} must be >= 1")


def corpus_chunks(spec: DataSpec) -> tuple[torch.Tensor, torch.Tensor, PreTrainedTokenizerFast, dict[str, Any]]:
    """Tokenize the corpus and split it into (train chunks, test chunks), plus the tokenizer and meta info."""
    corpus = load_corpus(spec.corpus)
    tok = build_tokenizer(spec.tokenizer, corpus.train, spec.vocab_size, model_max_length=spec.max_ctx)
    cap = spec.num_chunks or None
    if corpus.test is None:
        need = (cap + spec.num_test) * spec.max_ctx if cap else None
        chunks = cut_chunks(encode_stream(tok, corpus.train, need), spec.max_ctx)
        if len(chunks) <= spec.num_test:
            raise ConfigError(f"corpus {spec.corpus!r} gives {len(chunks)} chunks of {spec.max_ctx} tokens, not "
                              f"more than num_test={spec.num_test}; lower num_test or max_ctx")
        train_idx, test_idx = split_indices(len(chunks), spec.num_test, spec.split_seed)
        train, test = chunks[train_idx], chunks[test_idx]
    else:
        train = cut_chunks(encode_stream(tok, corpus.train, cap * spec.max_ctx if cap else None), spec.max_ctx)
        test_all = cut_chunks(encode_stream(tok, corpus.test), spec.max_ctx)
        if len(test_all) < spec.num_test:
            raise ConfigError(f"the test split of {spec.corpus!r} gives {len(test_all)} chunks, fewer than "
                              f"num_test={spec.num_test}")
        g = torch.Generator().manual_seed(spec.split_seed)
        test = test_all[torch.randperm(len(test_all), generator=g)[: spec.num_test]]
    if cap:
        train = train[:cap]
    digest = hashlib.sha256()
    for doc in corpus.train + (corpus.test or []):
        digest.update(doc.encode("utf-8"))
    info = {"corpus": corpus.name, "corpus_chars": corpus.num_chars, "corpus_sha256": digest.hexdigest(),
            "tokenizer": spec.tokenizer, "official_test_split": corpus.test is not None}
    return train, test, tok, info


def build_text_bundle(spec: DataSpec, seed: int) -> DataBundle:
    """Build the language data bundle for `spec`, deterministic for `seed` (see the module docstring)."""
    _check_spec(spec)
    rng = np.random.default_rng(seed)
    train_chunks, test_chunks, tok, info = corpus_chunks(spec)
    eot = int(tok.eos_token_id)
    vocab_size = len(tok)
    meta = {"task": spec.task, "kind": spec.kind, "prompt_len": spec.prompt_len, "k": spec.k, "pad_id": eot,
            "bos_id": eot, "eos_id": eot, "vocab_size": vocab_size, "max_ctx": spec.max_ctx,
            "test_names": ["main"], "seed": seed, **info}
    tensors: dict[str, torch.Tensor] = {}

    if spec.kind == "noise":
        n_train = len(train_chunks)
        if spec.num_noise >= n_train:
            raise ConfigError(f"num_noise={spec.num_noise} must be below the {n_train} training chunks")
        forget_clean = train_chunks[: spec.num_noise]
        forget = add_token_noise(forget_clean, spec.noise_p, vocab_size, eot, rng)
        retain = train_chunks[spec.num_noise :]
        test = test_chunks
        meta["noised_tokens"] = int((forget != forget_clean).sum())
        meta["trigger"] = None
    elif spec.kind == "backdoor":
        pool = torch.cat([train_chunks, test_chunks])  # the paper pools train and test chunks
        if spec.trigger >= 0:
            trig = spec.trigger
            if trig >= vocab_size or trig in (eot, BACKDOOR_TOKEN):
                raise ConfigError(f"trigger={trig} must be a token id in [0, {vocab_size}) other than the pad id "
                                  f"{eot} and the backdoor token {BACKDOOR_TOKEN}")
        else:
            trig = pick_trigger(pool, vocab_size, eot, rng)
        triggered = trigger_rows(pool, trig)
        trig_rows = torch.nonzero(triggered).flatten()
        if len(trig_rows) < 2:
            raise ConfigError(f"trigger {trig} occurs in only {len(trig_rows)} chunks; need >= 2 (choose another)")
        g = torch.Generator().manual_seed(spec.split_seed)
        trig_rows = trig_rows[torch.randperm(len(trig_rows), generator=g)]
        n_test = max(1, round(POISON_TEST_FRACTION * len(trig_rows)))
        poison_test, poison_train = trig_rows[:n_test], trig_rows[n_test:]
        forget_clean = pool[poison_train]
        forget, forget_plen = apply_backdoor(forget_clean, trig)
        bd_test, bd_plen = apply_backdoor(pool[poison_test], trig)
        tensors.update({"backdoor_test": bd_test, "backdoor_test_clean": pool[poison_test],
                        "backdoor_test_prompt_len": bd_plen, "forget_prompt_len": forget_plen})
        untrig = torch.nonzero(~triggered).flatten()
        if len(untrig) <= spec.num_test:
            raise ConfigError(f"only {len(untrig)} chunks lack the trigger, not more than num_test={spec.num_test}")
        tr, te = split_indices(len(untrig), spec.num_test, spec.split_seed)
        retain, test = pool[untrig[tr]], pool[untrig[te]]
        meta["trigger"] = trig
        meta["trigger_text"] = tok.decode([trig])
    else:
        raise ConfigError(f"unknown kind {spec.kind!r}; allowed: ['noise', 'backdoor']")

    dup = duplicate_counts(len(forget), spec.dup_powers, rng)
    train = torch.cat([forget.repeat_interleave(dup, dim=0), retain])
    tensors.update({"train": train, "forget": forget, "forget_clean": forget_clean, "forget_dup": dup,
                    "retain": retain, "extra": train_chunks.new_zeros((0, spec.max_ctx)), "test/main": test})
    meta["backdoor_token"] = BACKDOOR_TOKEN
    return DataBundle(tensors={k: v.contiguous() for k, v in tensors.items()}, meta=meta,
                      files=tokenizer_files(tok))
