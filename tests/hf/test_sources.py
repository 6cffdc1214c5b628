"""Model sources (`hf:NAME_OR_PATH[@REVISION]`), dtype/device validation, GPU placement and sizing, and the clear
one-line errors for hub models without network."""

from __future__ import annotations

import time

import pytest

from tinymem.cli import main
from tinymem.errors import ConfigError
from tinymem.hf.memory import Architecture, estimate_gpus, estimate_method_gb
from tinymem.hf.models import parse_device, parse_dtype, parse_source, plan_placement
from tinymem.hf.options import is_hf_source

GB = 2**30
PYTHIA_28B = 2_775_208_960  # EleutherAI/pythia-2.8b-deduped, counted from its config on the meta device
PYTHIA_28B_ARCH = Architecture(hidden=2560, layers=32, inner=10240, vocab=50304)


def test_parse_sources(tmp_path):
    assert parse_source("hf:EleutherAI/pythia-2.8b-deduped@step143000").revision == "step143000"
    hub = parse_source("hf:gpt2")
    assert (hub.name, hub.revision, hub.local) == ("gpt2", None, None) and hub.text == "hf:gpt2"
    d = tmp_path / "my@model"
    d.mkdir()
    local = parse_source(f"hf:{d}")  # an existing directory wins, '@' and all
    assert local.local == d.resolve() and local.revision is None
    assert is_hf_source("hf:x") and not is_hf_source(str(d))


@pytest.mark.parametrize("value,needle", [
    ("hf:", "names no model"),
    ("gpt2", "must start with 'hf:'"),
    ("hf:gpt2@", "empty revision"),
    ("hf:/no/such/dir", "model directory '/no/such/dir' does not exist"),
])
def test_bad_sources(value, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_source(value)


def test_revision_on_a_local_directory_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="applies to hub models only"):
        parse_source(f"hf:{tmp_path}@main")


def test_dtype_and_device_validation():
    import torch

    assert parse_dtype("bfloat16") is torch.bfloat16 and parse_dtype(None) is torch.float32
    with pytest.raises(ConfigError, match=r"dtype 'fp8' is not allowed; choose from \['float32', 'bfloat16', 'float16'\]"):
        parse_dtype("fp8")
    with pytest.raises(ConfigError, match=r"device 'tpu' is not allowed; choose from \['auto', 'cpu', 'cuda'\]"):
        parse_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="torch sees no CUDA GPU"):
            parse_device("cuda")


def test_placement_rule():
    a100 = [80 * GB]
    assert plan_placement(PYTHIA_28B, "float16", "auto", [], False).device == "cpu"
    assert plan_placement(PYTHIA_28B, "float16", "cpu", a100 * 4, True).device == "cpu"
    one = plan_placement(PYTHIA_28B, "float16", "auto", a100, False)
    assert one.device == "cuda:0" and not one.spread
    # 6.9B in float32 (27.4 GB) on 40 GB GPUs: more than half of one, so spread over the node's four
    spread = plan_placement(6_857_302_016, "float32", "cuda", [40 * GB] * 4, True)
    assert spread.spread and spread.device_map == "auto"
    with pytest.raises(ConfigError, match="needs the `accelerate` package"):
        plan_placement(6_857_302_016, "float32", "cuda", [40 * GB] * 4, False)
    with pytest.raises(ConfigError, match="more than 50% of the one GPU's 40 GiB"):
        plan_placement(6_857_302_016, "float32", "cuda", [40 * GB], True)
    with pytest.raises(ConfigError, match="'cuda:3' does not exist; 2 GPU"):
        plan_placement(PYTHIA_28B, "float16", "cuda:3", a100 * 2, True)


