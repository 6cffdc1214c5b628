"""Tiny Hugging Face models that memorize a file of token sequences, built offline once per session.

Each model (GPT-NeoX, Llama) is randomly initialised, saved with `save_pretrained` next to a WordLevel
tokenizer built in code (token `wN` has id N), and trained on:

- `forget.jsonl`: 8 random sequences (the noise the model memorizes verbatim), each repeated 4 times;
- `retain.jsonl`: 64 arithmetic progressions mod the vocabulary (a learnable rule, like TinyMem's clean data).

`candidates.jsonl` holds the 8 trained random sequences (rows 0-7) and 8 never-seen ones (rows 8-15).
`test.jsonl` holds 32 held-out progressions (the perplexity set). All rows are 24 tokens; the metric used
here is an 8-token prompt and the next 12 tokens exact (`METRIC`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

VOCAB = 64
FIRST_WORD = 3  # ids 0-2 are <pad>, <eos>, <unk>
SEQ = 24
PROMPT, K = 8, 12
METRIC = ["--prompt-len", str(PROMPT), "--k", str(K)]
N_MEM, N_UNSEEN = 8, 8


def word_tokenizer():
    """A WordLevel tokenizer where `wN` is id N, as a transformers fast tokenizer (no network)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{f"w{i}": i for i in range(FIRST_WORD, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def as_text(row) -> str:
    return " ".join(f"w{int(t)}" for t in row)


def make_data(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    span = VOCAB - FIRST_WORD
    random_rows = FIRST_WORD + torch.randint(0, span, (N_MEM + N_UNSEEN, SEQ), generator=g)

    def progressions(n: int) -> torch.Tensor:
        starts = torch.randint(0, span, (n,), generator=g)
        steps = torch.randint(1, 5, (n,), generator=g)
        return FIRST_WORD + (starts[:, None] + steps[:, None] * torch.arange(SEQ)[None]) % span

    return {"candidates": random_rows, "forget": random_rows[:N_MEM], "retain": progressions(64),
            "test": progressions(32)}


def write_jsonl(path: Path, rows: torch.Tensor) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows.tolist()))
    return path


def build_model(family: str):
    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=64, pad_token_id=0, eos_token_id=1, bos_token_id=1)
    if family == "gpt_neox":
        from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

        return GPTNeoXForCausalLM(GPTNeoXConfig(**common))
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(num_key_value_heads=2, **common))


def train_to_memorize(model, data: dict[str, torch.Tensor], max_steps: int = 400) -> int:
    """Full-batch AdamW until every forget row is extractable (teacher-forced check = greedy, exactly)."""
    rows = torch.cat([data["forget"].repeat(4, 1), data["retain"]])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    f = data["forget"]
    for step in range(1, max_steps + 1):
        model.train()
        loss = model(input_ids=rows, labels=rows).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0:
            model.eval()
            with torch.no_grad():
                pred = model(input_ids=f[:, : PROMPT + K]).logits[:, PROMPT - 1 : PROMPT + K - 1].argmax(-1)
            if bool((pred == f[:, PROMPT : PROMPT + K]).all()):
                return step
    raise AssertionError(f"the tiny model did not memorize its forget rows in {max_steps} steps")


@dataclass
class TinyHF:
    family: str
    model_dir: Path
    files: dict[str, Path]
    data: dict[str, torch.Tensor]
    steps: int

    @property
    def source(self) -> str:
        return f"hf:{self.model_dir}"


@pytest.fixture(scope="session")
def hf_data_dir(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor], dict[str, Path]]:
    d = tmp_path_factory.mktemp("hf_data")
    data = make_data()
    files = {name: write_jsonl(d / f"{name}.jsonl", rows) for name, rows in data.items()}
    return d, data, files


def _tiny(family: str, tmp_path_factory, hf_data_dir) -> TinyHF:
    _d, data, files = hf_data_dir
    model = build_model(family)
    steps = train_to_memorize(model, data)
    model_dir = tmp_path_factory.mktemp(f"hf_{family}")
    model.eval().save_pretrained(model_dir)
    word_tokenizer().save_pretrained(model_dir)
    return TinyHF(family, model_dir, files, data, steps)


@pytest.fixture(scope="session")
def tiny_neox(tmp_path_factory, hf_data_dir) -> TinyHF:
    return _tiny("gpt_neox", tmp_path_factory, hf_data_dir)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, hf_data_dir) -> TinyHF:
    return _tiny("llama", tmp_path_factory, hf_data_dir)


@pytest.fixture(autouse=True)
def _no_hub(monkeypatch, tmp_path_factory):
    """Nothing in these tests may reach the Hugging Face hub: an empty cache, and the hub switched off."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path_factory.getbasetemp() / "empty_hf_cache"))


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """One torch thread, here and in the CLI subprocesses: these models are so small that a second thread only
    adds synchronisation, which on a busy 2-core machine made a training step 30x slower (measured)."""
    before = torch.get_num_threads()
    old_env = os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(before)
    if old_env is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = old_env
