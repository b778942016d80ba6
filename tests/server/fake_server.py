"""``python -m fake_server`` (with tests/server on PYTHONPATH): the real server CLI, ``server.__main__.main``,
with the fake engine of ``fake_engine.py`` injected as its loader. Test-only: the server itself has no
switch that swaps its engine."""

import sys

from fake_engine import load

from server.__main__ import main

if __name__ == "__main__":
    main(sys.argv[1:], load_engine=load)
