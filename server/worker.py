"""The one worker thread that owns the engine, and the priority queue in front of it.

Engine methods are not thread-safe, so every engine call happens on this thread. Order of work:
pending renders (and small library calls such as deletes) first, in arrival order; then the oldest
active job, one unit at a time (a batch of sequence frames, or a whole inversion). Inside a unit,
pending renders are served between two denoising steps of the frames' render, or between two
optimisation steps of an inversion (from the engine's step/progress callback, on this same thread), so
live mode keeps working while a camera path renders or a token is being fitted. For a while after a
render ends (``LOCKSTEP_AFTER_RENDER_S``), a job's steps (denoising or optimisation) are issued in
lockstep with the GPU, so the next live render waits for at most the one step of the job in progress.

Live supersede: a render carries an optional session key. A newer render of the same session fails
the older one with ``Superseded`` (HTTP 409): at once if it is still queued, or at the next
denoising step (through the engine's ``should_stop``) if it is in flight. So the GPU is never busy
with a stale pose.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

from PIL import Image

from viewneti_backend import limits
from viewneti_backend.compile_warmer import TrainingSize
from viewneti_backend.errors import Cancelled, InputError, is_out_of_memory
from viewneti_backend.progress import RENDER_PHASES, Progress
from viewneti_backend.render_shape import RenderShape
from viewneti_backend.sampling_defaults import SamplingDefaults

from .compiler import BackgroundCompiler
from .errors import ApiError, NotReady, ShuttingDown, Superseded
from .images import RESPONSE_TYPES, decode_image_bytes, encode_png, encode_response_image, png_base64
from .jobs import InvertSpec, Job, JobStore, SequenceSpec

log = logging.getLogger("viewneti.server")

# For this long after a render ends, a job's steps are issued in lockstep with the GPU (none ahead): the
# next live render, likely while the user is moving the camera, then waits for at most the job's step in
# progress, not for those queued behind it: two denoising steps of a sequence (~120 ms at 768x576 x 8
# frames on an H100; RESULTS.md section 6, session 26), or the next optimisation step of an inversion
# (~75 ms at 512x512 on an H200; session 27). Meanwhile the GPU idles while the host issues each step
# (~2 ms of a sequence's 59-ms step, ~5 ms of an inversion's 113-ms step), and never otherwise.
LOCKSTEP_AFTER_RENDER_S = 2.0


class ClientGone(ApiError):
    def __init__(self) -> None:
        super().__init__(499, "the client closed the connection before the render finished")


@dataclass(eq=False)
class RenderTask:
    cameras: list[Any]
    object_name: str | None
    seed: int
    steps: int
    guidance: float
    session: str | None = None
    request_id: str | None = None
    future: Future = field(default_factory=Future)
    stop: threading.Event = field(default_factory=threading.Event)
    stop_error: Exception | None = None
    enqueued_at: float = field(default_factory=time.perf_counter)
    started_at: float | None = None
    finished_at: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # from engine.render: sent back as X-Warnings


@dataclass(eq=False)
class CallTask:
    """Run ``fn(engine)`` on the worker thread at render priority (library edits), holding ``guard``
    (if given) around the call and the refresh of the object list that follows it."""

    fn: Callable[[Any], Any]
    guard: AbstractContextManager[Any] | None = None
    future: Future = field(default_factory=Future)


@dataclass
class PrimeTask:
    """Pay one render shape's first-use work (Engine.prime_shapes) while the worker has nothing else
    to do: the shape a client asked to compile, so its first render does not pay it."""

    shape: Any


def _prime_image_encoders(shapes: list[Any]) -> None:
    """Encode a blank image of each shape's size in every response format: ~15 ms the first time at a
    size, ~4 after (part of a shape's first-use work)."""
    for shape in shapes:
        blank = Image.new("RGB", (shape.width, shape.height))
        for media_type in RESPONSE_TYPES:
            encode_response_image(blank, media_type)


def capped_sampling(reported: object, max_steps: int) -> SamplingDefaults:
    """The loaded model's recommended settings (its engine info's ``sampling_defaults``), steps capped
    at the server's --max-steps; an engine that reports none, or nonsense, gets SD 2's values."""
    try:
        d = SamplingDefaults.from_dict(reported) if isinstance(reported, dict) else SamplingDefaults()
    except ValueError:
        d = SamplingDefaults()
    return replace(d, steps=min(d.steps, max_steps), live_steps=min(d.live_steps, max_steps))


def sequence_unit(remaining: int, batch: int, compiled: Callable[[int], bool]) -> tuple[int, int]:
    """How the next frames of a sequence render: (frames taken, views in the engine call).

    A full ``batch`` while that many frames are left. The last k < batch frames take the cheapest shape
    that is compiled (``compiled(views)``; an uncompiled shape costs seconds at SD 2 scale): k views if
    that shape is; else one frame a call while at most half a batch is left and single views are; else
    the full batch, padded with copies of the last camera (their images are dropped; every view of a
    batch starts from the same noise, so the kept frames are those of any batch of that size); else k
    views, uncompiled."""
    if remaining >= batch:
        return batch, batch
    if compiled(remaining):
        return remaining, remaining
    if remaining <= batch // 2 and compiled(1):
        return 1, 1
    if compiled(batch):
        return remaining, batch
    return remaining, remaining


def _fail(future: Future, exc: BaseException) -> None:
    if not future.done():
        try:
            future.set_exception(exc)
        except Exception:  # InvalidStateError: raced with completion
            pass


class Worker:
    def __init__(
        self,
        engine_factory: Callable[[], Any],
        store: JobStore,
        *,
        name: str = "viewneti-worker",
        serve_renders_during_jobs: bool = True,
        warmup: list[str] | None = None,
        compile_new_shapes: bool = True,
        compile_processes: int = 0,
        max_steps: int = limits.MAX_STEPS,
    ) -> None:
        self._engine_factory = engine_factory
        self._max_steps = max_steps
        self._warmup = warmup  # shape labels such as "768x576x4"; None: the engine's defaults
        self._compile_new_shapes = compile_new_shapes
        self._compile_processes = compile_processes
        self.compiler: BackgroundCompiler | None = None
        # PNG encoding and writing of sequence frames, off the worker thread: the next frames render meanwhile
        self._frame_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="viewneti-frames")
        self._png_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="viewneti-png")
        self._serve_during_jobs = serve_renders_during_jobs
        self._store = store
        self._cv = threading.Condition()
        self._tasks: deque[RenderTask | CallTask] = deque()
        self._jobs: deque[Job] = deque()
        self._sessions: dict[str, RenderTask] = {}
        self._render_ended = -float("inf")  # time.monotonic() when the last render ended
        self._current: RenderTask | CallTask | Job | PrimeTask | None = None
        # shapes to prime when idle (POST /v1/compile, on CUDA) and every shape primed or queued for it
        self._to_prime: deque[PrimeTask] = deque()
        self._primed: set[Any] = set()
        self._stopping = False
        self.engine: Any = None
        self.state = "loading"  # loading | ready | failed | stopped
        self.load_error: str | None = None
        self.info: dict[str, Any] = {}
        # what renders that leave steps/guidance out use: set once when the model has loaded
        self.sampling = capped_sampling(None, max_steps)
        self.objects: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    # -- public API (any thread) ---------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        """Whether the worker thread runs (False before start and once stop has returned)."""
        return self._thread.is_alive()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the current step: queued renders fail with 503, in-flight ones are cut (503), and
        every active job ends ``interrupted`` (its event streams end with that event)."""
        with self._cv:
            if self._stopping:
                already = True
            else:
                already, self._stopping = False, True
        if already:  # another thread is stopping it: just wait
            if threading.current_thread() is not self._thread and self._thread.ident is not None:
                self._thread.join(timeout)
            return
        with self._cv:
            tasks, self._tasks = list(self._tasks), deque()
            self._cv.notify_all()
        for t in tasks:
            _fail(t.future, ShuttingDown())
        if self.compiler is not None:
            self.compiler.stop()
        # The worker thread marks the active jobs 'interrupted' as it leaves its loop.
        if self._thread.ident is not None:
            self._thread.join(timeout)
        self._frame_writer.shutdown(wait=True)
        self._png_pool.shutdown(wait=True)
        self.state = "stopped"

    def begin_stop(self) -> None:
        """Start stopping without waiting (safe to call from a signal handler)."""
        if not self._stopping:
            threading.Thread(target=self.stop, name="viewneti-worker-stop", daemon=True).start()

    def ready_or_raise(self) -> None:
        if self._stopping:
            raise ShuttingDown()
        if self.state == "loading":
            raise NotReady("the model is still loading: retry in a few seconds (GET /v1/health says when it is ready)")
        if self.state == "failed":
            raise NotReady(
                f"the model failed to load: {self.load_error}. Fix the server's --model/--view-mapper "
                "options and restart it"
            )

    def has_object(self, name: str) -> bool:
        return any(o.get("name") == name for o in self.objects)

    def queue_depth(self) -> int:
        with self._cv:
            return len(self._tasks) + len(self._jobs) + (1 if isinstance(self._current, (RenderTask, CallTask)) else 0)

    def submit_render(self, task: RenderTask) -> Future:
        superseded: RenderTask | None = None
        with self._cv:
            self.ready_or_raise()
            if task.session is not None:
                prev = self._sessions.get(task.session)
                if prev is not None and not prev.future.done():
                    superseded = prev
                self._sessions[task.session] = task
            self._tasks.append(task)
            self._cv.notify_all()
        if superseded is not None:
            self.abandon(superseded, Superseded(task.session or ""))
        return task.future

    def abandon(self, task: RenderTask, exc: ApiError) -> None:
        """Fail a render that is no longer wanted: drop it if queued, cut it at its next step if running."""
        with self._cv:
            if task in self._tasks:
                self._tasks.remove(task)
                self._forget_session(task)
                queued = True
            else:
                queued = False
                if task.stop_error is None:
                    task.stop_error = exc
                task.stop.set()
        if queued:
            _fail(task.future, exc)

    def submit_call(self, fn: Callable[[Any], Any], guard: AbstractContextManager[Any] | None = None) -> Future:
        task = CallTask(fn, guard)
        with self._cv:
            self.ready_or_raise()
            self._tasks.append(task)
            self._cv.notify_all()
        return task.future

    def submit_job(self, job: Job) -> None:
        with self._cv:
            self.ready_or_raise()
            self._jobs.append(job)
            self._cv.notify_all()

    def cancel_job(self, job: Job) -> str:
        with self._cv:
            if job.terminal:
                raise ApiError(409, f"job {job.job_id} is already {job.state}: nothing to cancel")
            job.cancel.set()
            if job.state == "queued" and job is not self._current and job in self._jobs:
                self._jobs.remove(job)
                cancel_now = True
            else:
                cancel_now = False
        if cancel_now:
            job.run.images = None  # never decoded while queued; dropped in any case
            self._store.set_state(job, "cancelled")
            return "cancelled"
        return "cancelling"

    # -- the thread ----------------------------------------------------------------------------------
    def _forget_session(self, task: RenderTask) -> None:
        if task.session is not None and self._sessions.get(task.session) is task:
            del self._sessions[task.session]

    def _run(self) -> None:
        try:
            t0 = time.perf_counter()
            engine = self._engine_factory()
            info = dict(engine.info())
            objects = list(engine.list_objects())
        except BaseException as exc:  # noqa: BLE001 - reported through /v1/health
            log.exception("the model failed to load")
            with self._cv:
                self.state, self.load_error = "failed", f"{type(exc).__name__}: {exc}"
                tasks, self._tasks = list(self._tasks), deque()
                jobs, self._jobs = list(self._jobs), deque()
            for t in tasks:
                _fail(t.future, NotReady(f"the model failed to load: {self.load_error}"))
            for j in jobs:
                self._store.set_state(j, "error", error=f"the model failed to load: {self.load_error}")
            return
        sampling = capped_sampling(info.get("sampling_defaults"), self._max_steps)
        compiled, primes = getattr(engine, "compiled", False), getattr(engine, "primes_first_use", False)
        shapes = self._warmup_shapes(engine) if compiled or primes else []
        if primes:
            self._prime_first_use(engine, shapes, sampling)
        with self._cv:
            self.engine, self.info, self.objects, self.sampling = engine, info, objects, sampling
            self._primed.update(shapes if primes else ())
            self.state = "ready"
        log.info("model ready in %.1fs: %s", time.perf_counter() - t0, ", ".join(f"{k}={v}" for k, v in info.items()))
        if compiled:
            self._start_compiler(engine, shapes)
        while True:
            with self._cv:
                while not self._stopping and not self._tasks and not self._jobs and not self._to_prime:
                    self._cv.wait()
                if self._stopping:
                    leftover, self._jobs = list(self._jobs), deque()
                    break
                if self._tasks:
                    item: RenderTask | CallTask | Job | PrimeTask = self._tasks.popleft()
                elif self._jobs:
                    item = self._jobs[0]
                else:  # nothing a user waits for: the lowest priority
                    item = self._to_prime.popleft()
                self._current = item
            try:
                if isinstance(item, RenderTask):
                    self._run_render(item)
                elif isinstance(item, CallTask):
                    self._run_call(item)
                elif isinstance(item, PrimeTask):
                    self._run_prime(item)
                else:
                    self._run_job_unit(item)
            except BaseException:  # noqa: BLE001 - the worker must survive anything
                log.exception("unexpected error in the worker loop")
            finally:
                with self._cv:
                    self._current = None
        for job in leftover:  # e.g. a sequence stopped between two frames
            if not job.terminal:
                job.run.images = None
                self._store.set_state(
                    job, "interrupted", error="the server shut down while this job was running; submit it again"
                )

    def _warmup_shapes(self, engine: Any) -> list[Any]:
        """The render shapes to get ready before users ask: ``--warmup``, else the engine's defaults."""
        try:
            if self._warmup is None:
                return engine.default_warmup_shapes()
            return [RenderShape.parse(label) for label in self._warmup]
        except InputError as exc:
            log.error("--warmup: %s; compiling nothing ahead", exc)
            return []

    def _prime_first_use(self, engine: Any, shapes: list[Any], sampling: SamplingDefaults) -> None:
        """Before reporting ready, pay the first-use costs the first renders would pay (on CUDA: a new
        pose's encodings at the live and normal step counts, the uncompiled UNet and decoder at the
        warm-up shapes, Engine.prime_first_use; the image encoders at those sizes). A failure here costs
        only that speed."""
        steps = (sampling.live_steps, sampling.steps)
        try:
            t0 = time.perf_counter()
            engine.prime_first_use(shapes, steps)
            _prime_image_encoders(shapes)
            seconds = time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001 - e.g. out of GPU memory: serving matters more
            log.warning(
                "could not run the first renders' first-use work ahead (%s: %s); the first requests will pay it",
                type(exc).__name__,
                exc,
            )
            return
        log.info(
            "first-use work done ahead in %.1fs: new-pose encodings at %s steps; uncompiled renders at %s",
            seconds,
            " and ".join(str(n) for n in dict.fromkeys(steps)),
            ", ".join(s.label() for s in shapes) or "no shape",
        )

    def _start_compiler(self, engine: Any, shapes: list[Any]) -> None:
        self.compiler = BackgroundCompiler(
            engine, compile_new_shapes=self._compile_new_shapes, processes=self._compile_processes
        )
        engine.on_uncompiled_shape = self.compiler.request
        warm_training: Callable[[], list[tuple[int, int]]] | None = getattr(engine, "training_warmup_sizes", None)
        training = [TrainingSize(w, h) for w, h in warm_training()] if warm_training is not None else []
        self.compiler.start(shapes, training=training)
        ahead = list(self.compiler.status()["training_ahead"])  # empty where no helper takes them
        log.info(
            "serving now; compiling in the background: %s (until then those sizes render eager)%s",
            ", ".join(s.label() for s in shapes) or "nothing ahead (new sizes compile on first use)",
            f"; then, in the helper processes, the training graphs of inversions at {', '.join(ahead)}"
            if ahead
            else "",
        )

    def compile_status(self) -> dict[str, Any] | None:
        return None if self.compiler is None else self.compiler.status()

    def request_compile(self, shape: Any) -> bool:
        """Compile a shape in the background (e.g. the add-on's resolution); False if nothing to do.

        On CUDA the worker also pays the shape's first-use work (the uncompiled UNet's plain call, cuDNN
        plans, the decoder) once it has nothing else to do, as it did for the warm-up shapes before
        ready: renders there run uncompiled until the compile is done, and the first one would pay it
        (0.94 against 0.45 s for the next, 640x480 on an H100, benchmarks/RESULTS.md section 6)."""
        with self._cv:
            if getattr(self.engine, "primes_first_use", False) and shape not in self._primed:
                self._primed.add(shape)
                self._to_prime.append(PrimeTask(shape))
                self._cv.notify_all()
        return self.compiler is not None and self.compiler.request(shape, warmup=True)

    def _run_prime(self, task: PrimeTask) -> None:
        """The first-use work of one shape (see request_compile); a failure costs only that speed."""
        label = task.shape.label()
        try:
            seconds = self.engine.prime_shapes([task.shape])
            _prime_image_encoders([task.shape])
        except Exception as exc:  # noqa: BLE001 - e.g. out of GPU memory: the render will say so itself
            log.warning(
                "could not run the first-use work of %s ahead (%s: %s); its first render will pay it",
                label,
                type(exc).__name__,
                exc,
            )
            return
        log.info(
            "first-use work of %s done ahead in %.2fs (renders there run uncompiled until it is compiled)",
            label,
            seconds,
        )

    def _serve_pending_tasks(self) -> None:
        """Run the queued renders/library calls now (called between two steps of a long job)."""
        while True:
            with self._cv:
                if self._stopping or not self._tasks:
                    return
                task = self._tasks.popleft()
                outer, self._current = self._current, task
            try:
                if isinstance(task, RenderTask):
                    self._run_render(task)
                else:
                    self._run_call(task)
            finally:
                with self._cv:
                    self._current = outer

    def _run_render(self, task: RenderTask) -> None:
        task.started_at = time.perf_counter()

        def should_stop() -> bool:
            return task.stop.is_set() or self._stopping

        try:
            if should_stop():
                raise Cancelled("stopped before it started")
            images = self.engine.render(
                task.cameras,
                task.object_name,
                task.seed,
                task.steps,
                task.guidance,
                should_stop=should_stop,
                timings=task.timings,
                warnings=task.warnings,
            )
            task.finished_at = time.perf_counter()
            if not task.future.done():
                task.future.set_result(images)
        except Cancelled:
            _fail(task.future, task.stop_error or ShuttingDown())
        except BaseException as exc:  # noqa: BLE001 - goes back to the request handler
            _fail(task.future, exc)
        finally:
            self._render_ended = time.monotonic()
            with self._cv:
                self._forget_session(task)

    def _run_call(self, task: CallTask) -> None:
        try:
            with task.guard if task.guard is not None else nullcontext():
                result = task.fn(self.engine)
                self.objects = list(self.engine.list_objects())
            task.future.set_result(result)
        except BaseException as exc:  # noqa: BLE001
            _fail(task.future, exc)

    # -- jobs ----------------------------------------------------------------------------------------
    def _finish_job(self, job: Job, state: str, **fields: Any) -> None:
        writes, job.run.writes = job.run.writes, []
        for w in writes:  # frames already rendered are stored before the final event
            try:
                w.result()
            except Exception as exc:  # noqa: BLE001 - the first failed write ends the job: reported there
                if exc is not job.run.write_error:
                    log.exception("writing frames of job %s failed", job.job_id)
        with self._cv:
            if job in self._jobs:
                self._jobs.remove(job)
        job.run.images = None  # free the decoded references
        self._store.set_state(job, state, **fields)

    def _run_job_unit(self, job: Job) -> None:
        def should_stop() -> bool:  # a frame that could not be stored stops the job's render too
            return job.cancel.is_set() or self._stopping or job.run.write_error is not None

        try:
            if job.state == "queued":
                job.run.t_start = time.perf_counter()
                self._store.set_state(job, "running")
            if should_stop():
                raise Cancelled()
            spec = job.spec
            if isinstance(spec, SequenceSpec):
                self._sequence_frame(job, spec, should_stop)
            elif isinstance(spec, InvertSpec):
                if job.run.images is None:
                    self._decode_references(job, spec)
                self._invert(job, spec, should_stop)
            else:
                raise ApiError(500, f"the {job.kind} job {job.job_id} has nothing to run (no spec): submit it again")
        except Cancelled:
            if job.cancel.is_set():
                self._finish_job(job, "cancelled")
            elif job.run.write_error is not None:  # the frame writer stopped it
                self._fail_job(job, job.run.write_error)
            else:
                self._finish_job(
                    job, "interrupted", error="the server shut down while this job was running; submit it again"
                )
        except BaseException as exc:  # noqa: BLE001 - the worker must survive anything
            self._fail_job(job, exc)

    def _fail_job(self, job: Job, exc: BaseException) -> None:
        """End a job in 'error' with a message that says what to fix."""
        if isinstance(exc, InputError):
            self._finish_job(job, "error", error=str(exc))
        elif isinstance(exc, ApiError):
            self._finish_job(job, "error", error=exc.message)
        elif isinstance(exc, OSError):  # e.g. a full disk while writing a frame or the new token
            log.warning("job %s failed: %s", job.job_id, exc)
            kept = f"; the {len(job.frames_done)} frame(s) stored before stay available" if job.frames_done else ""
            self._finish_job(
                job,
                "error",
                error=f"could not write the result to the server's data directory {self._store.dir.parent} "
                f"({exc.strerror or exc}): free disk space there (or fix its permissions) and submit the job "
                f"again{kept}",
            )
        else:
            log.error("job %s failed", job.job_id, exc_info=exc)
            self._finish_job(job, "error", error=f"internal error ({type(exc).__name__}: {exc}); see the server log")

    def _decode_references(self, job: Job, spec: InvertSpec) -> None:
        """Decode an inversion's spooled image files now that it runs (a queued job holds no pixels)."""
        try:
            raws = self._store.read_references(job)
        except OSError as exc:
            raise ApiError(500, f"the job's reference images could not be read back ({exc}); submit it again") from None
        job.run.images = [
            decode_image_bytes(raw, what=f"images[{i}]", max_pixels=spec.max_pixels) for i, raw in enumerate(raws)
        ]

    def _sequence_frame(self, job: Job, spec: SequenceSpec, should_stop: Callable[[], bool]) -> None:
        """Render the next frames of a sequence in one engine call (``engine.sequence_batch`` views per
        UNet call, see :func:`sequence_unit`; their poses in one text-encoder call), serving pending live
        renders between its denoising steps, then hand them to the frame writer, which encodes and stores
        them while the worker renders the next ones."""
        run = job.run
        if run.write_error is not None:  # an earlier frame could not be stored: render no more
            raise run.write_error
        i = run.next_index
        n = max(1, int(getattr(self.engine, "sequence_batch", 1)))
        take, views = sequence_unit(len(spec.cameras) - i, n, self._compiled_views(spec.cameras[i], spec.guidance))
        batch = list(spec.cameras[i : i + take])
        padded = batch + [batch[-1]] * (views - take)
        serves = self._serve_during_jobs
        on_step, lockstep = (self._serve_between_steps, self._render_recently) if serves else (None, None)
        timings: dict[str, float] = {}
        try:
            images = self.engine.render(
                padded,
                spec.object,
                spec.seed,
                spec.steps,
                spec.guidance,
                should_stop=should_stop,
                on_step=on_step,
                lockstep=lockstep,
                timings=timings,
            )[:take]
        except Exception as exc:
            if not is_out_of_memory(exc) or views == 1:
                raise
            self._halve_sequence_batch(views)
            return  # the same frames again, fewer at a time (the job's next unit)
        run.next_index = i + len(batch)
        so_far = job.phase_ms or {}
        job.phase_ms = {k: round(so_far.get(k, 0.0) + float(timings.get(k, 0.0)), 1) for k in RENDER_PHASES}
        last = run.next_index >= job.total
        frames = list(spec.frames[i : i + len(batch)])
        run.writes.append(self._frame_writer.submit(self._write_frames, job, i, frames, images))
        if last:
            for w in run.writes:
                w.result()  # re-raises a failed write: the job ends 'error', not 'done'
            run.writes.clear()
            self._finish_job(job, "done", result={"frames": list(job.frames_done)}, eta_s=0.0)

    def _halve_sequence_batch(self, views: int) -> None:
        """A sequence's batch of ``views`` ran out of GPU memory (a large size, or a GPU shared with other
        work): from now on render half as many frames a call, and say so in /v1/health."""
        smaller = max(1, views // 2)
        log.warning("out of GPU memory rendering %d sequence frames at once: %d a call from now on", views, smaller)
        self.engine.sequence_batch = smaller
        self.info = {**self.info, "sequence_batch": smaller}

    def _compiled_views(self, camera: Any, guidance: float) -> Callable[[int], bool]:
        """Whether a render of that many views at this camera's size runs compiled (never, on an engine
        that does not compile)."""
        runs_uncompiled = getattr(self.engine, "runs_uncompiled", None)
        if runs_uncompiled is None:
            return lambda views: False
        return lambda views: not runs_uncompiled(RenderShape.of_render(views, camera.width, camera.height, guidance))

    def _render_recently(self) -> bool:
        """Whether a render ended less than ``LOCKSTEP_AFTER_RENDER_S`` ago (a job's steps go in lockstep)."""
        return time.monotonic() - self._render_ended < LOCKSTEP_AFTER_RENDER_S

    def _serve_between_steps(self, step: int, steps: int) -> None:
        """A sequence render's step callback: the GPU has done ``step``; serve what waits meanwhile."""
        self._serve_pending_tasks()

    def _write_frames(self, job: Job, first: int, frames: list[int], images: list[Any]) -> None:
        """Encode and store frames (frame-writer thread). The first failure is kept in ``run.write_error``:
        the worker's ``should_stop`` sees it, so the job ends at once instead of rendering the rest."""
        if job.terminal or job.run.write_error is not None:
            return
        try:
            pngs = list(self._png_pool.map(encode_png, images))
            for k, png in enumerate(pngs):
                if job.terminal:  # cancelled meanwhile: no frame events after the final one
                    return
                done = first + k + 1
                elapsed = time.perf_counter() - job.run.t_start
                eta_s = round(elapsed / done * (job.total - done), 2)
                self._store.frame_done(job, first + k, frames[k], png, eta_s=eta_s)
        except Exception as exc:
            job.run.write_error = exc
            raise

    def _invert(self, job: Job, spec: InvertSpec, should_stop: Callable[[], bool]) -> None:
        def on_progress(p: Progress) -> None:
            self._store.progress(job, p)
            if p.preview is not None:
                self._store.preview(job, p.step, png_base64(p.preview))
            if self._serve_during_jobs:
                self._serve_pending_tasks()

        result = self.engine.invert(
            job.run.images,
            list(spec.cameras),
            job.name,
            job.total,
            seed=spec.seed,
            on_progress=on_progress,
            should_stop=should_stop,
            lockstep=self._render_recently if self._serve_during_jobs else None,
            preview_every=spec.preview_every,
        )
        self.objects = list(self.engine.list_objects())  # before 'done': JobStore.create's name check needs it
        job.step = job.total
        self._finish_job(job, "done", result=dict(result), eta_s=0.0)
