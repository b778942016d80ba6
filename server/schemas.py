"""Request and response models of the v1 contract (server/API.md); they generate the OpenAPI schema.

Field limits here are the contract's; semantic checks that JSON Schema cannot express (a rigid pose,
sizes the loaded model supports, known objects) are done by the handlers with messages that say what
to fix.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from viewneti_backend import limits
from viewneti_backend.cameras import Camera, fov_from_focal

MAX_SEED = 2**31 - 1
NAME_PATTERN = limits.NAME_PATTERN


def _json_integer(value: Any) -> Any:
    """JSON Schema's integer: 64 and 64.0 (no fraction), never true/false or "64" (the model is strict)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


INTEGRAL = BeforeValidator(_json_integer)  # put after the Field(...) of an int
Row = Annotated[list[float], Field(min_length=4, max_length=4)]
Size = Annotated[int, Field(ge=limits.MIN_SIZE, le=limits.MAX_SIZE, multiple_of=limits.SIZE_MULTIPLE), INTEGRAL]
Seed = Annotated[
    int, Field(ge=0, le=MAX_SEED, description="random seed; the same request and seed give the same image"), INTEGRAL
]
Steps = Annotated[int, Field(ge=1, le=limits.MAX_STEPS, description="denoising steps"), INTEGRAL]
Guidance = Annotated[
    float,
    Field(
        ge=limits.MIN_GUIDANCE,
        le=limits.MAX_GUIDANCE,
        allow_inf_nan=False,
        description="classifier-free guidance scale",
    ),
]
OptSteps = Annotated[
    Steps | None,
    Field(
        description=(
            f"denoising steps, 1..{limits.MAX_STEPS}; omitted or null: the model's default (GET /v1/health sampling_defaults.steps, "
            "capped at the server's max_steps)"
        )
    ),
]
OptGuidance = Annotated[
    Guidance | None,
    Field(
        description=(
            f"classifier-free guidance scale, {limits.MIN_GUIDANCE:g}..{limits.MAX_GUIDANCE:g}; omitted or null: "
            "the model's default (GET /v1/health sampling_defaults.guidance)"
        )
    ),
]
ObjectName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=NAME_PATTERN,
        description="object token (GET /v1/objects); default: the model's default object",
    ),
]


# Requests are validated strictly: what the schema calls a number or an integer must be one (no true -> 1,
# "4" -> 4 coercion); JSON integers are still accepted where a number is expected.
STRICT = ConfigDict(strict=True)


OptPixels = Annotated[
    float | None,
    Field(
        gt=0.0,
        allow_inf_nan=False,
        description=(
            "optional pinhole intrinsic in pixels at width x height (OpenCV: fx, fy focal lengths, cx, cy principal "
            "point); left out: fy from fov_y_deg, fx = fy, principal point at the image centre"
        ),
    ),
]


