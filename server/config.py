"""Server configuration: one immutable record built from the command line (see ``__main__``)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from viewneti_backend import limits
from viewneti_backend.data_dir import default_data_dir, library_dir

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_MAX_BODY_MB = 64.0
TOKEN_FILE_NAME = "token"  # <data-dir>/token: where --token auto writes the per-launch token
# --keep-jobs: at least the job that just ended is kept, so that its client can still fetch its frames
MIN_KEEP_JOBS = 1


def is_loopback_host(host: str) -> bool:
    """True for addresses that only this machine can reach (127.0.0.0/8, ::1, "localhost")."""
    h = host.strip().strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything, so treat it as public


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path = field(default_factory=default_data_dir)
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    model: str | None = None
    view_mapper: str | None = None
    device: str | None = None
    dtype: str | None = None
    compile: str = "auto"  # see viewneti_backend.compile_modes
    # render shapes ("WxH" or "WxHxN") compiled in the background at start; None: the engine's defaults
    warmup: tuple[str, ...] | None = None
    compile_new_shapes: bool = True  # compile each new request shape in the background (else it stays eager)
    # helper processes that compile shapes into torch's on-disk caches first (server/compiler.py); 0: none
    compile_processes: int = 2
    token: str | None = None
    # --token auto: the generated token is written here (mode 0600) for the add-on; None: not written.
    token_file: Path | None = None
    # --allowed-host: extra names (NAME or NAME:PORT) the Host header may carry (see server/host_origin.py).
    allowed_hosts: tuple[str, ...] = ()
    max_body_bytes: int = int(DEFAULT_MAX_BODY_MB * 1024 * 1024)
    # Operational caps on top of the contract's limits (a small machine may want lower ones).
    max_size: int = limits.MAX_SIZE  # on a CPU also capped by limits.device_max_size
    max_steps: int = limits.MAX_STEPS
    max_invert_steps: int = limits.DEFAULT_MAX_INVERT_STEPS
    max_queued_jobs: int = 64
    # finished jobs kept (records and frames); the oldest beyond it are deleted when a job ends and at start
    keep_jobs: int = 200
    max_image_bytes: int = limits.MAX_REFERENCE_BYTES
    max_image_pixels: int = limits.MAX_REFERENCE_PIXELS
    # Sockets: see server/connections.py (idle ones are shed first; a request must arrive in time).
    max_connections: int = 256
    header_timeout_s: float = 10.0  # request line + headers (loopback clients send them at once)
    body_timeout_s: float = 120.0  # the body after the headers (a 64 MB upload takes well under a second)

    @property
    def objects_dir(self) -> Path:
        return library_dir(self.data_dir)

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    def check_bind(self) -> None:
        """Refuse a non-loopback bind without a token: anyone on the network could drive the GPU."""
        if not is_loopback_host(self.host) and not self.token:
            raise SystemExit(
                f"refusing to listen on {self.host!r} without an access token: any machine that can reach "
                "this address could use the server. Pass --token SECRET (or set VIEWNETI_TOKEN) and send "
                "'Authorization: Bearer SECRET' from clients, or bind to 127.0.0.1."
            )
