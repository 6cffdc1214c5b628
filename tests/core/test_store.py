import json
import multiprocessing as mp
from pathlib import Path

import pytest
import torch

from tinymem.build import load_model_dir
from tinymem.errors import StoreError
from tinymem.store import MANIFEST, ModelStore, read_manifest


def _build_counting(tmp: Path, marker: Path) -> dict:
    # counts builds with one line per call, so a test can see how many processes really built
    with open(marker, "a") as f:
        f.write("built\n")
    (tmp / "weights.bin").write_bytes(b"x" * 1000)
    import time

    time.sleep(0.5)  # widen the race window
    return {"spec": {"k": 1}}


def _worker(root: str, marker: str, q) -> None:
    store = ModelStore(root)
    d, m, created = store.get_or_create("abc", lambda tmp: _build_counting(tmp, Path(marker)))
    q.put((str(d), created, (d / "weights.bin").stat().st_size))


def test_round_trip_and_reuse(tmp_path):
    store = ModelStore(tmp_path)
    d, m, created = store.get_or_create("k1", lambda tmp: ((tmp / "a.txt").write_text("hi"), {"spec": {}})[1])
    assert created and (d / "a.txt").read_text() == "hi" and m["files"]["a.txt"]
    d2, m2, created2 = store.get_or_create("k1", lambda tmp: pytest.fail("must not rebuild"))
    assert not created2 and d2 == d and m2 == m
    assert store.keys() == ["k1"]


def test_two_processes_build_once(tmp_path):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    marker = tmp_path / "builds.log"
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), str(marker), q)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert marker.read_text().count("built") == 1
    assert sorted(r[1] for r in results) == [False, True]
    assert all(r[2] == 1000 for r in results)
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".tmp")]


def test_failed_build_leaves_nothing(tmp_path):
    store = ModelStore(tmp_path)

    def boom(tmp):
        (tmp / "half.bin").write_bytes(b"1")
        raise RuntimeError("crash mid-build")

    with pytest.raises(RuntimeError):
        store.get_or_create("k2", boom)
    assert not store.has("k2")
    assert not [p for p in (tmp_path / "models").iterdir() if not p.name.startswith(".") or p.name.startswith(".tmp")]


def test_damage_is_detected_with_a_clear_error(tiny_store):
    root, stored = tiny_store
    loaded = load_model_dir(stored.directory)
    assert loaded.manifest["key"] == stored.key
    # copy the entry and damage the copy's weights
    import shutil

    bad = Path(root) / "damaged"
    shutil.copytree(stored.directory, bad)
    data = bytearray((bad / "model.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(StoreError, match="model.safetensors does not match its checksum"):
        read_manifest(bad)
    (bad / "model.safetensors").unlink()
    with pytest.raises(StoreError, match="model.safetensors is missing"):
        load_model_dir(bad)
    (bad / MANIFEST).write_text("{not json")
    with pytest.raises(StoreError, match="damaged"):
        read_manifest(bad)


def test_model_dir_loads_with_plain_transformers(tiny_store):
    from transformers import AutoModelForCausalLM

    _, stored = tiny_store
    model = AutoModelForCausalLM.from_pretrained(stored.directory)
    manifest = json.loads((stored.directory / MANIFEST).read_text())
    assert manifest["spec"]["model"]["n_layer"] == model.config.n_layer
    assert "mem_pct" in manifest["metrics"]


def test_file_uri_and_fsspec_remote(tmp_path):
    # memory:// exercises the object-store code path (upload, manifest last, fetch into a cache)
    store = ModelStore("memory://tinymem-test-store", cache_dir=tmp_path / "cache")
    assert store.remote
    d, m, created = store.get_or_create("r1", lambda tmp: ((tmp / "w.bin").write_bytes(b"abc"), {"spec": {}})[1])
    assert created and (d / "w.bin").read_bytes() == b"abc"
    other = ModelStore("memory://tinymem-test-store", cache_dir=tmp_path / "cache2")
    d2, m2 = other.load("r1")
    assert (d2 / "w.bin").read_bytes() == b"abc" and m2["files"] == m["files"]
    assert ModelStore(f"file://{tmp_path}/local").remote is False
