"""`augment_batch` (batched) against `augment_image` (the per-image reference): same images, same random stream."""

import pytest
import torch

from viewneti_backend.augment import AUGMENTATIONS, AugmentationConfig, augment_batch, augment_image

ALL_ON = AugmentationConfig(jitter_p=1.0, blur_p=1.0, rotation_deg=10.0, rotation_p=1.0, crop_scale=(0.70, 1.30))
ALL_OFF = AugmentationConfig(jitter_p=0.0, blur_p=0.0, rotation_p=0.0, crop_scale=(1.0, 1.0))
# Strong, half-probability effects: mixed subsets in every batch, and a blur wide enough to see (at sigma 0.1-0.2
# the 5-tap kernel is within ~4e-6 of the identity, so the real configs barely exercise it).
MIXED = AugmentationConfig(jitter=0.2, jitter_p=0.5, blur_p=0.5, blur_sigma=(0.5, 1.5), rotation_deg=30.0,
                           rotation_p=0.5, crop_scale=(0.5, 1.5))
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