class CameraIn(BaseModel):
    """A pinhole camera in Blender's convention, relative to the anchor (see API.md, Conventions)."""

    model_config = ConfigDict(
        strict=True,
        json_schema_extra={
            "example": {
                "camera_to_anchor": [[1, 0, 0, 0], [0, 0, -1, -4], [0, 1, 0, 0], [0, 0, 0, 1]],
                "fov_y_deg": 39.6,
                "width": 64,
                "height": 64,
            }
        },
    )

    camera_to_anchor: Annotated[
        list[Row],
        Field(
            min_length=4,
            max_length=4,
            description=(
                "4x4 row-major camera-to-anchor matrix (Blender convention: camera looks down -Z, +Y up); "
                "finite, bottom row [0,0,0,1], orthonormal rotation with det +1"
            ),
        ),
    ]
    fov_y_deg: Annotated[
        float,
        Field(
            ge=limits.MIN_FOV_DEG,
            lt=180.0,
            description=f"vertical field of view in degrees ({limits.MIN_FOV_DEG:g} <= fov < 180)",
        ),
    ] = 39.6
    width: Size = 512
    height: Size = 512
    fx: OptPixels = None
    fy: OptPixels = None
    cx: OptPixels = None
    cy: OptPixels = None

    @property
    def fy_alone(self) -> bool:
        """fy was sent without fov_y_deg: fy defines the vertical field of view (as in Camera.from_json)."""
        return self.fy is not None and "fov_y_deg" not in self.model_fields_set

    def to_camera(self) -> Camera:
        """The library's camera, validated (a rigid pose, the field of view, intrinsics that agree with
        it); raises CameraError."""
        fov_y = fov_from_focal(self.fy, self.height) if self.fy is not None and self.fy_alone else self.fov_y_deg
        return Camera(
            np.asarray(self.camera_to_anchor, dtype=np.float64),
            fov_y,
            self.width,
            self.height,
            fx=self.fx,
            fy=self.fy,
            cx=self.cx,
            cy=self.cy,
        ).validated()

    def to_wire(self) -> dict[str, Any]:
        """The camera as sent (fields left out stay out), for the job's persisted request record."""
        wire: dict[str, Any] = {
            "camera_to_anchor": self.camera_to_anchor,
            "fov_y_deg": self.fov_y_deg,
            "width": self.width,
            "height": self.height,
        }
        if self.fy_alone:
            del wire["fov_y_deg"]
        wire.update({k: v for k in ("fx", "fy", "cx", "cy") if (v := getattr(self, k)) is not None})
        return wire


class RenderRequest(BaseModel):
    model_config = STRICT

    camera: CameraIn
    object: ObjectName | None = None
    seed: Seed = 0
    steps: OptSteps = None
    guidance: OptGuidance = None
    session: Annotated[
        str | None,
        Field(
            max_length=128,
            description=(
                "live-mode key: a newer render of the same session supersedes an older one (409 for the older)"
            ),
        ),
    ] = None


class CompileRequest(BaseModel):
    """A render shape to compile ahead of use (e.g. the add-on's resolution, when it changes)."""

    model_config = STRICT

    width: Size = 512
    height: Size = 512
    views: Annotated[int, Field(ge=1, le=16, description="views per UNet call (a sequence job's batch)"), INTEGRAL] = 1


class CompileOut(BaseModel):
    shape: str
    status: Literal["ready", "queued", "compiling", "eager"] = Field(
        description="ready | queued | compiling | eager (this engine does not compile)"
    )


class SequenceRequest(BaseModel):
    model_config = STRICT

    cameras: Annotated[list[CameraIn], Field(min_length=1, max_length=limits.MAX_SEQUENCE_FRAMES)]
    frames: Annotated[
        list[Annotated[int, Field(ge=0, le=limits.MAX_FRAME), INTEGRAL]] | None,
        Field(
            min_length=1,
            max_length=limits.MAX_SEQUENCE_FRAMES,
            json_schema_extra={"uniqueItems": True},
            description=(
                f"frame numbers used in file names (one per camera, unique, 0..{limits.MAX_FRAME}); default 0..N-1"
            ),
        ),
    ] = None
    object: ObjectName | None = None
    seed: Seed = 0
    steps: OptSteps = None
    guidance: OptGuidance = None


class InvertRequest(BaseModel):
    model_config = STRICT

    name: Annotated[str, Field(pattern=NAME_PATTERN, description="name of the new object token (must not exist yet)")]
    images: Annotated[
        list[Annotated[str, Field(min_length=1)]],
        Field(
            min_length=1,
            max_length=limits.MAX_REFERENCES,
            description=(
                f"base64-encoded PNG, JPEG or WebP files (each <= {limits.MAX_REFERENCE_BYTES // 2**20} MB encoded, "
                f"<= {limits.MAX_REFERENCE_SIDE}x{limits.MAX_REFERENCE_SIDE}, aspect ratio <= "
                f"{limits.MAX_INVERT_ASPECT:g}:1); the alpha channel of an RGBA image is the object's mask"
            ),
        ),
    ]
    cameras: Annotated[
        list[CameraIn], Field(min_length=1, max_length=limits.MAX_REFERENCES, description="the camera of each image")
    ]
    steps: Annotated[
        int | None,
        Field(
            ge=1,
            le=limits.MAX_INVERT_STEPS,
            description=(
                "optimisation steps; omitted or null: GET /v1/health invert_steps "
                f"({limits.GPU_INVERT_STEPS} on a GPU, {limits.CPU_INVERT_STEPS} on a CPU); "
                "the server may cap lower: GET /v1/health max_invert_steps"
            ),
        ),
        INTEGRAL,
    ] = None
    seed: Seed = 0
    preview_every: Annotated[
        int,
        Field(ge=0, le=limits.MAX_INVERT_STEPS, description="send a preview every N steps (0: none)"),
        INTEGRAL,
    ] = 0


