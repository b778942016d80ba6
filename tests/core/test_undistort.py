"""Lens undistortion of transforms.json photos (issue 24): the OpenCV radial-tangential and fisheye
forward models against hand-worked values, a round trip through a reference distortion written
here, the data loader that train/invert/eval use, and zero distortion that leaves images untouched."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from viewneti_backend.cameras import orbit_pose, read_transforms
from viewneti_backend.data import load_transforms_scene
from viewneti_backend.errors import InputError
from viewneti_backend.undistort import LensDistortion, undistort_image, undistortion_map


# ------------------------------------------------------------------------------------------------
# (1) the forward models on hand-worked points
# ------------------------------------------------------------------------------------------------
def test_opencv_forward_distortion_matches_values_worked_by_hand():
    """k1=0.1 k2=0.01 k3=0.001 p1=0.01 p2=0.02, worked from
    x_d = x (1 + k1 r² + k2 r⁴ + k3 r⁶) + 2 p1 x y + p2 (r² + 2x²), y_d = y (...) + p1 (r² + 2y²) + 2 p2 x y.

    (0.5, 0.5): r² = 0.5, radial = 1 + 0.05 + 0.0025 + 0.000125 = 1.052625;
      x_d = 0.5263125 + 2·0.01·0.25 + 0.02·(0.5 + 0.5) = 0.5513125
      y_d = 0.5263125 + 0.01·(0.5 + 0.5) + 2·0.02·0.25 = 0.5463125
    (0.4, -0.3): r² = 0.25, radial = 1 + 0.025 + 0.000625 + 0.000015625 = 1.025640625;
      x_d = 0.41025625 - 0.0024 + 0.02·(0.25 + 0.32) = 0.41925625
      y_d = -0.3076921875 + 0.01·(0.25 + 0.18) - 0.0048 = -0.3081921875
    """
    lens = LensDistortion("OPENCV", k1=0.1, k2=0.01, k3=0.001, p1=0.01, p2=0.02)
    xd, yd = lens.distort(np.array([0.5, 0.4, 0.0]), np.array([0.5, -0.3, 0.0]))
    np.testing.assert_allclose(xd, [0.5513125, 0.41925625, 0.0], rtol=0, atol=1e-15)
    np.testing.assert_allclose(yd, [0.5463125, -0.3081921875, 0.0], rtol=0, atol=1e-15)


def test_fisheye_forward_distortion_matches_values_worked_by_hand():
    """k1=0.1 k2=0.02: θ = atan r, θ_d = θ (1 + k1 θ² + k2 θ⁴), (x_d, y_d) = (θ_d / r) (x, y).

    r = 0.5 for both (0.5, 0) and (0.3, 0.4): θ = atan 0.5 = 0.4636476090, θ² = 0.2149691053,
    θ⁴ = 0.0462117162, so θ_d = 0.4636476090 · (1 + 0.0214969105 + 0.0009242343) = 0.4740431192;
    (0.3, 0.4) goes to (0.6, 0.8) θ_d; the axis stays put."""
    theta = 0.4636476090008061
    theta_d = theta * (1 + 0.1 * theta**2 + 0.02 * theta**4)
    assert theta_d == pytest.approx(0.4740431192, abs=1e-10)
    lens = LensDistortion("OPENCV_FISHEYE", k1=0.1, k2=0.02)
    xd, yd = lens.distort(np.array([0.5, 0.3, 0.0]), np.array([0.0, 0.4, 0.0]))
    np.testing.assert_allclose(xd, [theta_d, 0.6 * theta_d, 0.0], rtol=1e-14)
    np.testing.assert_allclose(yd, [0.0, 0.8 * theta_d, 0.0], rtol=1e-14, atol=1e-15)


def test_each_output_pixel_samples_where_the_lens_puts_its_centre():
    """80x60, fx = fy = 100, cx = 40, cy = 30, k1 = 0.1; pixel centres at i + 0.5 (cx = w/2 is the centre).

    Pixel (40, 30): (x, y) = (0.005, 0.005), radial 1.000005: samples at 40.0000025, 30.0000025.
    Pixel (79, 29): (x, y) = (0.395, -0.005), r² = 0.15605, radial 1.015605: x_d = 0.401163975,
    u_d = 80.1163975 = pixel index 79.6163975, past the photo's edge (79.5): no source (pincushion corner)."""
    k = np.array([[100.0, 0, 40.0], [0, 100.0, 30.0], [0, 0, 1]])
    where = undistortion_map(80, 60, k, LensDistortion("OPENCV", k1=0.1))
    assert (where.x[30, 40], where.y[30, 40]) == pytest.approx((40.0000025, 30.0000025), abs=1e-9)
    assert (where.x[29, 79], where.y[29, 79]) == pytest.approx((79.6163975, 28.9921975), abs=1e-9)
    assert where.inside[30, 40] and not where.inside[29, 79]


