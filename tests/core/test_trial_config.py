"""TrialConfig: the typed trial configuration. `from_dict` keeps run_trial's validation and messages,
`to_dict` round-trips, and a dict and the equivalent TrialConfig run the same trial."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from tinymem.errors import ConfigError
from tinymem.hf.options import HFSourceOptions
from tinymem.store import DEFAULT_ROOT
from tinymem.trial import TRIAL_KEYS, TrialConfig, prepare_base, run_trial, stored_base


def test_defaults_and_typing():
    c = TrialConfig.from_dict({"method": "durable"})
    assert c == TrialConfig(method="durable")
    assert (c.storage, c.device, c.seed, c.preset, c.source) == (DEFAULT_ROOT, "auto", 0, None, HFSourceOptions())
    # empty values mean the defaults, as in the dict config
    c = TrialConfig.from_dict({"method": "durable", "storage": "", "device": None, "params": None, "set": None,
                               "seed": "3", "progress": 1, "out_dir": "", "model_dir": None})
    assert (c.storage, c.device, c.params, c.set, c.seed, c.progress, c.out_dir, c.model_dir) == (
        DEFAULT_ROOT, "auto", {}, {}, 3, True, None, None)


def test_hf_keys_go_to_the_source_options():
    c = TrialConfig.from_dict({"method": "subnet", "model": "hf:/m", "dtype": "bfloat16", "k": 8,
                               "forget_file": "f.jsonl"})
    assert c.source == HFSourceOptions(model="hf:/m", dtype="bfloat16", k=8, forget_file="f.jsonl")
    assert set(HFSourceOptions.keys()) <= set(TRIAL_KEYS)


def test_round_trip():
    d = {"method": "slimming", "params": {"epochs": 2}, "preset": "math-tiny", "set": {"train.epochs": 3},
         "storage": "/tmp/s", "device": "cpu", "seed": 4, "out_dir": "/tmp/o", "progress": True,
         "work_dir": "/tmp/w"}
    c = TrialConfig.from_dict(d)
    assert c.to_dict() == d and TrialConfig.from_dict(c.to_dict()) == c
    hf = TrialConfig.from_dict({"method": "durable", "model": "hf:/m", "prompt_len": 4})
    assert TrialConfig.from_dict(hf.to_dict()) == hf and hf.to_dict()["model"] == "hf:/m"
    base = TrialConfig.from_dict({"preset": "math-tiny"}, require_method=False)
    assert "method" not in base.to_dict() and TrialConfig.from_dict(base.to_dict(), require_method=False) == base
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.seed = 5


def test_validation_messages():
    with pytest.raises(ConfigError, match=r"unknown trial config key\(s\) \['bogus'\]; allowed: \['method'"):
        TrialConfig.from_dict({"method": "durable", "bogus": 1})
    with pytest.raises(ConfigError, match="trial config needs 'method'"):
        TrialConfig.from_dict({"preset": "math-tiny"})
    for other in ({"preset": "math-tiny"}, {"model_dir": "/x"}):
        with pytest.raises(ConfigError, match="give one base model"):
            TrialConfig.from_dict({"method": "durable", "model": "hf:/m", **other})
        with pytest.raises(ConfigError, match="give one base model"):  # built directly, too
            TrialConfig(method="durable", source=HFSourceOptions(model="hf:/m"), **other)
    with pytest.raises(ConfigError, match="unknown trial config key"):  # run_trial converts at entry
        run_trial({"method": "durable", "bogus": 1})
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        run_trial(TrialConfig(method="nope"))
    with pytest.raises(ConfigError, match="unknown hyperparameter"):
        run_trial(TrialConfig(method="durable", params={"nope": 1}))


def test_dict_and_trial_config_run_the_same_trial(tiny_store, tmp_path):
    root, stored = tiny_store
    d = {"method": "activations", "params": {"ratio": 0.05}, "preset": "math-tiny", "storage": str(root),
         "device": "cpu", "seed": 1, "work_dir": str(tmp_path / "w")}
    a = run_trial(d)
    b = run_trial(TrialConfig.from_dict({**d, "work_dir": str(tmp_path / "w2")}))
    assert a.after == b.after and a.base_key == b.base_key == stored.key
    assert a.info["neurons_ablated"] == b.info["neurons_ablated"]
    prepared = prepare_base({k: v for k, v in d.items() if k not in ("method", "params")})
    assert prepared.key == stored.key and not prepared.created
    assert prepare_base(TrialConfig(preset="math-tiny", storage=str(root), device="cpu")).key == stored.key


def test_stored_base_reads_what_prepare_base_made_and_nothing_else(tiny_store, tmp_path):
    """A sweep driver reads a base model that is already made instead of starting a Ray task for it: the answer
    must be prepare_base's, and None wherever prepare_base would still have work to do."""
    root, stored = tiny_store
    config = {"preset": "math-tiny", "storage": str(root), "device": "cpu"}
    prepared = prepare_base(config)  # caches the base evaluation
    found = stored_base(config)
    assert found is not None and not found.created
    assert (found.key, found.model_dir, found.data) == (prepared.key, prepared.model_dir, prepared.data)
    assert found.evaluation.metrics == prepared.evaluation.metrics
    assert found.evaluation.memorized_rows.tolist() == prepared.evaluation.memorized_rows.tolist()
    assert stored_base({**config, "storage": str(tmp_path / "empty")}) is None  # not trained yet
    assert stored_base({**config, "set": {"seed": 12345}}) is None  # another spec: another key, not stored
    copy = tmp_path / "copy"  # the model without its cached evaluation: prepare_base would evaluate it
    shutil.copytree(Path(root) / "models", copy / "models")
    assert stored_base({**config, "storage": str(copy)}) is None
    assert not (copy / "cache").exists()  # and nothing was written
