"""Fixtures that run the REAL server as a subprocess (``python -m server``) on a free port.

The session-wide ``server`` uses the real ``viewneti_backend.engine.Engine`` with its embedded toy
model. For quick iterations on the server alone, ``VIEWNETI_TEST_FAKE_ENGINE=1`` swaps in
``tests/server/fake_engine.py`` (the acceptance runs never set it).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import srvutil  # noqa: E402
from srvutil import USE_FAKE, ServerProcess, render_body  # noqa: E402


def embedded_model_is_complete() -> bool:
    """The embedded toy model can serve the tests once it has its view-mapper and built-in objects."""
    from viewneti_backend.engine import BUNDLE_DIR, bundled_view_mapper, embedded_model_dir

    d = embedded_model_dir()
    objects = d / BUNDLE_DIR / "objects"
    return (
        (d / "model_index.json").is_file()
        and bundled_view_mapper(str(d)) is not None
        and objects.is_dir()
        and any(p.is_dir() for p in objects.iterdir())
    )


@pytest.fixture(scope="session")
def test_model(tmp_path_factory) -> Iterator[str | None]:
    """The model the test servers load: $VIEWNETI_TEST_MODEL if set, else the embedded toy model, or
    (while that is incomplete) a tiny random ViewNeTI model made by ``viewneti_backend.testing``.
    Passed to the servers through VIEWNETI_MODEL."""
    if USE_FAKE:
        yield None
        return
    folder = os.environ.get("VIEWNETI_TEST_MODEL")
    if not folder:
        if embedded_model_is_complete():
            yield None
            return
        from viewneti_backend.testing import build_tiny_viewneti_model

        folder = str(build_tiny_viewneti_model(tmp_path_factory.mktemp("tiny") / "model"))
    srvutil.EXTRA_ENV["VIEWNETI_MODEL"] = folder
    yield folder
    srvutil.EXTRA_ENV.pop("VIEWNETI_MODEL", None)


@pytest.fixture(scope="session")
def server(tmp_path_factory, test_model) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("srv") / "data", args=["--max-body-mb", "8"]).start()
    # Fail fast (instead of a cascade of timeouts) if the loaded model cannot render at all.
    r = httpx.post(srv.url + "/v1/render", json=render_body(), timeout=300)
    if r.status_code != 200:
        srv.stop()
        pytest.fail(
            f"the test server cannot render ({r.status_code}: {r.text[:500]}); model: {test_model or 'embedded'}",
            pytrace=False,
        )
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def client(server) -> Iterator[httpx.Client]:
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
