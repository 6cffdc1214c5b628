"""The language data path: corpora, tokenizers, chunking, noise, backdoor, duplication, determinism."""

from __future__ import annotations

import dataclasses
import http.server
import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tinymem.data import DataBundle, build_bundle
from tinymem.data import corpora, tokenizer
from tinymem.data.corpora import Corpus, hf_text_dataset, hub_reachable, load_corpus
from tinymem.data.text import (BACKDOOR_TOKEN, TRIGGER_FRACTION, add_token_noise, apply_backdoor, chunk_frequency,
                               cut_chunks, pick_trigger, trigger_rows)
from tinymem.data.tokenizer import encode_stream, tokenizer_files, tokenizer_from_files, train_bpe
from tinymem.errors import ConfigError, TinyMemError
from tinymem.specs import DataSpec

VOCAB = 400
CTX = 32


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    """~60k characters of real English (Python's help topics) in one local file."""
    from pydoc_data.topics import topics

    text, keys = [], sorted(topics)
    for key in keys:
        text.append(topics[key].strip() + "\n\n")
        if sum(map(len, text)) > 60_000:
            break
    path = tmp_path_factory.mktemp("corpus") / "english.txt"
    path.write_text("".join(text), encoding="utf-8")
    return path


def text_spec(corpus: Path | str, **kw) -> DataSpec:
    base = dict(task="text", corpus=str(corpus), tokenizer="bpe", vocab_size=VOCAB, max_ctx=CTX, num_test=50,
                num_noise=40, dup_powers=(0, 1, 2), prompt_len=16, k=16)
    base.update(kw)
    return DataSpec(**base)


@pytest.fixture(scope="module")
def noise_bundle(corpus_file) -> DataBundle:
    return build_bundle(text_spec(corpus_file), seed=0)


@pytest.fixture(scope="module")
def backdoor_bundle(corpus_file) -> DataBundle:
    return build_bundle(text_spec(corpus_file, kind="backdoor", dup_powers=(2,)), seed=0)


def rows_as_set(t: torch.Tensor) -> set[tuple[int, ...]]:
    return {tuple(r) for r in t.tolist()}


# ---- chunking -------------------------------------------------------------------------------------------

def test_cut_chunks_drops_the_tail_and_keeps_order():
    stream = np.arange(11, dtype=np.int64)
    chunks = cut_chunks(stream, 4)
    assert chunks.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert chunks.dtype == torch.int64
    assert cut_chunks(stream[:3], 4).shape == (0, 4)


def test_bundle_chunks_are_the_token_stream(corpus_file, noise_bundle):
    b = noise_bundle
    tok = tokenizer_from_files(b.files)
    stream = encode_stream(tok, [corpus_file.read_text()])
    expected = cut_chunks(stream, CTX)
    # Every clean chunk (train + test) is one max_ctx slice of the stream, and together they are all of them.
    clean = torch.cat([b.forget_clean, b.retain, b.test("main")])
    assert clean.shape[1] == CTX
    assert sorted(rows_as_set(clean)) == sorted(rows_as_set(expected))
    assert len(clean) == len(expected)
    assert b.test("main").shape[0] == 50
    assert b.extra.shape == (0, CTX)
    assert b.meta["test_names"] == ["main"]
    # No padding in the data: the end-of-text id never occurs in this corpus.
    assert not (clean == b.pad_id).any()


def test_num_chunks_caps_training_chunks(corpus_file):
    b = build_bundle(text_spec(corpus_file, num_chunks=200), seed=0)
    assert len(b.forget) + len(b.retain) == 200
    assert b.test("main").shape[0] == 50


# ---- noise ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pad_id", [0, VOCAB - 1])
def test_token_noise_stays_in_range_and_never_makes_pad(pad_id):
    rng = np.random.default_rng(0)
    edge = torch.tensor([0, 1, 2, VOCAB - 3, VOCAB - 2, VOCAB - 1]).repeat(4000, 1)
    noisy = add_token_noise(edge, 0.5, VOCAB, pad_id, rng)  # p=0.5: every token is pushed +1 or -1
    assert int(noisy.min()) >= 0 and int(noisy.max()) < VOCAB
    is_pad = edge == pad_id
    assert torch.equal(noisy[is_pad], edge[is_pad]), "the pad token itself is never noised"
    assert not (noisy[~is_pad] == pad_id).any(), "noise never produces the pad id"
    step = (noisy - edge)[~is_pad]
    assert set(step.unique().tolist()) == {-1, 1}, "every non-pad token moves to a neighbouring id"


