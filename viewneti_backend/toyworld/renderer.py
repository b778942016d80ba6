"""A procedural, analytic ray caster for small asymmetric toy objects on a ground plane.

* Objects (:class:`ToyObject`) are 2-4 coloured primitives (box, sphere, cylinder, cone) generated
  deterministically from an integer seed; the spec is plain JSON.
* Rendering is exact ray casting (ray-box, ray-sphere, ray-cylinder, ray-cone), vectorised in torch
  over pixels and over a batch of cameras, on CPU or GPU: Lambert + ambient lighting from a fixed sun,
  hard shadows, a grey checker ground plane at z = 0 and a sky gradient.
* Cameras follow the project convention (:mod:`viewneti_backend.cameras`): Blender camera-to-anchor
  poses, camera looking down its local -Z with +Y up, vertical field of view, pixel centres at
  (j + 0.5, i + 0.5) with the principal point at the image centre (``Camera.intrinsics()``), so a
  Blender render of the same scene (see :mod:`.blender_scene`) matches.

Object frame (used by captions): the *front* faces -Y (the side a camera at azimuth 0 sees, Blender's
front view); *left* is -X and *right* is +X as seen from the front; *top* is +Z.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..cameras import Camera, orbit_pose

# ------------------------------------------------------------------------------------------------
# Palette and scene constants
# ------------------------------------------------------------------------------------------------
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.10),
    "orange": (0.95, 0.50, 0.08),
    "yellow": (0.95, 0.85, 0.15),
    "green": (0.15, 0.70, 0.20),
    "cyan": (0.15, 0.80, 0.85),
    "blue": (0.12, 0.25, 0.90),
    "purple": (0.55, 0.18, 0.75),
    "pink": (0.98, 0.55, 0.75),
}
COLOR_NAMES = tuple(PALETTE)
KINDS = ("box", "sphere", "cylinder", "cone")
KIND_ID = {k: i for i, k in enumerate(KINDS)}
SIDES = ("left", "right", "front", "back", "top")
# Box faces in this order: +X, -X, +Y, -Y, +Z, -Z (index = 2*axis + (0 if positive else 1)).
FACE_OF_SIDE = {"right": 0, "left": 1, "back": 2, "front": 3, "top": 4}

SUN_DIRECTION = np.array([-0.45, -0.6, 0.8]) / np.linalg.norm([-0.45, -0.6, 0.8])  # towards the sun: front-left, above
AMBIENT, SKY_FILL, SUN = 0.32, 0.18, 0.6
GROUND_TILE = 0.5
GROUND_GREYS = (0.52, 0.64)
GROUND_FADE = (5.0, 9.0)  # checker fades to flat grey between these distances from the anchor
SKY_HORIZON, SKY_ZENITH = (0.86, 0.89, 0.93), (0.55, 0.68, 0.88)

DEFAULT_FOV_Y_DEG = 40.0
DEFAULT_SIZE = 64
ELEVATION_RANGE = (10.0, 50.0)
RADIUS_RANGE = (3.2, 4.0)

_INF = float("inf")
_EPS = 1e-4


# ------------------------------------------------------------------------------------------------
# Object specification
# ------------------------------------------------------------------------------------------------
@dataclass
class Primitive:
    """One coloured primitive, in world (= anchor) coordinates.

    ``size``: box half-extents (x, y, z); sphere (r, r, r); cylinder / cone (r, r, half_height), the
    axis along local +Z (a cone's apex at +half_height, its base at -half_height). ``yaw_deg`` rotates
    about +Z around ``center``. ``face_colors``: six colour names (+X, -X, +Y, -Y, +Z, -Z) for a box;
    ``None`` means ``color`` everywhere. ``side``: where it sits on the body ("body" for the body).
    """

    kind: str
    center: tuple[float, float, float]
    size: tuple[float, float, float]
    color: str
    yaw_deg: float = 0.0
    face_colors: list[str] | None = None
    side: str = "body"

    def rotation(self) -> np.ndarray:
        a = math.radians(self.yaw_deg)
        c, s = math.cos(a), math.sin(a)
        return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])

    def faces(self) -> list[str]:
        return list(self.face_colors) if self.face_colors else [self.color] * 6


@dataclass
class ToyObject:
    """A toy object: a body plus 1-3 attachments, resting on the ground, footprint centred on the anchor."""

    seed: int
    parts: list[Primitive] = field(default_factory=list)
    accent: dict[str, str] | None = None  # {"side": "front", "color": "yellow"}: one box face in another colour

    MAX_PARTS = 4

    @property
    def body(self) -> Primitive:
        return self.parts[0]

    @property
    def attachments(self) -> list[Primitive]:
        return self.parts[1:]

    def to_json(self) -> dict[str, Any]:
        return {"seed": self.seed, "accent": self.accent, "parts": [asdict(p) for p in self.parts]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ToyObject:
        parts = [
            Primitive(
                kind=p["kind"],
                center=tuple(p["center"]),
                size=tuple(p["size"]),
                color=p["color"],
                yaw_deg=float(p.get("yaw_deg", 0.0)),
                face_colors=p.get("face_colors"),
                side=p.get("side", "body"),
            )
            for p in data["parts"]
        ]
        return cls(seed=int(data["seed"]), parts=parts, accent=data.get("accent"))

    @classmethod
    def from_seed(cls, seed: int) -> ToyObject:
        """Deterministic procedural object: a box (or cylinder) body with a differently coloured face
        and 1-3 parts of other colours stuck to its sides or on top (at least one on a side)."""
        rng = random.Random(int(seed) * 7919 + 17)
        r3 = lambda lo, hi: round(rng.uniform(lo, hi), 3)  # noqa: E731
        body_kind = "box" if rng.random() < 0.75 else "cylinder"
        body_color = rng.choice(COLOR_NAMES)
        others = [c for c in COLOR_NAMES if c != body_color]
        if body_kind == "box":
            bx, by, bz = r3(0.38, 0.6), r3(0.38, 0.6), r3(0.22, 0.36)
        else:
            rad = r3(0.38, 0.55)
            bx, by, bz = rad, rad, r3(0.22, 0.36)
        body = Primitive(body_kind, (0.0, 0.0, bz), (bx, by, bz), body_color)

        accent = None
        if body_kind == "box":
            accent_side = rng.choice(("left", "right", "front", "back"))
            accent_color = rng.choice(others)
            faces = [body_color] * 6
            faces[FACE_OF_SIDE[accent_side]] = accent_color
            body.face_colors = faces
            accent = {"side": accent_side, "color": accent_color}

        n_att = rng.choice((1, 2, 2, 3))
        sides = list(SIDES)
        rng.shuffle(sides)
        chosen = sides[:n_att]
        if all(s == "top" for s in chosen):
            chosen = [rng.choice(("left", "right", "front", "back"))]
        parts = [body]
        used_kinds = set()
        for side in chosen:
            kind = rng.choice(("box", "sphere", "cylinder", "cone"))
            if kind in used_kinds and rng.random() < 0.5:  # prefer variety within one object
                kind = rng.choice(("box", "sphere", "cylinder", "cone"))
            used_kinds.add(kind)
            color = rng.choice([c for c in others if not accent or c != accent["color"]] or others)
            if kind == "sphere":
                r = r3(0.18, 0.3) if side != "top" else r3(0.16, 0.22)
                size, hz = (r, r, r), r
            elif kind == "box":
                size, hz = (r3(0.15, 0.28), r3(0.15, 0.28), r3(0.13, 0.28) if side != "top" else r3(0.1, 0.2)), None
                hz = size[2]
            else:
                r = r3(0.15, 0.26)
                size, hz = (r, r, r3(0.15, 0.3) if side != "top" else r3(0.12, 0.2)), None
                hz = size[2]
            ext = size[0]
            if side == "top":
                center = (r3(-0.15, 0.15) * bx, r3(-0.15, 0.15) * by, 2 * bz + hz - (0.02 if kind == "sphere" else 0.0))
            else:
                out = 0.55 * ext  # the part overlaps the body a little and sticks out
                if side == "left":
                    center = (-(bx + out), r3(-0.3, 0.3) * by, hz)
                elif side == "right":
                    center = (bx + out, r3(-0.3, 0.3) * by, hz)
                elif side == "front":
                    center = (r3(-0.3, 0.3) * bx, -(by + out), hz)
                else:
                    center = (r3(-0.3, 0.3) * bx, by + out, hz)
            yaw = rng.choice((0.0, 0.0, 30.0, 45.0)) if kind == "box" else 0.0
            parts.append(
                Primitive(
                    kind,
                    (round(float(center[0]), 4), round(float(center[1]), 4), round(float(center[2]), 4)),
                    size,
                    color,
                    yaw,
                    None,
                    side,
                )
            )
        return cls(seed=int(seed), parts=parts, accent=accent)

    def radius(self) -> float:
        """Radius of a sphere around the anchor that contains the object (rough, for framing)."""
        r = 0.0
        for p in self.parts:
            c = np.asarray(p.center)
            r = max(r, float(np.linalg.norm(c) + np.linalg.norm(p.size)))
        return r


# ------------------------------------------------------------------------------------------------
# Packing objects into tensors
# ------------------------------------------------------------------------------------------------
def pack_objects(objects: Sequence[ToyObject], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Objects -> padded tensors [N, M, ...] (M = ToyObject.MAX_PARTS, kind -1 marks padding)."""
    n, m = len(objects), ToyObject.MAX_PARTS
    kind = np.full((n, m), -1, dtype=np.int64)
    center = np.zeros((n, m, 3))
    size = np.ones((n, m, 3))
    rot = np.tile(np.eye(3), (n, m, 1, 1))
    faces = np.zeros((n, m, 6, 3))
    for i, obj in enumerate(objects):
        if len(obj.parts) > m:
            raise ValueError(f"a toy object has at most {m} parts, got {len(obj.parts)}")
        for j, p in enumerate(obj.parts):
            kind[i, j] = KIND_ID[p.kind]
            center[i, j] = p.center
            size[i, j] = p.size
            rot[i, j] = p.rotation()
            faces[i, j] = [PALETTE[c] for c in p.faces()]
    f = lambda a: torch.as_tensor(a, dtype=torch.float32, device=device)  # noqa: E731
    return {
        "kind": torch.as_tensor(kind, device=device),
        "center": f(center),
        "size": f(size),
        "rot": f(rot),
        "faces": f(faces),
    }


def index_packed(packed: dict[str, torch.Tensor], idx: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v[idx] for k, v in packed.items()}


# ------------------------------------------------------------------------------------------------
# Ray generation
# ------------------------------------------------------------------------------------------------
def camera_rays(
    poses: torch.Tensor, fov_y_deg: torch.Tensor, width: int, height: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """World-space rays through pixel centres: origins and unit directions [B, H*W, 3].

    Pixel (i, j) (row, column) has its centre at u = j + 0.5, v = i + 0.5; with the OpenCV intrinsics
    of ``Camera.intrinsics()`` (fx = fy = H / (2 tan(fov_y / 2)), principal point (W/2, H/2)) its
    direction in the Blender camera frame is ((u - W/2) / f, -(v - H/2) / f, -1).
    """
    dev, dt = poses.device, poses.dtype
    f = 0.5 * height / torch.tan(torch.deg2rad(fov_y_deg.to(dev, dt)) / 2.0)  # [B]
    v, u = torch.meshgrid(
        torch.arange(height, device=dev, dtype=dt) + 0.5, torch.arange(width, device=dev, dtype=dt) + 0.5, indexing="ij"
    )
    x = (u.reshape(-1) - width / 2.0)[None] / f[:, None]
    y = -(v.reshape(-1) - height / 2.0)[None] / f[:, None]
    d_cam = torch.stack([x, y, -torch.ones_like(x)], dim=-1)  # [B, N, 3]
    d = torch.einsum("bij,bnj->bni", poses[:, :3, :3], d_cam)
    d = d / d.norm(dim=-1, keepdim=True)
    o = poses[:, None, :3, 3].expand_as(d)
    return o, d


def orbit_poses_torch(azimuth_deg: torch.Tensor, elevation_deg: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Batched :func:`viewneti_backend.cameras.orbit_pose` (looking at the anchor): [B, 4, 4]."""
    az, el = torch.deg2rad(azimuth_deg), torch.deg2rad(elevation_deg)
    eye = radius[:, None] * torch.stack(
        [torch.sin(az) * torch.cos(el), -torch.cos(az) * torch.cos(el), torch.sin(el)], -1
    )
    fwd = -eye / eye.norm(dim=-1, keepdim=True)
    up = torch.tensor([0.0, 0.0, 1.0], device=eye.device, dtype=eye.dtype).expand_as(fwd)
    right = torch.cross(fwd, up, dim=-1)
    right = right / right.norm(dim=-1, keepdim=True)
    cam_up = torch.cross(right, fwd, dim=-1)
    m = torch.zeros(eye.shape[0], 4, 4, device=eye.device, dtype=eye.dtype)
    m[:, :3, 0], m[:, :3, 1], m[:, :3, 2], m[:, :3, 3], m[:, 3, 3] = right, cam_up, -fwd, eye, 1.0
    return m


# ------------------------------------------------------------------------------------------------
# Intersections (local frames; directions need not be unit length, R is orthonormal so they stay unit)
# ------------------------------------------------------------------------------------------------
def _safe(d: torch.Tensor) -> torch.Tensor:
    return torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)


def _first_positive(t0: torch.Tensor, t1: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    t = torch.where(t0 > _EPS, t0, t1)
    return torch.where(valid & (t > _EPS), t, torch.full_like(t, _INF))


def _hit_box(o: torch.Tensor, d: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    inv = 1.0 / _safe(d)
    ta, tb = (-h - o) * inv, (h - o) * inv
    tn = torch.minimum(ta, tb).amax(-1)
    tf = torch.maximum(ta, tb).amin(-1)
    return _first_positive(tn, tf, tn <= tf)


def _hit_sphere(o: torch.Tensor, d: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    r = h[..., 0]
    b = (o * d).sum(-1)
    c = (o * o).sum(-1) - r * r
    disc = b * b - c
    sq = disc.clamp_min(0).sqrt()
    return _first_positive(-b - sq, -b + sq, disc >= 0)


def _quadratic_roots(
    a: torch.Tensor, b: torch.Tensor, c: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    a = torch.where(a.abs() < 1e-12, torch.full_like(a, 1e-12), a)
    disc = b * b - 4 * a * c
    sq = disc.clamp_min(0).sqrt()
    r0, r1 = (-b - sq) / (2 * a), (-b + sq) / (2 * a)
    return torch.minimum(r0, r1), torch.maximum(r0, r1), disc >= 0


def _hit_cylinder(o: torch.Tensor, d: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    r, hh = h[..., 0], h[..., 2]
    ox, oy, oz = o.unbind(-1)
    dx, dy, dz = d.unbind(-1)
    t0, t1, ok = _quadratic_roots(dx * dx + dy * dy, 2 * (ox * dx + oy * dy), ox * ox + oy * oy - r * r)
    best = torch.full_like(r, _INF)
    for t in (t0, t1):
        z = oz + t * dz
        good = ok & (t > _EPS) & (z.abs() <= hh)
        best = torch.where(good & (t < best), t, best)
    dzs = _safe(dz)
    for cap in (hh, -hh):
        t = (cap - oz) / dzs
        x, y = ox + t * dx, oy + t * dy
        good = (t > _EPS) & (x * x + y * y <= r * r)
        best = torch.where(good & (t < best), t, best)
    return best


def _hit_cone(o: torch.Tensor, d: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    r, hh = h[..., 0], h[..., 2]
    k = r / (2 * hh)  # radius shrinks by k per unit of z: rho = k (hh - z)
    ox, oy, oz = o.unbind(-1)
    dx, dy, dz = d.unbind(-1)
    w = hh - oz  # rho^2 = k^2 (w - t dz)^2
    k2 = k * k
    a = dx * dx + dy * dy - k2 * dz * dz
    b = 2 * (ox * dx + oy * dy + k2 * w * dz)
    c = ox * ox + oy * oy - k2 * w * w
    t0, t1, ok = _quadratic_roots(a, b, c)
    best = torch.full_like(r, _INF)
    for t in (t0, t1):
        z = oz + t * dz
        good = ok & (t > _EPS) & (z >= -hh) & (z <= hh)
        best = torch.where(good & (t < best), t, best)
    t = (-hh - oz) / _safe(dz)
    x, y = ox + t * dx, oy + t * dy
    good = (t > _EPS) & (x * x + y * y <= r * r)
    return torch.where(good & (t < best), t, best)


_HIT_FUNCS = (_hit_box, _hit_sphere, _hit_cylinder, _hit_cone)


def _to_local(o: torch.Tensor, d: torch.Tensor, prims: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays [B, N, 3] -> local frames of each primitive [B, M, N, 3]."""
    rot = prims["rot"]  # [B, M, 3, 3] local->world
    ol = torch.einsum("bmji,bmnj->bmni", rot, o[:, None] - prims["center"][:, :, None])
    dl = torch.einsum("bmji,bnj->bmni", rot, d)
    return ol, dl


def intersect(o: torch.Tensor, d: torch.Tensor, prims: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest hit over the primitives: (t [B, N] with inf for a miss, primitive index [B, N])."""
    ol, dl = _to_local(o, d, prims)
    h = prims["size"][:, :, None, :].expand_as(ol)
    kind = prims["kind"][:, :, None]  # [B, M, 1]
    t = torch.full(ol.shape[:-1], _INF, device=o.device, dtype=o.dtype)
    for kid, fn in enumerate(_HIT_FUNCS):
        if bool((prims["kind"] == kid).any()):
            t = torch.where(kind == kid, fn(ol, dl, h), t)
    tmin, idx = t.min(dim=1)
    return tmin, idx


def _local_normals(p: torch.Tensor, h: torch.Tensor, kind: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normals and face index (0..5) at local hit points p [B, N, 3] of primitives with sizes h and kinds."""
    # box
    q = p / h
    axis = q.abs().argmax(-1)
    sign = torch.gather(q, -1, axis[..., None])[..., 0].sign()
    n_box = F.one_hot(axis, 3).to(p.dtype) * sign[..., None]
    face_box = 2 * axis + (sign < 0).long()
    # sphere
    n_sph = p / p.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    px, py, pz = p.unbind(-1)
    r, hh = h[..., 0], h[..., 2]
    rho = (px * px + py * py).sqrt().clamp_min(1e-9)
    radial = torch.stack([px / rho, py / rho, torch.zeros_like(px)], -1)
    zdir = torch.zeros_like(p)
    zdir[..., 2] = 1.0
    # cylinder
    cap = (pz.abs() / hh) > (rho / r)
    n_cyl = torch.where(cap[..., None], zdir * pz.sign()[..., None], radial)
    face_cyl = torch.where(cap, torch.where(pz > 0, 4, 5), 0)
    # cone
    k = r / (2 * hh)
    base = (pz + hh).abs() < (rho - k * (hh - pz)).abs()
    side = torch.stack([px / rho, py / rho, k.expand_as(px)], -1)
    side = side / side.norm(dim=-1, keepdim=True)
    n_cone = torch.where(base[..., None], -zdir, side)
    face_cone = torch.where(base, 5, 0)
    ks = kind[..., None]
    n = torch.where(ks == 0, n_box, torch.where(ks == 1, n_sph, torch.where(ks == 2, n_cyl, n_cone)))
    face = torch.where(
        kind == 0,
        face_box,
        torch.where(kind == 1, torch.zeros_like(face_box), torch.where(kind == 2, face_cyl, face_cone)),
    )
    return n, face


def _gather_m(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [B, M, ...] gathered by idx [B, N] -> [B, N, ...]."""
    b = torch.arange(x.shape[0], device=x.device)[:, None]
    return x[b, idx]


def _shade(
    o: torch.Tensor, d: torch.Tensor, prims: dict[str, torch.Tensor], shadows: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    t_obj, idx = intersect(o, d, prims)
    dz = d[..., 2]
    t_ground = torch.where(dz < -1e-6, -o[..., 2] / _safe(dz), torch.full_like(dz, _INF))
    hit_obj = torch.isfinite(t_obj) & (t_obj <= t_ground + 1e-6)
    hit_ground = ~hit_obj & torch.isfinite(t_ground)

    sun = torch.as_tensor(SUN_DIRECTION, dtype=o.dtype, device=o.device)
    # object shading
    t_safe = torch.where(hit_obj, t_obj, torch.zeros_like(t_obj))
    p_world = o + t_safe[..., None] * d
    rot = _gather_m(prims["rot"], idx)  # [B, N, 3, 3]
    center = _gather_m(prims["center"], idx)
    h = _gather_m(prims["size"], idx)
    kind = _gather_m(prims["kind"], idx)
    p_local = torch.einsum("bnji,bnj->bni", rot, p_world - center)
    n_local, face = _local_normals(p_local, h, kind)
    n_world = torch.einsum("bnij,bnj->bni", rot, n_local)
    faces = _gather_m(prims["faces"], idx)  # [B, N, 6, 3]
    albedo = torch.gather(faces, 2, face[..., None, None].expand(-1, -1, 1, 3))[:, :, 0]

    # ground shading
    tg = torch.where(hit_ground, t_ground, torch.zeros_like(t_ground))
    pg = o + tg[..., None] * d
    checker = (torch.floor(pg[..., 0] / GROUND_TILE) + torch.floor(pg[..., 1] / GROUND_TILE)).remainder(2)
    grey = GROUND_GREYS[0] + (GROUND_GREYS[1] - GROUND_GREYS[0]) * checker
    dist = pg[..., :2].norm(dim=-1)
    fade = ((dist - GROUND_FADE[0]) / (GROUND_FADE[1] - GROUND_FADE[0])).clamp(0, 1)
    grey = grey * (1 - fade) + 0.5 * (GROUND_GREYS[0] + GROUND_GREYS[1]) * fade
    ground_albedo = grey[..., None].expand(*grey.shape, 3)
    up = torch.zeros_like(n_world)
    up[..., 2] = 1.0

    normal = torch.where(hit_obj[..., None], n_world, up)
    point = torch.where(hit_obj[..., None], p_world, pg)
    albedo = torch.where(hit_obj[..., None], albedo, ground_albedo)
    lambert = (normal * sun).sum(-1).clamp_min(0.0)
    if shadows:
        lit = (hit_obj | hit_ground) & (lambert > 0)
        so = point + normal * 2e-3
        t_sh, _ = intersect(so, sun.expand_as(so).contiguous(), prims)
        lambert = torch.where(lit & torch.isfinite(t_sh), torch.zeros_like(lambert), lambert)
    light = AMBIENT + SKY_FILL * (0.5 + 0.5 * normal[..., 2]) + SUN * lambert
    color = (albedo * light[..., None]).clamp(0, 1)

    # sky
    hz, zen = torch.as_tensor(SKY_HORIZON, device=o.device), torch.as_tensor(SKY_ZENITH, device=o.device)
    s = dz.clamp(0, 1)[..., None].sqrt()
    sky = hz * (1 - s) + zen * s
    color = torch.where((hit_obj | hit_ground)[..., None], color, sky.to(color.dtype))
    return color, hit_obj


# ------------------------------------------------------------------------------------------------
# Public rendering API
# ------------------------------------------------------------------------------------------------
def render_packed(
    prims: dict[str, torch.Tensor],
    poses: torch.Tensor,
    fov_y_deg: torch.Tensor | float,
    width: int,
    height: int,
    *,
    supersample: int = 1,
    shadows: bool = True,
    chunk: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render packed objects (one per pose, [B, M, ...]) from poses [B, 4, 4] -> rgb [B, H, W, 3], mask [B, H, W].

    ``supersample`` renders at s times the resolution and box-filters down (anti-aliasing); the mask
    is then "object covers at least half of the pixel".
    """
    poses = poses.to(torch.float32)
    b = poses.shape[0]
    fov = torch.as_tensor(fov_y_deg, dtype=torch.float32, device=poses.device).expand(b).contiguous()
    s = int(supersample)
    rgbs, masks = [], []
    for start in range(0, b, chunk):
        sl = slice(start, start + chunk)
        sub = {k: v[sl] for k, v in prims.items()}
        o, d = camera_rays(poses[sl], fov[sl], width * s, height * s)
        rgb, mask = _shade(o, d, sub, shadows)
        n = rgb.shape[0]
        rgb = rgb.reshape(n, height * s, width * s, 3)
        mask = mask.reshape(n, height * s, width * s)
        if s > 1:
            rgb = F.avg_pool2d(rgb.permute(0, 3, 1, 2), s).permute(0, 2, 3, 1)
            mask = F.avg_pool2d(mask[:, None].float(), s)[:, 0] >= 0.5
        rgbs.append(rgb)
        masks.append(mask)
    return torch.cat(rgbs), torch.cat(masks)


def render(
    objects: ToyObject | Sequence[ToyObject],
    cameras: Sequence[Camera],
    device: torch.device | str = "cpu",
    *,
    supersample: int = 1,
    shadows: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render one object from every camera, or object i from camera i.

    Returns rgb float32 [B, H, W, 3] in [0, 1] and the object mask bool [B, H, W] (ground excluded).
    All cameras must share width and height (the field of view may differ).
    """
    cameras = list(cameras)
    if not cameras:
        raise ValueError("render needs at least one camera")
    w, h = cameras[0].width, cameras[0].height
    if any(c.width != w or c.height != h for c in cameras):
        raise ValueError("all cameras of one render call must have the same width and height")
    objs = [objects] * len(cameras) if isinstance(objects, ToyObject) else list(objects)
    if len(objs) != len(cameras):
        raise ValueError(f"got {len(objs)} objects for {len(cameras)} cameras: pass one object or one per camera")
    prims = pack_objects(objs, device)
    poses = torch.as_tensor(np.stack([c.camera_to_anchor for c in cameras]), dtype=torch.float32, device=device)
    fov = torch.as_tensor([c.fov_y_deg for c in cameras], dtype=torch.float32, device=device)
    return render_packed(prims, poses, fov, w, h, supersample=supersample, shadows=shadows)


# ------------------------------------------------------------------------------------------------
# Cameras
# ------------------------------------------------------------------------------------------------
def orbit_cameras(
    n: int,
    elevation_deg: float = 30.0,
    radius: float = 3.6,
    fov_y_deg: float = DEFAULT_FOV_Y_DEG,
    size: int | tuple[int, int] = DEFAULT_SIZE,
    start_azimuth_deg: float = 0.0,
) -> list[Camera]:
    """``n`` cameras evenly spaced in azimuth on a circle around the anchor, looking at it.
    ``size`` is an int (square) or (width, height)."""
    w, h = (size, size) if isinstance(size, int) else size
    return [
        Camera(orbit_pose(start_azimuth_deg + 360.0 * i / n, elevation_deg, radius), fov_y_deg, w, h) for i in range(n)
    ]


@dataclass
class CameraSampler:
    """Random training cameras looking at the anchor: azimuth uniform in [0, 360), elevation and radius uniform."""

    elevation_range: tuple[float, float] = ELEVATION_RANGE
    radius_range: tuple[float, float] = RADIUS_RANGE
    fov_y_deg: float = DEFAULT_FOV_Y_DEG

    def sample_params(
        self, n: int, generator: torch.Generator | None = None, device: str | torch.device = "cpu"
    ) -> dict[str, torch.Tensor]:
        u = torch.rand(n, 3, generator=generator).to(device)
        az = 360.0 * u[:, 0]
        el = self.elevation_range[0] + (self.elevation_range[1] - self.elevation_range[0]) * u[:, 1]
        rad = self.radius_range[0] + (self.radius_range[1] - self.radius_range[0]) * u[:, 2]
        return {"azimuth": az, "elevation": el, "radius": rad}

    def sample(self, n: int, size: int | tuple[int, int] = DEFAULT_SIZE, seed: int | None = None) -> list[Camera]:
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        p = self.sample_params(n, g)
        w, h = (size, size) if isinstance(size, int) else size
        return [
            Camera(orbit_pose(float(a), float(e), float(r)), self.fov_y_deg, w, h)
            for a, e, r in zip(p["azimuth"], p["elevation"], p["radius"])
        ]


def random_cameras(
    n: int, seed: int | None = None, size: int | tuple[int, int] = DEFAULT_SIZE, **kwargs: Any
) -> list[Camera]:
    """``n`` random training cameras (see :class:`CameraSampler`)."""
    return CameraSampler(**kwargs).sample(n, size=size, seed=seed)


def to_uint8(rgb: torch.Tensor) -> np.ndarray:
    return (rgb.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()
