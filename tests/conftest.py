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


@pytest.fixture
def eager_flags(monkeypatch):
    """The ``eager`` argument of every ViewNeTIPipeline render from here on, in call order: which
    modules (compiled or uncompiled) the engine chose for it."""
    from viewneti_backend.pipeline import ViewNeTIPipeline

    seen: list[bool] = []
    render = ViewNeTIPipeline.__call__

    def recording(self, *args, eager=False, **kwargs):
        seen.append(eager)
        return render(self, *args, eager=eager, **kwargs)

    monkeypatch.setattr(ViewNeTIPipeline, "__call__", recording)
    return seen
