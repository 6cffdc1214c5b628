"""Anytime checkpoints in the library: the schedule, and what `run_trial(..., anytime=True)` promises a sweep: a
candidate at epoch e has exactly the numbers of a run with `epochs = e` (same model, same evaluation), its time
is method time reported apart, the last epoch is the trial itself, and a method that is not anytime makes none."""

from __future__ import annotations

import math

import pytest

from tinymem.errors import ConfigError
from tinymem.mitigations import get_method, method_names
from tinymem.mitigations._anytime import checkpoint_epochs
from tinymem.trial import TrialConfig, run_trial


def test_schedule_every_epoch_up_to_20_then_geometric():
    assert checkpoint_epochs(1) == []
    assert checkpoint_epochs(8) == list(range(1, 8))
    assert checkpoint_epochs(20) == list(range(1, 20))
    long = checkpoint_epochs(1000)
    assert long[:10] == [1, 2, 3, 4, 6, 8, 11, 16, 23, 32] and long[-1] == 724 and len(long) == 19
    assert checkpoint_epochs(8, first=3) == [3, 4, 5, 6, 7]


def test_every_method_says_whether_it_is_anytime():
    anytime = {m for m in method_names() if get_method(m).anytime}
    assert {"subnet", "balanced_subnet", "random_prune", "slimming", "hard_concrete", "grad_ascent", "grad_diff",
            "npo", "simnpo"} == anytime
    for name in anytime:  # the candidate of epoch e is a config with `epochs = e`
        assert "epochs" in get_method(name).Params.names()


def test_config_key_is_validated():
    assert TrialConfig.from_dict({"method": "subnet", "anytime": "true"}).anytime is True
    assert TrialConfig.from_dict({"method": "subnet", "anytime": True}).to_dict()["anytime"] is True
    with pytest.raises(ConfigError, match=r"anytime='maybe' is not allowed; choose from \[true, false\]"):
        TrialConfig.from_dict({"method": "subnet", "anytime": "maybe"})
    with pytest.raises(ConfigError, match=r"anytime_from=0 is not allowed; allowed: an integer >= 1"):
        TrialConfig.from_dict({"method": "subnet", "anytime_from": 0})
    assert TrialConfig.from_dict({"method": "subnet", "anytime_at": "10, 1,10"}).anytime_at == (1, 10)
    assert TrialConfig.from_dict({"method": "subnet", "anytime_at": [10, 1]}).to_dict()["anytime_at"] == [1, 10]
    with pytest.raises(ConfigError, match=r"anytime_at='1,x' is not allowed; allowed: a list or a comma list"):
        TrialConfig.from_dict({"method": "subnet", "anytime_at": "1,x"})


def _config(tiny_store, method, params, **extra):
    root, _ = tiny_store
    return {"method": method, "params": params, "preset": "math-tiny", "storage": str(root), "device": "cpu",
            **extra}


def _same(a: dict[str, float], b: dict[str, float]) -> bool:
    return all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in b)


@pytest.mark.parametrize("method,params", [
    ("balanced_subnet", {"ratio": 0.3, "epochs": 3, "batch_size": 32}),
    ("slimming", {"epochs": 3, "stop_loss": 0.0, "ratio": 0.05}),
    ("grad_ascent", {"epochs": 3, "lr": 1e-3, "batch_size": 8}),
])
def test_candidate_at_epoch_e_equals_the_run_with_epochs_e(tiny_store, tmp_path, method, params):
    reports: list[dict[str, float]] = []
    long = run_trial(_config(tiny_store, method, params, anytime=True, work_dir=str(tmp_path / "a")),
                     callback=reports.append)
    assert [int(c["epoch"]) for c in long.candidates] == [1, 2]  # epoch 3 is the trial itself
    assert [int(r["epoch"]) for r in reports if r.get("checkpoint") == 1.0] == [1, 2]
    assert all("mem_pct" not in r for r in reports if "checkpoint" not in r)
    assert long.info["checkpoints"] == 2.0
    assert 0 < long.info["seconds_checkpoint_evals"] < long.seconds["mitigate"]
    short = run_trial(_config(tiny_store, method, {**params, "epochs": 2}, work_dir=str(tmp_path / "b")))
    assert short.candidates == [] and "seconds_checkpoint_evals" not in short.info
    candidate = {k: v for k, v in long.candidates[1].items() if k not in ("epoch", "checkpoint")}
    assert set(candidate) == set(short.after)
    assert _same(candidate, short.after), "a checkpoint must be exactly the run with epochs = e"
    assert not _same(long.after, short.after)  # and the third epoch did change the model


def test_a_method_that_is_not_anytime_makes_no_candidates(tiny_store, tmp_path):
    assert not get_method("finetune_clean").anytime
    reports: list[dict[str, float]] = []
    result = run_trial(_config(tiny_store, "finetune_clean", {"epochs": 2}, anytime=True,
                               work_dir=str(tmp_path)), callback=reports.append)
    assert result.candidates == [] and reports and not any("checkpoint" in r for r in reports)
    assert "seconds_checkpoint_evals" not in result.info


def test_anytime_at_evaluates_exactly_the_epochs_asked_below_the_run(tiny_store, tmp_path):
    """A grid's other epoch counts as checkpoints (`--grid paper-anytime`): only those, and never the last."""
    params = {"ratio": 0.3, "epochs": 4, "batch_size": 32}
    result = run_trial(_config(tiny_store, "balanced_subnet", params, anytime=True, anytime_at=[1, 3, 4, 10],
                               work_dir=str(tmp_path)))
    assert [int(c["epoch"]) for c in result.candidates] == [1, 3]
    assert result.info["checkpoints"] == 2.0
