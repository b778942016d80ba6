"""Cross-attention keys/values projected before the denoising loop (attention.py, VIEWNETI_KEYS_AHEAD):
the layout worked by hand, the UNet's output the same from projected keys/values as from packed
encodings, a render the same with and without, which inputs take the projected path, and the switch."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch

from viewneti_backend.attention import (
    KEYS_AHEAD_ENV,
    PerLayerCrossAttnProcessor,
    ProjectedLayout,
    cross_attention_layers,
    keys_ahead_requested,
    pack_layer_encodings,
    project_layer_encodings,
    projected_layout,
)
from viewneti_backend.cameras import Camera, orbit_pose


def test_layout_worked_by_hand():
    # two layers 64 and 128 wide, 2 tokens: per sample the keys take 2*64 + 2*128 = 384 values, then the
    # values as many; layer 1's keys start after layer 0's 128, its values at 384 + 128
    layout = ProjectedLayout([64, 128], seq_len=2)
    assert layout.blocks == [(0, 384, 64), (128, 512, 128)]
    assert (layout.values, layout.width, layout.rows) == (768, 64, 12)
    assert layout.holds(torch.zeros(3, 12, 64)) and not layout.holds(torch.zeros(3, 8, 64))


def test_a_layout_packed_encodings_could_be_taken_for_is_refused():
    class Linear:
        def __init__(self, out_features):
            self.in_features, self.out_features = 8, out_features

    class Layer:
        def __init__(self, width, norm_cross=None):
            self.to_k, self.to_v = Linear(width), Linear(width)
            self.norm_cross = norm_cross

    # one layer 8 wide, 1 token: 16 values = 2 rows of 8, the shape of packed encodings (2*L*S, D)
    assert ProjectedLayout.of([Layer(8)], seq_len=1, encoding_width=8) is None
    assert ProjectedLayout.of([Layer(8)], seq_len=1, encoding_width=16) is not None
    normed = Layer(8, norm_cross=True)  # a norm before the projection: keys cannot be projected ahead
    assert ProjectedLayout.of([normed], seq_len=1, encoding_width=16) is None


def test_unet_output_is_the_same_from_projected_keys_and_values(tiny_base):
    unet, n_l = tiny_base.unet, tiny_base.num_layers
    layers = cross_attention_layers(unet)
    assert projected_layout(layers) is not None
    torch.manual_seed(0)
    s, d = 77, tiny_base.text.embedding_dim
    ehs = pack_layer_encodings(torch.randn(2, n_l, s, d), torch.randn(2, n_l, s, d))
    latents = torch.randn(2, 4, 16, 16)
    taken: list[bool] = []
    projected_of = PerLayerCrossAttnProcessor.projected

    def spy(self, encoder_hidden_states):
        out = projected_of(self, encoder_hidden_states)
        taken.append(out is not None)
        return out

    with torch.no_grad(), mock.patch.object(PerLayerCrossAttnProcessor, "projected", spy):
        plain = unet(latents, 10, encoder_hidden_states=ehs).sample
        assert taken == [False] * n_l
        taken.clear()
        ahead = unet(latents, 10, encoder_hidden_states=project_layer_encodings(layers, ehs)).sample
        assert taken == [True] * n_l
    torch.testing.assert_close(ahead, plain, rtol=1e-5, atol=1e-5)


@pytest.fixture
def pipelines(tiny_model_dir, monkeypatch):
    """The tiny model's pipeline twice: keys/values in the loop (VIEWNETI_KEYS_AHEAD=0), and projected
    ahead (the default)."""
    from viewneti_backend.engine import Engine

    monkeypatch.setenv(KEYS_AHEAD_ENV, "0")
    plain = Engine.load(tiny_model_dir, device="cpu", compile=False)
    monkeypatch.delenv(KEYS_AHEAD_ENV)
    ahead = Engine.load(tiny_model_dir, device="cpu", compile=False)
    return plain, ahead


def test_a_render_is_the_same_with_keys_ahead(pipelines):
    plain, ahead = pipelines
    assert not plain.pipeline.keys_ahead and ahead.pipeline.keys_ahead and plain.pipeline.keys_ahead_possible
    cams = [Camera(orbit_pose(a, 20.0, 3.6), 40.0, 32, 32) for a in (0.0, 90.0)]
    for guidance in (2.0, 1.0):  # with CFG (the unconditional keys projected once) and without
        a = plain.render(cams, seed=1, steps=3, guidance=guidance)
        b = ahead.render(cams, seed=1, steps=3, guidance=guidance)
        for x, y in zip(a, b):  # float32: the same image up to a rounding of a pixel value
            diff = np.abs(np.asarray(x, np.int16) - np.asarray(y, np.int16))
            assert diff.max() <= 1 and diff.mean() < 0.01, (diff.max(), diff.mean())
    assert ahead.pipeline._uncond_projected is not None  # computed once, then reused


def test_the_environment_switch(monkeypatch):
    for value, on in (("", True), ("0", False), (" 0 ", False), ("1", True), (" 1 ", True)):
        monkeypatch.setenv(KEYS_AHEAD_ENV, value)
        assert keys_ahead_requested() is on
    monkeypatch.delenv(KEYS_AHEAD_ENV)
    assert keys_ahead_requested()  # on by default
    monkeypatch.setenv(KEYS_AHEAD_ENV, "yes")
    with pytest.raises(ValueError, match="VIEWNETI_KEYS_AHEAD='yes': set it to 1 \\(on\\) or 0 \\(off\\)"):
        keys_ahead_requested()


def test_env_switch_reads_one_rule_with_its_default(monkeypatch):
    from viewneti_backend.switches import env_switch

    monkeypatch.delenv("VIEWNETI_TEST_SWITCH", raising=False)
    assert env_switch("VIEWNETI_TEST_SWITCH") is True and env_switch("VIEWNETI_TEST_SWITCH", default=False) is False
    monkeypatch.setenv("VIEWNETI_TEST_SWITCH", " 1 ")
    assert env_switch("VIEWNETI_TEST_SWITCH", default=False) is True
    monkeypatch.setenv("VIEWNETI_TEST_SWITCH", "0")
    assert env_switch("VIEWNETI_TEST_SWITCH") is False
    monkeypatch.setenv("VIEWNETI_TEST_SWITCH", "on")
    with pytest.raises(ValueError, match="VIEWNETI_TEST_SWITCH='on': set it to 1 \\(on\\) or 0 \\(off\\), or unset it"):
        env_switch("VIEWNETI_TEST_SWITCH")
