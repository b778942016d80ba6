"""Datasets: nerfstudio/Blender-NeRF ``transforms.json`` scenes, the DTU Rectified layout, image folders.

Everything becomes a :class:`Scene`: images + their anchor-relative cameras (+ optional masks). A
transforms scene's cameras alone (what rendering them needs) are a :class:`TransformsCameras`, read
without decoding a pixel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .cameras import (
    Camera,
    dtu_projection_to_camera,
    read_dtu_projection,
    read_transforms,
    transforms_image_path,
)
from .errors import InputError
from .tokens import validate_token_name
from .undistort import LensDistortion, Undistorter

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}

# DTU protocol (RegNeRF / pixelNeRF convention, 0-indexed camera ids).
DTU_TRAIN_VIEWS = [25, 22, 28, 40, 44, 48, 0, 8, 13]
DTU_EXCLUDED_VIEWS = [3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 36, 37, 38, 39]
DTU_TEST_VIEWS = [1, 2, 9, 10, 11, 12, 14, 15, 23, 24, 26, 27, 29, 30, 31, 32, 33, 34, 35, 41, 42, 43, 45, 46, 47]
DTU_TEST_SCANS = [8, 21, 30, 31, 34, 38, 40, 41, 45, 55, 63, 82, 103, 110, 114]
DTU_PIXELNERF_EXCLUDED_SCANS = [1, 2, 7, 25, 26, 27, 29, 39, 51, 54, 56, 57, 58, 73, 83, 111, 112, 113, 115, 116, 117]
DTU_PRETRAIN_SCANS = [s for s in range(3, 129) if s not in DTU_TEST_SCANS + DTU_PIXELNERF_EXCLUDED_SCANS]
DTU_TRAIN_SIZE = (512, 384)  # (W, H): the paper trains on DTU's 1600x1200 images resized (bicubic) to this


@dataclass
class Scene:
    name: str
    images: list[Image.Image]
    cameras: list[Camera] | None  # None for mode 0 (no poses)
    masks: list[np.ndarray] | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.images:
            raise InputError(f"scene '{self.name}' has no images")
        if self.cameras is not None and len(self.cameras) != len(self.images):
            raise InputError(
                f"scene '{self.name}': {len(self.images)} images but {len(self.cameras)} cameras: give one camera per image"
            )

    def posed_cameras(self) -> list[Camera]:
        """The cameras, where poses are required: a clear error for a scene without them (mode 0)."""
        if self.cameras is None:
            raise InputError(f"scene '{self.name}' has no camera poses: give a scene with cameras (transforms, DTU)")
        return self.cameras

    def object_masks(self) -> list[np.ndarray]:
        """The masks, where they are required (masked metrics): a clear error for a scene without them."""
        if self.masks is None:
            raise InputError(f"scene '{self.name}' has no object masks: masked metrics need one mask per image")
        return self.masks

    def subset(self, indices: Sequence[int]) -> Scene:
        bad = [i for i in indices if not 0 <= i < len(self.images)]
        if bad:
            raise InputError(f"scene '{self.name}' has {len(self.images)} views; view indices {bad} do not exist")
        return Scene(
            self.name,
            [self.images[i] for i in indices],
            None if self.cameras is None else [self.cameras[i] for i in indices],
            None if self.masks is None else [self.masks[i] for i in indices],
            dict(self.meta),
        )


def _open_rgb(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read image {path}: {exc}") from None


# Background that transparent pixels (an RGBA image's alpha, e.g. NeRF-synthetic's lego) are composited
# onto: white, the NeRF-synthetic convention (its "white_bkgd") and nerfstudio's default alpha colour.
# The RGB under alpha 0 is meaningless (black in lego); the alpha itself becomes the scene's mask.
DEFAULT_BACKGROUND = (255, 255, 255)
TRANSFORMS_NAMES = ("transforms.json", "transforms_train.json", "transforms_val.json", "transforms_test.json")


def find_transforms_file(path: str | Path) -> tuple[Path, str | None]:
    """The transforms file of a scene folder (or the file itself) and a note when a split was chosen.

    A folder with ``transforms.json`` uses it; a NeRF-synthetic folder (``transforms_train.json``,
    ``_val``, ``_test``) uses the train split and says so (pass the file to pick another)."""
    path = Path(path)
    if not path.is_dir():
        if not path.is_file():
            raise InputError(f"{path}: no such file or folder (give a scene folder or its transforms.json)")
        return path, None
    for name in TRANSFORMS_NAMES:
        if (path / name).is_file():
            others = [n for n in TRANSFORMS_NAMES[1:] if n != name and (path / n).is_file()]
            note = None
            if name != "transforms.json":
                note = f"{path} has no transforms.json: using {name}" + (
                    f" (also there: {', '.join(others)}; pass one of them to use it)" if others else ""
                )
            return path / name, note
    raise InputError(
        f"{path} holds no transforms.json (nor transforms_train.json / _val / _test): "
        "give a nerfstudio, instant-ngp or Blender-NeRF scene folder"
    )


def _open_with_alpha(path: Path, background: tuple[int, int, int]) -> tuple[Image.Image, np.ndarray | None]:
    """RGB image and, for images with transparency, the alpha as a mask (RGB composited on ``background``)."""
    try:
        with Image.open(path) as im:
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                alpha = np.asarray(rgba.getchannel("A"))
                if alpha.min() < 255:
                    base = Image.new("RGBA", rgba.size, (*background, 255))
                    return Image.alpha_composite(base, rgba).convert("RGB"), alpha > 127
                return rgba.convert("RGB"), None
            return im.convert("RGB"), None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read image {path}: {exc}") from None


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from an image file's header: the pixels are not decoded."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read image {path}: {exc}") from None


@dataclass(frozen=True)
class TransformsView:
    """One frame of a transforms scene as its file and its image's header give it: the image file,
    the camera at that image's size, the lens to undo (None: a pinhole already) and the mask file."""

    image_file: Path
    camera: Camera
    lens: LensDistortion | None
    mask_file: Path | None


