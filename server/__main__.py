"""``viewneti-server`` / ``python -m server``: run the ViewNeTI render service.

Development hook (not for users): the environment variable ``VIEWNETI_SERVER_ENGINE=module:callable``
replaces ``Engine.load`` by ``callable(**load_kwargs)``; the server's own tests use it to run against
a fake engine while the real one is being built.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from viewneti_backend import limits
from viewneti_backend.compile_modes import COMPILE_CHOICES, COMPILE_HELP

from .config import DEFAULT_HOST, DEFAULT_MAX_BODY_MB, DEFAULT_PORT, ServerConfig, default_data_dir

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
                      reference_NN.bin (a waiting inversion's uploaded images, removed when it ends)
  A full or read-only data dir: the server still starts and renders; new jobs get 507.

security:
  The server binds 127.0.0.1 by default, reachable from this machine only. To listen on any other
  address you must set an access token (--token or VIEWNETI_TOKEN); clients then send
  'Authorization: Bearer <token>' with every request. Without a token it refuses to start.

examples:
  viewneti-server                                  # toy model, http://127.0.0.1:7860
  viewneti-server --model stabilityai/stable-diffusion-2-1 --view-mapper ./mappers/dtu --device cuda
  VIEWNETI_TOKEN=s3cret viewneti-server --host 0.0.0.0 --port 8080
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
        "not slow down the renders the server answers meanwhile; each loads its own copy of the model "
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
        "command lines are visible to other users",
    )
    s = p.add_argument_group("storage and limits")
    s.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"where the object library and jobs are kept (default: $VIEWNETI_DATA_DIR or {default_data_dir()})",
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
    s.add_argument("--max-jobs", type=int, default=64, help="most queued/running jobs; more get 429 (default 64)")
    s.add_argument(
        "--max-connections",
        type=int,
        default=ServerConfig.max_connections,
        help="most open client connections; past it, connections with no request in progress are closed "
        f"first (default {ServerConfig.max_connections}). A request's headers must arrive within "
        f"{ServerConfig.head_timeout_s:g} s and its body within {ServerConfig.body_timeout_s:g} s",
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
    if args.max_body_mb <= 0:
        raise SystemExit("--max-body-mb must be positive")
    return ServerConfig(
        data_dir=(args.data_dir or default_data_dir()).expanduser().resolve(),
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
        max_connections=max(8, args.max_connections),
    )


def engine_factory_for(config: ServerConfig, threads: int | None = None) -> Callable[[], Any]:
    kwargs: dict[str, Any] = dict(
        model=config.model,
        view_mapper=config.view_mapper,
        device=config.device,
        dtype=config.dtype,
        library_dir=config.objects_dir,
        compile=config.compile,
    )
    hook = os.environ.get("VIEWNETI_SERVER_ENGINE")

    def factory() -> Any:
        if threads:
            import torch

            torch.set_num_threads(threads)
        if hook:
            mod, _, attr = hook.partition(":")
            return getattr(importlib.import_module(mod), attr)(**kwargs)
        from viewneti_backend.engine import Engine  # heavy import: only in the worker, after the server is up

        return Engine.load(**kwargs)  # a compiled engine compiles its warm-up shapes in the background

    return factory


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def main(argv: list[str] | None = None) -> None:
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
    app = create_app(config, engine_factory_for(config, args.threads))

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
            http=guarded_protocol(
                ConnectionLimits(config.head_timeout_s, config.body_timeout_s, config.max_connections)
            ),
            timeout_keep_alive=5,
        )
    ).run()


if __name__ == "__main__":
    main()
