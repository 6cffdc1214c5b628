"""Small file helpers for the storage root, which is a local path or an fsspec URI (`s3://`, `gs://`, ...).

Everything a sweep writes lives under that one root: the model store (`models/`, `cache/`), Ray Tune's
experiments (`ray/<experiment>/<sweep id>/`) and ours (`sweeps/<experiment>/<sweep id>/`: the sweep record,
the trial ledger, reports). Writes are atomic: a local file is written beside its target and
renamed over it; an object-store object is replaced whole by a single PUT (the ledger, `sweeps.ledger`,
appends lines to a local file instead).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from sweeps.errors import SweepError
from tinymem.store import is_uri
from tinymem.util import atomic_path, atomic_write_text

# The fsspec backend each object-store scheme needs, and the extra of this project that installs it.
BACKENDS = {"s3": ("s3fs", "s3"), "s3a": ("s3fs", "s3"), "gs": ("gcsfs", "gcs"), "gcs": ("gcsfs", "gcs")}


def is_remote(root: str) -> bool:
    return is_uri(str(root))


def normalize_root(root: str) -> str:
    """Absolute local path (so Ray workers and `mlflow ui` agree on it), or the URI unchanged."""
    root = str(root)
    if root.startswith("file://"):
        root = root[len("file://"):]
    return root if is_remote(root) else str(Path(root).expanduser().resolve())


def check_root(root: str) -> None:
    """Fail fast, before any trial, if the root cannot be used from here: a local root that is a file (or lies
    under one) or cannot be written; an object store whose fsspec backend is not installed, or whose bucket
    cannot be listed (missing, no credentials, endpoint unreachable). Creates nothing."""
    if not is_remote(root):
        path = Path(root)
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not existing.is_dir():
            raise SweepError(f"--storage {root!r}: {existing} is a file; expected a directory (created if missing)")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise SweepError(f"--storage {root!r}: directory {existing} is not writable by this user")
        return
    scheme = root.split("://", 1)[0].lower()
    try:
        fs, path = _fs(root)
    except (ImportError, ValueError) as e:  # backend not installed / protocol unknown to fsspec
        pkg, extra = BACKENDS.get(scheme, (None, None))
        hint = f"pip install 'tinymem-sweeps[{extra}]' (or {pkg})" if pkg else "install its fsspec backend"
        raise SweepError(f"--storage {root!r}: no filesystem for {scheme}:// here ({e}); {hint}") from None
    bucket = path.lstrip("/").split("/", 1)[0]
    try:
        fs.ls(bucket, detail=False)
    except Exception as e:  # any backend's "no such bucket", "access denied", connection error
        raise SweepError(f"--storage {root!r}: cannot list bucket {bucket!r} "
                         f"({type(e).__name__}: {str(e)[:300]})") from None


def join(root: str, *parts: str) -> str:
    if is_remote(root):
        return "/".join([root.rstrip("/"), *[p.strip("/") for p in parts]])
    return str(Path(root, *parts))


def _fs(uri: str):
    import fsspec

    return fsspec.core.url_to_fs(uri)


def write_text(target: str, text: str) -> None:
    """Atomic write of a small text file (local rename, or one whole-object PUT)."""
    if is_remote(target):
        fs, path = _fs(target)
        with fs.open(path, "w") as f:
            f.write(text)
        return
    atomic_write_text(target, text)


def read_text(target: str) -> str | None:
    if is_remote(target):
        fs, path = _fs(target)
        if not fs.exists(path):
            return None
        with fs.open(path, "r") as f:
            return f.read()
    p = Path(target)
    return p.read_text() if p.exists() else None


def write_json(target: str, obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=1, sort_keys=True, default=str))


def read_json(target: str) -> Any | None:
    text = read_text(target)
    return None if text is None else json.loads(text)


def list_dirs(target: str) -> list[str]:
    """Names of the sub-directories of `target` (sorted); empty if it does not exist."""
    if is_remote(target):
        fs, path = _fs(target)
        if not fs.exists(path):
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False) if fs.isdir(p))
    p = Path(target)
    return sorted(d.name for d in p.iterdir() if d.is_dir()) if p.exists() else []


def upload(local: str | Path, target: str) -> str:
    """Copy a local file to `target` (no-op if it is that file); returns `target`."""
    if is_remote(target):
        fs, path = _fs(target)
        fs.put_file(str(local), path)
        return target
    if Path(local).resolve() != Path(target).resolve():
        with atomic_path(target) as tmp:
            shutil.copyfile(local, tmp)
    return target


def local_dir(target: str) -> Path:
    """A local directory for files destined to `target`: the directory itself, or a cache mirror of a URI."""
    if not is_remote(target):
        Path(target).mkdir(parents=True, exist_ok=True)
        return Path(target)
    cache = Path(os.environ.get("TINYMEM_CACHE", Path.home() / ".cache" / "tinymem"))
    d = cache / "sweeps" / hashlib.sha256(target.encode()).hexdigest()[:16]
    d.mkdir(parents=True, exist_ok=True)
    return d


def upload_dir(local: str | Path, target: str) -> str:
    """Copy a local directory's files to `target` (a directory path or URI), `tinymem.json` last when present (it
    marks a model directory complete); returns `target`."""
    files = sorted((p for p in Path(local).iterdir() if p.is_file()), key=lambda p: (p.name == "tinymem.json", p.name))
    if not is_remote(target):
        Path(target).mkdir(parents=True, exist_ok=True)
    for f in files:
        upload(f, join(target, f.name))
    return target


def download_dir(target: str, local: str | Path) -> Path:
    """Copy the files of directory `target` (path or URI) into the local directory `local`; returns it."""
    local = Path(local)
    local.mkdir(parents=True, exist_ok=True)
    if is_remote(target):
        fs, path = _fs(target)
        for p in fs.ls(path, detail=False):
            if fs.isfile(p):
                fs.get_file(p, str(local / p.rstrip("/").rsplit("/", 1)[-1]))
        return local
    for f in Path(target).iterdir():
        if f.is_file():
            shutil.copyfile(f, local / f.name)
    return local


def remove_dir(target: str) -> None:
    """Delete directory `target` (path or URI) and everything in it; nothing if it is not there."""
    if is_remote(target):
        fs, path = _fs(target)
        if fs.exists(path):
            fs.rm(path, recursive=True)
        return
    shutil.rmtree(target, ignore_errors=True)


def read_texts(target: str, suffix: str) -> list[tuple[str, str]]:
    """(name, text) of every file of directory `target` (path or URI) whose name ends with `suffix`, sorted by
    name; empty if it does not exist. On an object store the objects are fetched in one `cat` call, which
    the backends run concurrently."""
    if not is_remote(target):
        p = Path(target)
        return [(f.name, f.read_text()) for f in sorted(p.iterdir()) if f.is_file() and f.name.endswith(suffix)] \
            if p.is_dir() else []
    fs, path = _fs(target)
    if not fs.exists(path):
        return []
    paths = [p for p in fs.ls(path, detail=False) if p.endswith(suffix)]
    blobs = fs.cat(paths) if paths else {}
    if isinstance(blobs, bytes):  # a backend that answers one path with its bytes, not a dict
        blobs = {paths[0]: blobs}
    return sorted((k.rstrip("/").rsplit("/", 1)[-1], v.decode("utf-8", errors="replace")) for k, v in blobs.items())


def is_file(target: str) -> bool:
    """Whether file `target` (path or URI) exists."""
    if is_remote(target):
        fs, path = _fs(target)
        return fs.exists(path)
    return Path(target).is_file()