class RenameRequest(BaseModel):
    new_name: Annotated[
        str,
        Field(
            min_length=1,
            description=f"the object's new name (must not exist yet): {limits.NAME_RULE}",
            # documented, checked by the handler (400 naming the rule, as for the path's name)
            json_schema_extra={"pattern": NAME_PATTERN},
        ),
    ]


# ---------------------------------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------------------------------
class ErrorOut(BaseModel):
    error: str


class SamplingDefaultsOut(BaseModel):
    """The loaded model's recommended sampling settings (its viewneti/sampling.json, else SD 2's)."""

    guidance: float = Field(description="guidance used when a request leaves 'guidance' out")
    steps: int = Field(description="steps used when a request leaves 'steps' out (capped at max_steps)")
    live_steps: int = Field(
        description="recommended steps for interactive (live) previews; clients send them explicitly"
    )


class HealthOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    status: str
    api: str
    version: str
    base_model: str | None = None
    device: str | None = None
    dtype: str | None = None
    compile: str | None = None
    view_mapper: str | None = None
    default_object: str | None = None
    queue_depth: int
    native_size: int | None = None
    max_size: int | None = None
    max_steps: int | None = None
    max_invert_steps: int | None = None
    sampling_defaults: SamplingDefaultsOut | None = None


class ObjectOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    builtin: bool = False
    base_model: str | None = None
    created: str | None = None
    steps: int | None = None


class ObjectsOut(BaseModel):
    objects: list[ObjectOut]


JobState = Literal["queued", "running", "done", "error", "cancelled", "interrupted"]


class JobOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    job_id: str
    kind: Literal["sequence", "invert"]
    state: JobState
    step: int
    total: int
    loss: float | None = None
    eta_s: float | None = None
    phase: Literal["compiling", "training"] | None = Field(
        default=None,
        description=(
            "what an inversion is doing: 'compiling' (the first inversion at this training size in this server "
            "process compiles the training graph, minutes on CUDA; step 0, no ETA yet), then 'training'; "
            "null before the inversion starts and for sequences"
        ),
    )
    error: str | None = None
    result: dict[str, Any] | None = None
    frames_done: list[int] = []
    created: str | None = None
    updated: str | None = None
    warnings: list[str] = Field(
        default=[],
        description=(
            "what the job goes ahead despite: the strings renders from its cameras send as X-Warnings (an "
            "inversion's at the training size, so a photo-sized reference is no size warning)"
        ),
    )
    phase_ms: dict[str, float] | None = Field(
        default=None,
        description=(
            "a sequence's GPU time so far by phase, in ms: 'encode' (text encoder), 'denoise', 'decode' (VAE), "
            "summed over the frames rendered (X-Timings-Ms of a render, for the whole job; renders served between "
            "its denoising steps count in 'denoise'); null before its first frames and for inversions"
        ),
    )


class JobsOut(BaseModel):
    jobs: list[JobOut]


class JobCreated(BaseModel):
    job_id: str
    kind: Literal["sequence", "invert"]
    total: int
    warnings: list[str] = Field(
        default=[],
        description="the job's warnings (as in GET /v1/jobs/{id}); an inversion also sends them as X-Warnings",
    )


class CancelOut(BaseModel):
    job_id: str
    state: Literal["cancelling", "cancelled"]
