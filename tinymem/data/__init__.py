"""Data: the TinyMem math tasks, the text path, and the data bundle they both produce."""

from __future__ import annotations

from tinymem.data.bundle import DataBundle
from tinymem.errors import ConfigError
from tinymem.specs import DataSpec


def build_bundle(spec: DataSpec, seed: int) -> DataBundle:
    """Build the data bundle for `spec`, deterministically for `seed`."""
    if spec.task in ("increment", "mult"):
        from tinymem.data.math import build_math_bundle

        return build_math_bundle(spec, seed)
    if spec.task == "text":
        from tinymem.data.text import build_text_bundle

        return build_text_bundle(spec, seed)
    raise ConfigError(f"unknown task {spec.task!r}; allowed: ['increment', 'mult', 'text']")


__all__ = ["DataBundle", "build_bundle"]
