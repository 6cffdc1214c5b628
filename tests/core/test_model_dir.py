"""What a mitigated model directory gives its user: the math tokenizer (ids exactly the data's), a model card, and
the `tinymem mitigate` command in the card, which the CLI reads back to the same configuration."""

from __future__ import annotations

import json
import shlex

import pytest
import torch

from tinymem.card import mitigate_argv, render_card
from tinymem.data.bundle import DataBundle
from tinymem.data.math import PAD, build_math_bundle, detokenize, math_tokenizer, tokenize, with_math_tokenizer
from tinymem.presets import get_preset


@pytest.fixture(scope="module")
def math_bundle() -> DataBundle:
    spec = get_preset("math-tiny")
    return build_math_bundle(spec.data, spec.seed)


def test_the_math_tokenizer_gives_the_data_ids_on_real_rows(math_bundle):
    tok = math_tokenizer(math_bundle.meta["max_ctx"])
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, len(tok)) == (10, 11, 13, 14)
    rows = torch.cat([math_bundle.forget, math_bundle.forget_clean, math_bundle.test(math_bundle.test_names[0])])
    for row in rows:
        text = detokenize(row)
        ids = tok(text).input_ids
        assert ids == [t for t in row.tolist() if t != PAD]
        assert tok.decode(ids) == text
    assert tok("^1 8 15").input_ids == tokenize(["^1 8 15"], 10)[0, :7].tolist()
    padded = tok(["^12$", "^3"], padding="max_length", max_length=6).input_ids
    assert padded == tokenize(["^12$", "^3"], 6).tolist()
    with pytest.raises(Exception, match="Missing"):  # a character outside the vocabulary is an error, as in tokenize
        tok("^1a")


def test_a_saved_math_bundle_loads_with_autotokenizer(math_bundle, tmp_path):
    from transformers import AutoTokenizer

    assert "tokenizer.json" in math_bundle.files  # built bundles carry it
    math_bundle.save(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    row = math_bundle.forget[0]
    assert tok(detokenize(row)).input_ids == [t for t in row.tolist() if t != PAD]
    assert DataBundle.load(tmp_path).files == math_bundle.files


def test_a_base_model_stored_without_a_tokenizer_gains_it_in_its_mitigated_directory(tiny_store, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tinymem.build import load_model_dir
    from tinymem.store import read_manifest
    from tinymem.trial import save_mitigated

    _root, stored = tiny_store
    loaded = load_model_dir(stored.directory, device="cpu")
    old = DataBundle(tensors=loaded.bundle.tensors, meta=loaded.bundle.meta, files={})  # as stored before
    assert with_math_tokenizer(old).files == loaded.bundle.files
    before = dict(stored.metrics)
    config = {"method": "durable", "params": {"ratio": 0.05}, "preset": "math-tiny", "storage": "/x", "seed": 3}
    out = tmp_path / "m"
    save_mitigated(loaded.model, old, out, stored.spec, stored.key, "durable", {"ratio": 0.05, "batch_size": 64},
                   before, before=before, config=config, family="unlearn_weight")
    assert AutoTokenizer.from_pretrained(out)("^1 8").input_ids == [10, 1, 12, 8]
    AutoModelForCausalLM.from_pretrained(out)
    manifest = read_manifest(out)  # checksums cover the card and the tokenizer files
    assert {"README.md", "tokenizer.json", "tokenizer_config.json"} <= set(manifest["files"])
    card = (out / "README.md").read_text()
    assert "--set ratio=0.05 --set batch_size=64 --seed 3" in card and "`durable`" in card
    assert "mem_pct_ci_low" not in card and f"{before['mem_pct']:.2f} [" in card  # the interval, written out


def test_the_card_command_parses_back_to_the_same_configuration():
    from tinymem.cli import build_parser
    from tinymem.specs import parse_set_args

    config = {"method": "balanced_subnet", "preset": "math-tiny", "set": {"seed": 2, "epochs": 3},
              "params": {"ratio": 0.1 + 0.2, "loss_weighting": 0.7, "flag": True, "dims": (1, 2)},
              "seed": 5, "storage": "/data/runs", "heldout_frac": 0.25, "device": "cpu"}
    argv = mitigate_argv(config, "/out dir")
    args = build_parser().parse_args(shlex.split(shlex.join(argv))[1:])
    assert (args.method, args.preset, args.seed, args.root, args.out, args.device) == (
        "balanced_subnet", "math-tiny", 5, "/data/runs", "/out dir", "cpu")
    assert parse_set_args(args.spec_set) == {"seed": "2", "epochs": "3"}
    params = parse_set_args(args.set)
    assert float(params["ratio"]) == 0.1 + 0.2  # floats in their exact shortest form
    assert params == {"ratio": "0.30000000000000004", "loss_weighting": "0.7", "flag": "true", "dims": "1,2"}
    assert args.heldout_frac == 0.25
    hf = mitigate_argv({"method": "durable", "model": "hf:EleutherAI/pythia-70m@main", "forget_file": "/f.jsonl",
                        "k": 32, "params": {}, "storage": "/r"}, "o")
    assert hf[hf.index("--model") + 1] == "hf:EleutherAI/pythia-70m@main"
    assert hf[hf.index("--forget-file") + 1] == "/f.jsonl" and hf[hf.index("--k") + 1] == "32"
    card = render_card({**config, "model": "hf:EleutherAI/pythia-70m@main", "preset": None}, method="durable",
                       params={}, key="k", base_key="b", before={}, after={"mem_pct": 0.0}, out_dir="o",
                       tokenizer=False)
    assert "\nbase_model: EleutherAI/pythia-70m\n" in card and "AutoTokenizer.from_pretrained" not in card
    local = render_card({"method": "durable", "model": "hf:/models/mine"}, method="durable", params={}, key="k",
                        base_key="b", before={}, after={}, out_dir="o")
    assert "base_model:" not in local and "the Hugging Face model `hf:/models/mine`" in local  # a path is no hub id
    assert json.dumps(config)  # the dict form a sweep stores in its runs
