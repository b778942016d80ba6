"""The engine: one loaded model + view-mapper + token library, with render and invert.

This is what the server's single GPU worker owns (and what the CLI uses). Not thread-safe by
design: exactly one thread calls it.

A model folder may carry a ``viewneti/`` sub-folder with a bundled view-mapper
(``viewneti/view_mapper``), built-in object tokens (``viewneti/objects/<name>``) and recommended
sampling settings (``viewneti/sampling.json``, see :mod:`.sampling_defaults`); the embedded toy world
ships that way, and the same layout works for SD 2 folders.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from PIL import Image

from . import __version__
from .base_model import Backbone, compile_base_model, load_base_model, prepare_thread_for_cuda_graph_trees
from .camera_rig import CameraRig, range_warnings, rig_from_mapper_config
from .cameras import Camera, orbit_pose
from .compile_modes import resolve_compile_mode
from .compile_warmer import WarmProcess
from .data import Scene
from .errors import Cancelled, InputError, is_out_of_memory
from .limits import (  # noqa: F401 - the inversion defaults are re-exported for callers
    CPU_INVERT_STEPS,
    CPU_SECONDS_PER_INVERT_STEP,
    GPU_INVERT_STEPS,
    MAX_SIZE,
    SIZE_WARNING_FACTOR,
    default_invert_steps,
)
from .mapper import NeTIMapper
from .pipeline import ViewNeTIPipeline
from .progress import Progress
from .render_shape import RenderShape
from .sampling_defaults import BUNDLE_DIR, SamplingDefaults
from .tokens import ObjectLibrary, validate_token_name
from .training import TrainConfig, Trainer
from .unet_graphs import GraphedUNet

log = logging.getLogger("viewneti.engine")

# a compiled shape whose graphs failed this many renders is given up: it renders eager from then on
MAX_COMPILED_FAILURES = 2
# frames of a sequence job per UNet call on a GPU (the last frames may take a compiled shape instead:
# server/worker.py sequence_unit)
SEQUENCE_BATCH_CUDA = 8


def embedded_model_dir() -> Path:
    """The toy-world model shipped inside the package (the default when no model is configured)."""
    return Path(__file__).resolve().parent / "toyworld" / "weights" / "prior"


def resolve_model(model: str | os.PathLike | None) -> str:
    if model:
        return str(model)
    env = os.environ.get("VIEWNETI_MODEL")
    if env:
        return env
    path = embedded_model_dir()
    if not (path / "model_index.json").is_file():
        raise InputError(f"the embedded toy model is missing at {path}: reinstall the package, or pass --model")
    return str(path)


# Where a reference image is transparent, the object stands in front of what the model renders behind
# its objects: the toy world's sky at the horizon (toyworld/renderer.py SKY_HORIZON), white for other
# models (the usual studio background of object photos). The trainer has no masked loss, so the alpha
# channel decides the background the token is fitted against.
TOY_BACKGROUND = (219, 227, 237)
DEFAULT_BACKGROUND = (255, 255, 255)


def reference_background(model: str) -> tuple[int, int, int]:
    return TOY_BACKGROUND if (Path(model) / "toyworld.json").is_file() else DEFAULT_BACKGROUND


def flatten_reference(image: Image.Image, background: tuple[int, int, int] = DEFAULT_BACKGROUND) -> Image.Image:
    """An RGB reference: an image with alpha is composited over ``background`` (alpha = object mask)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, background)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB")


def bundled_view_mapper(model: str) -> Path | None:
    path = Path(model) / BUNDLE_DIR / "view_mapper"
    return path if path.is_dir() else None


# A compile helper that compiles a training graph ahead holds a copy of the model and a training step's
# activations (9-15 GiB at SD 2 scale, benchmarks/RESULTS.md section 1) next to the server and the other
# helpers (two by default, both possibly doing this at once): only on GPUs with at least this much memory
# (80-GiB H100s and A100s, 141-GiB H200s; not yet measured, so kept well clear of 40-48-GiB cards).
TRAINING_AHEAD_MIN_GPU_GIB = 64


