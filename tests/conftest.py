"""Shared fixtures: a tiny memorizing TinyMem model trained once per test session."""

from __future__ import annotations

import os

import pytest

os.environ.pop("RAY_ADDRESS", None)  # never attach tests to someone's running cluster


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory):
    """A model store holding the `math-tiny` preset (about 15 s to train on 2 cores)."""
    from tinymem.build import ensure_base_model
    from tinymem.presets import get_preset

    root = tmp_path_factory.mktemp("store")
    stored = ensure_base_model(get_preset("math-tiny"), str(root), device="cpu", progress=False)
    return root, stored
