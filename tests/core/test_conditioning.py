"""Text conditioning: injection identities, per-layer routing, batched == sequential."""

import pytest
import torch

from viewneti_backend.attention import PerLayerCrossAttnProcessor, cross_attention_layer_names, pack_layer_encodings
from viewneti_backend.mapper import FourierFeatures, MapperConfig, NeTIMapper
from viewneti_backend.pipeline import encode_conditions, layer_grid
from viewneti_backend.text_conditioning import Injection


def _grad(t: torch.Tensor) -> torch.Tensor:
    assert t.grad is not None, "no gradient reached this tensor"
    return t.grad


def test_known_word_with_zero_bypass_equals_plain_prompt(tiny_base):
    text = tiny_base.text
    ids_placeholder = text.tokenize([f"a photo of a {text.object_token}"])
    ids_plain = text.tokenize(["a photo of a box"])
    box_id = tiny_base.tokenizer("box", add_special_tokens=False)["input_ids"]
    assert len(box_id) == 1
    word = tiny_base.text_encoder.get_input_embeddings().weight[box_id[0]][None].clone()
    keys, values = text.encode(ids_placeholder, {text.object_token_id: Injection(word, torch.zeros_like(word), 5.0)})
    plain = tiny_base.text_encoder(ids_plain).last_hidden_state
    torch.testing.assert_close(keys, plain, rtol=0, atol=1e-6)
    torch.testing.assert_close(values, plain, rtol=0, atol=1e-6)


def test_bypass_only_changes_values_at_the_placeholder(tiny_base):
    text = tiny_base.text
    ids = text.tokenize([f"a photo of a {text.object_token}"])
    word = torch.randn(1, text.embedding_dim)
    keys0, values0 = text.encode(ids, {text.object_token_id: Injection(word, None, 5.0)})
    keys, values = text.encode(ids, {text.object_token_id: Injection(word, torch.randn(1, text.embedding_dim), 5.0)})
    torch.testing.assert_close(keys, keys0)
    pos = int((ids[0] == text.object_token_id).nonzero())
    diff = (values - values0).abs().sum(-1)[0]
    assert diff[pos] > 1e-3
    assert torch.all(diff[:pos] == 0) and torch.all(diff[pos + 1 :] == 0)


def test_mapper_word_embedding_has_reference_norm(tiny_base):
    cfg = MapperConfig(
        "object",
        "<object>",
        tiny_base.text.embedding_dim,
        tiny_base.num_layers,
        norm_target=tiny_base.text.reference_norm("object"),
    )
    mapper = NeTIMapper(cfg)
    word, bypass = mapper(torch.tensor([0, 500, 999]), torch.tensor([0, 1, 2]))
    torch.testing.assert_close(word.norm(dim=-1), torch.full((3,), cfg.norm_target))
    assert bypass.shape == (3, tiny_base.text.embedding_dim)


def test_fourier_matrix_matches_reference_seeding_and_does_not_touch_global_rng():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    ff = FourierFeatures([0.03, 2.0] + [0.5] * 12, 64, seed=0)
    after = torch.rand(3)
    torch.testing.assert_close(before, after)  # global RNG untouched
    torch.manual_seed(0)
    expected = torch.randn(32, 14) * torch.tensor([0.03, 2.0] + [0.5] * 12)
    torch.testing.assert_close(ff.B, expected)


