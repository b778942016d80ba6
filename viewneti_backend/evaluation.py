"""Evaluation as in ViewNeTI's DTU protocol: masked PSNR, SSIM and LPIPS (VGG) on background-zeroed images.

- PSNR: MSE over foreground pixels and channels only, Σ((gt·m − pred·m)²) / (Σm · C); −10·log10(MSE).
- SSIM: ``skimage.metrics.structural_similarity`` (7×7 uniform window, data_range 1) on background-zeroed images.
- LPIPS: ``lpips.LPIPS(net="vgg")`` on background-zeroed images in [−1, 1], only when its weights are
  available locally (the ``lpips`` package ships them; torchvision's VGG backbone must be cached).
Two averages are reported: over views then scenes (the repo's), and over all views pooled.

Ground truth is compared at the render's size without squashing (:func:`framed_ground_truth`), and
``viewneti eval`` writes each scene's renders, ground truth, sheet and manifest (:class:`EvalOutputs`).
Photos with lens distortion arrive undistorted (the loader, :mod:`.undistort`), so the ground truth is
the image of the same pinhole camera that is rendered.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .cameras import Camera, centre_crop_box
from .sheets import MIN_CELL, contact_sheet, save_png, write_manifest


def _as_float(img) -> np.ndarray:
    if isinstance(img, Image.Image):
        img = np.asarray(img.convert("RGB"))
    arr = np.asarray(img)
    return arr.astype(np.float64) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float64)


def _as_mask(mask, shape) -> np.ndarray:
    if mask is None:
        return np.ones(shape[:2], dtype=bool)
    m = np.asarray(mask.convert("L") if isinstance(mask, Image.Image) else mask)
    return (m > (127 if m.dtype == np.uint8 else 0.5)) if m.dtype != bool else m


def masked_psnr(pred, gt, mask=None) -> float:
    p, g = _as_float(pred), _as_float(gt)
    m = _as_mask(mask, g.shape)[..., None].astype(np.float64)
    denom = m.sum() * g.shape[-1]
    if denom == 0:
        return float("nan")
    mse = float((((g * m) - (p * m)) ** 2).sum() / denom)
    return float("inf") if mse == 0 else -10.0 * math.log10(mse)


def masked_ssim(pred, gt, mask=None) -> float:
    from skimage.metrics import structural_similarity

    p, g = _as_float(pred), _as_float(gt)
    m = _as_mask(mask, g.shape)[..., None]
    return float(structural_similarity(p * m, g * m, channel_axis=-1, data_range=1.0))  # pyright: ignore[reportArgumentType]  skimage's return type includes the full=True/gradient=True tuples


class LPIPSMetric:
    """LPIPS-VGG, loaded lazily; raises a clear error when its weights are not available offline."""

    def __init__(self, device: str = "cpu"):
        try:
            import lpips  # noqa: F401  # pyright: ignore[reportMissingImports]  optional: the viewneti[eval] extra
        except ImportError:
            raise RuntimeError(
                "LPIPS needs the 'lpips' package (pip install 'viewneti[eval]') and cached VGG weights"
            ) from None
        import lpips  # pyright: ignore[reportMissingImports]  optional: checked just above
        import torch

        try:
            self.model = lpips.LPIPS(net="vgg", verbose=False).to(device).eval()
        except Exception as exc:  # download attempted and failed offline
            raise RuntimeError(
                f"LPIPS-VGG weights are not available locally ({exc}); run once with network access"
            ) from None
        self.torch, self.device = torch, device

    def __call__(self, pred, gt, mask=None) -> float:
        torch = self.torch
        m = _as_mask(mask, _as_float(gt).shape)[..., None]

        def t(x):
            return torch.from_numpy((_as_float(x) * m * 2 - 1).transpose(2, 0, 1)[None]).float().to(self.device)

        with torch.no_grad():
            return float(self.model(t(pred), t(gt)))


@dataclass
class EvalTable:
    """Per-scene rows and means; ``rows`` are (scene, view, seed, psnr, ssim, lpips|None)."""

    rows: list[tuple] = field(default_factory=list)

    def add(self, scene: str, view: int, seed: int, psnr: float, ssim: float, lpips: float | None = None) -> None:
        self.rows.append((scene, view, seed, psnr, ssim, lpips))

    def per_scene(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for scene in dict.fromkeys(r[0] for r in self.rows):
            rs = [r for r in self.rows if r[0] == scene]
            out[scene] = self._means(rs)
        return out

    @staticmethod
    def _means(rs) -> dict[str, float]:
        res = {"psnr": float(np.mean([r[3] for r in rs])), "ssim": float(np.mean([r[4] for r in rs])), "n": len(rs)}
        lp = [r[5] for r in rs if r[5] is not None]
        if lp:
            res["lpips"] = float(np.mean(lp))
        return res

    def mean_over_scenes(self) -> dict[str, float]:
        """Repo-style: mean over views within a scene, then over scenes (per seed, then over seeds)."""
        seeds = sorted(set(r[2] for r in self.rows))
        per_seed = []
        for s in seeds:
            scenes = dict.fromkeys(r[0] for r in self.rows if r[2] == s)
            per_seed.append([self._means([r for r in self.rows if r[0] == sc and r[2] == s]) for sc in scenes])
        keys = ["psnr", "ssim"] + (["lpips"] if any(r[5] is not None for r in self.rows) else [])
        out = {k: float(np.mean([np.mean([x[k] for x in ps]) for ps in per_seed])) for k in keys}
        out["seed_std_psnr"] = float(np.std([np.mean([x["psnr"] for x in ps]) for ps in per_seed]))
        return out

    def mean_pooled(self) -> dict[str, float]:
        return self._means(self.rows)

    def format(self, title: str = "") -> str:
        lines = [title] if title else []
        lines.append(f"{'scene':<16}{'PSNR':>8}{'SSIM':>8}{'LPIPS':>8}{'n':>5}")
        for scene, m in self.per_scene().items():
            lp = f"{m['lpips']:.3f}" if "lpips" in m else "-"
            lines.append(f"{scene:<16}{m['psnr']:>8.2f}{m['ssim']:>8.3f}{lp:>8}{m['n']:>5}")
        mm = self.mean_over_scenes()
        lp = f"{mm['lpips']:.3f}" if "lpips" in mm else "-"
        lines.append(
            f"{'mean':<16}{mm['psnr']:>8.2f}{mm['ssim']:>8.3f}{lp:>8}  (seed std PSNR {mm['seed_std_psnr']:.2f})"
        )
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Ground truth at the render size, and the files an evaluation writes (`viewneti eval`)
# ------------------------------------------------------------------------------------------------
def framed_ground_truth(
    camera: Camera, image: Image.Image, mask: np.ndarray | None, size: tuple[int, int]
) -> tuple[Camera, Image.Image, np.ndarray | None]:
    """A ground-truth view at the render size ``size`` = (W, H), never squashed: the image's largest
    centred region of aspect W:H, resized to W x H (bicubic; the mask bilinear, then > 0.5), and the
    camera of exactly that region (fov_y, cx/cy follow the crop). Render that camera and both images
    show the same frustum, whether the size was rounded to the latent grid or given with another aspect."""
    if image.size != (camera.width, camera.height):
        raise ValueError(f"the image is {image.size[0]}x{image.size[1]}, its camera {camera.width}x{camera.height}")
    box = centre_crop_box(camera.width, camera.height, size[0] / size[1])
    gt = image.convert("RGB").resize(size, Image.Resampling.BICUBIC, box=box)
    if mask is not None:
        m = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255).resize(size, Image.Resampling.BILINEAR, box=box)
        mask = np.asarray(m) > 127
    return camera.cropped(box, *size), gt, mask


EVAL_SHEET_MAX_CELL = 256  # px: a 34-view DTU sheet of 768-px renders stays a viewable size


@dataclass
class EvalOutputs:
    """One scene's evaluation files under ``folder``: each render ``<object>_viewNNN_seedS.png`` and
    ground truth ``gt_viewNNN.png`` (PNGs that carry their settings and camera), then ``sheet.png``
    (a ground-truth row above one row per seed) and ``manifest.json``. The ``--transforms`` and the
    DTU evaluations write the same layout."""

    folder: Path
    object_name: str
    scene: str
    settings: dict
    ground_truth: list[Path] = field(default_factory=list)
    renders: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def add_ground_truth(self, view: int, image: Image.Image, camera: Camera | None = None) -> Path:
        meta = {"scene": self.scene, "view": view, **({"camera": camera.to_json()} if camera else {})}
        path = save_png(image, self.folder / f"gt_view{view:03d}.png", meta)
        self.ground_truth.append(path)
        return path

    def add_render(self, view: int, seed: int, image: Image.Image, camera: Camera) -> Path:
        meta = {**self.settings, "seed": seed, "view": view, "camera": camera.to_json()}
        path = save_png(image, self.folder / f"{self.object_name}_view{view:03d}_seed{seed}.png", meta)
        self.renders.append(path)
        return path

    def finish(self, views: Sequence[int], seeds: Sequence[int], manifest: dict) -> Path:
        """The sheet (renders added seed by seed, in ``views`` order) and the manifest: ``manifest``
        plus the files and the sheet's name. Returns the manifest's path."""
        with Image.open(self.ground_truth[0]) as first:
            width = first.size[0]
        contact_sheet(
            self.ground_truth + self.renders,
            self.folder / "sheet.png",
            columns=len(views),
            cell=min(max(width, MIN_CELL), EVAL_SHEET_MAX_CELL),
            labels=[f"view {v}" for v in views] * (1 + len(seeds)),
            row_titles=["ground truth"] + [f"{self.object_name} seed {s}" for s in seeds],
            settings=self.settings,
        )
        files = [f.name for f in self.ground_truth + self.renders]
        return write_manifest(self.folder / "manifest.json", {**manifest, "files": files, "sheet": "sheet.png"})


# ------------------------------------------------------------------------------------------------
# Single-view novel view synthesis: ViewNeTI mode 5 against the two baselines of the toy benchmark
# (toyworld/benchmark.py) and of `viewneti pretrain`'s held-out evaluation, scored the same way in both.
# ------------------------------------------------------------------------------------------------
NVS_METHODS = ("viewneti_mode5", "copy_input", "no_view_token")


def nvs_tables() -> dict[str, EvalTable]:
    return {m: EvalTable() for m in NVS_METHODS}


def score_novel_views(
    tables: dict[str, EvalTable],
    scene: str,
    seed: int,
    gt_images: list,
    gt_masks: list,
    input_image,
    mode5: list,
    no_view: list,
) -> None:
    """Masked PSNR / SSIM of each target view k for the three methods: mode 5's render, the input view
    copied (baseline a), the object token without the view token (baseline b)."""
    for k, (g, m) in enumerate(zip(gt_images, gt_masks)):
        for method, img in (("viewneti_mode5", mode5[k]), ("copy_input", input_image), ("no_view_token", no_view[k])):
            tables[method].add(scene, k, seed, masked_psnr(img, g, m), masked_ssim(img, g, m))


def paired_margin(results: dict, ours: str, base: str) -> dict:
    """Paired per-object PSNR difference ours - base: mean, std over objects, wins."""
    mine = results[ours]["per_object"]
    d = np.array([mine[o]["psnr"] - results[base]["per_object"][o]["psnr"] for o in mine])
    return {"mean": float(d.mean()), "std": float(d.std()), "wins": int((d > 0).sum()), "objects": len(d)}


def nvs_results(tables: dict[str, EvalTable]) -> dict:
    """Per method: per-object means, the mean over objects (per seed, then over seeds) and the pooled mean;
    plus mode 5's margins over each baseline (of the means, and paired per object)."""
    results = {
        m: {"per_object": t.per_scene(), "mean": t.mean_over_scenes(), "pooled": t.mean_pooled()}
        for m, t in tables.items()
    }
    a, b, c = (results[m]["mean"]["psnr"] for m in NVS_METHODS)
    return {
        "results": results,
        "margin_db": {"vs_copy_input": a - b, "vs_no_view_token": a - c},
        "per_object_margin_db": {
            f"vs_{base}": paired_margin(results, "viewneti_mode5", base) for base in ("copy_input", "no_view_token")
        },
    }