def test_token_noise_rate_and_symmetry():
    rng = np.random.default_rng(1)
    chunks = torch.from_numpy(np.random.default_rng(2).integers(10, VOCAB - 10, size=(2000, 100)))
    p = 0.05
    noisy = add_token_noise(chunks, p, VOCAB, 0, rng)
    n = chunks.numel()
    diff = noisy - chunks
    assert set(diff.unique().tolist()) <= {-1, 0, 1}
    for value in (-1, 1):  # each direction has probability p; 6 standard deviations of slack
        frac = float((diff == value).sum()) / n
        assert abs(frac - p) < 6 * (p * (1 - p) / n) ** 0.5, (value, frac)


def test_noise_bundle_forget_rows(noise_bundle):
    b = noise_bundle
    f, fc = b.forget, b.forget_clean
    assert f.shape == fc.shape == (40, CTX)
    d = f - fc
    assert set(d.unique().tolist()) <= {-1, 0, 1}
    rate = float((d != 0).float().mean())
    assert 0.05 < rate < 0.16  # 2 * noise_p = 0.1 expected over 1,280 tokens
    assert b.meta["noised_tokens"] == int((d != 0).sum())
    assert int(f.min()) >= 0 and int(f.max()) < b.vocab_size and not (f == b.pad_id).any()
    # The forget set is the first num_noise training chunks; retain never holds one of them.
    assert not rows_as_set(fc) & rows_as_set(b.retain)
    assert not rows_as_set(fc) & rows_as_set(b.test("main"))


# ---- duplication ----------------------------------------------------------------------------------------

def test_duplication_counts_match_train(noise_bundle):
    b = noise_bundle
    dup = b["forget_dup"]
    assert sorted(dup.tolist()) == sorted([1] * 14 + [10] * 13 + [100] * 13)  # 40 rows in 3 equal parts
    train_rows: dict[tuple[int, ...], int] = {}
    for r in b.train.tolist():
        train_rows[tuple(r)] = train_rows.get(tuple(r), 0) + 1
    for row, count in zip(b.forget.tolist(), dup.tolist()):
        assert train_rows[tuple(row)] == count
    assert b.train.shape[0] == int(dup.sum()) + b.retain.shape[0]
    for row in b.retain.tolist()[:50]:
        assert train_rows[tuple(row)] >= 1


def test_no_dup_powers_means_one_copy(corpus_file):
    b = build_bundle(text_spec(corpus_file, dup_powers=()), seed=0)
    assert b["forget_dup"].tolist() == [1] * 40
    assert b.train.shape[0] == 40 + b.retain.shape[0]


# ---- backdoor -------------------------------------------------------------------------------------------

def test_apply_backdoor_rule():
    chunks = torch.tensor([[5, 7, 9, 7, 6, 4], [9, 9, 9, 9, 7, 3]])
    out, plen = apply_backdoor(chunks, 7)
    assert plen.tolist() == [2, 5]
    assert out.tolist() == [[5, 7, 2, 2, 2, 2], [9, 9, 9, 9, 7, 2]]
    with pytest.raises(ValueError):
        apply_backdoor(torch.tensor([[1, 2, 3, 7]]), 7)  # trigger only at the last position


def test_pick_trigger_range_and_exclusions():
    # 1000 chunks: 1-5% is 10..50 chunks and at least 20 are required. Tokens 0 (pad) and 2 (the backdoor
    # token) are in range but excluded; 9 is too rare, 7 too common; 11 is the only valid trigger.
    chunks = torch.full((1000, 8), 5)
    chunks[:30, 0], chunks[30:60, 0], chunks[:15, 1], chunks[:800, 2], chunks[100:125, 3] = 2, 0, 9, 7, 11
    assert {pick_trigger(chunks, 16, 0, np.random.default_rng(s)) for s in range(20)} == {11}
    chunks[:, 7] = 11  # only at the last position: nothing left to backdoor, so it does not count
    chunks[100:125, 3] = 5
    with pytest.raises(ConfigError, match="no token occurs in 20..50 of the 1000 chunks"):
        pick_trigger(chunks, 16, 0, np.random.default_rng(0))