@dataclass(frozen=True)
class TransformsCameras:
    """A transforms scene without its pixels: what rendering its cameras needs, and what
    :func:`load_transforms_scene` decodes the images of."""

    file: Path
    views: list[TransformsView]
    split_note: str | None  # which split of a NeRF-synthetic folder was used (None: its transforms.json)

    @property
    def cameras(self) -> list[Camera]:
        """The pinhole cameras, the same as those of the scene (its photos undistorted to them)."""
        return [v.camera for v in self.views]

    def notes(self) -> list[str]:
        """What the user is told when only the cameras are used: the split, and that lenses are dropped."""
        lenses = list(dict.fromkeys(v.lens.describe() for v in self.views if v.lens is not None))
        lens_note = (
            f"lens distortion ({'; '.join(lenses)}): the cameras are the pinhole cameras of the same "
            "fl_x/fl_y/cx/cy, as the undistorted photos show them (the lens is not rendered)"
        )
        return [n for n in (self.split_note, lens_note if lenses else None) if n]


def load_transforms_cameras(path: str | Path, views: Sequence[int] | None = None) -> TransformsCameras:
    """The cameras of a scene folder with ``transforms.json`` (or the file itself) without decoding a
    pixel: image sizes come from the files' headers. Each camera is the one :func:`load_transforms_scene`
    gives its (undistorted) image; a bad file, view index, lens or unreadable image is the same error."""
    tj, note = find_transforms_file(path)
    root = tj.parent
    tf = read_transforms(tj)
    frames = tf.frames
    if views is not None:
        bad = [i for i in views if not 0 <= i < len(frames)]
        if bad:
            raise InputError(f"{tj} has {len(frames)} frames; view indices {bad} do not exist")
        frames = [frames[i] for i in views]
    lenses = [LensDistortion.from_transforms(fr.distortion, tf.meta, f"{tj}: {fr.file_path}") for fr in frames]
    out = []
    for fr, lens in zip(frames, lenses):
        image = transforms_image_path(root, fr.file_path)
        size = _image_size(image)  # the header only
        cam = fr.camera
        if (cam.width, cam.height) != size:
            cam = cam.with_size(*size)  # the file's intrinsics are for another size: scale them
        out.append(TransformsView(image, cam, lens, root / fr.mask_path if fr.mask_path else None))
    return TransformsCameras(tj, out, note)


def load_transforms_scene(
    path: str | Path,
    views: Sequence[int] | None = None,
    name: str | None = None,
    background: tuple[int, int, int] = DEFAULT_BACKGROUND,
) -> Scene:
    """A scene folder with ``transforms.json`` (or ``transforms_train.json``...) or the file itself.

    Cameras keep their full intrinsics (fl_x/fl_y, cx/cy); a camera given for another image size
    (nerfstudio's downscaled ``images_2``) is scaled to the image (one given by angles only is built
    at its image's size by :func:`read_transforms`); see :func:`load_transforms_cameras`, which reads
    them. Masks: ``mask_path``, else the image's alpha (composited onto ``background``). A frame with
    lens distortion (k1 k2 k3 p1 p2, or a fisheye's k1..k4) has its image and mask undistorted to the
    pinhole camera of the same K (:mod:`.undistort`); pixels the photo does not cover show
    ``background`` and are outside the mask. ``scene.meta["notes"]`` says which split was used and
    what was undistorted."""
    parsed = load_transforms_cameras(path, views)
    images, masks = [], []
    undistorted = Undistorter(background)
    for view in parsed.views:
        img, mask = _open_with_alpha(view.image_file, background)
        if view.mask_file is not None:
            try:
                with Image.open(view.mask_file) as m:
                    mask = np.asarray(m.convert("L").resize(img.size)) > 127
            except (OSError, ValueError) as exc:
                raise InputError(f"cannot read mask {view.mask_file}: {exc}") from None
        if view.lens is not None:
            img, mask = undistorted.add(img, mask, view.camera.intrinsics(), view.lens)
        images.append(img)
        if mask is not None:
            masks.append(mask)
    meta: dict = {
        "transforms": str(parsed.file),
        "notes": [n for n in (parsed.split_note, undistorted.note()) if n],
        "warnings": [],
    }
    root = parsed.file.parent
    return Scene(name or root.name, images, parsed.cameras, masks if len(masks) == len(images) else None, meta)


