"""The engine: one loaded model + view-mapper + token library, with render and invert.

This is what the server's single GPU worker owns (and what the CLI uses). Not thread-safe by
design: exactly one thread calls it.

A model folder may carry a ``viewneti/`` sub-folder with a bundled view-mapper
(``viewneti/view_mapper``), built-in object tokens (``viewneti/objects/<name>``) and recommended
sampling settings (``viewneti/sampling.json``, see :mod:`.sampling_defaults`); the embedded toy world
ships that way, and the same layout works for SD 2 folders.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image

from . import __version__
from .base_model import BaseModel, compile_base_model, load_base_model
from .cameras import MAX_SIZE, Camera, orbit_pose
from .compile_modes import resolve_compile_mode
from .data import Scene
from .errors import InputError
from .mapper import NeTIMapper
from .pipeline import ViewNeTIPipeline
from .sampling_defaults import (  # noqa: F401 - the inversion defaults are re-exported for callers
    BUNDLE_DIR,
    CPU_INVERT_STEPS,
    CPU_SECONDS_PER_INVERT_STEP,
    GPU_INVERT_STEPS,
    SamplingDefaults,
    default_invert_steps,
)
from .tokens import ObjectLibrary, validate_token_name
from .training import TrainConfig, Trainer

# A render whose long side is more than this many times the model's native size gets a warning: the
# model never saw such images (the toy model at 512 px on its 64-px training size draws a tiled mosaic).
SIZE_WARNING_FACTOR = 2.0


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


def bundled_view_mapper(model: str) -> Path | None:
    path = Path(model) / BUNDLE_DIR / "view_mapper"
    return path if path.is_dir() else None


class Engine:
    """Render novel views and invert reference images with one frozen base model."""

    def __init__(
        self,
        base: BaseModel,
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
        # training sizes (width, height) whose compiled training graph exists in this process: the first
        # inversion at a new size compiles it (minutes at SD 2 scale on CUDA), and says so to on_progress
        self._compiled_training_sizes: set[tuple[int, int]] = set()

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
        vm_path = Path(view_mapper) if view_mapper else bundled_view_mapper(model)
        vm = None
        if vm_path is not None:
            vm = NeTIMapper.from_pretrained(vm_path, expect_fingerprint=base.fingerprint, device=base.device)
            vm.requires_grad_(False).eval()
        builtin = [Path(model) / BUNDLE_DIR / "objects"] if Path(model).is_dir() else []
        library = ObjectLibrary(library_dir, builtin)
        name = (
            None
            if vm_path is None
            else (vm_path.parent.parent.name + "/" + vm_path.name if vm_path.name == "view_mapper" else vm_path.name)
        )
        sampling = SamplingDefaults.for_model(model)  # viewneti/sampling.json, else SD 2's 7.5 / 30
        engine = cls(base, vm, library, model=model, view_mapper_name=name, sampling=sampling)
        engine.compile_mode = compile_mode
        return engine

    def warmup(self, sizes: Sequence[tuple[int, int]] = ((512, 512),), steps: int = 8) -> None:
        """Render one throw-away view per size so compilation happens before the first user request."""
        if self.default_object is None:
            return
        for width, height in sizes:
            cam = Camera(orbit_pose(0.0, 25.0, 4.0), 40.0, width, height)
            self.render([cam], None, seed=0, steps=steps)
            self.render([cam], None, seed=1, steps=steps)
        self.pipeline.clear_cache()

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
            "max_size": MAX_SIZE,
            "prediction_type": self.base.prediction_type,
            "cross_attention_layers": self.base.num_layers,
            "sampling_defaults": self.sampling.to_dict(),
            "invert_steps": default_invert_steps(self.base.device),
        }

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
        timings: dict | None = None,
        warnings: list[str] | None = None,
    ) -> list[Image.Image]:
        """Novel views of an object; cameras of different sizes are rendered in per-size batches.

        ``steps``/``guidance`` left as ``None`` take the model's recommended values (:attr:`sampling`).
        ``warnings``, if given, is extended with :meth:`render_warnings` (the render still happens)."""
        steps, guidance = self.sampling.resolve(steps, guidance)
        name, mapper = self.object_mapper(object_name)
        with_view = with_view and self.pipeline.view_mapper is not None
        if warnings is not None:
            warnings.extend(w for w in self.render_warnings(cameras, with_view=with_view) if w not in warnings)
        out: list[Image.Image | None] = [None] * len(cameras)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, cam in enumerate(cameras):
            groups.setdefault((cam.width, cam.height), []).append(i)
        for idxs in groups.values():
            images = self.pipeline(
                [cameras[i] for i in idxs],
                mapper,
                seed=seed,
                steps=steps,
                guidance=guidance,
                with_view=with_view,
                object_key=name,
                should_stop=should_stop,
                on_step=on_step,
                timings=timings,
            )
            for i, im in zip(idxs, images):
                out[i] = im
        return out  # type: ignore[return-value]

    def render_warnings(self, cameras: Sequence[Camera], *, with_view: bool = True) -> list[str]:
        """What a user should know before trusting these renders: sizes far above the model's native
        size, cameras outside the view-mapper's trained range. One string per problem."""
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
        if with_view and self.pipeline.camera_param is not None:
            out.extend(self.pipeline.camera_param.range_warnings(cameras))
        return out

    # -- inversion (ViewNeTI mode 5) ----------------------------------------------------------------
    def training_size(self, image: Image.Image) -> tuple[int, int]:
        """Long side = min(native, 512) (the paper trains SD 2 at 512x384), aspect kept, multiples of 8."""
        long_side = min(self.base.native_size, self.train_long_side)
        w, h = image.size
        scale = long_side / max(w, h)
        return max(8, round(w * scale / 8) * 8), max(8, round(h * scale / 8) * 8)

    def invert(
        self,
        images: Sequence[Image.Image],
        cameras: Sequence[Camera],
        name: str,
        steps: int,
        *,
        seed: int = 0,
        on_progress: Callable[[dict], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        preview_every: int = 0,
        config: TrainConfig | None = None,
        source: dict | None = None,
    ) -> dict:
        """Fit a new object token to reference image(s) with the frozen view-mapper; saved only when done.

        ``config`` sets training options (e.g. ``augmentation_pool``); mode, steps and seed come from
        the arguments, and the size from the reference image unless the config sets one. ``source``
        (e.g. ``{"views": [0]}``) is stored with the token, so ``viewneti eval`` can leave those views out.
        """
        validate_token_name(name)
        if self.library.exists(name):
            raise InputError(f"an object named '{name}' already exists: choose another name or delete it first")
        if self.pipeline.view_mapper is None:
            raise InputError("inversion needs a view-mapper: start the engine with one (--view-mapper)")
        if not images or len(images) != len(cameras):
            raise InputError(f"give one camera per reference image ({len(images)} images, {len(cameras)} cameras)")
        width, height = self.training_size(images[0])
        options = config or TrainConfig()
        cfg = dataclasses.replace(
            options, mode=5, steps=steps, seed=seed, width=options.width or width, height=options.height or height
        )
        width, height = cfg.width, cfg.height
        cams = [c.with_size(width, height) for c in cameras]
        scene = Scene(name, [im.convert("RGB") for im in images], cams)
        trainer = Trainer(
            cfg,
            self.base,
            [scene],
            view_mapper=self.pipeline.view_mapper,
            device=str(self.base.device) if self.base.device.type == "cpu" else None,
        )
        size = (width, height)
        compiling = self.compile_mode is not None and size not in self._compiled_training_sizes
        if on_progress is not None and compiling:
            # step 1 will compile the training graph first: say so, since no step completes for minutes
            on_progress({"step": 0, "total": steps, "loss": None, "eta_s": None, "preview": None, "phase": "compiling"})
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
            event = {"step": step, "total": total, "loss": loss, "eta_s": eta, "preview": None, "phase": "training"}
            if preview_every and (step % preview_every == 0 or step == total):
                mapper = trainer.object_mappers[0].eval()
                event["preview"] = self.pipeline(
                    [preview_cam],
                    mapper,
                    seed=seed,
                    steps=self.sampling.steps,
                    guidance=self.sampling.guidance,
                    use_cache=False,
                )[0]
                mapper.train()
            on_progress(event)

        trainer.train(on_step=report, should_stop=should_stop, progress=False)  # Cancelled propagates: nothing saved
        mapper = trainer.object_mappers[0].eval().requires_grad_(False)
        entry = self.library.save(name, mapper, steps=steps, source=source)
        self.pipeline.forget(name)
        return entry