def test_estimate_gpus_for_pythia_28b():
    f16 = dict(arch=PYTHIA_28B_ARCH)
    # BalancedSubnet (the paper's best method) on 2.8B in float16: weights 5.2 GiB, scores/grads/momentum/
    # masks over the 1.68B MLP weights, activations of a 64x80 batch: ~38 GiB, two trials per 80 GB GPU.
    gb = estimate_method_gb(PYTHIA_28B, "float16", "unlearn_weight", "balanced_subnet", **f16)
    assert 30 < gb < 45
    assert estimate_gpus(PYTHIA_28B, "float16", "unlearn_weight", 80, "balanced_subnet", **f16) == 0.5
    assert estimate_gpus(PYTHIA_28B, "float16", "unlearn_weight", 40, "balanced_subnet", **f16) == 1.0
    # cheap gate training packs several trials on one GPU; float32 doubles the need
    assert estimate_gpus(PYTHIA_28B, "float16", "unlearn_neuron", 80, "slimming", **f16) == 0.25
    assert estimate_gpus(PYTHIA_28B, "float32", "unlearn_weight", 80, "balanced_subnet", **f16) == 1.0
    # a whole number of GPUs once one is not enough (integrated_gradients' 32k-token batches); second_order's
    # float64 Fisher blocks (~1 TiB on 2.8B) do not fit one node
    assert estimate_gpus(PYTHIA_28B, "float16", "unlearn_neuron", 80, "integrated_gradients", **f16) == 2.0
    with pytest.raises(ConfigError, match="more than one node's 8"):
        estimate_gpus(PYTHIA_28B, "float16", "unlearn_weight", 80, "second_order", **f16)
    # the family alone (unknown method) is the family's worst case; a guessed architecture is close
    assert estimate_gpus(PYTHIA_28B, "float16", "finetune", 80) == 1.0
    guessed = estimate_method_gb(PYTHIA_28B, "float16", "unlearn_weight", "balanced_subnet")
    assert abs(guessed - gb) / gb < 0.1
    with pytest.raises(ConfigError, match="do not apply to Hugging Face models"):
        estimate_gpus(PYTHIA_28B, "float16", "regularizer", 80)
    with pytest.raises(ConfigError, match="method family 'x' is not allowed"):
        estimate_gpus(PYTHIA_28B, "float16", "x", 80)
    with pytest.raises(ConfigError, match="gpu_mem_gb=0 must be > 0"):
        estimate_gpus(PYTHIA_28B, "float16", "finetune", 0)


def test_each_method_states_its_memory():
    """The sizing facts live on the method classes: every method that runs on Hugging Face models has a
    `memory` (its own or its family base's), its batch is its default batch_size, and a method without a
    registered name gets the family's worst case."""
    import dataclasses

    from tinymem.hf.memory import memory_of
    from tinymem.mitigations import FAMILY_BASES, REGISTRY, get_family_base
    from tinymem.mitigations._neuron import TOKENS_PER_BATCH

    assert sorted(FAMILY_BASES) == ["finetune", "unlearn_neuron", "unlearn_weight"]
    for name, cls in REGISTRY.items():
        if cls.family == "regularizer":
            assert cls.memory is None
            continue
        m = memory_of(cls.family, name)
        assert m is (cls.memory or get_family_base(cls.family).memory)
        if m.rows and "batch_size" in cls.Params.names():
            assert m.rows == cls.Params().batch_size, name
        if not m.rows:
            assert m.tokens == TOKENS_PER_BATCH, name
        base = get_family_base(cls.family).memory  # the family's worst case holds at least as much
        for f in ("weight_copies", "mlp_copies"):
            assert getattr(m, f) <= getattr(base, f), (name, f)
    assert memory_of("finetune", "not_registered") is get_family_base("finetune").memory
    with pytest.raises(ValueError, match="exactly one of rows"):
        dataclasses.replace(get_family_base("finetune").memory, tokens=8)


def test_hub_name_offline_is_one_clear_line_quickly(capsys, tmp_path):
    t0 = time.perf_counter()
    rc = main(["eval", "--model", "hf:tinymem-test/no-such-model@step1", "--test-file", str(tmp_path / "t.jsonl")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    # the file is checked before any model loads
    assert "does not exist" in err
    (tmp_path / "t.jsonl").write_text("[1, 2, 3]\n")
    rc = main(["eval", "--model", "hf:tinymem-test/no-such-model@step1", "--test-file", str(tmp_path / "t.jsonl")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "'hf:tinymem-test/no-such-model@step1' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set" in err
    assert time.perf_counter() - t0 < 15


def test_hub_unreachable_without_offline_flag_fails_fast(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: the hub is unreachable
    (tmp_path / "t.jsonl").write_text("[1, 2, 3]\n")
    t0 = time.perf_counter()
    rc = main(["eval", "--model", "hf:tinymem-test/no-such-model", "--test-file", str(tmp_path / "t.jsonl")])
    err = capsys.readouterr().err
    assert rc == 2 and "the Hugging Face hub is unreachable from here" in err and "Traceback" not in err
    assert time.perf_counter() - t0 < 15


def test_missing_files_fail_before_the_model_loads(capsys):
    # the hub model does not exist anywhere: the error must be about the files, found before any loading
    rc = main(["eval", "--model", "hf:tinymem-test/no-such-model"])
    assert rc == 2 and "nothing to evaluate" in capsys.readouterr().err
    rc = main(["mitigate", "--model", "hf:tinymem-test/no-such-model", "--method", "subnet"])
    assert rc == 2 and "needs a memorized-sequence file" in capsys.readouterr().err


def test_hf_options_without_hf_model_are_rejected(capsys):
    rc = main(["mitigate", "--method", "subnet", "--forget-file", "x.jsonl"])
    assert rc == 2
    assert "--forget-file apply to Hugging Face models only (--model hf:NAME_OR_PATH)" in capsys.readouterr().err
