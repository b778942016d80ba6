"""``viewneti-server`` / ``python -m server``: run the ViewNeTI render service.

:func:`main` takes ``load_engine`` (default ``Engine.load``): the server's tests start the same CLI
with a fake engine through it (``tests/server/fake_server.py``); nothing in the environment can
swap the engine of a user's server.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from viewneti_backend import limits
from viewneti_backend.compile_modes import COMPILE_CHOICES, COMPILE_HELP
from viewneti_backend.data_dir import DATA_DIR_ENV, default_data_dir

from .auth import AUTO_TOKEN, generate_token, remove_token_file, write_token_file
from .config import (
    DEFAULT_HOST,
    DEFAULT_MAX_BODY_MB,
    DEFAULT_PORT,
    MIN_KEEP_JOBS,
    TOKEN_FILE_NAME,
    ServerConfig,
)
from .host_origin import ALLOWED_HOSTS_ENV, parse_allowed_host

DESCRIPTION = """\
Run the ViewNeTI render service: an HTTP API (contract: server/API.md, schema at /openapi.json,
interactive docs at /docs) in front of one worker that owns the model. The Blender add-on talks to it.

The model loads in the background after start; GET /v1/health answers 503 until it is ready.
Without --model the embedded toy-world model is used (runs on a CPU, no download).
"""

EPILOG = """\
data directory:
  <data-dir>/objects/   the token library: objects created by inversion (kept across restarts)
  <data-dir>/jobs/<id>/ one folder per job: job.json (state), request.json, frame_NNNNNN.png,
                      reference_NN.bin (a waiting inversion's uploaded images, removed when it ends);
                      the newest --keep-jobs finished jobs are kept, older ones deleted
                      (DELETE /v1/jobs/<id> removes one at once)
  A full or read-only data dir: the server still starts and renders; new jobs get 507.

security:
  The server binds 127.0.0.1 by default, reachable from this machine only. To listen on any other
  address you must set an access token (--token or VIEWNETI_TOKEN); clients then send
  'Authorization: Bearer <token>' with every request (every route, /v1/health included). Without a
  token it refuses to start. '--token auto' makes a new random token at each launch and writes it to
  <data-dir>/token (mode 0600; --token-file), never to the log, so that other users of this machine
  cannot drive it; the Blender add-on uses this when it starts the backend itself.
  Web pages cannot drive it: requests must name the server in their Host header (localhost,
  127.0.0.1, [::1] or the bind address, with the server's port; else 421: DNS rebinding), and any
  foreign or 'null' Origin or 'Sec-Fetch-Site: cross-site' gets 403. No CORS headers are sent.
  To reach it under another name (a LAN name, a reverse proxy), add --allowed-host NAME (or
  VIEWNETI_ALLOWED_HOSTS=NAME1,NAME2).

examples:
  viewneti-server                                  # toy model, http://127.0.0.1:7860
  viewneti-server --model stabilityai/stable-diffusion-2-1 --view-mapper ./mappers/dtu --device cuda
  VIEWNETI_TOKEN=s3cret viewneti-server --host 0.0.0.0 --port 8080 --allowed-host mybox.lan
  viewneti-server --token auto                     # per-launch token in ~/.local/share/viewneti/token
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="viewneti-server",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    m = p.add_argument_group("model")
    m.add_argument(
        "--model",
        metavar="ID_OR_DIR",
        default=None,
        help="diffusers model: a Hugging Face hub id or a local folder with a Stable-Diffusion-"
        "architecture pipeline (default: $VIEWNETI_MODEL, else the embedded toy-world model)",
    )
    m.add_argument(
        "--view-mapper",
        metavar="DIR",
        default=None,
        help="folder of a pretrained view-mapper checkpoint (default: the one bundled with the model, if any)",
    )
    m.add_argument("--device", default=None, help="torch device, e.g. cuda, cuda:1, cpu (default: cuda if available)")
    m.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "float16", "bfloat16"],
        help="dtype of the frozen model parts (default: bfloat16 on GPUs that support it, else float16; float32 on CPU)",
    )
    m.add_argument(
        "--compile",
        default="auto",
        choices=COMPILE_CHOICES,
        help=COMPILE_HELP + "; the server is ready as soon as the model is loaded and compiles in the background "
        "(see --warmup; default auto)",
    )
    m.add_argument(
        "--warmup",
        metavar="SHAPES",
        default=None,
        help="comma-separated render shapes to compile in the background at start, each WIDTHxHEIGHT or "
        "WIDTHxHEIGHTxVIEWS (views per UNet call, as a sequence job batches them); 'none' for nothing "
        "(default: the live size, the model's native view size, and that size batched for sequences: "
        "512x512,768x576,768x576x4 for SD 2.1). Until a shape is compiled, renders at it run uncompiled "
        "(same images, slower); GET /v1/health lists compiled_shapes",
    )
    m.add_argument(
        "--no-compile-new-sizes",
        dest="compile_new_shapes",
        action="store_false",
        help="do not compile other sizes on first use (they keep rendering uncompiled)",
    )
    m.add_argument(
        "--compile-processes",
        type=int,
        default=ServerConfig.compile_processes,
        metavar="N",
        help="helper processes that compile render shapes ahead, several at once, so that compiling does "
        "not slow down the renders the server answers meanwhile, and then, on GPUs with enough memory, the "
        "training graphs of inversions at the likely first sizes; each loads its own copy of the model "
        f"(GPU and CPU memory). 0: compile inside the server only (default {ServerConfig.compile_processes})",
    )
    m.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads torch may use (default: torch's choice; 1 is often fastest on a busy machine with few cores)",
    )
    n = p.add_argument_group("network")
    n.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to listen on (default {DEFAULT_HOST}; any other address requires --token)",
    )
    n.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT}; 0 picks a free one)"
    )
    n.add_argument(
        "--token",
        default=None,
        help="access token that clients must send as 'Authorization: Bearer <token>' (default: "
        "$VIEWNETI_TOKEN; required for non-loopback --host). Prefer the environment variable: "
        "command lines are visible to other users. 'auto': a new random token for each launch, written "
        "to --token-file (not printed: logs may be readable by others)",
    )
    n.add_argument(
        "--token-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="with --token auto: where the token is written, readable by this user only "
        f"(default <data-dir>/{TOKEN_FILE_NAME}); removed when the server stops",
    )
    n.add_argument(
        "--allowed-host",
        action="append",
        default=None,
        metavar="NAME",
        help="another name clients may use to reach the server (Host header), e.g. mybox.lan or "
        "mybox.lan:8080; repeatable (default: $VIEWNETI_ALLOWED_HOSTS, comma-separated). localhost, "
        "127.0.0.1, [::1] and the --host address are always allowed",
    )
    s = p.add_argument_group("storage and limits")
    s.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"where the object library and jobs are kept (default: ${DATA_DIR_ENV} or {default_data_dir()})",
    )
    s.add_argument(
        "--max-body-mb",
        type=float,
        default=DEFAULT_MAX_BODY_MB,
        help=f"largest request body accepted, in MB; larger ones get 413 (default {DEFAULT_MAX_BODY_MB:g})",
    )
    s.add_argument(
        "--max-size",
        type=int,
        default=limits.MAX_SIZE,
        help=f"largest image side a render may request (default {limits.MAX_SIZE}, or the model's limit if lower; "
        f"on a CPU at most {limits.CPU_SIZE_FACTOR}x the model's native size, since the cost grows with the square "
        "of the pixel count). GET /v1/health reports the cap in effect as max_size",
    )
    s.add_argument(
        "--max-steps",
        type=int,
        default=limits.MAX_STEPS,
        help=f"most denoising steps a render may request (default and upper bound {limits.MAX_STEPS})",
    )
    s.add_argument(
        "--max-invert-steps",
        type=int,
        default=limits.DEFAULT_MAX_INVERT_STEPS,
        help=f"most optimisation steps an inversion may request; more get 422 (default "
        f"{limits.DEFAULT_MAX_INVERT_STEPS}, at most {limits.MAX_INVERT_STEPS}); GET /v1/health max_invert_steps",
    )
    s.add_argument(
        "--max-jobs",
        type=int,
        default=ServerConfig.max_queued_jobs,
        help=f"most queued/running jobs; more get 429 (default {ServerConfig.max_queued_jobs})",
    )
    s.add_argument(
        "--keep-jobs",
        type=int,
        default=ServerConfig.keep_jobs,
        metavar="N",
        help="finished jobs kept in the data dir (their records and frames); when a job ends, and at start, "
        "the oldest finished ones beyond N are deleted (queued and running jobs never are; clients fetch "
        f"frames as they arrive). At least {MIN_KEEP_JOBS} (default {ServerConfig.keep_jobs})",
    )
    s.add_argument(
        "--max-connections",
        type=int,
        default=ServerConfig.max_connections,
        help="most open client connections; past it, connections with no request in progress are closed "
        f"first (default {ServerConfig.max_connections})",
    )
    s.add_argument(
        "--header-timeout",
        type=float,
        default=ServerConfig.header_timeout_s,
        metavar="SECONDS",
        help="a request's line and headers must arrive within this time of the connection opening (or of "
        f"the previous response), else the connection is closed (default {ServerConfig.header_timeout_s:g})",
    )
    s.add_argument(
        "--body-timeout",
        type=float,
        default=ServerConfig.body_timeout_s,
        metavar="SECONDS",
        help="a request's body must arrive within this time of its headers, else the connection is closed "
        f"(default {ServerConfig.body_timeout_s:g}; a {DEFAULT_MAX_BODY_MB:g} MB upload over loopback takes "
        "well under a second)",
    )
    o = p.add_argument_group("logging")
    o.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log verbosity; 'info' logs one line per request (default info)",
    )
    return p