def format_nvs(tables: dict[str, EvalTable]) -> str:
    """One table per method, then mode 5's margins in dB."""
    text = "\n\n".join(t.format(f"== {m} ==") for m, t in tables.items())
    a, b, c = (tables[m].mean_over_scenes()["psnr"] for m in NVS_METHODS)
    return text + f"\n\nmargin vs copy-input {a - b:+.2f} dB, vs no-view {a - c:+.2f} dB\n"


# ------------------------------------------------------------------------------------------------
# The DTU protocol exactly as the reference scores it (training/inference_dtu.py, summarize_dtu.py)
# ------------------------------------------------------------------------------------------------
DTU_RENDER_SIZE = (768, 576)  # (W, H) the reference samples at
DTU_SCORE_SIZE = (400, 300)  # (W, H) the metrics are computed at (standard in prior work)
DTU_MASK_THRESHOLD = 0.01  # mask values (0..1 after the resizes) above this are foreground


def dtu_tensor_resize(img: np.ndarray, size: tuple[int, int] = DTU_SCORE_SIZE) -> np.ndarray:
    """The reference's ``torchvision.transforms.Resize((300, 400), BICUBIC)`` on a uint8 HxWxC image
    tensor, as torchvision 0.14 (its environment) does it: float32 bicubic interpolation,
    align_corners=False, no antialiasing (the tensor default then), clamped to 0..255, rounded."""
    import torch

    w, h = size
    arr = np.asarray(img)
    if arr.shape[:2] == (h, w):
        return arr.copy()
    t = torch.from_numpy(np.array(arr)).permute(2, 0, 1)[None].float()
    out = torch.nn.functional.interpolate(t, size=(h, w), mode="bicubic", align_corners=False, antialias=False)
    return out.clamp(0, 255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()


def dtu_mask_path(masks_root: str | Path, scan: int, cam: int) -> Path:
    """RegNeRF/IDR masks: ``scan{id}/mask/{cam:03d}.png``, or ``scan{id}/{cam:03d}.png`` when there
    is no ``mask`` folder (the reference accepts both); ``cam`` is the 0-based camera id."""
    folder = Path(masks_root) / f"scan{scan}" / "mask"
    return (folder if folder.is_dir() else folder.parent) / f"{cam:03d}.png"


def load_dtu_mask(masks_root: str | Path | None, scan: int, cam: int) -> tuple[np.ndarray, bool]:
    """The 0/1 float32 HxWx3 mask at 400x300 and whether a file was found (missing: all foreground,
    as the reference does). RGB, resized to 400x300 (PIL's default resample, bicubic), then the
    tensor resize (a no-op at that size), /255, > 0.01."""
    path = dtu_mask_path(masks_root, scan, cam) if masks_root else None
    if path is not None and path.is_file():
        with Image.open(path) as im:
            mask = im.convert("RGB").resize(DTU_SCORE_SIZE, Image.Resampling.BICUBIC)
        found = True
    else:
        mask, found = Image.new("RGB", DTU_SCORE_SIZE, (255, 255, 255)), False
    m = dtu_tensor_resize(np.asarray(mask)).astype(np.float32) / np.float32(255.0)
    return (m > DTU_MASK_THRESHOLD).astype(np.float32), found


def dtu_scores(pred, gt, mask: np.ndarray, lpips: LPIPSMetric | None = None) -> dict[str, float | None]:
    """Masked PSNR, SSIM and LPIPS of one view, as the reference computes them.

    ``pred``: the render (768x576); ``gt``: the ground truth at 768x576 (the 1600x1200 image resized
    with PIL's bicubic); both are resized to 400x300 by :func:`dtu_tensor_resize`. ``mask``: from
    :func:`load_dtu_mask`. PSNR = -10 log10(sum((gt m - pred m)^2) / sum(m)) over pixels and
    channels; SSIM: skimage, channel axis first, data_range 1, on background-zeroed float32
    images; LPIPS-VGG on background-zeroed images in [-1, 1] (None when unavailable).
    """
    from skimage.metrics import structural_similarity

    def prep(img) -> np.ndarray:
        arr = np.asarray(img.convert("RGB") if isinstance(img, Image.Image) else img)
        return dtu_tensor_resize(arr).astype(np.float32).transpose(2, 0, 1) / np.float32(255.0)

    p, g, m = prep(pred), prep(gt), mask.transpose(2, 0, 1).astype(np.float32)
    denom = float(m.sum())
    mse = float((((g * m) - (p * m)) ** 2).sum() / denom) if denom else float("nan")
    psnr = float(-10.0 / math.log(10.0) * math.log(mse)) if mse > 0 else (float("inf") if mse == 0 else mse)
    ssim = float(structural_similarity(p * m, g * m, channel_axis=0, data_range=1.0))  # type: ignore[arg-type]
    lp = None
    if lpips is not None:
        lp = lpips((p * m).transpose(1, 2, 0), (g * m).transpose(1, 2, 0), None)
    return {"psnr": psnr, "ssim": ssim, "lpips": lp}


def dtu_summary(
    rows: list[dict], test_views: list[int], all_views: list[int], *, lpips_missing: str | None = None
) -> dict:
    """Both averagings the paper's code admits, per scan and seed, and the mean table.

    ``rows``: dicts with scan, view, seed, psnr, ssim, lpips. ``test25``: the standard protocol (the
    25 test views); ``all34``: ``summarize_dtu.py``'s average over all 34 views, inputs included.
    Means: over views within a scan (per seed), then over scans; then over seeds (with their std).
    """
    out: dict = {"lpips_missing": lpips_missing}
    for label, views in (("test25", test_views), ("all34", all_views)):
        chosen = [r for r in rows if r["view"] in views]
        per: dict[str, dict[str, dict]] = {}
        for r in chosen:
            per.setdefault(str(r["scan"]), {}).setdefault(str(r["seed"]), {"rows": []})["rows"].append(r)
        keys = ["psnr", "ssim"] + (["lpips"] if chosen and all(r["lpips"] is not None for r in chosen) else [])
        for scan in per.values():
            for seed, cell in scan.items():
                rs = cell.pop("rows")
                scan[seed] = {k: float(np.mean([r[k] for r in rs])) for k in keys} | {"n": len(rs)}
        seeds = sorted({r["seed"] for r in chosen})
        by_seed = {
            str(s): {k: float(np.mean([per[sc][str(s)][k] for sc in per if str(s) in per[sc]])) for k in keys}
            for s in seeds
        }
        mean = {k: float(np.mean([by_seed[str(s)][k] for s in seeds])) for k in keys} if seeds else {}
        std = {f"{k}_seed_std": float(np.std([by_seed[str(s)][k] for s in seeds])) for k in keys} if seeds else {}
        out[label] = {"views": len(views), "per_scan_seed": per, "per_seed": by_seed, "mean": {**mean, **std}}
    return out


def format_dtu_summary(summary: dict) -> str:
    lines = []
    for label, title in (("test25", "25 test views (standard)"), ("all34", "all 34 views (summarize_dtu.py)")):
        part = summary[label]
        lines.append(f"== {title}")
        lines.append(f"{'scan':<8}{'seed':>6}{'PSNR':>9}{'SSIM':>8}{'LPIPS':>8}{'n':>5}")
        for scan, seeds in part["per_scan_seed"].items():
            for seed, m in seeds.items():
                lp = f"{m['lpips']:.3f}" if "lpips" in m else "-"
                lines.append(f"{'scan' + scan:<8}{seed:>6}{m['psnr']:>9.2f}{m['ssim']:>8.3f}{lp:>8}{m['n']:>5}")
        for seed, m in part["per_seed"].items():
            lp = f"{m['lpips']:.3f}" if "lpips" in m else "-"
            lines.append(f"{'mean':<8}{seed:>6}{m['psnr']:>9.2f}{m['ssim']:>8.3f}{lp:>8}")
        m = part["mean"]
        if m:
            lp = f"{m['lpips']:.3f}" if "lpips" in m else "-"
            lines.append(
                f"{'mean':<8}{'all':>6}{m['psnr']:>9.2f}{m['ssim']:>8.3f}{lp:>8}  (seed std PSNR {m['psnr_seed_std']:.2f})"
            )
    if summary.get("lpips_missing"):
        lines.append(f"LPIPS: missing ({summary['lpips_missing']})")
    return "\n".join(lines)
