"""Memorized-sequence files: every format round trips, text goes through the tokenizer, the .pt converter uses
weights_only loading, the metric presets, and bad input is one clear error."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from tests.hf.conftest import as_text, word_tokenizer
from tinymem.cli import main
from tinymem.errors import ConfigError, TinyMemError
from tinymem.memfile import (METRIC_PRESETS, bundle_from_files, chunk, convert_pt, cut_forget, load_token_rows,
                             read_safetensors_tokens, resolve_metric, special_ids, split_retain_test,
                             write_token_rows)

ROWS = [[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16], [3, 3, 4, 4, 5, 5]]


@pytest.mark.parametrize("ext", [".safetensors", ".jsonl", ".parquet"])
def test_token_rows_round_trip(tmp_path, ext):
    path = write_token_rows(tmp_path / f"rows{ext}", ROWS, {"note": "x"})
    rows, stream = load_token_rows(path, vocab_size=64)
    assert rows == ROWS and stream is False


def test_jsonl_accepts_lists_objects_and_text(tmp_path):
    tok = word_tokenizer()
    ids = tmp_path / "ids.jsonl"
    ids.write_text("[5, 6, 7]\n\n" + json.dumps({"input_ids": [8, 9]}) + "\n")
    assert load_token_rows(ids, vocab_size=64)[0] == [[5, 6, 7], [8, 9]]
    text = tmp_path / "text.jsonl"
    text.write_text(json.dumps(as_text(ROWS[0])) + "\n" + json.dumps({"text": as_text(ROWS[1])}) + "\n")
    assert load_token_rows(text, tok, 64)[0] == ROWS[:2]


def test_parquet_text_column_is_tokenized(tmp_path):
    path = tmp_path / "t.parquet"
    pd.DataFrame({"text": [as_text(r) for r in ROWS]}).to_parquet(path)
    assert load_token_rows(path, word_tokenizer(), 64)[0] == ROWS


def test_txt_is_one_stream_chunked(tmp_path):
    path = tmp_path / "clean.txt"
    path.write_text(" ".join(as_text(r) for r in ROWS))
    rows, stream = load_token_rows(path, word_tokenizer(), 64, allow_stream=True)
    assert stream and chunk(rows, 4, stream) == [[5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16], [3, 3, 4, 4],
                                                 [5, 5]]


def test_pt_converter_round_trip_with_weights_only(tmp_path):
    t = torch.tensor(ROWS, dtype=torch.int64)
    torch.save(t, tmp_path / "mem.pt")
    out = convert_pt(tmp_path / "mem.pt", tmp_path / "mem.safetensors")
    assert out["rows"] == 3 and out["length"] == 6
    back, meta = read_safetensors_tokens(tmp_path / "mem.safetensors")
    assert torch.equal(back, t) and meta["source"] == "mem.pt" and len(meta["source_sha256"]) == 64
    # MemPi's random batch is re-cut into 80-token rows; here 18 ids into rows of 4 (2 ids dropped)
    torch.save({"tokens": t.to(torch.int32)}, tmp_path / "d.pt")
    assert convert_pt(tmp_path / "d.pt", tmp_path / "d.jsonl", row_len=4)["dropped_tokens"] == 2
    assert load_token_rows(tmp_path / "d.jsonl")[0] == torch.tensor(ROWS).flatten()[:16].view(4, 4).tolist()
    torch.save([t[0], t[1]], tmp_path / "l.pt")
    assert convert_pt(tmp_path / "l.pt", tmp_path / "l.safetensors")["rows"] == 2


class Evil:  # a pickled object that a plain torch.load would construct (and could run code)
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_pt_converter_refuses_pickled_objects(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"tokens": Evil()}, path)  # a real torch file whose pickle would call print() on load
    with pytest.raises(TinyMemError, match="weights_only"):
        convert_pt(path, tmp_path / "out.safetensors")
    assert "unpickled!" not in capsys.readouterr().out
    assert not (tmp_path / "out.safetensors").exists()


def test_convert_memorized_cli(tmp_path, capsys):
    torch.save(torch.tensor(ROWS), tmp_path / "m.pt")
    assert main(["convert-memorized", str(tmp_path / "m.pt"), str(tmp_path / "m.safetensors"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 3
    torch.save(torch.rand(2, 3), tmp_path / "f.pt")
    assert main(["convert-memorized", str(tmp_path / "f.pt"), str(tmp_path / "f.safetensors")]) == 2
    assert "token ids must be an integer dtype" in capsys.readouterr().err


@pytest.mark.parametrize("content,needle", [
    ("[5, 6, 700]\n", "row 0 holds token id 700, outside the model's vocabulary [0, 64)"),
    ("[5, 6.5]\n", "row 0 holds 6.5; token ids must be integers"),
    ("[5, 6]\n\"text\"\n", "mixes token-id rows and text rows"),
    ("{\"foo\": [1]}\n", "found fields ['foo']; expected one of"),
    ("[5, 6\n", "not valid JSON"),
])
def test_bad_rows_are_named(tmp_path, content, needle):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_token_rows(path, vocab_size=64)


def test_bad_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="unpickling is unsafe.*convert-memorized"):
        (tmp_path / "x.pt").write_bytes(b"")
        load_token_rows(tmp_path / "x.pt")
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(ConfigError, match=r"unsupported file type '.csv'; allowed: \['.jsonl', '.parquet', "):
        load_token_rows(tmp_path / "x.csv")
    with pytest.raises(ConfigError, match="does not exist"):
        load_token_rows(tmp_path / "missing.jsonl")
    save_file({"a": torch.zeros(2, 2, dtype=torch.long), "b": torch.zeros(1)}, str(tmp_path / "two.safetensors"))
    with pytest.raises(ConfigError, match=r"holds tensors \['a', 'b'\]; expected one named 'tokens'"):
        load_token_rows(tmp_path / "two.safetensors")
    with pytest.raises(ConfigError, match="holds text, but the model has no tokenizer"):
        (tmp_path / "t.jsonl").write_text('"w5 w6"\n')
        load_token_rows(tmp_path / "t.jsonl", None, 64)


def test_metric_presets_and_overrides():
    assert resolve_metric() == METRIC_PRESETS["pythia"]
    p = METRIC_PRESETS["pythia"]
    assert (p.prompt_len, p.k, p.seq_len) == (32, 40, 80)  # the paper's Pythia setting
    assert (resolve_metric("pythia", k=50).seq_len) == 82  # grows to fit prompt + k
    assert resolve_metric(prompt_len=8, k=12, seq_len=24).seq_len == 24
    with pytest.raises(ConfigError, match=r"unknown metric preset 'gpt'; allowed: \['biderman', 'carlini', 'pythia'\]"):
        resolve_metric("gpt")
    with pytest.raises(ConfigError, match="seq_len=10 is too short for prompt_len=8 \\+ k=12"):
        resolve_metric(prompt_len=8, k=12, seq_len=10)
    with pytest.raises(ConfigError, match="k=0 is out of range"):
        resolve_metric(k=0)


def test_cli_help_lists_the_presets():
    from tinymem.hf.options import METRIC_HELP
    from tinymem.memfile import DEFAULT_METRIC_PRESET

    for name, m in METRIC_PRESETS.items():
        assert f"{name} ({m.prompt_len} + {m.k} of {m.seq_len}" in METRIC_HELP
    assert f"(default {DEFAULT_METRIC_PRESET})" in METRIC_HELP


def test_forget_rows_cut_and_short_rows_named():
    m = resolve_metric(prompt_len=2, k=3, seq_len=5)
    assert cut_forget(ROWS, m, "f") == [r[:5] for r in ROWS]
    with pytest.raises(ConfigError, match=r"1 row\(s\) are shorter than prompt_len \+ k = 5 tokens \(row 1: 4"):
        cut_forget([[1] * 6, [1] * 4], m, "f")


def test_split_like_the_paper():
    rows = [[i, i] for i in range(6)]
    retain, test = split_retain_test(rows, None)
    assert test == rows[:3] and retain == rows[3:]  # first half perplexity, second half retain (§3.4)
    assert split_retain_test(rows[:2], rows[2:]) == (rows[:2], rows[2:])


def test_special_ids_prefer_the_tokenizer():
    tok = word_tokenizer()
    assert special_ids(tok, None) == (0, 1)

    class Cfg:
        pad_token_id = None
        eos_token_id = [7, 8]

    assert special_ids(None, Cfg()) == (7, 7)  # GPT-2 style: no pad token, end-of-text doubles as pad


def test_bundle_from_files_is_verbatim(hf_data_dir):
    _d, data, files = hf_data_dir
    b = bundle_from_files(word_tokenizer(), vocab_size=64, forget_file=str(files["forget"]),
                          retain_file=str(files["retain"]), prompt_len=8, k=12)
    assert b.kind == "verbatim" and (b.prompt_len, b.k) == (8, 12)
    assert torch.equal(b.forget, data["forget"]) and torch.equal(b.forget_clean, b.forget)
    assert torch.equal(b["test/main"], data["retain"][:32]) and torch.equal(b.retain, data["retain"][32:])
    assert b.meta["eos_id"] is None and b.meta["model_eos_id"] == 1 and "tokenizer.json" in b.files
    assert set(b.meta["data_identity"]) >= {"forget", "retain", "prompt_len", "k"}
