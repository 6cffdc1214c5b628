"""tinymem.util: atomic writes leave no temporary file and never half a file, JSON-safe values, the model
device, and eval mode that gives the caller's mode back even when the block raises."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from tinymem.util import (atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text, eval_mode,
                          json_safe, model_device, sha256_file, temp_path)


def leftovers(directory):
    """Every file of `directory` but the ones a test wrote on purpose: temporary files are hidden."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_atomic_writes_replace_the_file_and_leave_no_temporary(tmp_path):
    target = tmp_path / "sub" / "out.bin"  # the parent is created
    assert atomic_write_bytes(target, b"one") == target
    assert target.read_bytes() == b"one"
    atomic_write_text(target, "twö")
    assert target.read_text(encoding="utf-8") == "twö"
    atomic_write_json(tmp_path / "sub" / "x.json", {"a": 1, "b": [1.5, float("nan")]})
    assert json.loads((tmp_path / "sub" / "x.json").read_text()) == {"a": 1, "b": [1.5, None]}
    assert leftovers(tmp_path / "sub") == []


def test_atomic_path_on_error_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="mid-write"):
        with atomic_path(target) as tmp:
            tmp.write_text("half a fi")
            raise RuntimeError("mid-write")
    assert target.read_text() == "old"  # never half a file
    assert leftovers(tmp_path) == []
    # a new file that fails is not created at all
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "new.txt") as tmp:
            tmp.write_text("x")
            raise RuntimeError("boom")
    assert not (tmp_path / "new.txt").exists() and leftovers(tmp_path) == []
    # a writer that fails before creating its temporary file is fine too
    with pytest.raises(ValueError):
        with atomic_path(tmp_path / "never.txt"):
            raise ValueError("before any byte")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_write_json_failure_leaves_old_file(tmp_path):
    target = tmp_path / "r.json"
    atomic_write_json(target, {"ok": 1})

    class Unserializable:
        def __str__(self):
            raise TypeError("no")

    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": Unserializable()})
    assert json.loads(target.read_text()) == {"ok": 1} and leftovers(tmp_path) == []


def test_temp_paths_are_hidden_unique_siblings(tmp_path):
    a, b = temp_path(tmp_path / "f.json"), temp_path(tmp_path / "f.json")
    assert a != b and a.parent == b.parent == tmp_path
    assert a.name.startswith(".f.json.") and a.name.endswith(".tmp")


def test_sha256_file(tmp_path):
    import hashlib

    data = bytes(range(256)) * 5000  # more than one 1 MiB chunk
    (tmp_path / "d").write_bytes(data)
    assert sha256_file(tmp_path / "d") == hashlib.sha256(data).hexdigest()


def test_json_safe():
    value = {"a": float("nan"), "b": [float("inf"), -float("inf"), 1.0, (2, float("nan"))], "c": "x",
             "d": None, "e": 3, "f": {"g": math.nan}}
    assert json_safe(value) == {"a": None, "b": [None, None, 1.0, [2, None]], "c": "x", "d": None, "e": 3,
                                "f": {"g": None}}
    json.dumps(json_safe(value), allow_nan=False)  # parseable by every reader
    assert json_safe(1.5) == 1.5 and json_safe("nan") == "nan"


def test_model_device_prefers_the_input_embedding():
    plain = nn.Linear(2, 2)
    assert model_device(plain) == torch.device("cpu")

    class WithEmbedding(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(2, 2)
            self.emb = nn.Embedding(3, 2)

        def get_input_embeddings(self):
            return self.emb

    m = WithEmbedding()
    assert model_device(m) == m.emb.weight.device


def test_eval_mode_restores_the_mode_even_on_error():
    m = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    m.train()
    with eval_mode(m) as inner:
        assert inner is m and not m.training and not m[1].training
    assert m.training and m[1].training
    with pytest.raises(RuntimeError):
        with eval_mode(m):
            raise RuntimeError("inside")
    assert m.training and m[1].training
    m.eval()
    with pytest.raises(RuntimeError):
        with eval_mode(m):
            raise RuntimeError("inside")
    assert not m.training and not m[1].training
