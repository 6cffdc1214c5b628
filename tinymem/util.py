"""Small mechanisms the whole project shares: atomic file writes, file digests, JSON-safe values, model helpers.

One place each, so that every writer uses the same temporary-name scheme and every reader the same rules.
Torch is imported lazily: the command lines import this module before they know they need a model.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn


def temp_path(path: str | os.PathLike) -> Path:
    """A unique hidden sibling of `path` to write into before the rename (same directory, so `os.replace`
    is atomic; unique per process and call, so concurrent writers never share one)."""
    p = Path(path)
    return p.with_name(f".{p.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path` atomically, on error it is removed.

    A reader sees either the old file or the whole new one, never half a file.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(p)
    try:
        yield tmp
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, **dumps_kwargs: Any) -> Path:
    """Write `obj` as JSON atomically (NaN/inf written as null, so every reader can parse it)."""
    kwargs = {"indent": 1, "default": str, **dumps_kwargs}
    return atomic_write_text(path, json.dumps(json_safe(obj), **kwargs))


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def json_safe(x: Any) -> Any:
    """`x` with every non-finite float replaced by None: JSON has no NaN, and a report must stay parseable."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def model_device(model: nn.Module) -> torch.device:
    """Where a model's inputs must go: its input embedding's device (with `device_map` a model spans several
    GPUs), else the device of its first parameter."""
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    if emb is not None and getattr(emb, "weight", None) is not None:
        return emb.weight.device
    return next(model.parameters()).device


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run a block in eval mode (no dropout: deterministic) and give the caller's mode back afterwards."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


@contextmanager
def evaluation(model: nn.Module) -> Iterator[nn.Module]:
    """`eval_mode` for a block that only evaluates: also computes each parametrized weight once for the block
    (`torch.nn.utils.parametrize.cached`). A score mask (`subnet`, `balanced_subnet`) is otherwise recomputed
    on every forward pass, 25 times in one greedy decode; nothing changes a parameter during an evaluation,
    so the numbers are the same. Not for training loops: a cached weight would not follow the optimizer."""
    from torch.nn.utils import parametrize

    with eval_mode(model), parametrize.cached():
        yield model


def progress_bar(total: int | None, desc: str, unit: str = "it", show: bool | None = None, initial: int = 0) -> Any:
    """A tqdm bar on stderr for a long phase (training, evaluation, attributions), or a silent one.

    `show=None` draws it only when stderr is a terminal: in logs and pipes a redrawn bar is only noise.
    The bar disappears when closed (`leave=False`): the phase's result line is what stays on screen. A disabled
    tqdm accepts every call and prints nothing, so callers need no branch.
    """
    import sys

    from tqdm.auto import tqdm

    enabled = sys.stderr.isatty() if show is None else show
    return tqdm(total=total, desc=desc, unit=unit, initial=initial, leave=False, file=sys.stderr,
                disable=not enabled, dynamic_ncols=True)


def library_bars(show: bool) -> None:
    """Let transformers draw its own bars (loading and writing weights) only when ours are drawn: it draws them
    even into a pipe, where a redrawn bar is only noise in a log."""
    from transformers.utils import logging

    (logging.enable_progress_bar if show else logging.disable_progress_bar)()
