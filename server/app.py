"""The FastAPI application: routes of the v1 contract (server/API.md) wired to the worker and job store.

``create_app(config, engine_factory)`` builds it; the engine is created by ``engine_factory()`` on the
worker thread at startup, and ``GET /v1/health`` answers 503 until it is ready.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

import viewneti_backend
from viewneti_backend import limits
from viewneti_backend.cameras import Camera, CameraError
from viewneti_backend.errors import NameTakenError

from . import API_VERSION
from .auth import BearerTokenMiddleware
from .config import ServerConfig
from .errors import ApiError, install_exception_handlers
from .events import EventHub, job_event_stream
from .host_origin import HostOriginMiddleware
from .images import (
    RESPONSE_TYPES,
    decode_base64,
    decode_image_bytes,
    encode_response_image,
    negotiate_image_type,
)
from .jobs import InvertSpec, JobStore, SequenceSpec
from .middleware import BodyLimitMiddleware, PathCharactersMiddleware, RequestContextMiddleware
from .openapi_doc import install_openapi
from .schemas import (
    CameraIn,
    CancelOut,
    CompileOut,
    CompileRequest,
    ErrorOut,
    HealthOut,
    InvertRequest,
    JobCreated,
    JobOut,
    JobsOut,
    ObjectOut,
    ObjectsOut,
    RenameRequest,
    RenderRequest,
    SequenceRequest,
)
from .worker import ClientGone, RenderTask, Worker

log = logging.getLogger("viewneti.server")

_NAME = limits.NAME_RE

try:  # the library's own rule, when present; the contract's pattern is checked in any case
    from viewneti_backend.tokens import validate_token_name as _library_validate_name
except ImportError:  # pragma: no cover - older library
    _library_validate_name = None


def validate_name(name: str, what: str = "object name") -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ApiError(
            400,
            f"invalid {what} {name!r}: {limits.NAME_RULE}",
        )
    if _library_validate_name is not None:
        _library_validate_name(name)
    return name


def warnings_header(warnings: list[str]) -> dict[str, str]:
    """``X-Warnings``: a JSON array of strings, ASCII-escaped so that it is a valid header value; no
    header when there is nothing to say."""
    return {"X-Warnings": json.dumps(warnings, ensure_ascii=True)} if warnings else {}


def check_size(width: int, height: int, what: str, max_size: int) -> None:
    if width > max_size or height > max_size:
        raise ApiError(
            422,
            f"{what}: {width}x{height} is larger than this server allows "
            f"({max_size} per side, see GET /v1/health max_size): request a smaller image",
        )


def parse_camera(cam: CameraIn, what: str, max_size: int) -> Camera:
    try:
        camera = cam.to_camera()
    except CameraError as exc:
        raise ApiError(400, f"{what}: {exc}") from None
    check_size(camera.width, camera.height, what, max_size)
    return camera


def shared_path_route_class() -> type[APIRoute]:
    """A route class (one per app) whose 405 names every method of its path in ``Allow``: GET and DELETE
    /v1/jobs/{job_id} are two routes, and Starlette answers a method that neither takes with the first
    one's methods only. Each route records its methods in the class's table as it is made (also the
    copies that ``include_router`` makes in FastAPI versions that copy routes)."""
    methods_by_path: dict[str, set[str]] = {}

    class SharedPathRoute(APIRoute):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            methods_by_path.setdefault(self.path, set()).update(self.methods or ())

        async def handle(self, scope: Any, receive: Any, send: Any) -> None:
            if self.methods and scope["method"] not in self.methods and "app" in scope:
                allow = ", ".join(sorted(methods_by_path.get(self.path) or self.methods))
                raise StarletteHTTPException(405, headers={"Allow": allow})
            await super().handle(scope, receive, send)

    return SharedPathRoute


_ERR = {"model": ErrorOut}
_WARNINGS_HEADER = {
    "X-Warnings": {
        "description": "present when the job's warnings are not empty: the same list as a JSON array of strings "
        "(ASCII-escaped)",
        "schema": {"type": "string"},
    }
}
_COMMON = {400: _ERR, 401: _ERR, 413: _ERR, 422: _ERR, 503: _ERR}


def create_app(config: ServerConfig, engine_factory: Callable[[], Any]) -> FastAPI:
    hub = EventHub()
    store = JobStore(config.jobs_dir, hub, keep_jobs=config.keep_jobs)
    worker = Worker(
        engine_factory,
        store,
        warmup=None if config.warmup is None else list(config.warmup),
        compile_new_shapes=config.compile_new_shapes,
        compile_processes=config.compile_processes,
        max_steps=config.max_steps,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        hub.bind(asyncio.get_running_loop())
        try:
            config.objects_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a read-only data dir: serve renders of the built-in objects, refuse jobs
            log.warning("cannot create the object library folder %s: %s", config.objects_dir, exc)
        store.load()
        worker.start()
        log.info("ViewNeTI server: data dir %s; loading the model in the background", config.data_dir)
        try:
            yield
        finally:
            await run_in_threadpool(worker.stop)

    app = FastAPI(
        title="ViewNeTI render service",
        version=viewneti_backend.__version__,
        description="Novel views of a frozen Stable-Diffusion-architecture model steered by ViewNeTI tokens. "
        "The contract is server/API.md.",
        lifespan=lifespan,
    )
    app.state.config, app.state.worker, app.state.store, app.state.hub = config, worker, store, hub
    app.state.begin_shutdown = worker.begin_stop
    install_exception_handlers(app)
    # add_middleware wraps: the last added is the outermost.
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes)
    app.add_middleware(PathCharactersMiddleware)
    app.add_middleware(BearerTokenMiddleware, token=config.token)
    app.add_middleware(HostOriginMiddleware, bind_host=config.host, extra_hosts=config.allowed_hosts)
    app.add_middleware(RequestContextMiddleware)

    r = APIRouter(prefix="/v1", route_class=shared_path_route_class())

    def max_size() -> int:
        """--max-size, the engine's own limit and, on a CPU, the device cap (limits.device_max_size)."""
        info = worker.info
        configured = min(config.max_size, int(info.get("max_size") or config.max_size))
        return limits.device_max_size(info.get("device"), info.get("native_size"), configured)

    def check_object(name: str | None) -> str | None:
        if name is None:
            return None
        validate_name(name)
        if not worker.has_object(name):
            raise ApiError(404, f"unknown object {name!r}: GET /v1/objects lists the available ones")
        return name

    def check_name_free(name: str) -> None:
        """409 if an object of the library has this name (a finished inversion's object is listed before
        its job is done, so a check under the store's lock never misses one that just finished)."""
        if worker.has_object(name):
            raise ApiError(
                409,
                f"an object named {name!r} already exists: pick another name or delete it first "
                f"(DELETE /v1/objects/{name})",
            )

    def check_steps(steps: int | None) -> int | None:
        if steps is not None and steps > config.max_steps:
            raise ApiError(422, f"steps={steps} is more than this server allows ({config.max_steps}): use fewer steps")
        return steps

    # -- health and library --------------------------------------------------------------------------
    @r.get("/health", response_model=HealthOut, responses={503: _ERR})
    async def health() -> Any:
        if worker.state != "ready":
            try:
                worker.ready_or_raise()
            except ApiError as exc:
                return JSONResponse({"error": exc.message, "status": worker.state}, status_code=503)
        info = worker.info
        extra = {k: v for k, v in info.items() if isinstance(v, (str, int, float, bool, type(None)))}
        return {
            **extra,
            "status": "ok",
            "api": API_VERSION,
            "version": str(info.get("version") or viewneti_backend.__version__),
            "base_model": info.get("base_model"),
            "device": info.get("device"),
            "dtype": info.get("dtype"),
            "view_mapper": info.get("view_mapper"),
            "default_object": info.get("default_object"),
            "queue_depth": worker.queue_depth(),
            "native_size": info.get("native_size"),
            "max_size": max_size(),
            "max_steps": config.max_steps,
            "max_invert_steps": config.max_invert_steps,
            "sampling_defaults": worker.sampling.to_dict(),
            "compiled_shapes": worker.compile_status(),
        }

    @r.get("/objects", response_model=ObjectsOut, responses={503: _ERR})
    async def list_objects() -> Any:
        worker.ready_or_raise()
        return {"objects": worker.objects}

    # before DELETE /objects/{name:path}: that path also matches .../rename, and the first route whose
    # path matches names the 405's Allow header
    @r.post("/objects/{name}/rename", response_model=ObjectOut, responses={**_COMMON, 404: _ERR, 409: _ERR})
    async def rename_object(name: str, body: RenameRequest) -> Any:
        validate_name(name)
        validate_name(body.new_name, "new_name")
        worker.ready_or_raise()
        if not worker.has_object(name):
            raise ApiError(404, f"unknown object {name!r}: GET /v1/objects lists the available ones")
        if any(o.get("name") == name and o.get("builtin") for o in worker.objects):  # as DELETE: a state conflict
            raise ApiError(409, f"{name!r} is a built-in object of the loaded model and cannot be renamed")

        def rename(engine: Any) -> dict:
            # Checked where the rename happens, under the job store's reservations: an inversion of
            # new_name is either reserved before (409 here) or sees the renamed object (its 409).
            if store.inversion_active(body.new_name):
                raise ApiError(409, f"an inversion for {body.new_name!r} is queued or running: pick another name")
            return engine.rename_object(name, body.new_name)

        try:  # on the worker thread, between renders: the library checks and renames in one step
            return await asyncio.wrap_future(worker.submit_call(rename, guard=store.reservations()))
        except NameTakenError as exc:
            raise ApiError(409, str(exc)) from None

    @r.delete("/objects/{name:path}", status_code=204, responses={**_COMMON, 404: _ERR, 409: _ERR})
    async def delete_object(name: str) -> Response:
        if name.endswith("/rename"):  # {name:path} also matches the rename route, which only takes POST
            raise StarletteHTTPException(405, headers={"Allow": "POST"})
        validate_name(name)
        worker.ready_or_raise()
        if not worker.has_object(name):
            raise ApiError(404, f"unknown object {name!r}: GET /v1/objects lists the available ones")
        if any(o.get("name") == name and o.get("builtin") for o in worker.objects):  # a state conflict, not bad input
            raise ApiError(409, f"{name!r} is a built-in object of the loaded model and cannot be deleted")
        await asyncio.wrap_future(worker.submit_call(lambda engine: engine.delete_object(name)))
        return Response(status_code=204)

    # -- compilation -------------------------------------------------------------------------------
    @r.post("/compile", status_code=202, response_model=CompileOut, responses={**_COMMON})
    async def compile_shape(body: CompileRequest) -> Any:
        """Compile a render shape in the background; renders at it run uncompiled until it is ready."""
        from viewneti_backend.render_shape import RenderShape

        worker.ready_or_raise()
        check_size(body.width, body.height, "size", max_size())  # the schema checked the rest (as for a camera)
        shape = RenderShape(body.views, body.width, body.height)
        worker.request_compile(shape)
        status = worker.compile_status()
        if status is None:
            state = "eager"
        elif shape.label() in status["ready"]:
            state = "ready"
        elif status["compiling"] == shape.label():
            state = "compiling"
        else:
            state = "queued"
        return {"shape": shape.label(), "status": state}

    # -- live render ---------------------------------------------------------------------------------
    @r.post(
        "/render",
        response_class=Response,
        responses={
            200: {
                "content": {t: {} for t in RESPONSE_TYPES},
                "description": "the rendered view: PNG (lossless, uncompressed), or JPEG when the Accept header "
                "prefers image/jpeg",
            },
            **_COMMON,
            404: _ERR,
            409: _ERR,
        },
    )
    async def render(body: RenderRequest, request: Request) -> Response:
        t_arrival = getattr(request.state, "t_arrival", time.perf_counter())
        camera = parse_camera(body.camera, "camera", max_size())
        check_steps(body.steps)
        worker.ready_or_raise()
        obj = check_object(body.object)
        steps, guidance = worker.sampling.resolve(body.steps, body.guidance)
        task = RenderTask(
            [camera],
            obj,
            body.seed,
            steps,
            guidance,
            session=body.session,
            request_id=getattr(request.state, "request_id", None),
        )
        fut = asyncio.wrap_future(worker.submit_render(task))
        gone = asyncio.ensure_future(_wait_disconnect(request))
        try:
            await asyncio.wait({fut, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not fut.done():  # the client left: free the worker
            worker.abandon(task, ClientGone())
            fut.cancel()
            return Response(status_code=499)
        images = fut.result()
        img = images[0]
        if img.size != (camera.width, camera.height):
            log.warning("engine returned %s for a %dx%d request; resizing", img.size, camera.width, camera.height)
            img = img.resize((camera.width, camera.height))
        media_type = negotiate_image_type(request.headers.get("accept"))
        t_image = time.perf_counter()
        data = encode_response_image(img, media_type)  # ~1 ms: cheaper inline than a thread hop
        t_end = time.perf_counter()
        timings = {
            "queue": round(((task.started_at or t_end) - task.enqueued_at) * 1000.0, 2),
            **{k: round(float(v), 2) for k, v in task.timings.items()},
            "image": round((t_end - t_image) * 1000.0, 2),
            "total": round((t_end - t_arrival) * 1000.0, 2),
        }
        request.state.timings = timings
        headers = {
            "X-Seed": str(body.seed),
            "X-Timings-Ms": json.dumps(timings, separators=(",", ":")),
            "Vary": "Accept",
        }
        headers.update(warnings_header(task.warnings))
        return Response(data, media_type=media_type, headers=headers)

    # -- jobs ----------------------------------------------------------------------------------------
    def check_job_capacity() -> None:
        if len(store.active()) >= config.max_queued_jobs:
            raise ApiError(
                429,
                f"too many active jobs ({config.max_queued_jobs}): wait for some to finish or "
                "cancel them (POST /v1/jobs/{id}/cancel)",
            )

    @r.post(
        "/jobs/sequence",
        status_code=202,
        response_model=JobCreated,
        responses={**_COMMON, 404: _ERR, 429: _ERR, 507: _ERR},
    )
    async def create_sequence(body: SequenceRequest, request: Request) -> Any:
        ms = max_size()
        cameras = [parse_camera(c, f"cameras[{i}]", ms) for i, c in enumerate(body.cameras)]
        check_steps(body.steps)
        frames = body.frames if body.frames is not None else list(range(len(cameras)))
        if len(frames) != len(cameras):
            raise ApiError(
                422,
                f"frames has {len(frames)} entries but cameras has {len(cameras)}: send one frame "
                "number per camera, or leave frames out",
            )
        if len(set(frames)) != len(frames):
            raise ApiError(422, "frames must be unique (they name the output files)")
        bad = [f for f in frames if not 0 <= f <= limits.MAX_FRAME]
        if bad:
            raise ApiError(422, f"frame numbers must be between 0 and {limits.MAX_FRAME}, got {bad[0]}")
        worker.ready_or_raise()
        obj = check_object(body.object)
        check_job_capacity()
        steps, guidance = worker.sampling.resolve(body.steps, body.guidance)
        # the X-Warnings strings of a single render, once for all the cameras (indices as in `cameras`);
        # on the worker thread, between renders: the engine belongs to it
        warnings = await asyncio.wrap_future(worker.submit_call(lambda engine: list(engine.render_warnings(cameras))))
        spec = SequenceSpec(tuple(cameras), tuple(frames), obj, body.seed, steps, guidance)
        request_record = {
            "kind": "sequence",
            "cameras": [c.to_wire() for c in body.cameras],
            "frames": frames,
            "object": obj,
            "seed": body.seed,
            "steps": steps,
            "guidance": guidance,
        }
        job = await run_in_threadpool(
            lambda: store.create(
                "sequence",
                len(cameras),
                request_record,
                request_id=getattr(request.state, "request_id", None),
                spec=spec,
                max_active=config.max_queued_jobs,
                warnings=warnings,
            )
        )
        worker.submit_job(job)
        return {"job_id": job.job_id, "kind": job.kind, "total": job.total, "warnings": job.warnings}

    @r.post(
        "/jobs/invert",
        status_code=202,
        response_model=JobCreated,
        responses={202: {"headers": _WARNINGS_HEADER}, **_COMMON, 409: _ERR, 429: _ERR, 507: _ERR},
    )
    async def create_invert(body: InvertRequest, request: Request, response: Response) -> Any:
        validate_name(body.name, "name")
        if len(body.images) != len(body.cameras):
            raise ApiError(422, f"{len(body.images)} images but {len(body.cameras)} cameras: send one camera per image")
        steps = body.steps
        if steps is None:  # the engine's default for its device (health: invert_steps), within the cap
            steps = min(int(worker.info.get("invert_steps") or limits.GPU_INVERT_STEPS), config.max_invert_steps)
        if steps > config.max_invert_steps:
            raise ApiError(
                422,
                f"steps={steps} is more than this server allows for an inversion ({config.max_invert_steps}, "
                "GET /v1/health max_invert_steps; server option --max-invert-steps): use fewer steps",
            )
        # a reference's camera is not capped like a render: the trainer works at its own training size
        cameras = [parse_camera(c, f"cameras[{i}]", limits.MAX_SIZE) for i, c in enumerate(body.cameras)]
        for i, cam in enumerate(cameras):
            problem = limits.aspect_error(cam.width, cam.height, f"cameras[{i}]")
            if problem:
                raise ApiError(422, problem)
        worker.ready_or_raise()
        check_name_free(body.name)
        if store.inversion_active(body.name):
            raise ApiError(409, f"an inversion for {body.name!r} is already queued or running: pick another name")
        check_job_capacity()

        def check_all() -> tuple[list[bytes], list[list[int]]]:
            """Decode each image once to refuse bad ones now (4xx, nothing written); keep only the file
            bytes: a queued inversion holds no decoded pixels (the worker decodes them when it starts)."""
            raws, sizes = [], []
            for i, s in enumerate(body.images):
                what = f"images[{i}]"
                raw = decode_base64(s, what=what, max_bytes=config.max_image_bytes)
                image = decode_image_bytes(raw, what=what, max_pixels=config.max_image_pixels)
                problem = limits.aspect_error(image.width, image.height, what)
                if problem:
                    raise ApiError(422, problem)
                raws.append(raw)
                sizes.append(list(image.size))
                del image
            return raws, sizes

        raws, sizes = await run_in_threadpool(check_all)
        # what the cameras' renders would warn of, at the size the trainer uses them (a photo-sized
        # reference is resized, so its size is no warning; a camera outside the trained distances is);
        # on the worker thread, between renders: the engine belongs to it
        first = (sizes[0][0], sizes[0][1])
        warnings = await asyncio.wrap_future(
            worker.submit_call(lambda engine: list(engine.invert_warnings(cameras, first)))
        )
        spec = InvertSpec(tuple(cameras), body.seed, body.preview_every, config.max_image_pixels)
        request_record = {
            "kind": "invert",
            "name": body.name,
            "cameras": [c.to_wire() for c in body.cameras],
            "steps": steps,
            "seed": body.seed,
            "preview_every": body.preview_every,
            "image_sizes": sizes,
        }
        job = await run_in_threadpool(
            lambda: store.create(
                "invert",
                steps,
                request_record,
                name=body.name,
                request_id=getattr(request.state, "request_id", None),
                spec=spec,
                references=raws,
                max_active=config.max_queued_jobs,
                warnings=warnings,
                check=lambda: check_name_free(body.name),  # again, with the reservation: see JobStore.create
            )
        )
        worker.submit_job(job)
        response.headers.update(warnings_header(job.warnings))
        return {"job_id": job.job_id, "kind": job.kind, "total": job.total, "warnings": job.warnings}

    @r.get("/jobs", response_model=JobsOut)
    async def list_jobs() -> Any:
        return {"jobs": [j.public() for j in store.list()]}

    @r.get("/jobs/{job_id}", response_model=JobOut, responses={404: _ERR})
    async def get_job(job_id: str) -> Any:
        return store.get(job_id).public()

    @r.post("/jobs/{job_id}/cancel", status_code=202, response_model=CancelOut, responses={404: _ERR, 409: _ERR})
    async def cancel_job(job_id: str) -> Any:
        job = store.get(job_id)
        state = await run_in_threadpool(worker.cancel_job, job)
        return {"job_id": job.job_id, "state": state}

    @r.delete("/jobs/{job_id}", status_code=204, responses={404: _ERR, 409: _ERR, 507: _ERR})
    async def delete_job(job_id: str) -> Response:
        """Delete a finished job: its record and its folder (frames included); a queued or running job
        must be cancelled first (409)."""
        await run_in_threadpool(store.delete, job_id)
        return Response(status_code=204)

    @r.get(
        "/jobs/{job_id}/frames/{frame}",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}, 404: _ERR},
    )
    async def get_frame(job_id: str, frame: int) -> Any:
        job = store.get(job_id)
        path = store.frame_path(job, frame)
        if path is None:
            raise ApiError(
                404,
                f"frame {frame} of job {job_id} is not rendered (yet): watch the job's events "
                "for 'frame' or check frames_done in GET /v1/jobs/{id}",
            )
        try:  # read here, not streamed later: a job deleted (or pruned) meanwhile is a 404, not a 500
            data = await run_in_threadpool(path.read_bytes)
        except FileNotFoundError:
            raise ApiError(404, f"job {job_id} was deleted while its frame {frame} was asked for") from None
        return Response(data, media_type="image/png")

    @r.get(
        "/jobs/{job_id}/events",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"}, 404: _ERR},
    )
    async def job_events(job_id: str) -> StreamingResponse:
        job = store.get(job_id)
        stream = job_event_stream(job.job_id, hub, lambda: store.snapshot_events(job))
        return StreamingResponse(
            stream, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )

    app.include_router(r)
    install_openapi(
        app,
        max_size=max_size,
        max_steps=config.max_steps,
        max_invert_steps=config.max_invert_steps,
        token_required=bool(config.token),
        ready=lambda: worker.state == "ready",
    )
    return app


async def _wait_disconnect(request: Request) -> None:
    """Return when the client closes the connection (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
