"""``python -m denoise_probe_server`` (with tests/server on PYTHONPATH): the real server CLI with the real
engine, whose denoising loop appends ``<time.monotonic()> <step> <steps>`` to the file named by
$VIEWNETI_TEST_DENOISE_LOG after every step. Test-only: it lets a test act while a render (an
inversion's preview) is in the middle of its steps, and count the steps it ran after that."""

import os
import sys
import time
from typing import Any

from server.__main__ import main


def load(**kwargs: Any) -> Any:
    from viewneti_backend.engine import Engine  # heavy import: only in the worker, as the server does

    engine = Engine.load(**kwargs)
    log_path = os.environ["VIEWNETI_TEST_DENOISE_LOG"]
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


if __name__ == "__main__":
    main(sys.argv[1:], load_engine=load)