def test_each_cross_attention_layer_receives_its_own_encoding(tiny_base):
    unet, n_l = tiny_base.unet, tiny_base.num_layers
    names = cross_attention_layer_names(unet)
    modules = dict(unet.named_modules())
    seen: list[tuple[int, float, float]] = []
    originals = {}
    for name in names:
        proc = modules[name].processor
        assert isinstance(proc, PerLayerCrossAttnProcessor)
        originals[name] = proc.split

        def spy(ehs, proc=proc, orig=proc.split):
            k, v = orig(ehs)
            seen.append((proc.layer_index, float(k[0, 0, 0]), float(v[0, 0, 0])))
            return k, v

        proc.split = spy  # pyright: ignore[reportAttributeAccessIssue]  a spy replaces the bound method (restored below)
    try:
        s, d = 77, tiny_base.text.embedding_dim
        keys = torch.arange(n_l, dtype=torch.float32)[None, :, None, None].expand(1, n_l, s, d).clone()
        values = keys + 100
        ehs = pack_layer_encodings(keys, values)
        with torch.no_grad():
            unet(torch.randn(1, 4, 16, 16), 10, encoder_hidden_states=ehs)
    finally:
        for name in names:
            modules[name].processor.split = originals[name]
    # call order == layer index, and layer l got slice l of keys and of values
    assert [i for i, _, _ in seen] == list(range(n_l))
    assert [(k, v) for _, k, v in seen] == [(float(i), float(i) + 100) for i in range(n_l)]


def test_batched_encodings_equal_sequential(tiny_model_dir, tiny_base):
    mapper_o = NeTIMapper.from_pretrained(tiny_model_dir / "viewneti" / "objects" / "thing_a")
    mapper_v = NeTIMapper.from_pretrained(tiny_model_dir / "viewneti" / "view_mapper")
    text = tiny_base.text
    timesteps = torch.tensor([999, 666, 333, 1])
    t, l = layer_grid(timesteps, tiny_base.num_layers)
    cams = torch.rand(len(t), mapper_v.config.camera_dim) * 2 - 1
    ids = text.token_ids(f"{text.view_token}. A photo of a {text.object_token}")
    with torch.no_grad():
        k_b, v_b = encode_conditions(tiny_base, ids.expand(len(t), -1), t, l, mapper_o, mapper_v, cams)
        for i in range(len(t)):
            k_s, v_s = encode_conditions(
                tiny_base, ids, t[i : i + 1], l[i : i + 1], mapper_o, mapper_v, cams[i : i + 1]
            )
            torch.testing.assert_close(k_b[i : i + 1], k_s, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(v_b[i : i + 1], v_s, rtol=1e-5, atol=1e-5)
    # distinct (t, l) really give distinct encodings
    assert not torch.allclose(v_b[0], v_b[1])


def test_placeholder_must_appear_exactly_once(tiny_base):
    text = tiny_base.text
    ids = text.tokenize(["a photo of a box"])
    with pytest.raises(ValueError, match="exactly once"):
        text.encode(ids, {text.object_token_id: Injection(torch.zeros(1, text.embedding_dim), None, 5.0)})


def test_fused_self_attention_projections_keep_the_maths_and_stay_frozen(tiny_model_dir):
    """compile_base_model fuses attn1 q/k/v; the UNet output and the gradient into the encodings must not change."""
    from viewneti_backend.attention import fuse_self_attention_projections
    from viewneti_backend.base_model import load_base_model

    base = load_base_model(tiny_model_dir, device="cpu")
    n_l, s, d = base.num_layers, base.text.max_length, base.text.embedding_dim
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, base.latent_channels, 8, 8, generator=gen)
    ehs = torch.randn(2, 2 * n_l * s, d, generator=gen, requires_grad=True)
    t = torch.tensor([10, 700])

    def run():
        ehs.grad = None
        out = base.unet(x, t, encoder_hidden_states=ehs, return_dict=False)[0]
        out.square().mean().backward()
        return out.detach(), _grad(ehs).clone()

    before, grad_before = run()
    assert fuse_self_attention_projections(base.unet) > 0
    assert fuse_self_attention_projections(base.unet) == 0, "fusing twice must be a no-op"
    after, grad_after = run()
    assert torch.allclose(before, after, atol=1e-5), float((before - after).abs().max())
    assert torch.allclose(grad_before, grad_after, atol=1e-6, rtol=1e-4)
    assert not any(p.requires_grad for p in base.unet.parameters())