def _parse_warmup(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if value.strip().lower() in ("none", ""):
        return ()
    labels = tuple(v.strip() for v in value.split(",") if v.strip())
    from viewneti_backend.errors import InputError
    from viewneti_backend.render_shape import RenderShape

    try:
        for label in labels:
            RenderShape.parse(label)
    except InputError as exc:
        raise SystemExit(f"--warmup: {exc}") from None
    return labels


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    token = args.token or os.environ.get("VIEWNETI_TOKEN") or None
    data_dir = (args.data_dir or default_data_dir()).expanduser().resolve()
    token_file = None
    if token is not None and token.strip().lower() == AUTO_TOKEN:
        token = generate_token()
        token_file = (args.token_file or data_dir / TOKEN_FILE_NAME).expanduser().resolve()
    elif args.token_file is not None:
        raise SystemExit("--token-file only goes with --token auto (a token you chose is already known to you)")
    allowed = args.allowed_host
    if allowed is None:
        allowed = [h for h in os.environ.get(ALLOWED_HOSTS_ENV, "").split(",") if h.strip()]
    for entry in allowed:
        try:
            parse_allowed_host(entry)
        except ValueError as exc:
            raise SystemExit(str(exc)) from None
    if args.max_body_mb <= 0:
        raise SystemExit("--max-body-mb must be positive")
    if args.keep_jobs < MIN_KEEP_JOBS:
        raise SystemExit(
            f"--keep-jobs must be at least {MIN_KEEP_JOBS}, got {args.keep_jobs}: the job that just ended is kept "
            "so that its client can fetch its frames (DELETE /v1/jobs/{id} removes a job at once)"
        )
    for option, seconds in (("--header-timeout", args.header_timeout), ("--body-timeout", args.body_timeout)):
        if not 0 < seconds < float("inf"):
            raise SystemExit(f"{option} must be a positive number of seconds, got {seconds:g}")
    return ServerConfig(
        token_file=token_file,
        allowed_hosts=tuple(h.strip() for h in allowed),
        data_dir=data_dir,
        host=args.host,
        port=args.port,
        model=args.model,
        view_mapper=args.view_mapper,
        device=args.device,
        dtype=args.dtype,
        compile=args.compile,
        warmup=_parse_warmup(args.warmup),
        compile_new_shapes=args.compile_new_shapes,
        compile_processes=max(0, args.compile_processes),
        token=token,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        max_size=max(limits.MIN_SIZE, min(limits.MAX_SIZE, args.max_size)),
        max_steps=max(1, min(limits.MAX_STEPS, args.max_steps)),
        max_invert_steps=max(1, min(limits.MAX_INVERT_STEPS, args.max_invert_steps)),
        max_queued_jobs=max(1, args.max_jobs),
        keep_jobs=args.keep_jobs,
        max_connections=max(8, args.max_connections),
        header_timeout_s=args.header_timeout,
        body_timeout_s=args.body_timeout,
    )


def engine_factory_for(
    config: ServerConfig, threads: int | None = None, load_engine: Callable[..., Any] | None = None
) -> Callable[[], Any]:
    """What the worker calls to load the engine: ``load_engine(**kwargs)`` (default ``Engine.load``)."""
    kwargs: dict[str, Any] = dict(
        model=config.model,
        view_mapper=config.view_mapper,
        device=config.device,
        dtype=config.dtype,
        library_dir=config.objects_dir,
        compile=config.compile,
    )

    def factory() -> Any:
        if threads:
            import torch

            torch.set_num_threads(threads)
        if load_engine is not None:
            return load_engine(**kwargs)
        from viewneti_backend.engine import Engine  # heavy import: only in the worker, after the server is up

        return Engine.load(**kwargs)  # a compiled engine compiles its warm-up shapes in the background

    return factory


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def publish_auto_token(path: Path, token: str) -> None:
    """--token auto: write the token for the add-on (0600) and remove the file at exit.

    Only the file's path is printed, never the token: stderr often ends up in a log file that other users
    can read (the add-on's backend.log, a service manager's journal)."""
    try:
        write_token_file(path, token)
    except OSError as exc:
        raise SystemExit(f"cannot write the access token to {path}: {exc} (use --token-file)") from None
    atexit.register(remove_token_file, path, token)
    # SIGTERM must exit through atexit (removing the file): before uvicorn installs its handlers, and after,
    # when uvicorn re-raises the signal it caught once it has shut down gracefully.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    print(
        f"viewneti-server: the access token of this launch is in {path} (readable by you only); clients send "
        "'Authorization: Bearer <token>'",
        file=sys.stderr,
        flush=True,
    )


def main(argv: list[str] | None = None, *, load_engine: Callable[..., Any] | None = None) -> None:
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    config.check_bind()
    setup_logging(args.log_level)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SystemExit(f"cannot create the data directory {config.data_dir}: {exc} (use --data-dir)") from None

    import uvicorn

    from .app import create_app
    from .connections import ConnectionLimits, guarded_protocol

    if args.threads is not None and args.threads < 1:
        raise SystemExit("--threads must be at least 1")
    app = create_app(config, engine_factory_for(config, args.threads, load_engine))
    if config.token_file is not None and config.token:
        publish_auto_token(config.token_file, config.token)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # Stop the worker at once (the running job ends 'interrupted' at its next step and its event
            # streams end with that event), so that open requests and streams close before uvicorn's
            # graceful-shutdown timeout.
            app.state.begin_shutdown()
            super().handle_exit(sig, frame)

    Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level=args.log_level,
            access_log=False,
            timeout_graceful_shutdown=10,
            server_header=False,
            http=guarded_protocol(ConnectionLimits.of(config)),
            timeout_keep_alive=5,
        )
    ).run()


if __name__ == "__main__":
    main()
