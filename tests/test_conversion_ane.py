"""ANE building blocks and model rewrites equal their PyTorch originals (tiny random models, fp32)."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import ane_diffusion_conversion.ane.attention as ane_attention
from ane_diffusion_conversion.ane import rewrite as rw
from ane_diffusion_conversion.ane.layer_norm import LayerNormANE
from torch import nn

from ane_diffusion.testing.factory import tiny_configs

ATOL = 1e-4
KINDS = ane_attention.ATTENTION_KINDS


def tiny_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(**tiny_configs()["unet"], time_cond_proj_dim=16).eval()


def tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=32,
    ).eval()


def tiny_clip(eos_token_id: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    config = CLIPTextConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=1000,
        max_position_embeddings=77,
        bos_token_id=998,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
    )
    return CLIPTextModel(config).eval()


def reference_attention(q, k, v, heads, mask=None):
    """softmax(Q K^T / sqrt(d) + mask) V from (B, C, 1, S) tensors, in the usual (B, H, S, d) layout."""
    b, c, _, sq = q.shape
    d = c // heads
    qh = q.reshape(b, heads, d, sq).transpose(2, 3)  # (B, H, Sq, d)
    kh = k.reshape(b, heads, d, -1).transpose(2, 3)  # (B, H, Sk, d)
    vh = v.reshape(b, heads, d, -1).transpose(2, 3)  # (B, H, Sk, d)
    scores = qh @ kh.transpose(2, 3) / d**0.5  # (B, H, Sq, Sk)
    if mask is not None:
        scores = scores + mask.permute(0, 2, 3, 1)  # (B|1, Sk, 1, Sq) -> (B|1, 1, Sq, Sk)
    out = scores.softmax(-1) @ vh  # (B, H, Sq, d)
    return out.transpose(2, 3).reshape(b, c, 1, sq)


# ----------------------------------------------------------------------------------------------- #
# LayerNorm
# ----------------------------------------------------------------------------------------------- #


@pytest.mark.parametrize("affine,bias", [(True, True), (True, False), (False, False)])
def test_layer_norm_ane_equals_layer_norm(affine, bias):
    torch.manual_seed(0)
    ln = nn.LayerNorm(48, eps=1e-6, elementwise_affine=affine, bias=bias)
    if affine:
        with torch.no_grad():
            ln.weight.normal_()
            if bias:
                ln.bias.normal_()
    ane = LayerNormANE.from_layer_norm(ln)
    x = torch.randn(3, 19, 48) * 3 + 1  # (B, S, C)
    ref = ln(x)  # (B, S, C)
    out = ane(x.transpose(1, 2).unsqueeze(2))  # (B, C, 1, S)
    torch.testing.assert_close(out.squeeze(2).transpose(1, 2), ref, atol=1e-5, rtol=1e-5)
    if affine:  # same parameter names and shapes: a LayerNorm state dict loads as is
        fresh = LayerNormANE(48, eps=1e-6, bias=bias)
        fresh.load_state_dict(ln.state_dict())
        torch.testing.assert_close(fresh(x.transpose(1, 2).unsqueeze(2)), out)


# ----------------------------------------------------------------------------------------------- #
# Attention kinds
# ----------------------------------------------------------------------------------------------- #


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seq_q,seq_k", [(37, 37), (37, 11), (5, 77)])
def test_attention_kinds_equal_reference(kind, seq_q, seq_k):
    torch.manual_seed(1)
    heads, c = 4, 32
    q = torch.randn(2, c, 1, seq_q)
    k = torch.randn(2, c, 1, seq_k)
    v = torch.randn(2, c, 1, seq_k)
    ref = reference_attention(q, k, v, heads)
    out = ane_attention.attention(q, k, v, heads, kind=kind, chunk_size=16)  # 37 = 16 + 16 + 5
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_attention_kinds_with_causal_and_padding_masks(kind):
    torch.manual_seed(2)
    heads, c, s = 2, 16, 21
    q, k, v = (torch.randn(2, c, 1, s) for _ in range(3))
    causal = torch.triu(torch.full((s, s), -1e4), diagonal=1).t().reshape(1, s, 1, s)  # (1, Sk, 1, Sq)
    padding = torch.zeros(2, s, 1, 1)
    padding[1, 15:] = -1e4  # (B, Sk, 1, 1): second sequence ignores its last keys
    for mask in (causal, padding, causal + padding):
        ref = reference_attention(q, k, v, heads, mask)
        out = ane_attention.attention(q, k, v, heads, kind=kind, mask=mask, chunk_size=8)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("seq_q,chunk", [(37, 16), (600, 512), (7, 1), (10, 64), (1024, 512)])
def test_split_einsum_v2_handles_ragged_last_chunk(seq_q, chunk):
    torch.manual_seed(3)
    q = torch.randn(1, 16, 1, seq_q)
    k = torch.randn(1, 16, 1, 9)
    v = torch.randn(1, 16, 1, 9)
    out = ane_attention.split_einsum_v2(q, k, v, heads=2, chunk_size=chunk)
    assert out.shape == (1, 16, 1, seq_q)
    torch.testing.assert_close(out, reference_attention(q, k, v, 2), atol=1e-5, rtol=1e-5)


def test_attention_rejects_bad_input():
    q = torch.randn(1, 12, 1, 4)
    with pytest.raises(ValueError):
        ane_attention.attention(q, q, q, heads=5)
    with pytest.raises(ValueError):
        ane_attention.attention(q, q, q, heads=3, kind="flash")
    with pytest.raises(ValueError):
        ane_attention.split_einsum(q.squeeze(2), q, q, heads=3)


# ----------------------------------------------------------------------------------------------- #
# Linear -> conv, attention processor
# ----------------------------------------------------------------------------------------------- #


def test_conv1x1_equals_linear_and_loads_linear_weights():
    torch.manual_seed(4)
    linear = nn.Linear(24, 40)
    conv = rw.Conv1x1.from_linear(linear)
    x = torch.randn(2, 13, 24)  # (B, S, C)
    torch.testing.assert_close(rw.from_bc1s(conv(rw.to_bc1s(x))), linear(x), atol=1e-6, rtol=1e-6)
    fresh = rw.Conv1x1(24, 40, kernel_size=1)
    fresh.load_state_dict(linear.state_dict())  # (out, in) weight accepted
    torch.testing.assert_close(fresh.weight, conv.weight)


@pytest.mark.parametrize("kind", KINDS)
def test_attention_processor_equals_default_on_3d_input_with_masks(kind):
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(5)
    attn = Attention(query_dim=32, cross_attention_dim=24, heads=4, dim_head=8, bias=True).eval()
    x = torch.randn(2, 19, 32)  # (B, S, C)
    ctx = torch.randn(2, 7, 24)  # (B, Sk, Ce)
    bias = torch.zeros(2, 1, 7)
    bias[0, :, 5:] = -10000.0  # (B, 1, Sk): what the UNet hands its attention layers
    per_query = torch.randn(2, 19, 7)  # (B, Sq, Sk) arbitrary additive bias
    with torch.no_grad():
        refs = [attn(x, encoder_hidden_states=ctx, attention_mask=m) for m in (None, bias, per_query, bias[:, 0])]
        rw.convert_attention(attn, kind, chunk_size=8)
        outs = [attn(x, encoder_hidden_states=ctx, attention_mask=m) for m in (None, bias, per_query, bias[:, 0])]
        out_bc1s_ctx = attn(x, encoder_hidden_states=rw.to_bc1s(ctx), attention_mask=bias)
    assert isinstance(attn.to_q, nn.Conv2d) and isinstance(attn.processor, rw.ANEAttnProcessor)
    for out, ref in zip(outs, refs):
        torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(out_bc1s_ctx, refs[1], atol=ATOL, rtol=0)


def test_convert_attention_rejects_unsupported_variants():
    from diffusers.models.attention_processor import Attention

    with pytest.raises(NotImplementedError):
        rw.convert_attention(Attention(query_dim=16, heads=2, dim_head=8, added_kv_proj_dim=8))
    with pytest.raises(NotImplementedError):
        rw.convert_attention(Attention(query_dim=16, heads=2, dim_head=8, qk_norm="layer_norm"))
    with pytest.raises(ValueError):
        rw.ANEAttnProcessor(kind="flash")


# ----------------------------------------------------------------------------------------------- #
# Whole models
# ----------------------------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def unet_and_reference():
    unet = tiny_unet()
    torch.manual_seed(6)
    inputs = (
        torch.randn(2, 4, 8, 8),  # sample
        torch.tensor([10.0, 700.0]),  # timestep
        torch.randn(2, 77, 32),  # encoder_hidden_states (B, S, C)
        torch.randn(2, 16),  # timestep_cond (guidance embedding input)
    )
    keep = torch.ones(2, 77)
    keep[1, 20:] = 0  # (B, Sk) cross-attention keep-mask
    with torch.no_grad():
        ref = unet(inputs[0], inputs[1], inputs[2], timestep_cond=inputs[3]).sample
        ref_masked = unet(inputs[0], inputs[1], inputs[2], timestep_cond=inputs[3], encoder_attention_mask=keep).sample
    return unet, inputs, ref, (keep, ref_masked)


@pytest.mark.parametrize("kind", KINDS)
def test_rewrite_unet_equals_original(unet_and_reference, kind):
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    unet, (sample, t, ehs, tcond), ref, (keep, ref_masked) = unet_and_reference
    original_state = unet.state_dict()
    n_transformers = sum(isinstance(m, Transformer2DModel) for m in unet.modules())
    ane = rw.rewrite_unet(copy.deepcopy(unet), kind, chunk_size=24)  # 64 tokens -> chunks 24, 24, 16

    modules = list(ane.modules())
    assert not any(isinstance(m, (Transformer2DModel, BasicTransformerBlock)) for m in modules)
    assert sum(isinstance(m, rw.ANETransformer2DModel) for m in modules) == n_transformers == 4  # 1 down, 1 mid, 2 up
    for block in (m for m in modules if isinstance(m, rw.ANEBasicTransformerBlock)):
        assert not any(isinstance(m, (nn.Linear, nn.LayerNorm)) for m in block.modules())
    assert set(ane.state_dict()) == set(original_state)  # same keys: checkpoints still load
    ane.load_state_dict(original_state)

    with torch.no_grad():
        out = ane(sample, t, ehs, timestep_cond=tcond).sample
        wrapped = rw.UNetANEWrapper(ane)(sample, t, rw.to_bc1s(ehs), tcond)  # Apple's (B, C, 1, S) input
        masked = ane(sample, t, ehs, timestep_cond=tcond, encoder_attention_mask=keep).sample
    assert (ref_masked - ref).abs().max().item() > 1e-3  # the mask matters
    assert (masked - ref_masked).abs().max().item() < ATOL
    assert (out - ref).abs().max().item() < ATOL
    assert (wrapped - ref).abs().max().item() < ATOL


@pytest.mark.parametrize("kind", KINDS)
def test_rewrite_vae_equals_original(kind):
    vae = tiny_vae()
    torch.manual_seed(7)
    z = torch.randn(1, 4, 8, 8)
    image = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        ref_image = vae.decode(z).sample
        ref_moments = vae.encode(image).latent_dist
        ane = rw.rewrite_vae(copy.deepcopy(vae), kind, chunk_size=24)  # 64 latent tokens, ragged chunks
        image_out = rw.VAEDecoderANEWrapper(ane)(z)
        moments = rw.VAEEncoderANEWrapper(ane)(image)
    processors = [m.processor for m in ane.modules() if hasattr(m, "processor")]
    assert len(processors) == 2 and all(isinstance(p, rw.ANEAttnProcessor) for p in processors)
    assert (image_out - ref_image).abs().max().item() < ATOL
    assert (moments[:, :4] - ref_moments.mean).abs().max().item() < ATOL
    assert (moments[:, 4:] - ref_moments.logvar).abs().max().item() < ATOL


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("eos_token_id", [999, 2])  # current configs / legacy (argmax) pooling
def test_rewrite_clip_text_model_equals_original(kind, eos_token_id):
    clip = tiny_clip(eos_token_id)
    torch.manual_seed(8)
    ids = torch.randint(3, 990, (2, 77))
    ids[:, 0] = 998
    ids[0, 9:] = eos_token_id
    ids[1, 30:] = eos_token_id
    with torch.no_grad():
        ref = clip(ids)
        ane = rw.rewrite_clip_text_model(clip, kind, chunk_size=30)
        last, pooled = ane(ids)
        last_f, _ = ane(ids.to(torch.float32))  # Apple feeds float ids
    assert not any(isinstance(m, (nn.Linear, nn.LayerNorm)) for m in ane.layers.modules())
    assert (last - ref.last_hidden_state).abs().max().item() < ATOL
    assert (pooled - ref.pooler_output).abs().max().item() < ATOL
    torch.testing.assert_close(last_f, last)
    with torch.no_grad():  # the original model is left untouched
        torch.testing.assert_close(clip(ids).last_hidden_state, ref.last_hidden_state)
