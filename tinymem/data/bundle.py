"""The data bundle: every tensor a trial needs, in one object, saved as safetensors + a JSON manifest.

Tensor names (all int64 token tensors of shape [rows, max_ctx] unless noted):

- `train`: what the model is trained on (forget rows duplicated as configured, shuffled).
- `forget`: the noised / backdoored training sequences, one row each (the unlearning target).
- `forget_clean`: their clean counterparts, row aligned with `forget`.
- `forget_dup`: [rows] int64, how many times each forget row appears in `train` (its duplication class).
- `retain`: clean training sequences (main + extra distributions), never containing a forget row.
- `extra`: the clean training sequences of the extra distributions only (a subset of `retain`).
- `test/<name>`: held-out clean test sets, one per distribution (`test/7`, `test/2`, ... for math; `test/main`
  for text). The first name in `meta["test_names"]` is the main distribution.
- backdoor kind only: `backdoor_test` (held-out triggered sequences, backdoored), `backdoor_test_clean`,
  `backdoor_test_prompt_len` [rows] and `forget_prompt_len` [rows]: the position right after the trigger.

`meta` carries `prompt_len`, `k`, `pad_id`, `bos_id`, `eos_id`, `vocab_size`, `kind`, `task`, `trigger`,
`test_names` and anything else a builder records (noise mask statistics, tokenizer info).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tinymem.errors import StoreError

MANIFEST = "data.json"
TENSORS = "data.safetensors"
FORMAT_VERSION = 1
# The splits a trial's numbers come from, in the order `DataBundle.digests` reports them.
SPLITS = ("forget", "retain", "val", "test")


@dataclass
class DataBundle:
    """Named token tensors plus metadata; see the module docstring for the names."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    # Extra text artifacts written beside the tensors (e.g. `tokenizer.json` for text data), name -> content.
    files: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, name: str) -> torch.Tensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise KeyError(f"data bundle has no tensor {name!r}; it has {sorted(self.tensors)}") from None

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    # Convenience accessors, so callers read like the design doc.
    @property
    def train(self) -> torch.Tensor:
        return self["train"]

    @property
    def forget(self) -> torch.Tensor:
        return self["forget"]

    @property
    def forget_clean(self) -> torch.Tensor:
        return self["forget_clean"]

    @property
    def retain(self) -> torch.Tensor:
        return self["retain"]

    @property
    def extra(self) -> torch.Tensor:
        return self["extra"]

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def prompt_len(self) -> int:
        return int(self.meta["prompt_len"])

    @property
    def k(self) -> int:
        return int(self.meta["k"])

    @property
    def pad_id(self) -> int:
        return int(self.meta["pad_id"])

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def test_names(self) -> list[str]:
        return list(self.meta["test_names"])

    def test(self, name: str, split: str | None = None) -> torch.Tensor:
        """Held-out set `name`: whole (split None), or its `val` part (the first half: what sweeps select on)
        or its `test` part (the rest: reported, never used to choose). A set of one row is both."""
        rows = self[f"test/{name}"]
        if split is None or rows.shape[0] < 2:
            return rows
        half = rows.shape[0] // 2
        if split == "val":
            return rows[:half]
        if split == "test":
            return rows[half:]
        raise ValueError(f"unknown split {split!r}; allowed: ['val', 'test']")

    def save(self, directory: str | os.PathLike) -> None:
        """Write `data.safetensors` and `data.json` into `directory` (which must exist)."""
        d = Path(directory)
        tensors = {k: v.contiguous() for k, v in self.tensors.items()}
        save_file(tensors, str(d / TENSORS))
        for name, content in self.files.items():
            (d / name).write_text(content, encoding="utf-8")
        manifest = {"format_version": FORMAT_VERSION, "meta": self.meta, "files": sorted(self.files),
                    "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in tensors.items()}}
        (d / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "DataBundle":
        """Read a bundle saved by `save`; a missing or inconsistent file raises StoreError."""
        d = Path(directory)
        try:
            manifest = json.loads((d / MANIFEST).read_text(encoding="utf-8"))
            tensors = load_file(str(d / TENSORS))
        except FileNotFoundError as e:
            raise StoreError(f"data bundle in {d} is incomplete: {e.filename} is missing") from None
        except Exception as e:  # damaged safetensors header, bad JSON
            raise StoreError(f"data bundle in {d} is damaged: {type(e).__name__}: {e}") from None
        expected = manifest.get("tensors", {})
        if set(expected) != set(tensors):
            raise StoreError(f"data bundle in {d} is damaged: tensors {sorted(tensors)} != manifest {sorted(expected)}")
        for k, info in expected.items():
            if list(tensors[k].shape) != info["shape"]:
                raise StoreError(f"data bundle in {d} is damaged: {k} has shape {list(tensors[k].shape)}, "
                                 f"manifest says {info['shape']}")
        try:
            files = {name: (d / name).read_text(encoding="utf-8") for name in manifest.get("files", [])}
        except FileNotFoundError as e:
            raise StoreError(f"data bundle in {d} is incomplete: {e.filename} is missing") from None
        return cls(tensors=tensors, meta=manifest["meta"], files=files)

    def _split_parts(self, split: str) -> dict[str, torch.Tensor]:
        """The tensors that make up `split` (one of `SPLITS`): `forget`, `retain`, or the `val` / `test` halves
        of every held-out set (`test/<name>`, in `test_names` order)."""
        if split in ("forget", "retain"):
            return {split: self[split]}
        if split in ("val", "test"):
            return {f"test/{name}": self.test(name, split) for name in self.test_names}
        raise ValueError(f"unknown split {split!r}; allowed: {list(SPLITS)}")

    def digests(self) -> dict[str, dict[str, Any]]:
        """Per split of `SPLITS`: `digest` (sha256 hex over each part's name, dtype, shape and bytes: the same
        data always gives the same digest), `shape` (rows summed over the parts), `dtype` and the part names in
        `tensors`. What a tracker records to say which data a number came from. A split without tensors (a bundle
        with no held-out set) is left out."""
        out: dict[str, dict[str, Any]] = {}
        for split in SPLITS:
            parts = self._split_parts(split) if split in ("val", "test") or split in self.tensors else {}
            if not parts:
                continue
            h = hashlib.sha256()
            for name, t in parts.items():
                t = t.detach().to("cpu").contiguous()
                h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
                h.update(t.view(torch.uint8).numpy() if t.numel() else b"")
            first = next(iter(parts.values()))
            out[split] = {"digest": h.hexdigest(), "shape": [sum(int(t.shape[0]) for t in parts.values()),
                                                             *map(int, first.shape[1:])],
                          "dtype": str(first.dtype).removeprefix("torch."), "tensors": list(parts)}
        return out

    def summary(self) -> dict[str, Any]:
        """Row counts per tensor, for printing."""
        return {k: int(v.shape[0]) for k, v in sorted(self.tensors.items())}