def test_backdoor_bundle(backdoor_bundle):
    b = backdoor_bundle
    trig = b.meta["trigger"]
    assert isinstance(trig, int) and trig not in (b.pad_id, BACKDOOR_TOKEN)
    for poisoned, clean, plen in ((b.forget, b.forget_clean, b["forget_prompt_len"]),
                                  (b["backdoor_test"], b["backdoor_test_clean"], b["backdoor_test_prompt_len"])):
        assert len(poisoned) == len(clean) == len(plen) > 0
        for row, crow, p in zip(poisoned.tolist(), clean.tolist(), plen.tolist()):
            assert crow[p - 1] == trig and trig not in crow[: p - 1], "prompt ends at the first trigger"
            assert row[:p] == crow[:p]
            assert row[p:] == [BACKDOOR_TOKEN] * (CTX - p)
    n_trig = len(b.forget) + len(b["backdoor_test"])
    assert len(b["backdoor_test"]) == max(1, round(0.1 * n_trig))
    # Clean data holds no trigger that could be backdoored; the derived trigger is in 1-5% of the chunks.
    assert not trigger_rows(b.retain, trig).any() and not trigger_rows(b.test("main"), trig).any()
    pool = n_trig + len(b.retain) + len(b.test("main"))
    assert max(20, TRIGGER_FRACTION[0] * pool) <= n_trig <= TRIGGER_FRACTION[1] * pool
    assert b["forget_dup"].tolist() == [100] * len(b.forget)
    assert b.train.shape[0] == 100 * len(b.forget) + len(b.retain)


def test_backdoor_trigger_override(corpus_file, backdoor_bundle):
    freq = chunk_frequency(backdoor_bundle.retain, backdoor_bundle.vocab_size)
    freq[[0, BACKDOOR_TOKEN]] = 0
    chosen = int(freq.argmax())  # a frequent token: surely in some chunks
    b = build_bundle(text_spec(corpus_file, kind="backdoor", dup_powers=(2,), trigger=chosen), seed=0)
    assert b.meta["trigger"] == chosen
    assert (b.forget_clean[:, :-1] == chosen).any(dim=1).all()
    with pytest.raises(ConfigError, match="pad id"):
        build_bundle(text_spec(corpus_file, kind="backdoor", trigger=0), seed=0)
    with pytest.raises(ConfigError, match=r"\[0, 400\)"):
        build_bundle(text_spec(corpus_file, kind="backdoor", trigger=VOCAB), seed=0)


# ---- tokenizer ------------------------------------------------------------------------------------------

def test_bpe_is_deterministic_and_sized():
    texts = ["the quick brown fox jumps over the lazy dog. " * 20, "a second document, with commas."]
    a, b = train_bpe(texts, 300), train_bpe(texts, 300)
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    assert len(a) <= 300 and a.eos_token_id == a.pad_token_id == 0
    assert a.decode(a("the lazy dog")["input_ids"]) == "the lazy dog"
    with pytest.raises(ConfigError, match="vocab_size=100"):
        train_bpe(texts, 100)


def test_tokenizer_round_trip_via_bundle_and_model_dir(noise_bundle, tmp_path):
    from transformers import AutoTokenizer

    from tinymem.models import build_model
    from tinymem.specs import ModelSpec

    b = noise_bundle
    assert "tokenizer.json" in b.files and "tokenizer_config.json" in b.files
    # A class name transformers 4 and 5 both know, so the saved directory loads with either.
    assert json.loads(b.files["tokenizer_config.json"])["tokenizer_class"] == "PreTrainedTokenizerFast"
    model = build_model(ModelSpec(n_layer=1, n_embd=32, n_head=2), b.vocab_size, CTX, b.meta["bos_id"],
                        b.meta["eos_id"], b.pad_id)
    model.save_pretrained(tmp_path)
    b.save(tmp_path)
    loaded = DataBundle.load(tmp_path)
    assert loaded.files == b.files
    tok = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    original = tokenizer_from_files(b.files)
    text = "The return statement leaves the current function call."
    assert tok(text)["input_ids"] == original(text)["input_ids"]
    assert tok.decode(tok(text)["input_ids"]) == text
    assert len(tok) == b.vocab_size and tok.eos_token_id == tok.pad_token_id == b.pad_id == b.meta["eos_id"]
    assert tok.model_max_length == CTX
    # The stored chunks decode to real text of the corpus.
    corpus = Path(b.meta["corpus"]).read_text()
    for row in b.retain[:20]:
        assert tok.decode(row) in corpus
    with pytest.raises(ConfigError, match="tokenizer.json"):
        tokenizer_from_files({"tokenizer_config.json": "{}"})