def training_size(native_size: int, image_size: tuple[int, int], long_side: int = 512) -> tuple[int, int]:
    """The size a model trains at on images of this size: long side min(native, 512) (the paper trains
    SD 2.1 at 512x384), the images' aspect, multiples of 8. Inversion and `viewneti pretrain` share it."""
    long_side = min(native_size, long_side)
    w, h = image_size
    scale = long_side / max(w, h)
    return max(8, round(w * scale / 8) * 8), max(8, round(h * scale / 8) * 8)


class Engine:
    """Render novel views and invert reference images with one frozen base model."""

    def __init__(
        self,
        base: Backbone,
        view_mapper: NeTIMapper | None,
        library: ObjectLibrary,
        *,
        model: str,
        view_mapper_name: str | None,
        train_long_side: int = 512,
        sampling: SamplingDefaults | None = None,
    ):
        self.base = base
        self.pipeline = ViewNeTIPipeline(base, view_mapper)
        self.library = library
        self.model = model
        self.view_mapper_name = view_mapper_name
        self.train_long_side = train_long_side
        self.sampling = sampling or SamplingDefaults()  # the model's recommended steps/guidance
        self.compile_mode: str | None = None  # set by load(); None = eager
        self.view_mapper_path: str | None = None  # set by load(): where the view-mapper came from
        # views per UNet call in a sequence job: on a GPU several frames fill it far better than one (8:
        # 224 ms a 768x576 frame against 237 at 4 and 318 at 1, H100, RESULTS.md §1); on a CPU a larger
        # batch gains nothing. Live renders are served between the steps of a batch (server/worker.py).
        self.sequence_batch = SEQUENCE_BATCH_CUDA if base.device.type == "cuda" else 1
        self.background = reference_background(model)  # behind the transparent parts of a reference
        # A view-mapper trained in another camera frame (DTU) carries a rig: user cameras (anchor frame)
        # are mapped through it before they reach the mapper (camera_rig.py).
        self.rig = rig_from_mapper_config(view_mapper.config.camera_parameterization) if view_mapper else None
        # training sizes (width, height) whose compiled training graph exists in this process: the first
        # inversion at a new size compiles it (minutes at SD 2 scale on CUDA), and says so to on_progress
        self._compiled_training_sizes: set[tuple[int, int]] = set()
        # render shapes whose compiled graphs exist; a render at any other shape runs eager (same maths)
        # instead of blocking for a compile, and is reported to on_uncompiled_shape (the server then
        # compiles it in the background: see compile_shape)
        self.ready_shapes: set[RenderShape] = set()
        # cleared while a render runs: a background compile (pure Python, minutes) waits on it, so it does
        # not starve a render of the GIL (measured: an eager 768x576 view took 19 s instead of ~1 s)
        self.idle = threading.Event()
        self.idle.set()
        # the same as a flag to wait for: set while a render runs (the server pauses optional helper work)
        self.rendering = threading.Event()
        self._busy_depth = 0  # renders running now: one served between the steps of another makes two
        self._busy_lock = threading.Lock()
        self.on_uncompiled_shape: Callable[[RenderShape], None] | None = None
        # label -> {"count", "last_error", "gave_up"}: compiled renders that raised and were redone eager
        self.compiled_failures: dict[str, dict] = {}

    @classmethod
    def load(
        cls,
        model: str | None = None,
        view_mapper: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        library_dir: str | Path | None = None,
        compile: bool | str | None = None,
    ) -> Engine:
        """``compile``: see :func:`.compile_modes.resolve_compile_mode` (default: CUDA graphs on CUDA only,
        eager on the CPU); a compiled engine should :meth:`warmup` before its first user request."""
        model = resolve_model(model)
        base = load_base_model(model, device=device, dtype=dtype)
        compile_mode = resolve_compile_mode(compile, base.device)
        if compile_mode is not None:
            compile_base_model(base, compile_mode)
        elif base.device.type == "cuda":
            base.eager["unet"] = GraphedUNet(base.unet)  # renders replay CUDA graphs, with no compile
        vm_path = Path(view_mapper) if view_mapper else bundled_view_mapper(model)
        vm = None
        if vm_path is not None:
            vm = NeTIMapper.from_pretrained(vm_path, expect_fingerprint=base.fingerprint, device=base.device)
            vm.requires_grad_(False).eval()
        builtin: list[str | Path] = [Path(model) / BUNDLE_DIR / "objects"] if Path(model).is_dir() else []
        library = ObjectLibrary(library_dir, builtin)
        name = (
            None
            if vm_path is None
            else (vm_path.parent.parent.name + "/" + vm_path.name if vm_path.name == "view_mapper" else vm_path.name)
        )
        sampling = SamplingDefaults.for_model(model)  # viewneti/sampling.json, else SD 2's 7.5 / 30
        engine = cls(base, vm, library, model=model, view_mapper_name=name, sampling=sampling)
        engine.compile_mode = compile_mode
        engine.view_mapper_path = None if vm_path is None else str(vm_path)
        if compile_mode is not None:
            engine.pipeline.prepare()  # the unconditional encoding, before any background compile reads it
        return engine

    @property
    def compiled(self) -> bool:
        return self.compile_mode is not None

    @property
    def compiled_training_sizes(self) -> frozenset[tuple[int, int]]:
        """Training sizes (width, height) whose compiled training graph exists in this process."""
        return frozenset(self._compiled_training_sizes)

    def compile_shape(self, shape: RenderShape, cache_stats: dict[str, int] | None = None) -> float:
        """Compile (and run once) the render graphs of one shape; returns the seconds it took.

        Touches no mapper, cache or text encoder (blank conditioning), so the server can call it from a
        background thread while its worker keeps rendering other shapes eagerly. ``cache_stats`` (a dict)
        receives how many compiled graphs came from inductor's on-disk cache (``hits``) and how many
        were compiled here (``misses``): after a :meth:`compile_warmer` compiled the shape, all hits."""
        t0 = time.perf_counter()
        if self.compiled and shape not in self.ready_shapes:
            from torch._dynamo.utils import counters

            self._graphs_on_this_thread()
            before = dict(counters["inductor"])
            for _ in range(2):  # the first call compiles; the second records the CUDA graph
                self.pipeline.run_graphs(shape)
            self.ready_shapes.add(shape)
            if cache_stats is not None:
                after = counters["inductor"]
                for key, name in (("hits", "fxgraph_cache_hit"), ("misses", "fxgraph_cache_miss")):
                    cache_stats[key] = int(after.get(name, 0)) - int(before.get(name, 0))
        return time.perf_counter() - t0

    def compile_warmer(self) -> WarmProcess:
        """A helper process that compiles this engine's render shapes (and training sizes) into torch's
        on-disk caches, so that :meth:`compile_shape` (the first inversion) afterwards costs seconds of
        this process's time, not a minute of GIL-holding Python (see :mod:`.compile_warmer`)."""
        if self.compile_mode is None:
            raise InputError("this engine is not compiled (compile off): there is nothing to warm")
        dtype = str(self.base.dtype).removeprefix("torch.")
        return WarmProcess(
            self.model, str(self.base.device), dtype, self.compile_mode, view_mapper=self.view_mapper_path
        )

    def default_warmup_shapes(self) -> list[RenderShape]:
        """What a user asks for first: the live preview (square, at most 512), the model's native view
        (native x 3/4 native, SD 2.1's 768x576), and that view batched as a sequence job renders it."""
        native = self.base.native_size
        live = min(512, native)
        view_h = max(8, round(native * 3 / 4 / 8) * 8)
        shapes = [RenderShape(1, live, live), RenderShape(1, native, view_h)]
        if self.sequence_batch > 1:
            shapes.append(RenderShape(self.sequence_batch, native, view_h))
        return list(dict.fromkeys(shapes))

    @property
    def primes_first_use(self) -> bool:
        """Whether :meth:`prime_first_use` is worth running before serving: on CUDA, where a first use
        at a shape builds cuDNN attention plans and picks cuBLAS kernels, and a kernel's first launch
        loads it (on the CPU there is nothing to pay ahead, and the renders it would run cost seconds)."""
        return self.base.device.type == "cuda"

    def prime_first_use(self, shapes: Sequence[RenderShape], steps: Sequence[int]) -> float:
        """Pay, before the first request, what the first renders of a fresh process pay on first use.

        Until a shape is compiled (minutes at SD 2 scale) its renders run the uncompiled modules, and
        the first call at each shape and batch is slow: on an H100 a new 704x512 view took 1165 ms
        against 434 ms for the next, and a new-pose text phase 122 against 53 ms (cuDNN attention plans;
        ``gpu_bench --profile first-use``); the first 768x576 view after start took 2.17 s. This
        computes one new pose's encodings at each step count in ``steps`` (the mappers of the default
        object and the view, the text encoder at that batch), and runs the uncompiled UNet (one plain
        call: the warm-up before :class:`GraphedUNet` records) and decoder once at each shape, with
        blank conditioning. Nothing is cached. Returns the seconds it took."""
        t0 = time.perf_counter()
        mapper = None
        if self.default_object is not None:
            try:
                mapper = self.object_mapper(None)[1]
            except InputError as exc:  # an object that cannot load: its renders will say so; priming goes on
                log.warning("first-use work without the default object's mapper: %s", exc)
        shape = shapes[0] if shapes else RenderShape(1, self.base.native_size, self.base.native_size)
        camera = Camera(orbit_pose(30.0, 20.0, 4.0), 40.0, shape.width, shape.height)
        if self.pipeline.view_mapper is not None:
            camera = self.mapper_cameras([camera])[0]
        for n in dict.fromkeys(steps):
            self.pipeline.run_encodings(camera, mapper, n)
        self.prime_shapes(shapes)
        return time.perf_counter() - t0

    def prime_shapes(self, shapes: Sequence[RenderShape]) -> float:
        """Run the uncompiled UNet (one plain call: the warm-up before :class:`GraphedUNet` records) and
        decoder once at each shape that renders uncompiled, with blank conditioning, so that the first
        render there records at its first step instead of paying a plain first call and the shape's
        cuDNN plans (the server does this for the sizes a client asks it to compile: ``POST /v1/compile``).
        Returns the seconds it took."""
        t0 = time.perf_counter()
        with self.busy():  # like a render: a background compile waits meanwhile (server/compiler.py)
            for shape in dict.fromkeys(shapes):
                if self.runs_uncompiled(shape):
                    self.pipeline.run_graphs(shape, steps=1, eager=True)
        return time.perf_counter() - t0

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """Keep :attr:`idle` cleared (and :attr:`rendering` set) while this runs. Re-entrant: a live render
        that the server serves between two steps of a sequence's render must not set it while the outer
        render goes on."""
        with self._busy_lock:
            self._busy_depth += 1
            self.idle.clear()
            self.rendering.set()
        try:
            self._graphs_on_this_thread()
            yield
        finally:
            with self._busy_lock:
                self._busy_depth -= 1
                if self._busy_depth == 0:
                    self.rendering.clear()
                    self.idle.set()

    def _graphs_on_this_thread(self) -> None:
        """Compiled CUDA graphs may first run on the calling thread (the server compiles on one thread,
        renders and inverts on another): give it the state they need (``prepare_thread_for_cuda_graph_trees``)."""
        if self.compiled and self.base.device.type == "cuda":
            prepare_thread_for_cuda_graph_trees()

    def warmup(self, sizes: Sequence[tuple[int, int]] = ((512, 512),), steps: int = 8) -> None:
        """Compile the render graphs of single views at these sizes before the first user request."""
        for width, height in sizes:
            self.compile_shape(RenderShape(1, width, height))

    # -- information -------------------------------------------------------------------------------
    @property
    def default_object(self) -> str | None:
        names = self.library.names()
        return names[0] if names else None

    def info(self) -> dict:
        return {
            "version": __version__,
            "base_model": self.base.name,
            "device": str(self.base.device),
            "dtype": str(self.base.dtype).replace("torch.", ""),
            "compile": self.compile_mode or "off",
            "view_mapper": self.view_mapper_name,
            "default_object": self.default_object,
            "native_size": self.base.native_size,
            "sequence_batch": self.sequence_batch,
            "max_size": MAX_SIZE,
            "prediction_type": self.base.prediction_type,
            "cross_attention_layers": self.base.num_layers,
            "sampling_defaults": self.sampling.to_dict(),
            "reference_background": "#{:02x}{:02x}{:02x}".format(*self.background),
            "camera_rig": "dtu" if self.rig is not None else None,
            "invert_steps": default_invert_steps(self.base.device),
        }

    def mapper_cameras(self, cameras: Sequence[Camera], *, use_rig: bool = True) -> list[Camera]:
        """The cameras as the view-mapper sees them: through its rig (if any, and ``use_rig``)."""
        rig: CameraRig | None = self.rig if use_rig else None
        return [rig.to_dtu(c) for c in cameras] if rig is not None else list(cameras)

    def camera_warnings(self, cameras: Sequence[Camera], *, use_rig: bool = True) -> list[str]:
        """A message per camera outside the view-mapper's training range (empty: all in range)."""
        param = self.pipeline.camera_param
        if param is None or not cameras:
            return []
        feats = param.features(self.mapper_cameras(cameras, use_rig=use_rig)).numpy()
        return range_warnings(feats, self.rig if use_rig else None)

    def list_objects(self) -> list[dict]:
        return self.library.list()

    def has_object(self, name: str) -> bool:
        return self.library.exists(name)

    def delete_object(self, name: str) -> None:
        self.library.delete(name)
        self.pipeline.forget(name)

    def rename_object(self, name: str, new_name: str) -> dict:
        entry = self.library.rename(name, new_name)
        self.pipeline.forget(name)
        return entry

    def object_mapper(self, name: str | None) -> tuple[str, NeTIMapper]:
        name = name or self.default_object
        if name is None:
            raise InputError("no object tokens are available: invert a reference image first (POST /v1/jobs/invert)")
        return name, self.library.load(name, device=self.base.device, expect_fingerprint=self.base.fingerprint)

    # -- rendering ---------------------------------------------------------------------------------
    def render(
        self,
        cameras: Sequence[Camera],
        object_name: str | None = None,
        seed: int = 0,
        steps: int | None = None,
        guidance: float | None = None,
        *,
        with_view: bool = True,
        should_stop: Callable[[], bool] | None = None,
        on_step: Callable[[int, int], None] | None = None,
        lockstep: Callable[[], bool] | None = None,
        timings: dict | None = None,
        warnings: list[str] | None = None,
        use_rig: bool = True,
    ) -> list[Image.Image]:
        """Novel views of an object; cameras of different sizes are rendered in per-size batches.

        ``steps``/``guidance`` left as ``None`` take the model's recommended values (:attr:`sampling`).
        ``timings``, if given, gets each phase's milliseconds (``progress.RENDER_PHASES``), summed over the
        per-size batches, and ``eager``: 1.0 if a batch ran uncompiled on a compiled engine.
        ``warnings``, if given, is extended with :meth:`render_warnings` (the render still happens).
        ``use_rig=False``: the cameras are already in the view-mapper's own frame (DTU evaluation).
        ``lockstep()`` true: no denoising step is issued ahead of the GPU (``step_pacer.StepPacer``),
        so that a render served from ``on_step`` waits for at most one step of this one."""
        with self.busy():  # a background compile waits while this runs (server/compiler.py)
            return self._render(
                cameras,
                object_name,
                seed,
                steps,
                guidance,
                with_view,
                should_stop=should_stop,
                on_step=on_step,
                lockstep=lockstep,
                timings=timings,
                warnings=warnings,
                use_rig=use_rig,
            )

    def _render(
        self,
        cameras: Sequence[Camera],
        object_name: str | None,
        seed: int,
        steps: int | None,
        guidance: float | None,
        with_view: bool,
        *,
        should_stop: Callable[[], bool] | None,
        on_step: Callable[[int, int], None] | None,
        lockstep: Callable[[], bool] | None,
        timings: dict | None,
        warnings: list[str] | None,
        use_rig: bool,
    ) -> list[Image.Image]:
        steps, guidance = self.sampling.resolve(steps, guidance)
        name, mapper = self.object_mapper(object_name)
        with_view = with_view and self.pipeline.view_mapper is not None
        if warnings is not None:
            new = self.render_warnings(cameras, with_view=with_view, use_rig=use_rig)
            warnings.extend(w for w in new if w not in warnings)
        if with_view:
            cameras = self.mapper_cameras(cameras, use_rig=use_rig)
        out: list[Image.Image | None] = [None] * len(cameras)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, cam in enumerate(cameras):
            groups.setdefault((cam.width, cam.height), []).append(i)
        for (width, height), idxs in groups.items():
            if should_stop is not None and should_stop():  # before each per-size batch (a cheap point to stop)
                raise Cancelled(f"stopped before the {width}x{height} views")
            shape = RenderShape.of_render(len(idxs), width, height, guidance)
            uncompiled = self.runs_uncompiled(shape)
            eager = self.compiled and uncompiled  # a compiled engine's fallback: reported, then compiled
            part: dict | None = None if timings is None else {"eager": float(eager)}  # this size's batch
            run = functools.partial(
                self.pipeline,
                [cameras[i] for i in idxs],
                mapper,
                seed=seed,
                steps=steps,
                guidance=guidance,
                with_view=with_view,
                object_key=name,
                should_stop=should_stop,
                on_step=on_step,
                lockstep=lockstep,
                timings=part,
            )
            try:
                images = run(eager=uncompiled)
            except (InputError, Cancelled, MemoryError):
                raise
            except Exception as exc:
                if is_out_of_memory(exc):
                    self._free_uncompiled_graphs()
                if eager or is_out_of_memory(exc):  # an eager retry of an OOM would only fail again, slower
                    raise
                self._compiled_render_failed(shape, exc)
                if part is not None:
                    part["eager"] = 1.0
                images = run(eager=True)  # same maths: the user gets the image, not an error
            finally:
                # reported once this render is over, not before it: the compile it starts (helper processes
                # that load the model and autotune on the same GPU) would slow the render that waits now
                if eager and self.on_uncompiled_shape is not None:
                    self.on_uncompiled_shape(shape)
            if timings is not None and part is not None:  # phases summed over the sizes; eager if any was
                for key, value in part.items():
                    timings[key] = (
                        max(timings.get(key, 0.0), value) if key == "eager" else timings.get(key, 0.0) + value
                    )
            for i, im in zip(idxs, images):
                out[i] = im
        return out  # type: ignore[return-value]

    def runs_uncompiled(self, shape: RenderShape) -> bool:
        """Whether a render of this shape runs the uncompiled modules (on CUDA: the graph-replayed UNet):
        always on an uncompiled engine; on a compiled one until the shape's graphs are ready, rather
        than compiling them in the request (minutes at SD 2 scale)."""
        return not self.compiled or shape not in self.ready_shapes

    def _free_uncompiled_graphs(self) -> None:
        """Out of GPU memory: drop the uncompiled UNet's recorded CUDA graphs (each holds a forward's
        activations) and record no more, so that this GPU's memory goes to the renders themselves."""
        unet = self.base.eager.get("unet")
        if isinstance(unet, GraphedUNet) and unet.recording:
            log.warning(
                "out of GPU memory: dropping %d recorded graph(s) of the uncompiled UNet; it runs plain from now on",
                unet.recorded,
            )
            unet.recording = False
            unet.clear()

    def _compiled_render_failed(self, shape: RenderShape, exc: Exception) -> None:
        """A compiled graph raised inside torch (seen on an H200: an assertion in CUDA-graph trees'
        bookkeeping, pytorch#175557): drop the calling thread's CUDA-graph trees, and after
        :data:`MAX_COMPILED_FAILURES` at one shape render it eager from then on.

        CUDA-graph trees are per thread, and a graph belongs to the tree of the thread that first ran
        it: graphs first run here re-record; those the server's compiler thread recorded (its render
        graphs) replay as before, since that thread's trees cannot be reset from this one."""
        label = shape.label()
        entry = self.compiled_failures.setdefault(label, {"count": 0, "last_error": "", "gave_up": False})
        entry["count"] += 1
        entry["last_error"] = f"{type(exc).__name__}: {exc}"[:500]
        if entry["count"] >= MAX_COMPILED_FAILURES:
            entry["gave_up"] = True
            self.ready_shapes.discard(shape)
        log.warning(
            "compiled render at %s failed (%d time(s)); rendering it eager%s",
            label,
            entry["count"],
            " from now on" if entry["gave_up"] else " this once",
            exc_info=exc,
        )
        if self.base.device.type == "cuda":
            from torch._inductor.cudagraph_trees import reset_cudagraph_trees

            reset_cudagraph_trees()  # this thread's trees only (see the docstring)

    def render_warnings(self, cameras: Sequence[Camera], *, with_view: bool = True, use_rig: bool = True) -> list[str]:
        """What a user should know before trusting these renders: sizes far above the model's native
        size, cameras outside the view-mapper's trained range (features outside -1..1, or a distance
        the parameterisation clamps). One string per problem; the CLI prints them, the server sends
        them as ``X-Warnings`` (renders) or a job's ``warnings`` (sequences)."""
        out: list[str] = []
        native = self.base.native_size
        big = [c for c in cameras if max(c.width, c.height) > SIZE_WARNING_FACTOR * native]
        if big:
            c = big[0]
            out.append(
                f"{c.width}x{c.height} is {max(c.width, c.height) / native:.0f}x the model's native size ({native} px): "
                f"it was trained at {native} px and draws repeated, unstructured detail at this size; "
                f"render at a long side of {native} (the default) and upscale if needed"
            )
        param = self.pipeline.camera_param
        if with_view and self.pipeline.view_mapper is not None and param is not None and cameras:
            out.extend(self.camera_warnings(cameras, use_rig=use_rig))
            out.extend(param.range_warnings(self.mapper_cameras(cameras, use_rig=use_rig)))
        return out

    def invert_warnings(self, cameras: Sequence[Camera], reference_size: tuple[int, int]) -> list[str]:
        """:meth:`render_warnings` of an inversion's cameras as the trainer uses them: at the training
        size of a ``reference_size`` image (as :meth:`invert` resizes them), so a photo-sized reference
        is no size warning, while a camera outside the trained range (which training clamps) is one."""
        width, height = training_size(self.base.native_size, reference_size, self.train_long_side)
        return self.render_warnings([c.with_size(width, height) for c in cameras])

    # -- inversion (ViewNeTI mode 5) ----------------------------------------------------------------
    def training_size(self, image: Image.Image) -> tuple[int, int]:
        """Long side = min(native, 512) (the paper trains SD 2 at 512x384), aspect kept, multiples of 8."""
        return training_size(self.base.native_size, image.size, self.train_long_side)

    def _inversion_trainer(
        self,
        images: Sequence[Image.Image],
        cameras: Sequence[Camera],
        name: str,
        steps: int,
        seed: int,
        config: TrainConfig | None,
    ) -> tuple[Trainer, list[Camera]]:
        """The mode-5 trainer of an inversion and its cameras at the training size: one construction for
        :meth:`invert` and :meth:`compile_training`, so both run (and compile) the same graphs."""
        if self.pipeline.view_mapper is None:
            raise InputError("inversion needs a view-mapper: start the engine with one (--view-mapper)")
        width, height = self.training_size(images[0])
        options = config or TrainConfig()
        width, height = options.width or width, options.height or height
        cfg = dataclasses.replace(options, mode=5, steps=steps, seed=seed, width=width, height=height)
        cams = [c.with_size(width, height) for c in self.mapper_cameras(cameras)]
        scene = Scene(name, [flatten_reference(im, self.background) for im in images], cams)
        trainer = Trainer(
            cfg,
            self.base,
            [scene],
            view_mapper=self.pipeline.view_mapper,
            device=str(self.base.device) if self.base.device.type == "cpu" else None,
        )
        return trainer, cams

    def training_warmup_sizes(self) -> list[tuple[int, int]]:
        """The training sizes worth compiling ahead in a helper process (:meth:`compile_training`): those of
        the references a user most likely inverts first, a square one (a live render, a cropped photo)
        and one of the model's native view's aspect (4:3: SD 2.1's 512x384). None on an engine that
        cannot invert or does not compile, or on a GPU with less than ``TRAINING_AHEAD_MIN_GPU_GIB``."""
        if self.compile_mode is None or self.pipeline.view_mapper is None:
            return []
        if self.base.device.type == "cuda":
            import torch

            total = torch.cuda.get_device_properties(self.base.device).total_memory
            if total < TRAINING_AHEAD_MIN_GPU_GIB * 2**30:
                return []
        native = self.base.native_size
        refs = [(native, native), (native, max(8, native * 3 // 4))]
        return list(dict.fromkeys(training_size(native, ref, self.train_long_side) for ref in refs))

    def compile_training(self, width: int, height: int) -> float:
        """Compile an inversion's training graphs at this training size ahead of the first inversion
        there: one optimisation step of a throwaway token on a blank reference, nothing saved. In a
        compile helper (:mod:`.compile_warmer`) this fills torch's on-disk caches, so the server's first
        inversion at that size compiles from them (21 s instead of 125 s on an H200). Returns seconds."""
        t0 = time.perf_counter()
        if self.compile_mode is not None and (width, height) not in self._compiled_training_sizes:
            self._graphs_on_this_thread()
            blank = Image.new("RGB", (width, height), self.background)
            camera = Camera(orbit_pose(0.0, 20.0, 4.0), 40.0, width, height)
            config = TrainConfig(width=width, height=height)
            trainer, _ = self._inversion_trainer([blank], [camera], "compile-training", 1, 0, config)
            trainer.train(progress=False)
            self._compiled_training_sizes.add((width, height))
        return time.perf_counter() - t0

    def invert(
        self,
        images: Sequence[Image.Image],
        cameras: Sequence[Camera],
        name: str,
        steps: int,
        *,
        seed: int = 0,
        on_progress: Callable[[Progress], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        lockstep: Callable[[], bool] | None = None,
        preview_every: int = 0,
        config: TrainConfig | None = None,
        source: dict | None = None,
    ) -> dict:
        """Fit a new object token to reference image(s) with the frozen view-mapper; saved only when done.

        ``config`` sets training options (e.g. ``augmentation_pool``); mode, steps and seed come from
        the arguments, and the size from the reference image unless the config sets one. ``source``
        (e.g. ``{"views": [0]}``) is stored with the token, so ``viewneti eval`` can leave those views out.
        While ``lockstep()`` is true, ``on_progress`` sees a step with no training step queued behind it
        (``Trainer.train``), so a render served from it waits for none.
        """
        validate_token_name(name)
        if self.library.exists(name):
            raise InputError(f"an object named '{name}' already exists: choose another name or delete it first")
        if not images or len(images) != len(cameras):
            raise InputError(f"give one camera per reference image ({len(images)} images, {len(cameras)} cameras)")
        trainer, cams = self._inversion_trainer(images, cameras, name, steps, seed, config)
        size = (cams[0].width, cams[0].height)
        compiling = self.compile_mode is not None and size not in self._compiled_training_sizes
        self._graphs_on_this_thread()
        if on_progress is not None and compiling:
            # step 1 will compile the training graph first: say so, since no step completes for minutes
            on_progress(Progress(step=0, total=steps, phase="compiling"))
        t0 = time.perf_counter()
        preview_cam = cams[0]
        t_step1 = t0

        def report(step: int, total: int, loss: float) -> None:
            nonlocal t_step1
            if step == 1 and compiling:
                self._compiled_training_sizes.add(size)
            if on_progress is None:
                return
            now = time.perf_counter()
            # Step 1 also pays compilation (minutes at SD 2 scale on CUDA): later ETAs use the pace after it.
            if step == 1:
                t_step1 = now
                eta = None if compiling else (now - t0) * (total - 1)  # a compiling step 1 says nothing of the pace
            else:
                eta = (now - t_step1) / (step - 1) * (total - step)
            preview = None
            if preview_every and (step % preview_every == 0 or step == total):
                mapper = trainer.object_mappers[0].eval()
                guidance = self.sampling.guidance
                shape = RenderShape.of_render(1, preview_cam.width, preview_cam.height, guidance)
                preview = self.pipeline(
                    [preview_cam],
                    mapper,
                    seed=seed,
                    steps=self.sampling.steps,
                    guidance=guidance,
                    use_cache=False,
                    eager=self.runs_uncompiled(shape),
                    should_stop=should_stop,  # a cancel during a preview stops at its next denoising step
                )[0]
                mapper.train()
            on_progress(Progress(step=step, total=total, loss=loss, eta_s=eta, phase="training", preview=preview))

        # Cancelled propagates: nothing saved
        trainer.train(on_step=report, should_stop=should_stop, progress=False, lockstep=lockstep)
        mapper = trainer.object_mappers[0].eval().requires_grad_(False)
        entry = self.library.save(name, mapper, steps=steps, source=source)
        self.pipeline.forget(name)
        return entry
