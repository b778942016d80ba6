"""``python -m denoise_probe_server`` (with tests/server on PYTHONPATH): the real server CLI with the real
engine, whose denoising loop appends ``<time.monotonic()> <step> <steps>`` to the file named by
$VIEWNETI_TEST_DENOISE_LOG after every step. Test-only: it lets a test act while a render is in the
middle of its steps, and count the steps (and renders) run after that. :class:`DenoiseProbeServer`
starts it from a test."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from srvutil import HERE, ServerProcess

from server.__main__ import main

MODULE = "denoise_probe_server"
LOG_ENV = "VIEWNETI_TEST_DENOISE_LOG"


def load(**kwargs: Any) -> Any:
    from viewneti_backend.engine import Engine  # heavy import: only in the worker, as the server does

    engine = Engine.load(**kwargs)
    log_path = os.environ[LOG_ENV]
    denoise = engine.pipeline.denoise

    def probed(*args: Any, on_step: Any = None, **kw: Any) -> Any:
        def step(i: int, n: int) -> None:
            with open(log_path, "a") as f:
                f.write(f"{time.monotonic():.6f} {i} {n}\n")
            if on_step is not None:
                on_step(i, n)

        return denoise(*args, on_step=step, **kw)

    engine.pipeline.denoise = probed
    return engine


class DenoiseProbeServer(ServerProcess):
    """A server process of this module: the real server and engine, every denoising step logged."""

    def __init__(self, data_dir: Path, *, model: Path | None = None, args: list[str] | None = None) -> None:
        self.denoise_log = Path(data_dir).parent / f"denoise-{Path(data_dir).name}.log"
        env = {
            LOG_ENV: str(self.denoise_log),
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        }
        if model is not None:
            env["VIEWNETI_MODEL"] = str(model)
        super().__init__(data_dir, args=args, env=env, fake=False)

    def command(self) -> list[str]:
        python, dash_m, _server, *rest = super().command()
        return [python, dash_m, MODULE, *rest]

    def steps(self) -> list[tuple[float, int, int]]:
        """(time.monotonic(), step, steps) of every denoising step so far (one clock for all processes)."""
        try:
            lines = self.denoise_log.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [(float(t), int(i), int(n)) for t, i, n in (line.split() for line in lines if line.count(" ") == 2)]


if __name__ == "__main__":
    main(sys.argv[1:], load_engine=load)
