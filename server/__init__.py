"""The ViewNeTI local render service: HTTP API (FastAPI), one GPU worker thread, persisted jobs.

Run it with ``viewneti-server`` or ``python -m server``; the HTTP contract is in ``server/API.md``.
Dependency direction: this package imports ``viewneti_backend``; nothing imports this package
except its tests.
"""

__all__ = ["API_VERSION"]

API_VERSION = "v1"
