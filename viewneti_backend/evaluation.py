"""Evaluation as in ViewNeTI's DTU protocol: masked PSNR, SSIM and LPIPS (VGG) on background-zeroed images.

- PSNR: MSE over foreground pixels and channels only, Σ((gt·m − pred·m)²) / (Σm · C); −10·log10(MSE).
- SSIM: ``skimage.metrics.structural_similarity`` (7×7 uniform window, data_range 1) on background-zeroed images.
- LPIPS: ``lpips.LPIPS(net="vgg")`` on background-zeroed images in [−1, 1], only when its weights are
  available locally (the ``lpips`` package ships them; torchvision's VGG backbone must be cached).
Two averages are reported: over views then scenes (the repo's), and over all views pooled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image


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
# Single-view novel view synthesis: ViewNeTI mode 5 against the two baselines of the toy benchmark
# (toyworld/nvs.py) and of `viewneti pretrain`'s held-out evaluation, scored the same way in both.
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
