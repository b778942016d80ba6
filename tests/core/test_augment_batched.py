"""`augment_batch` (batched) against `augment_image` (the per-image reference): same images, same random stream."""

import pytest
import torch

from viewneti_backend.augment import (
    AUGMENTATIONS,
    AugmentationConfig,
    AugmentationPlan,
    apply_augmentation,
    augment_batch,
    augment_image,
    plan_augmentation,
)

ALL_ON = AugmentationConfig(jitter_p=1.0, blur_p=1.0, rotation_deg=10.0, rotation_p=1.0, crop_scale=(0.70, 1.30))
ALL_OFF = AugmentationConfig(jitter_p=0.0, blur_p=0.0, rotation_p=0.0, crop_scale=(1.0, 1.0))
# Strong, half-probability effects: mixed subsets in every batch, and a blur wide enough to see (at sigma 0.1-0.2
# the 5-tap kernel is within ~4e-6 of the identity, so the real configs barely exercise it).
MIXED = AugmentationConfig(
    jitter=0.2,
    jitter_p=0.5,
    blur_p=0.5,
    blur_sigma=(0.5, 1.5),
    rotation_deg=30.0,
    rotation_p=0.5,
    crop_scale=(0.5, 1.5),
)
CONFIGS = {"key7": AUGMENTATIONS[7], "key5": AUGMENTATIONS[5], "all_on": ALL_ON, "mixed": MIXED}


def _images(b: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, 48, 64, generator=torch.Generator().manual_seed(1000 + seed)) * 2 - 1


@pytest.mark.parametrize("b", [1, 3, 9])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_batch_matches_per_image_reference_and_random_stream(name, b):
    cfg = CONFIGS[name]
    for seed in range(4):  # several seeds: mixes of jitter/blur/rotation subsets and op orders
        x = _images(b, seed)
        g_ref, g_bat = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        ref = torch.stack([augment_image(im, cfg, g_ref) for im in x])
        out = augment_batch(x, cfg, g_bat)
        assert out.shape == x.shape and out.dtype == x.dtype
        assert (out - ref).abs().max().item() < 1e-5
        assert torch.equal(g_ref.get_state(), g_bat.get_state())
        assert not torch.equal(out, x)  # something was actually applied (these configs always change images)


def test_generator_continues_identically_over_several_batches():
    g_ref, g_bat = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for step in range(3):
        x = _images(9, step)
        ref = torch.stack([augment_image(im, AUGMENTATIONS[7], g_ref) for im in x])
        out = augment_batch(x, AUGMENTATIONS[7], g_bat)
        assert (out - ref).abs().max().item() < 1e-5
    assert torch.equal(g_ref.get_state(), g_bat.get_state())


def test_mixed_batch_leaves_unaugmented_images_bit_identical():
    # Jitter half the time, nothing else: images that skip it must come back exactly as they went in.
    cfg = AugmentationConfig(jitter_p=0.5, blur_p=0.0, rotation_p=0.0, crop_scale=(1.0, 1.0))
    x = _images(9)
    g_ref, g_bat = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    ref = torch.stack([augment_image(im, cfg, g_ref) for im in x])
    out = augment_batch(x, cfg, g_bat)
    same = [torch.equal(out[i], x[i]) for i in range(9)]
    assert same == [torch.equal(ref[i], x[i]) for i in range(9)]
    assert any(same) and not all(same)  # this seed gives a real mix
    assert (out - ref).abs().max().item() < 1e-5


def test_no_config_returns_input_unchanged():
    x = _images(3)
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    assert augment_batch(x, None, g) is x
    assert torch.equal(g.get_state(), state)


def test_image_with_no_augmentation_drawn_is_bit_identical():
    x = _images(3)
    g_ref, g_bat = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    out = augment_batch(x, ALL_OFF, g_bat)
    ref = torch.stack([augment_image(im, ALL_OFF, g_ref) for im in x])
    assert torch.equal(out, x) and out is not x
    assert torch.equal(ref, x)  # the per-image path agrees
    assert torch.equal(g_ref.get_state(), g_bat.get_state())  # the jitter and blur coins are still drawn