def test_a_lens_that_folds_back_samples_nothing_past_the_fold():
    """x (1 - 0.5 r²) grows until d/dr = 1 - 1.5 r² = 0, r = sqrt(2/3) = 0.8165: further out the
    polynomial would sample the photo a second time (mirrored), so those pixels have no source."""
    lens = LensDistortion("OPENCV", k1=-0.5)
    assert lens.fold_radius() == pytest.approx(math.sqrt(2 / 3), abs=2e-3)
    k = np.array([[40.0, 0, 50.0], [0, 40.0, 50.0], [0, 0, 1]])  # corners at r = 1.25
    where = undistortion_map(100, 100, k, lens)
    r = np.hypot(*np.meshgrid((np.arange(100) + 0.5 - 50) / 40, (np.arange(100) + 0.5 - 50) / 40))
    assert not where.inside[r > 0.82].any() and where.inside[r < 0.81].all()


# ------------------------------------------------------------------------------------------------
# (2) round trip: distort with a reference written here, undistort, compare
# ------------------------------------------------------------------------------------------------
W, H = 160, 120
K = np.array([[150.0, 0, 83.3], [0, 146.0, 57.9], [0, 0, 1]])  # off-centre, non-square pixels
PERIOD = 14.0  # px


def pattern(u, v):
    """A smooth colour checkerboard (a product of sines, period 14 px) at pixel coordinates (u, v)."""
    c = np.sin(2 * np.pi * u / PERIOD) * np.sin(2 * np.pi * v / PERIOD)
    return np.stack([0.5 + 0.4 * c, 0.5 - 0.3 * c, 0.5 + 0.2 * np.sin(np.pi * (u + v) / PERIOD)], -1)


def reference_undistort_points(xd, yd, coefs, fisheye=False):
    """Distorted normalized points back to undistorted ones by fixed-point iteration (OpenCV's
    cvUndistortPoints scheme): x = (x_d - tangential(x, y)) / radial(x, y); fisheye: θ = θ_d / poly(θ)."""
    k1, k2, k3 = coefs.get("k1", 0.0), coefs.get("k2", 0.0), coefs.get("k3", 0.0)
    if fisheye:
        rd = np.hypot(xd, yd)
        t = rd.copy()
        for _ in range(100):
            t2 = t * t
            t = rd / (1 + k1 * t2 + k2 * t2**2 + k3 * t2**3 + coefs.get("k4", 0.0) * t2**4)
        scale = np.tan(t) / np.where(rd > 0, rd, 1.0)
        return xd * scale, yd * scale
    p1, p2 = coefs.get("p1", 0.0), coefs.get("p2", 0.0)
    x, y = xd.copy(), yd.copy()
    for _ in range(100):
        r2 = x * x + y * y
        radial = 1 + k1 * r2 + k2 * r2**2 + k3 * r2**3
        x, y = (
            (xd - 2 * p1 * x * y - p2 * (r2 + 2 * x * x)) / radial,
            (yd - p1 * (r2 + 2 * y * y) - 2 * p2 * x * y) / radial,
        )
    return x, y


