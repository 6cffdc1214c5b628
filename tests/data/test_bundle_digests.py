"""`DataBundle.digests`: one digest per split from the tensors themselves, stable across builds and saves,
changed by any change to a split's rows and by nothing else."""

from __future__ import annotations

import torch

from tinymem.data import DataBundle, build_bundle
from tinymem.data.bundle import SPLITS
from tinymem.specs import DataSpec

SMALL = DataSpec(length=6, max_ctx=48, num_main=400, num_extra=150, num_test=50, num_noise=40, prompt_len=20, k=20)


def test_same_data_same_digests_across_builds_and_saves(tmp_path):
    b = build_bundle(SMALL, 0)
    d = b.digests()
    assert list(d) == list(SPLITS)
    assert build_bundle(SMALL, 0).digests() == d  # a rebuild from the same spec and seed
    b.save(tmp_path)
    assert DataBundle.load(tmp_path).digests() == d  # what a trial reads back from the store
    assert build_bundle(SMALL, 1).digests()["forget"]["digest"] != d["forget"]["digest"]
    assert len({v["digest"] for v in d.values()}) == 4


def test_a_change_moves_only_its_own_split():
    b = build_bundle(SMALL, 0)
    before = b.digests()
    half = b["test/2"].shape[0] // 2
    b.tensors["test/2"] = b["test/2"].clone()
    b.tensors["test/2"][half, 5] += 1  # first row of the test half
    after = b.digests()
    assert after["test"]["digest"] != before["test"]["digest"]
    assert {s: after[s] for s in ("forget", "retain", "val")} == {s: before[s] for s in ("forget", "retain", "val")}
    b.tensors["forget"] = b.forget.clone()
    b.tensors["forget"][0, -1] += 1
    assert b.digests()["forget"]["digest"] != after["forget"]["digest"]


def test_shapes_and_parts():
    b = build_bundle(SMALL, 0)
    d = b.digests()
    assert d["forget"]["shape"] == [40, 48] and d["forget"]["dtype"] == "int64" and d["forget"]["tensors"] == ["forget"]
    names = [f"test/{n}" for n in b.test_names]
    assert d["val"]["tensors"] == d["test"]["tensors"] == names
    assert d["val"]["shape"][0] + d["test"]["shape"][0] == sum(b[n].shape[0] for n in names)
    assert d["val"]["shape"][0] == sum(b.test(n, "val").shape[0] for n in b.test_names)
    # A bundle without held-out sets has no val / test split to name.
    bare = DataBundle({"forget": torch.zeros(2, 4, dtype=torch.long), "retain": torch.ones(3, 4, dtype=torch.long)},
                      meta={"test_names": []})
    assert list(bare.digests()) == ["forget", "retain"]