def load_scene_collection(root: str | Path, limit: int | None = None) -> list[Scene]:
    """Every sub-folder of ``root`` holding a ``transforms.json`` is one scene (mode 3).

    Hidden folders are skipped: the Blender add-on's Export Training Views stages each object in one
    (``.viewneti-export-*``) and renames it into place only when it is complete.
    """
    root = Path(root)
    dirs = (
        sorted(
            p for p in root.iterdir() if not p.name.startswith(".") and any((p / n).is_file() for n in TRANSFORMS_NAMES)
        )
        if root.is_dir()
        else []
    )
    if not dirs:
        raise InputError(f"{root} holds no scene folders with a transforms.json: mode 3 needs one folder per scene")
    scenes = []
    for d in dirs[:limit]:
        validate_token_name(d.name)
        scenes.append(load_transforms_scene(d))
    return scenes


def load_image_folder(path: str | Path, name: str | None = None) -> Scene:
    """Mode 0: a plain folder of images of one object, no cameras."""
    path = Path(path)
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if path.is_dir() else []
    if not files:
        raise InputError(f"{path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return Scene(name or path.name, [_open_rgb(f) for f in files], None)


def load_dtu_scene(
    root: str | Path,
    scan: int,
    views: Sequence[int] | None = None,
    lighting: int = 3,
    size: tuple[int, int] = DTU_TRAIN_SIZE,
) -> Scene:
    """DTU "Rectified" + "Calibration/cal18" layout; cameras from the raw 3x4 projection matrices.

    The anchor is DTU's world frame; images are resized (bicubic) to ``size`` (W, H).
    """
    root = Path(root)
    views = list(views) if views is not None else DTU_TRAIN_VIEWS + DTU_TEST_VIEWS
    images, cameras = [], []
    for cam_id in views:
        img_path = root / "Rectified" / f"scan{scan}" / f"rect_{cam_id + 1:03d}_{lighting}_r5000.png"
        cal_path = root / "Calibration" / "cal18" / f"pos_{cam_id + 1:03d}.txt"
        if not img_path.is_file() or not cal_path.is_file():
            raise InputError(f"DTU files missing for scan {scan}, camera {cam_id}: expected {img_path} and {cal_path}")
        cam = dtu_projection_to_camera(read_dtu_projection(cal_path), 1600, 1200)
        images.append(_open_rgb(img_path).resize(size, Image.Resampling.BICUBIC))
        cameras.append(cam.with_size(*size))
    return Scene(f"scan{scan}", images, cameras, meta={"dtu_views": views})


def dtu_calibration_dir(path: str | Path) -> Path:
    """The folder with ``pos_XXX.txt``: ``path`` itself, or ``path/Calibration/cal18`` of a DTU root."""
    path = Path(path)
    for cand in (path, path / "Calibration" / "cal18"):
        if cand.is_dir() and any(cand.glob("pos_*.txt")):
            return cand
    raise InputError(
        f"no DTU calibration files (pos_001.txt ... pos_064.txt) in {path} or {path / 'Calibration' / 'cal18'}: "
        "give DTU's Calibration/cal18 folder (or the DTU root holding it)"
    )


def dtu_calibration_projections(path: str | Path) -> dict[int, np.ndarray]:
    """Every ``pos_XXX.txt`` of a cal18 folder (or DTU root), read verbatim: {0-based camera id: 3x4 P}."""
    cal = dtu_calibration_dir(path)
    out: dict[int, np.ndarray] = {}
    for f in sorted(cal.glob("pos_*.txt")):
        stem = f.stem.split("_", 1)[1]
        if not stem.isdigit() or int(stem) < 1:
            raise InputError(f"{f}: DTU calibration files are named pos_001.txt ... pos_064.txt")
        out[int(stem) - 1] = read_dtu_projection(f)
    return dict(sorted(out.items()))


def dtu_calibration_cameras(root: str | Path) -> list[Camera]:
    """All 64 cal18 cameras (the population ViewNeTI's dtu-12d min-max statistics come from), each
    carrying its file's P verbatim."""
    return [dtu_projection_to_camera(p, 1600, 1200) for p in dtu_calibration_projections(root).values()]