def distorted_pattern(k, size, coefs, fisheye=False, shape=pattern):
    """What a lens with ``coefs`` and intrinsics ``k`` photographs of ``shape`` (given on the
    undistorted image): each photo pixel shows the pattern at its undistorted point."""
    uu, vv = np.meshgrid(np.arange(size[0]) + 0.5, np.arange(size[1]) + 0.5)
    x, y = reference_undistort_points((uu - k[0, 2]) / k[0, 0], (vv - k[1, 2]) / k[1, 1], coefs, fisheye)
    return shape(k[0, 0] * x + k[0, 2], k[1, 1] * y + k[1, 2])


def to_image(values) -> Image.Image:
    return Image.fromarray(np.rint(np.clip(values, 0, 1) * 255).astype(np.uint8))


def psnr(a, b) -> float:
    return -10 * math.log10(float(((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2).mean()))


def round_trip_psnr(photo: Image.Image, lens: LensDistortion) -> float:
    """PSNR of the undistorted photo against the pattern, over pixels with a source, 4 px from the edge."""
    where = undistortion_map(W, H, K, lens)
    out = np.asarray(undistort_image(photo, where, (0, 0, 0))) / 255.0
    truth = pattern(*np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5))
    interior = where.inside.copy()
    interior[:4], interior[-4:], interior[:, :4], interior[:, -4:] = False, False, False, False
    assert interior.mean() > 0.85
    return psnr(out[interior], truth[interior])


# 40 dB: with the right lens the error is bilinear interpolation of a 14-px sinusoid plus two 8-bit
# roundings (measured 44.9 dB for OPENCV, 44.7 for the fisheye). A 5% error in k1 gives 37.7 dB, the
# tangential terms swapped 28.0, the distortion evaluated half a pixel off 25.7, no undistortion 16.
ROUND_TRIP_MIN_PSNR = 40.0
OPENCV_COEFS = {"k1": -0.25, "k2": 0.08, "k3": -0.01, "p1": 0.004, "p2": -0.003}  # up to ~9 px at the corners
FISHEYE_COEFS = {"k1": 0.05, "k2": -0.01, "k3": 0.002, "k4": -0.0005}


def test_opencv_round_trip_recovers_the_pinhole_image():
    photo = to_image(distorted_pattern(K, (W, H), OPENCV_COEFS))
    assert psnr(np.asarray(photo) / 255.0, pattern(*np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5))) < 20
    assert round_trip_psnr(photo, LensDistortion("OPENCV", **OPENCV_COEFS)) > ROUND_TRIP_MIN_PSNR
    swapped = {**OPENCV_COEFS, "p1": OPENCV_COEFS["p2"], "p2": OPENCV_COEFS["p1"]}
    assert round_trip_psnr(photo, LensDistortion("OPENCV", **swapped)) < 35  # the test tells lenses apart
    k1_off = {**OPENCV_COEFS, "k1": OPENCV_COEFS["k1"] * 1.05}
    assert round_trip_psnr(photo, LensDistortion("OPENCV", **k1_off)) < ROUND_TRIP_MIN_PSNR


def test_fisheye_round_trip_recovers_the_pinhole_image():
    photo = to_image(distorted_pattern(K, (W, H), FISHEYE_COEFS, fisheye=True))
    assert round_trip_psnr(photo, LensDistortion("OPENCV_FISHEYE", **FISHEYE_COEFS)) > ROUND_TRIP_MIN_PSNR
    # a fisheye with zero coefficients is still equidistant, not a pinhole: it must be undistorted too
    assert round_trip_psnr(photo, LensDistortion("OPENCV_FISHEYE")) < 35


# ------------------------------------------------------------------------------------------------
# (3) the data loader of train / invert --transforms / render --transforms / eval
# ------------------------------------------------------------------------------------------------
PINCUSHION = {"k1": 0.15, "k2": 0.02, "p1": 0.002, "p2": -0.001}  # the corners have no source
DISC = ((70.0, 62.0), 34.0)  # centre (u, v) and radius of the object, in the undistorted image, px