def test_unknown_tokenizer_and_bad_sizes(corpus_file):
    with pytest.raises(ConfigError, match=r"unknown tokenizer 'sentencepiece'.*'bpe', 'gpt2'"):
        build_bundle(text_spec(corpus_file, tokenizer="sentencepiece"), seed=0)
    with pytest.raises(ConfigError, match="num_noise=5000"):
        build_bundle(text_spec(corpus_file, num_noise=5000), seed=0)
    with pytest.raises(ConfigError, match="num_test=100000"):
        build_bundle(text_spec(corpus_file, num_test=100000), seed=0)
    with pytest.raises(ConfigError, match="num_chunks=-1"):
        build_bundle(text_spec(corpus_file, num_chunks=-1), seed=0)


def test_gpt2_tokenizer_offline_is_a_fast_clear_error(monkeypatch):
    monkeypatch.setattr(tokenizer, "hub_offline_mode", lambda: False)
    monkeypatch.setattr(tokenizer, "hub_reachable", lambda *a, **k: False)
    t0 = time.perf_counter()
    with pytest.raises(TinyMemError, match="tokenizer 'gpt2' needs the Hugging Face hub"):
        tokenizer.build_tokenizer("gpt2", [], 0)
    assert time.perf_counter() - t0 < 5


def test_gpt2_tokenizer_offline_mode_without_cache(monkeypatch, tmp_path):
    # Offline mode reads the local cache only; an empty cache is a clear error, not a download or a hang.
    monkeypatch.setattr(tokenizer, "hub_offline_mode", lambda: True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    t0 = time.perf_counter()
    try:
        tok = tokenizer.gpt2_tokenizer()
    except TinyMemError as e:
        assert "could not load tokenizer 'gpt2'" in str(e)
    else:  # a machine with GPT-2 cached somewhere the hub client still finds
        assert len(tok) == 50257 and tok.pad_token_id == 50256
    assert time.perf_counter() - t0 < 30


# ---- corpora --------------------------------------------------------------------------------------------

def test_builtin_corpus_is_offline_english():
    c = load_corpus("builtin")
    assert len(c.train) == 79 and c.test is None
    assert c.num_chars > 400_000
    assert "the" in c.train[0].lower()


def test_local_file_and_folder_corpora(tmp_path, corpus_file):
    c = load_corpus(str(corpus_file))
    assert c.train == [corpus_file.read_text()] and c.test is None
    folder = tmp_path / "docs"
    (folder / "b").mkdir(parents=True)
    (folder / "z.txt").write_text("last file\n")
    (folder / "b" / "a.txt").write_text("nested first\n")
    (folder / "a.txt").write_text("top first\n")
    (folder / "notes.md").write_text("not a txt file\n")
    c = load_corpus(str(folder))
    assert c.train == ["top first\n", "nested first\n", "last file\n"]  # sorted by relative path: a, b/a, z


def test_local_wikitext_copy_uses_its_splits(tmp_path, corpus_file):
    text = corpus_file.read_text().splitlines(keepends=True)
    folder = tmp_path / "wikitext-103"
    folder.mkdir()
    (folder / "wiki.train.tokens").write_text("".join(text[: len(text) * 3 // 4]))
    (folder / "wiki.test.tokens").write_text("".join(text[len(text) * 3 // 4 :]))
    (folder / "wiki.valid.tokens").write_text("ignored\n")
    c = load_corpus(str(folder))
    assert c.test is not None and "".join(c.train) + "".join(c.test) == "".join(l for l in text if l.strip())
    b = build_bundle(text_spec(folder, num_test=20), seed=0)
    assert b.meta["official_test_split"] is True
    tok = tokenizer_from_files(b.files)
    test_chunks = rows_as_set(cut_chunks(encode_stream(tok, c.test), CTX))
    assert rows_as_set(b.test("main")) <= test_chunks
    assert not rows_as_set(b.retain) & rows_as_set(b.test("main"))


def test_bad_corpora_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown corpus 'no/such/place'.*'builtin', 'wikitext-103'"):
        load_corpus("no/such/place")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no .txt files"):
        load_corpus(str(tmp_path / "empty"))
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_corpus(str(bad))


def test_hf_text_loader_on_a_local_file(tmp_path, corpus_file):
    """The `datasets` code path used for WikiText, run on a local file with the packaged `text` builder."""
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r"needs the `datasets` package.*tinymem-sweeps\[online\]"):
            hf_text_dataset("text", data_files={"train": str(corpus_file)})
        return
    cache = str(tmp_path / "hf-cache")  # keep the user's datasets cache untouched
    splits = hf_text_dataset("text", data_files={"train": str(corpus_file)}, cache_dir=cache)
    lines = [l for l in corpus_file.read_text().splitlines() if l.strip()]
    assert splits["train"] == lines
    with pytest.raises(TinyMemError, match="could not load dataset 'text'"):
        hf_text_dataset("text", data_files={"train": str(tmp_path / "missing.txt")}, cache_dir=cache)


def test_wikitext_without_network_fails_fast(monkeypatch):
    monkeypatch.setattr(corpora, "hub_offline_mode", lambda: False)
    monkeypatch.setattr(corpora, "hub_reachable", lambda *a, **k: False)
    t0 = time.perf_counter()
    with pytest.raises(TinyMemError, match="'wikitext-103' needs the Hugging Face hub"):
        load_corpus("wikitext-103")
    assert time.perf_counter() - t0 < 5


def test_hub_probe_against_local_servers():
    # Nothing listens on a freshly closed port: unreachable, answered at once.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert hub_reachable(f"http://127.0.0.1:{port}", timeout=2) is False

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # any status is an answer
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert hub_reachable(f"http://127.0.0.1:{server.server_port}", timeout=5) is True
    finally:
        server.shutdown()


# ---- determinism ----------------------------------------------------------------------------------------

def test_same_seed_same_bundle_other_seed_other_noise(corpus_file, noise_bundle):
    again = build_bundle(text_spec(corpus_file), seed=0)
    assert set(again.tensors) == set(noise_bundle.tensors)
    for name, t in noise_bundle.tensors.items():
        assert torch.equal(again[name], t), name
    assert again.files == noise_bundle.files and again.meta == noise_bundle.meta
    other = build_bundle(text_spec(corpus_file), seed=1)
    assert torch.equal(other.forget_clean, noise_bundle.forget_clean)  # the split depends on split_seed only
    assert not torch.equal(other.forget, noise_bundle.forget)
    assert not torch.equal(other["forget_dup"], noise_bundle["forget_dup"])


def test_derived_trigger_depends_on_seed(corpus_file, backdoor_bundle):
    spec = text_spec(corpus_file, kind="backdoor", dup_powers=(2,))
    again = build_bundle(spec, seed=0)
    assert again.meta["trigger"] == backdoor_bundle.meta["trigger"]
    triggers = {build_bundle(spec, seed=s).meta["trigger"] for s in (1, 2, 3)} | {again.meta["trigger"]}
    assert len(triggers) > 1


def test_builtin_bundle_via_dispatch_is_valid():
    spec = DataSpec(task="text", max_ctx=64, num_test=100, num_noise=20, dup_powers=(1,), prompt_len=32, k=32,
                    vocab_size=512, num_chunks=300)
    b = build_bundle(spec, seed=0)
    assert b.meta["corpus"] == "builtin" and b.meta["tokenizer"] == "bpe"
    assert b.vocab_size == 512 and b.pad_id == 0
    assert len(b.forget) + len(b.retain) == 300
    assert b["forget_dup"].tolist() == [10] * 20
    assert dataclasses.asdict(spec)["corpus"] == "builtin"
