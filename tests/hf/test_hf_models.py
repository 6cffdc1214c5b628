"""End to end on tiny GPT-NeoX and Llama models saved as Hugging Face directories that memorize their forget file:
find-memorized, `tinymem mitigate --model hf:DIR`, `tinymem eval`, the verbatim metric against `generate`,
token-weighted perplexity, the base-evaluation cache key, dtype, and trial-config errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from tests.hf.conftest import K, METRIC, N_MEM, PROMPT, SEQ
from tinymem.cli import main
from tinymem.errors import ConfigError
from tinymem.hf.memory import gpus_for_source
from tinymem.hf.models import load_hf_model, load_trial_base
from tinymem.hf.options import HFSourceOptions
from tinymem.memfile import load_token_rows
from tinymem.metrics import evaluate
from tinymem.trial import run_trial


def hf_config(tiny, **extra) -> dict:
    f = tiny.files
    return {"model": tiny.source, "forget_file": str(f["forget"]), "retain_file": str(f["retain"]),
            "test_file": str(f["test"]), "prompt_len": PROMPT, "k": K, "device": "cpu", **extra}


@pytest.mark.parametrize("family", ["tiny_neox", "tiny_llama"])
def test_find_memorized_keeps_exactly_the_memorized(family, request, tmp_path, capsys):
    tiny = request.getfixturevalue(family)
    out = tmp_path / "mem.jsonl"
    rc = main(["find-memorized", "--model", tiny.source, "--candidates", str(tiny.files["candidates"]),
               "--out", str(out), *METRIC, "--device", "cpu", "--batch-size", "5", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    # rows 0-7 were trained on (and memorized), rows 8-15 never seen
    assert summary["memorized_rows"] == list(range(N_MEM)) and summary["mem_pct"] == 50.0
    assert load_token_rows(out)[0] == tiny.data["forget"].tolist()


def test_mitigate_balanced_subnet_cli_lowers_mem_pct(tiny_neox, tmp_path, capsys):
    f = tiny_neox.files
    out = tmp_path / "mitigated"
    rc = main(["mitigate", "--model", tiny_neox.source, "--method", "balanced_subnet",
               "--forget-file", str(f["forget"]), "--retain-file", str(f["retain"]), "--test-file", str(f["test"]),
               *METRIC, "--root", str(tmp_path / "runs"), "--out", str(out), "--device", "cpu", "--json",
               "--set", "epochs=3", "--set", "batch_size=16"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    before, after = result["before"], result["after"]
    assert before["mem_pct"] == 100.0 and before["mem_counted"] == N_MEM
    assert after["mem_pct"] < before["mem_pct"]
    assert after["test_ppl"] is not None and math.isfinite(after["test_ppl"])
    # the mitigated model is a complete Hugging Face directory (weights + tokenizer) and a TinyMem model dir
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert AutoTokenizer.from_pretrained(out, local_files_only=True)("w5 w6")["input_ids"] == [5, 6]
    assert main(["eval", "--model", str(out), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)["metrics"]
    assert again["mem_pct"] == after["mem_pct"] and again["test_ppl"] == pytest.approx(after["test_ppl"])


def test_eval_hf_prints_memorization_and_perplexity(tiny_llama, capsys):
    f = tiny_llama.files
    assert main(["eval", "--model", tiny_llama.source, "--forget-file", str(f["candidates"]),
                 "--test-file", str(f["test"]), *METRIC, "--device", "cpu", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metrics"]["mem_pct"] == 50.0 and out["rows"]["forget"] == 2 * N_MEM
    assert "clean_recovered_pct" not in out["metrics"]  # verbatim: the target is the clean text itself
    assert 1.0 <= out["metrics"]["test_ppl"] < 3.0  # the progressions generalise to held-out rows


def test_verbatim_decoding_equals_generate(tiny_llama):
    loaded = load_hf_model(tiny_llama.source, device="cpu")
    rows = tiny_llama.data["candidates"]
    from tinymem.metrics import verbatim_extraction

    ex = verbatim_extraction(loaded.model, rows, PROMPT, K, eos_id=None, pad_id=None, batch_size=5)
    gen = loaded.model.generate(rows[:, :PROMPT], do_sample=False, max_new_tokens=K, min_new_tokens=K,
                                pad_token_id=0)[:, PROMPT:]
    assert torch.equal(ex.memorized, (gen == rows[:, PROMPT : PROMPT + K]).all(dim=1))
    assert ex.memorized.tolist() == [True] * N_MEM + [False] * (len(rows) - N_MEM)


def test_perplexity_is_token_weighted_with_padding_masked(tiny_neox, tmp_path):
    rows = tiny_neox.data["test"]
    ragged = tmp_path / "ragged.jsonl"
    ragged.write_text("".join(json.dumps(r[: (SEQ if i % 2 else 7)]) + "\n" for i, r in enumerate(rows.tolist())))
    base = load_trial_base({"model": tiny_neox.source, "test_file": str(ragged),
                            "retain_file": str(tiny_neox.files["retain"]),
                            "prompt_len": PROMPT, "k": K}, "cpu", require_forget=False)
    got = evaluate(base.model, base.bundle, memorization_metrics=False)
    lines = ragged.read_text().splitlines()
    half = len(lines) // 2
    for split, part in (("val", lines[:half]), ("test", lines[half:])):  # the two halves of the held-out rows
        nll, count = 0.0, 0
        with torch.no_grad():
            for line in part:
                ids = torch.tensor(json.loads(line))[None]
                logits = base.model(input_ids=ids).logits[0, :-1]
                nll += float(F.cross_entropy(logits, ids[0, 1:], reduction="sum"))
                count += ids.shape[1] - 1
        assert got[f"{split}_ppl"] == pytest.approx(math.exp(nll / count), rel=1e-5), split


def test_base_key_covers_source_dtype_and_files(tiny_neox, tmp_path):
    cfg = hf_config(tiny_neox)
    k1 = load_trial_base(cfg, "cpu").key
    assert load_trial_base(cfg, "cpu").key == k1
    assert load_trial_base(HFSourceOptions.from_object(cfg), "cpu").key == k1  # the typed form, the same base
    assert load_trial_base({**cfg, "dtype": "bfloat16"}, "cpu").key != k1
    assert load_trial_base({**cfg, "k": K - 1}, "cpu").key != k1
    changed = tmp_path / "forget.jsonl"
    rows = tiny_neox.data["forget"].clone()
    rows[0, -1] = 3 if int(rows[0, -1]) != 3 else 4
    changed.write_text("".join(json.dumps(r) + "\n" for r in rows.tolist()))
    assert load_trial_base({**cfg, "forget_file": str(changed)}, "cpu").key != k1


def test_bfloat16_model_runs_the_metrics(tiny_llama):
    base = load_trial_base(hf_config(tiny_llama, dtype="bfloat16"), "cpu")
    assert next(base.model.parameters()).dtype == torch.bfloat16
    m = evaluate(base.model, base.bundle)
    assert m["mem_pct"] >= 50.0 and math.isfinite(m["test_ppl"])


def test_trial_reuses_the_cached_base_evaluation(tiny_llama, tmp_path):
    cfg = hf_config(tiny_llama, method="durable", params={"ratio": 0.05}, storage=str(tmp_path))
    from tinymem.trial import prepare_base

    prepared = prepare_base({k: v for k, v in cfg.items() if k not in ("method", "params")})  # the sweep's step
    assert prepared.evaluation.memorized_rows.tolist() == list(range(N_MEM)) and not prepared.created
    first = run_trial(cfg)
    assert first.base_key == prepared.key
    second = run_trial(cfg)
    assert first.base_key == second.base_key and first.base_key.startswith("hf-")
    assert first.before == second.before and first.before["mem_pct"] == 100.0
    from tinymem.trial import EVAL_VERSION

    assert (tmp_path / "cache" / f"{first.base_key}-eval{EVAL_VERSION}" / "base_eval.json").exists()


@pytest.mark.parametrize("extra,needle", [
    ({"preset": "math-tiny"}, "give one base model"),
    ({"forget_file": None}, "needs a memorized-sequence file"),
    ({"retain_file": None, "test_file": None}, "needs clean data for retain and perplexity"),
    ({"dtype": "fp8"}, "dtype 'fp8' is not allowed"),
    ({"metric_preset": "nope"}, "unknown metric preset 'nope'"),
    ({"k": 40}, r"row\(s\) are shorter than prompt_len \+ k = 48 tokens"),
])
def test_trial_config_errors_are_clear(tiny_neox, tmp_path, extra, needle):
    cfg = hf_config(tiny_neox, method="subnet", storage=str(tmp_path))
    cfg.update(extra)
    with pytest.raises(ConfigError, match=needle):
        run_trial({k: v for k, v in cfg.items() if v is not None})


def test_gpus_for_source_reads_only_the_config(tiny_neox):
    # a 30k-parameter model: eight trials share one GPU
    assert gpus_for_source(tiny_neox.source, "balanced_subnet", gpu_mem_gb=80) == 1 / 8
