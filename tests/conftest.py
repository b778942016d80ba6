"""Shared fixtures: a tiny SD-architecture ViewNeTI model built once per test session, offline."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A random-weight SD-architecture pipeline with a bundled view-mapper and two objects (see testing.py)."""
    from viewneti_backend.testing import build_tiny_viewneti_model

    return build_tiny_viewneti_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_base(tiny_model_dir):
    from viewneti_backend.base_model import load_base_model

    return load_base_model(tiny_model_dir, device="cpu")
