"""Tracking-URI checks and the storage helpers (no Ray, no trials); the trial ledger: test_ledger.py."""

from __future__ import annotations


import pytest

from sweeps import storage
from sweeps.errors import SweepError
from sweeps.tracking_uri import check_tracking_uri, default_tracking_uri


def test_default_tracking_uri_is_sqlite_under_the_storage_root(tmp_path):
    assert default_tracking_uri(str(tmp_path)) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    # An object-store root cannot hold a SQLite file: the driver's ./tinymem-runs does.
    assert default_tracking_uri("s3://bucket/x").endswith("/tinymem-runs/mlflow.db")


def test_check_tracking_uri(tmp_path):
    check_tracking_uri(f"sqlite:///{tmp_path / 'deep' / 'dir' / 'm.db'}")  # creates what it needs
    assert (tmp_path / "deep" / "dir").is_dir()
    with pytest.raises(SweepError, match="unsupported tracking URI scheme 'ftp'.*allowed"):
        check_tracking_uri("ftp://example.org/x")
    with pytest.raises(SweepError, match="file store, which MLflow 3 refuses"):
        check_tracking_uri(str(tmp_path / "mlruns"))
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(SweepError, match="cannot open the SQLite file"):
        check_tracking_uri(f"sqlite:///{blocked / 'm.db'}")


def test_storage_helpers_local(tmp_path):
    root = storage.normalize_root(str(tmp_path / "r"))
    target = storage.join(root, "sweeps", "e", "s1", "x.json")
    storage.write_json(target, {"a": 1})
    assert storage.read_json(target) == {"a": 1}
    assert storage.list_dirs(storage.join(root, "sweeps", "e")) == ["s1"]
    assert storage.read_json(storage.join(root, "missing.json")) is None
    assert storage.join("s3://b/root", "sweeps", "e") == "s3://b/root/sweeps/e"
    assert storage.normalize_root("file:///tmp/x") == "/tmp/x"