def disc(u, v):
    (cu, cv), radius = DISC
    return np.hypot(u - cu, v - cv) < radius


def write_distorted_scene(folder, how: str) -> None:
    """Two photos through the PINCUSHION lens; the file's intrinsics are for 2x the images' size (as
    nerfstudio's downscaled images_2), the object's mask is the alpha or a mask_path PNG."""
    folder.mkdir(parents=True)
    photo = distorted_pattern(K, (W, H), PINCUSHION)
    mask = distorted_pattern(K, (W, H), PINCUSHION, shape=lambda u, v: disc(u, v)[..., None])[..., 0]
    frames = []
    for i in range(2):
        rgb = np.rint(photo * 255).astype(np.uint8)
        frame = {"file_path": f"f{i}.png", "transform_matrix": orbit_pose(60 * i, 20, 4).tolist()}
        if how == "alpha":
            Image.fromarray(np.dstack([rgb, mask.astype(np.uint8) * 255]), "RGBA").save(folder / f"f{i}.png")
        else:
            Image.fromarray(rgb).save(folder / f"f{i}.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"m{i}.png")
            frame["mask_path"] = f"m{i}.png"
        frames.append(frame)
    top = {"camera_model": "OPENCV", "fl_x": 2 * K[0, 0], "fl_y": 2 * K[1, 1], "cx": 2 * K[0, 2], "cy": 2 * K[1, 2]}
    (folder / "transforms.json").write_text(json.dumps({**top, "w": 2 * W, "h": 2 * H, **PINCUSHION, "frames": frames}))


@pytest.mark.parametrize("how", ["alpha", "mask_path"])
def test_the_loader_undistorts_images_and_masks(tmp_path, how):
    write_distorted_scene(tmp_path / "scene", how)
    background = (10, 20, 30)
    scene = load_transforms_scene(tmp_path / "scene", background=background)
    assert scene.cameras is not None and scene.masks is not None and len(scene.images) == 2
    cam = scene.cameras[0]  # the pinhole camera of the file's K, scaled to the images: fov as before
    assert (cam.width, cam.height) == (W, H)
    np.testing.assert_allclose(cam.intrinsics(), K, rtol=1e-12)
    as_read = read_transforms(tmp_path / "scene" / "transforms.json").frames[0].camera.with_size(W, H)
    assert cam.to_json() == as_read.to_json()
    where = undistortion_map(W, H, K, LensDistortion("OPENCV", **PINCUSHION))
    assert 0.0 < where.outside_fraction < 0.1
    uu, vv = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    for image, mask in zip(scene.images, scene.masks):
        rgb = np.asarray(image)
        assert (rgb[~where.inside] == background).all()  # no source: the background, outside the mask
        assert not mask[~where.inside].any()
        # the mask is the disc of the pinhole image, up to its one-pixel rim
        rim = np.abs(np.hypot(uu - DISC[0][0], vv - DISC[0][1]) - DISC[1]) < 1.0
        assert (mask == disc(uu, vv))[~rim].all()
        inside_object = disc(uu, vv) & ~rim & where.inside
        if how == "mask_path":  # the photo itself, all of it (alpha composites the rest on the background)
            inside_object = where.inside.copy()
            inside_object[:4], inside_object[-4:], inside_object[:, :4], inside_object[:, -4:] = (False,) * 4
        assert psnr(rgb[inside_object] / 255.0, pattern(uu, vv)[inside_object]) > ROUND_TRIP_MIN_PSNR
    (note,) = scene.meta["notes"]
    assert note.startswith("lens distortion (OPENCV k1=0.15 k2=0.02 p1=0.002 p2=-0.001): 2 image(s) undistorted")
    assert f"show the background {background}, outside the mask" in note and scene.meta["warnings"] == []


def test_a_fisheye_file_is_undistorted_with_the_fisheye_model(tmp_path):
    """instant-ngp's "is_fisheye": true (no camera_model) reads as OPENCV_FISHEYE, even without k's."""
    folder = tmp_path / "fish"
    folder.mkdir()
    to_image(distorted_pattern(K, (W, H), {}, fisheye=True)).save(folder / "a.png")
    frame = {"file_path": "a.png", "transform_matrix": orbit_pose(0, 20, 4).tolist()}
    top = {"is_fisheye": True, "fl_x": K[0, 0], "fl_y": K[1, 1], "cx": K[0, 2], "cy": K[1, 2], "w": W, "h": H}
    (folder / "transforms.json").write_text(json.dumps({**top, "frames": [frame]}))
    scene = load_transforms_scene(folder)
    uu, vv = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    interior = np.zeros((H, W), bool)
    interior[4:-4, 4:-4] = True
    assert psnr(np.asarray(scene.images[0])[interior] / 255.0, pattern(uu, vv)[interior]) > ROUND_TRIP_MIN_PSNR
    assert scene.meta["notes"][0].startswith("lens distortion (OPENCV_FISHEYE): 1 image(s) undistorted")


@pytest.mark.parametrize(
    ("top", "message"),
    [
        ({"k1": 0.1, "k4": 0.01}, r"camera_model OPENCV takes k1 k2 k3 p1 p2, but the file gives k4=0.01"),
        (
            {"camera_model": "OPENCV_FISHEYE", "k1": 0.1, "p1": 0.01},
            r"camera_model OPENCV_FISHEYE takes k1 k2 k3 k4, but the file gives p1=0.01",
        ),
        ({"camera_model": "EQUIRECTANGULAR"}, r"EQUIRECTANGULAR is not a pinhole camera .* image_undistorter"),
        ({"camera_model": "OPENCV", "is_fisheye": True}, r"contradicts \"is_fisheye\": true"),
        ({"k1": float("nan")}, r"distortion k1 must be a finite number"),
        ({"k1": "strong"}, r"frame 0 distortion 'k1' must be a number, got 'strong'"),
    ],
)
def test_a_lens_that_cannot_be_undistorted_is_refused_with_what_to_do(tmp_path, top, message):
    Image.new("RGB", (32, 24)).save(tmp_path / "a.png")
    frame = {"file_path": "a.png", "transform_matrix": orbit_pose(0, 20, 4).tolist()}
    (tmp_path / "transforms.json").write_text(json.dumps({"fl_x": 30.0, **top, "frames": [frame]}))
    with pytest.raises(InputError, match=message):
        load_transforms_scene(tmp_path)


# ------------------------------------------------------------------------------------------------
# (4) zero distortion: no resampling
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("top", [{}, {"camera_model": "OPENCV", "k1": 0.0, "k2": 0, "p1": 0.0, "p2": -0.0}])
def test_zero_distortion_leaves_images_and_masks_bit_identical(tmp_path, top):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (H, W, 4), dtype=np.uint8)
    rgba[..., 3] = np.where(disc(*np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)), 255, 0)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    Image.fromarray(rgba[..., :3]).save(tmp_path / "b.png")
    frames = [{"file_path": f, "transform_matrix": orbit_pose(0, 20, 4).tolist()} for f in ("a.png", "b.png")]
    fields = {"fl_x": K[0, 0], "fl_y": K[1, 1], "cx": K[0, 2], "cy": K[1, 2], "w": W, "h": H}
    (tmp_path / "transforms.json").write_text(json.dumps({**fields, **top, "frames": frames}))
    scene = load_transforms_scene(tmp_path, background=(0, 0, 0))
    a, b = (np.asarray(im) for im in scene.images)
    opaque = rgba[..., 3] == 255
    np.testing.assert_array_equal(a[opaque], rgba[..., :3][opaque])
    assert (a[~opaque] == 0).all()  # composited on the black background, as before
    np.testing.assert_array_equal(b, rgba[..., :3])
    assert scene.meta["notes"] == [] and scene.meta["warnings"] == []
