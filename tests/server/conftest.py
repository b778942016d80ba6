"""Fixtures that run the REAL server as a subprocess (``python -m server``) on a free port.

The session-wide ``server`` uses the real ``viewneti_backend.engine.Engine`` with its embedded toy
model. For quick iterations on the server alone, ``VIEWNETI_TEST_FAKE_ENGINE=1`` swaps in
``tests/server/fake_engine.py`` (the acceptance runs never set it).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import srvutil  # noqa: E402
from srvutil import USE_FAKE, ServerProcess  # noqa: E402


@pytest.fixture(scope="session")
def test_model(tmp_path_factory) -> str | None:
    """The model the test servers load: the embedded toy model, or (until its weights are built) a tiny
    random ViewNeTI model made by ``viewneti_backend.testing`` and passed through VIEWNETI_MODEL."""
    if USE_FAKE:
        yield None
        return
    from viewneti_backend.engine import embedded_model_dir

    if (embedded_model_dir() / "model_index.json").is_file() and not os.environ.get("VIEWNETI_TEST_TINY_MODEL"):
        yield None
        return
    from viewneti_backend.testing import build_tiny_viewneti_model

    folder = build_tiny_viewneti_model(tmp_path_factory.mktemp("tiny") / "model")
    srvutil.EXTRA_ENV["VIEWNETI_MODEL"] = str(folder)
    yield str(folder)
    srvutil.EXTRA_ENV.pop("VIEWNETI_MODEL", None)


@pytest.fixture(scope="session")
def server(tmp_path_factory, test_model) -> ServerProcess:
    srv = ServerProcess(tmp_path_factory.mktemp("srv") / "data", args=["--max-body-mb", "8"]).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def client(server) -> httpx.Client:
    with server.client() as c:
        yield c


@pytest.fixture
def make_server(tmp_path, test_model):
    """Start extra servers (own data dirs) for restart/kill/auth tests; all stopped at the end."""
    started: list[ServerProcess] = []

    def make(data_dir: Path | None = None, **kw: Any) -> ServerProcess:
        srv = ServerProcess(data_dir or (tmp_path / f"data{len(started)}"), **kw)
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.kill()


