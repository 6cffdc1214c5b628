"""The model store: content-addressed model directories under one root (a local path or an fsspec URI).

An entry is `<root>/models/<key>/`, where key is the spec hash (`BaseSpec.key()`, or a hash that also covers
a method and its hyperparameters for models trained with a regularizer). Its files:

- `config.json`, `model.safetensors`: a Hugging Face `save_pretrained` directory (loads with
  `AutoModelForCausalLM.from_pretrained`);
- `data.safetensors`, `data.json` (+ tokenizer files for text): the data bundle;
- `tinymem.json`: the spec, base metrics, and the sha256 of every other file. It is written last, so an
  entry without it is incomplete and is never read.

Writes are atomic: an entry is built in a private temporary directory and renamed into place (local), or
uploaded file by file with `tinymem.json` last (object stores). Two processes asking for the same missing
entry are serialised by a lock file, and the loser of a race simply uses the winner's entry. A damaged entry
(missing file, checksum mismatch) is detected on load with a clear error naming the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tinymem.errors import StoreError
from tinymem.util import atomic_write_text, sha256_file

MANIFEST = "tinymem.json"
DEFAULT_ROOT = "./tinymem-runs"
FORMAT_VERSION = 1


def is_uri(root: str) -> bool:
    return "://" in root and not root.startswith("file://")


# The MLflow tag in which a sweep records each trial's config (JSON): `tinymem mitigate --from-run` reads it.
TRIAL_CONFIG_TAG = "tinymem.trial_config"


def default_tracking_uri(root: str | os.PathLike = DEFAULT_ROOT) -> str:
    """The MLflow tracking URI of runs under `root` unless told otherwise: the SQLite file `mlflow.db` under it (an
    absolute path, so every process agrees), or under `DEFAULT_ROOT` when the root is an object store (SQLite
    needs a local file). The sweeps log there; `tinymem mitigate --from-run` reads there."""
    root = str(root)
    if root.startswith("file://"):
        root = root[len("file://"):]
    base = DEFAULT_ROOT if is_uri(root) else root
    return f"sqlite:///{Path(base).expanduser().resolve() / 'mlflow.db'}"


def write_manifest(directory: Path, info: dict[str, Any]) -> dict[str, Any]:
    """Checksum every file of `directory` and write `tinymem.json` (call it last)."""
    files = {p.name: sha256_file(p) for p in sorted(directory.iterdir()) if p.is_file() and p.name != MANIFEST}
    manifest = {"format_version": FORMAT_VERSION, **info, "files": files}
    atomic_write_text(directory / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True, default=str))
    return manifest


def read_manifest(directory: Path, verify: bool = True) -> dict[str, Any]:
    """Read and (optionally) verify an entry's manifest; raise StoreError naming what is wrong."""
    mpath = directory / MANIFEST
    if not mpath.exists():
        raise StoreError(f"{directory} is not a complete model directory: {MANIFEST} is missing")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise StoreError(f"{mpath} is damaged (invalid JSON: {e})") from None
    if verify:
        for name, digest in manifest.get("files", {}).items():
            f = directory / name
            if not f.exists():
                raise StoreError(f"model directory {directory} is damaged: {name} is missing")
            if sha256_file(f) != digest:
                raise StoreError(f"model directory {directory} is damaged: {name} does not match its checksum "
                                 f"(delete the directory to rebuild it)")
    return manifest


