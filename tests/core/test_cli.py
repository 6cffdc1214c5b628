import json
import os
import subprocess
import sys

import pytest

TINYMEM = [sys.executable, "-m", "tinymem.cli"]


def run(args, **kw):
    return subprocess.run(TINYMEM + args, capture_output=True, text=True, timeout=600, **kw)


def test_train_json_then_store_hit_then_eval(tmp_path):
    r = run(["train", "--preset", "math-tiny", "--root", str(tmp_path), "--json", "--set", "epochs=3"])
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out) >= {"model_dir", "spec", "metrics"} and out["created"] is True
    assert out["spec"]["train"]["epochs"] == 3
    r2 = run(["train", "--preset", "math-tiny", "--root", str(tmp_path), "--json", "--set", "epochs=3"])
    out2 = json.loads(r2.stdout)
    assert out2["created"] is False and out2["model_dir"] == out["model_dir"]
    assert out2["metrics"] == out["metrics"]
    r3 = run(["eval", "--model", out["model_dir"], "--json"])
    assert r3.returncode == 0, r3.stderr
    assert json.loads(r3.stdout)["metrics"]["test_acc"] == pytest.approx(out["metrics"]["test_acc"])


@pytest.mark.parametrize("args,needle", [
    (["train", "--preset", "nope"], "unknown preset 'nope'; allowed: ["),
    (["train", "--set", "foo=1"], "unknown key 'foo'"),
    (["train", "--set", "epochs=ten"], "bad value 'ten' for epochs"),
    (["train", "--set", "n_layer=0"], "n_layer=0 must be >= 1"),
    (["eval", "--model", "/nonexistent/dir"], "tinymem.json is missing"),
])
def test_bad_input_is_one_clear_line_exit_2(args, needle, tmp_path):
    r = run(args + (["--root", str(tmp_path)] if args[0] == "train" else []))
    assert r.returncode == 2
    assert needle in r.stderr
    assert "Traceback" not in r.stderr


def test_presets_lists_demo_and_paper():
    r = run(["presets"])
    assert r.returncode == 0
    for name in ("math-demo", "increment-noise-4l", "mult-backdoor-16l"):
        assert name in r.stdout