def test_dtype_preserved_and_input_untouched():
    x = _images(9)
    before = x.clone()
    assert augment_batch(x, ALL_ON, torch.Generator().manual_seed(0)).dtype == torch.float32
    assert augment_batch(x, AUGMENTATIONS[7], torch.Generator().manual_seed(0)).dtype == torch.float32
    assert torch.equal(x, before)  # the batched code works in place only on its own intermediates
    # float64 in: computed in float32 like the reference, handed back as float64
    xd = x.double()
    g_ref, g_bat = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    out = augment_batch(xd, AUGMENTATIONS[7], g_bat)
    ref = torch.stack([augment_image(im, AUGMENTATIONS[7], g_ref) for im in xd]).double()
    assert out.dtype == torch.float64 and (out - ref).abs().max().item() < 1e-5
    assert torch.equal(xd, before.double())


@pytest.mark.parametrize("size", [(64, 64), (512, 384), (384, 512)])
@pytest.mark.parametrize("key", [7, 5])
def test_crops_stay_inside_the_image_like_torchvisions_random_resized_crop(key, size):
    """torchvision's RandomResizedCrop never zooms out: a crop that would not fit is re-drawn (10 tries),
    then the central crop is used. Crops are whole pixels; key 7 zooms in by up to 1/sqrt(0.7)."""
    from viewneti_backend.augment import draw_crop

    width, height = size
    cfg = AUGMENTATIONS[key]
    gen = torch.Generator().manual_seed(0)
    crops = [draw_crop(cfg, gen, width, height) for _ in range(2000)]
    for sw, sh, cx, cy in crops:
        assert 0 < sw <= 1 and 0 < sh <= 1
        assert abs(cx) + sw <= 1 + 1e-9 and abs(cy) + sh <= 1 + 1e-9
        assert abs(sw * width - round(sw * width)) < 1e-9 and abs(sh * height - round(sh * height)) < 1e-9
        assert sw * sh >= cfg.crop_scale[0] * (1 - 0.05)  # area fraction from the scale range (pixel rounding)
    full = sum(sw == 1 and sh == 1 for sw, sh, _, _ in crops) / len(crops)
    zoom = [1 / (sw * sh) ** 0.5 for sw, sh, _, _ in crops]
    assert max(zoom) <= 1 / 0.70**0.5 + 0.02
    if key == 5 and width == height:  # scale [0.95, 1.05]: most draws do not fit, the fallback is the whole image
        assert full > 0.5, full
    if key == 7:
        assert sum(z > 1.05 for z in zoom) / len(zoom) > 0.3  # it really zooms in, often


def test_crop_falls_back_to_the_central_crop_with_the_aspect_clamped():
    from viewneti_backend.augment import draw_crop

    never_fits = AugmentationConfig(crop_scale=(1.5, 2.0))
    gen = torch.Generator().manual_seed(0)
    assert draw_crop(never_fits, gen, 64, 48) == (1.0, 1.0, 0.0, 0.0)  # 4:3 is inside [3/4, 4/3]
    sw, sh, cx, cy = draw_crop(never_fits, gen, 200, 100)  # 2:1 is wider than 4/3: width clamped to 133 px
    assert (round(sw * 200), round(sh * 100)) == (133, 100) and cy == 0.0 and abs(cx - (2 * 33 + 133) / 200 + 1) < 1e-12


@pytest.mark.parametrize("name", ["key7", "mixed"])
def test_plans_of_micro_batches_concatenate_to_the_same_images_and_stream(name):
    """A fused training step draws each micro-batch's plan in turn, then augments all images in one pass."""
    cfg = CONFIGS[name]
    parts = [_images(3, seed) for seed in range(3)]
    g_each, g_plan = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    each = torch.cat([augment_batch(x, cfg, g_each) for x in parts])
    plans = [plan_augmentation(cfg, g_plan, 3, 64, 48) for _ in parts]
    fused = apply_augmentation(torch.cat(parts), AugmentationPlan.concat(plans))
    assert torch.allclose(fused, each, atol=1e-5), float((fused - each).abs().max())
    assert (fused - torch.cat(parts)).abs().max() > 0.01, "the images should have been augmented"
    assert torch.equal(g_each.get_state(), g_plan.get_state())


def test_a_plan_refuses_a_batch_it_was_not_drawn_for():
    plan = plan_augmentation(AUGMENTATIONS[7], torch.Generator().manual_seed(0), 3, 64, 48)
    with pytest.raises(ValueError, match="3 images of 64x48 applied to 4"):
        apply_augmentation(_images(4), plan)
    with pytest.raises(ValueError, match="one augmentation at one image size"):
        AugmentationPlan.concat([plan, plan_augmentation(AUGMENTATIONS[7], torch.Generator(), 3, 32, 32)])
