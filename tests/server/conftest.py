"""Fixtures that run the REAL server as a subprocess (``python -m server``) on a free port.

The session-wide ``server`` uses the real ``viewneti_backend.engine.Engine`` with its embedded toy
model. For quick iterations on the server alone, ``VIEWNETI_TEST_FAKE_ENGINE=1`` swaps in
``tests/server/fake_engine.py`` (the acceptance runs never set it).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from srvutil import ServerProcess  # noqa: E402


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> ServerProcess:
    srv = ServerProcess(tmp_path_factory.mktemp("srv") / "data").start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def client(server) -> httpx.Client:
    with server.client() as c:
        yield c


@pytest.fixture
def make_server(tmp_path):
    """Start extra servers (own data dirs) for restart/kill/auth tests; all stopped at the end."""
    started: list[ServerProcess] = []

    def make(data_dir: Path | None = None, **kw: Any) -> ServerProcess:
        srv = ServerProcess(data_dir or (tmp_path / f"data{len(started)}"), **kw)
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.kill()