class ModelStore:
    """Content-addressed model directories under `root` (local path, `file://`, `s3://`, `gs://`, ...)."""

    def __init__(self, root: str | os.PathLike = DEFAULT_ROOT, cache_dir: str | os.PathLike | None = None):
        root = str(root)
        if root.startswith("file://"):
            root = root[len("file://"):]
        self.root = root
        self.remote = is_uri(root)
        if self.remote:
            import fsspec

            self.fs, self._base = fsspec.core.url_to_fs(root)
            cache = cache_dir or os.environ.get("TINYMEM_CACHE", Path.home() / ".cache" / "tinymem")
            self.cache = Path(cache) / hashlib.sha256(root.encode()).hexdigest()[:12]
        else:
            self.fs, self._base = None, root
            self.cache = None

    # --- paths -------------------------------------------------------------------------------------
    def _models(self) -> str:
        return f"{self._base.rstrip('/')}/models"

    def entry_uri(self, key: str) -> str:
        """Where the entry lives in the store (a local path or a URI)."""
        return f"{self.root.rstrip('/')}/models/{key}"

    def local_dir(self, key: str) -> Path:
        """The local directory a caller reads: the entry itself (local) or its cached copy (remote)."""
        if self.remote:
            return self.cache / key
        return Path(self._models()) / key

    # --- queries -----------------------------------------------------------------------------------
    def has(self, key: str) -> bool:
        if self.remote:
            return self.fs.exists(f"{self._models()}/{key}/{MANIFEST}")
        return (Path(self._models()) / key / MANIFEST).exists()

    def keys(self) -> list[str]:
        if self.remote:
            if not self.fs.exists(self._models()):
                return []
            return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self._models(), detail=False)
                          if self.fs.exists(f"{p.rstrip('/')}/{MANIFEST}"))
        d = Path(self._models())
        return sorted(p.name for p in d.iterdir() if (p / MANIFEST).exists()) if d.exists() else []

    def load(self, key: str, verify: bool = True) -> tuple[Path, dict[str, Any]]:
        """(local directory, manifest) of a complete entry; fetches remote entries into the local cache."""
        if not self.has(key):
            raise StoreError(f"no model {key!r} in store {self.root}")
        if self.remote:
            self._fetch(key)
        d = self.local_dir(key)
        return d, read_manifest(d, verify=verify)

    # --- writes ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self, key: str) -> Iterator[None]:
        """An exclusive lock per key, so only one process builds a missing entry (local or cache dir)."""
        lock_dir = self.cache if self.remote else Path(self._models())
        lock_dir.mkdir(parents=True, exist_ok=True)
        with open(lock_dir / f".{key}.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def get_or_create(self, key: str, build: Callable[[Path], dict[str, Any]], verify: bool = True
                      ) -> tuple[Path, dict[str, Any], bool]:
        """Return (local dir, manifest, created). If missing, `build(tmpdir)` writes the files and returns the
        manifest info (spec, metrics, ...); the entry is then published atomically."""
        if self.has(key):
            d, m = self.load(key, verify=verify)
            return d, m, False
        with self._lock(key):
            if self.has(key):  # another process built it while we waited
                d, m = self.load(key, verify=verify)
                return d, m, False
            staging = Path(self._staging_parent()) / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
            staging.mkdir(parents=True)
            try:
                info = build(staging)
                info = {"key": key, "created_unix": time.time(), **info}
                manifest = write_manifest(staging, info)
                self._publish(key, staging)
            finally:
                if staging.exists():
                    shutil.rmtree(staging, ignore_errors=True)
            return self.local_dir(key), manifest, True

    def put(self, key: str, directory: str | os.PathLike, info: dict[str, Any]) -> str:
        """Copy an existing directory into the store as entry `key` (atomic); returns its location."""
        with self._lock(key):
            staging = Path(self._staging_parent()) / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
            shutil.copytree(directory, staging)
            try:
                write_manifest(staging, {"key": key, "created_unix": time.time(), **info})
                if self.has(key):
                    self.delete(key)
                self._publish(key, staging)
            finally:
                if staging.exists():
                    shutil.rmtree(staging, ignore_errors=True)
        return self.entry_uri(key)

    def delete(self, key: str) -> None:
        if self.remote:
            if self.fs.exists(f"{self._models()}/{key}"):
                self.fs.rm(f"{self._models()}/{key}", recursive=True)
            shutil.rmtree(self.local_dir(key), ignore_errors=True)
        else:
            target = Path(self._models()) / key
            if target.exists():
                trash = target.with_name(f".trash-{key}-{uuid.uuid4().hex[:8]}")
                os.replace(target, trash)  # atomic unlink from readers' view
                shutil.rmtree(trash, ignore_errors=True)

    def _staging_parent(self) -> str:
        if self.remote:
            self.cache.mkdir(parents=True, exist_ok=True)
            return str(self.cache)
        Path(self._models()).mkdir(parents=True, exist_ok=True)
        return self._models()

    def _publish(self, key: str, staging: Path) -> None:
        if not self.remote:
            target = Path(self._models()) / key
            if target.exists():  # an incomplete leftover (no manifest): move it aside first
                os.replace(target, target.with_name(f".trash-{key}-{uuid.uuid4().hex[:8]}"))
            os.replace(staging, target)
            return
        dest = f"{self._models()}/{key}"
        for f in sorted(staging.iterdir()):
            if f.name != MANIFEST:
                self.fs.put_file(str(f), f"{dest}/{f.name}")
        self.fs.put_file(str(staging / MANIFEST), f"{dest}/{MANIFEST}")  # last: marks the entry complete
        local = self.local_dir(key)
        if local.exists():
            shutil.rmtree(local)
        os.replace(staging, local)

    def _fetch(self, key: str) -> None:
        local = self.local_dir(key)
        remote_manifest = json.loads(self.fs.cat_file(f"{self._models()}/{key}/{MANIFEST}"))
        if (local / MANIFEST).exists():
            if json.loads((local / MANIFEST).read_text()).get("files") == remote_manifest.get("files"):
                return
        staging = Path(tempfile.mkdtemp(prefix=f".fetch-{key}-", dir=self._staging_parent()))
        try:
            for name in list(remote_manifest.get("files", {})) + [MANIFEST]:
                self.fs.get_file(f"{self._models()}/{key}/{name}", str(staging / name))
            if local.exists():
                shutil.rmtree(local)
            os.replace(staging, local)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