def test_compiled_text_encoder_serves_training_only(tiny_model_dir, monkeypatch):
    """compile_for_training routes gradient-enabled encodes (fixed-size training batches) through the
    compiled CLIP blocks and leaves renders (no grad, a new batch size per request) on the eager ones."""
    from viewneti_backend.base_model import load_base_model

    base = load_base_model(tiny_model_dir, device="cpu")
    text = base.text
    calls, compiled = [], []

    class Recording(torch.nn.Module):  # stands in for torch.compile's wrapper: same module, counted calls
        def __init__(self, module, **kwargs):
            super().__init__()
            self.module = module
            compiled.append((module, kwargs))

        def forward(self, *args, **kwargs):
            calls.append(torch.is_grad_enabled())
            return self.module(*args, **kwargs)

    monkeypatch.setattr(torch, "compile", lambda module, **kw: Recording(module, **kw))
    ids = text.tokenize([f"a photo of a {text.object_token}"] * 3)
    word = torch.randn(3, text.embedding_dim, requires_grad=True)
    inj = {text.object_token_id: Injection(word, None, 0.0)}
    eager_keys, _ = text.encode(ids, inj)
    eager_keys.sum().backward()
    eager_grad = _grad(word).clone()

    text.compile_for_training("reduce-overhead")
    assert [(type(m).__name__, kw) for m, kw in compiled] == [
        ("CLIPEncoder", {"mode": "reduce-overhead", "fullgraph": False, "dynamic": False})
    ]  # the CLIP blocks only: the embeddings and the final LayerNorm stay eager
    word.grad = None
    keys, _ = text.encode(ids, inj)
    keys.sum().backward()
    assert calls == [True], "a training encode must use the compiled blocks"
    torch.testing.assert_close(keys, eager_keys)
    torch.testing.assert_close(word.grad, eager_grad)
    with torch.no_grad():
        text.encode(ids, inj)
    assert calls == [True], "a render (no grad) must stay on the eager blocks"


def test_cudnn_attention_is_only_preferred_on_cuda():
    """The SDPA order is process-wide: loading or compiling on a CPU must leave it alone."""
    from viewneti_backend.attention import prefer_cudnn_attention

    before = torch._C._get_sdp_priority_order()
    assert prefer_cudnn_attention(torch.device("cpu")) is False
    assert torch._C._get_sdp_priority_order() == before


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_text_encoder_stays_causal_under_each_attention_implementation(tiny_model_dir, implementation):
    """SDPA gets ``is_causal`` (its kernels skip the masked half), other implementations the explicit mask;
    either way a token changes only the encodings at and after its position, and both agree."""
    from viewneti_backend.base_model import load_base_model

    base = load_base_model(tiny_model_dir, device="cpu")
    text = base.text
    ids = text.tokenize(["a photo of a cat on a mat"])
    other = ids.clone()
    other[0, 5] = ids[0, 2]  # another word at position 5
    reference, _ = text.encode(ids)
    base.text_encoder.set_attn_implementation(implementation)
    assert text.sdpa_causal == (implementation == "sdpa")
    keys, _ = text.encode(ids)
    keys_other, _ = text.encode(other)
    assert torch.allclose(keys, reference, atol=1e-5)  # the same maths as the default (SDPA) path
    assert torch.equal(keys[:, :5], keys_other[:, :5])  # nothing before position 5 sees it
    assert not torch.allclose(keys[:, 5:], keys_other[:, 5:])


def test_sdpa_text_encoder_masks_by_is_causal_not_by_a_mask_tensor(tiny_base, monkeypatch):
    import torch.nn.functional as F

    calls = []
    sdpa = F.scaled_dot_product_attention

    def recording(*args, **kwargs):
        calls.append((kwargs.get("attn_mask"), kwargs.get("is_causal")))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    assert tiny_base.text.sdpa_causal
    tiny_base.text.encode(tiny_base.text.tokenize(["a photo of a cat"]))
    assert calls and all(mask is None and causal is True for mask, causal in calls), calls
