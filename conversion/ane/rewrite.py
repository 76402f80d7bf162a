"""Rewrite diffusers / transformers model INSTANCES into the Neural Engine's (B, C, 1, S) layout.

What: functions that take an already-built model and make its sequence computations run on
(B, C, 1, S) tensors, with every sequence ``nn.Linear`` replaced by an equivalent 1x1 ``nn.Conv2d``,
LayerNorm over the channel axis and attention in split-einsum (or "original") form:

- ``rewrite_unet(unet, ...)``: in place. Each ``Transformer2DModel`` becomes an
  ``ANETransformer2DModel`` (GroupNorm, proj_in, blocks, proj_out all on 4-D tensors, the spatial
  map is just viewed as (B, C, 1, H*W)); each ``BasicTransformerBlock`` an ``ANEBasicTransformerBlock``;
  every diffusers ``Attention`` keeps its module but gets 1x1-conv projections and an
  ``ANEAttnProcessor``. ``unet.forward`` keeps its signature and outputs; ``encoder_hidden_states`` may
  be given as (B, S, C) or, Apple's layout, (B, C, 1, S).
- ``rewrite_vae(vae, ...)``: in place. The VAE's mid-block ``Attention`` modules get conv projections
  and the processor; their (B, C, H, W) input is viewed as (B, C, 1, H*W), so no transposes remain.
- ``rewrite_clip_text_model(model, ...)``: returns a new ``ANECLIPTextModel`` (the given model is
  left untouched; converted weights are copies, the embedding module is shared).

and thin ``nn.Module`` wrappers with plain-tensor signatures for ``torch.jit.trace``:
``UNetANEWrapper``, ``VAEDecoderANEWrapper``, ``VAEEncoderANEWrapper``.

Why this way: diffusers supports custom attention processors, so the attention maths is swapped
without touching the library's code; the only re-implemented forwards are the few lines of the
transformer block / feed-forward / CLIP layer, which must run end to end in (B, C, 1, S) for the
layout to pay off. State-dict keys are unchanged (``Conv1x1`` also accepts a Linear's (out, in)
weight), so original checkpoints load into rewritten models. No module-level mutable state: the
attention kind and chunk size live on each processor / layer instance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from diffusers.models.activations import GEGLU, GELU, ApproximateGELU, LinearActivation, SwiGLU
from diffusers.models.attention import BasicTransformerBlock, FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.transformers.transformer_2d import Transformer2DModel

from .attention import ATTENTION_KINDS, DEFAULT_CHUNK_SIZE, attention
from .layer_norm import LayerNormANE

# Additive bias for masked-out keys. Large enough that exp() underflows to exactly 0 in float32 and
# float16, small enough to stay finite in float16 (max 65504), unlike torch.finfo(float32).min.
MASK_BIAS = -1e4


# --------------------------------------------------------------------------------------------- #
# Layout helpers
# --------------------------------------------------------------------------------------------- #


def to_bc1s(x: torch.Tensor) -> torch.Tensor:
    """(B, S, C) -> (B, C, 1, S); a 4-D tensor is taken to be (B, C, 1, S) or (B, C, H, W) -> (B, C, 1, H*W)."""
    if x.dim() == 3:
        return x.transpose(1, 2).unsqueeze(2)  # (B, S, C) -> (B, C, 1, S)
    if x.dim() == 4:
        return x.reshape(x.shape[0], x.shape[1], 1, -1)  # (B, C, H, W) -> (B, C, 1, H*W)
    raise ValueError(f"expected a 3-D (B, S, C) or 4-D (B, C, H, W) tensor, got {tuple(x.shape)}")


def from_bc1s(x: torch.Tensor) -> torch.Tensor:
    """(B, C, 1, S) -> (B, S, C)."""
    return x.squeeze(2).transpose(1, 2)


def mask_to_bc1s(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """Turn the additive attention bias diffusers hands to processors into one broadcastable to (B, Sk, 1, Sq).

    As in diffusers' processors the mask is an additive bias (0 keep, large negative discard); the
    UNet / Transformer2DModel turn (B, Sk) keep-masks into such biases before calling attention.

    - (B, Sk) -> (B, Sk, 1, 1)
    - (B, Sq or 1, Sk) -> (B, Sk, 1, Sq or 1)
    - 4-D: already (B or 1, Sk, 1, Sq or 1); returned as is.
    """
    if mask is None:
        return None
    if mask.dim() == 2:
        return mask.to(dtype)[:, :, None, None]  # (B, Sk) -> (B, Sk, 1, 1)
    if mask.dim() == 3:
        return mask.to(dtype).transpose(1, 2).unsqueeze(2)  # (B, Sq|1, Sk) -> (B, Sk, 1, Sq|1)
    if mask.dim() == 4:
        return mask.to(dtype)
    raise ValueError(f"unsupported attention mask shape {tuple(mask.shape)}")


def keep_mask_to_bias(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """(B, Sk) keep-mask (1 keep, 0 discard) -> (B, 1, Sk) bias, as ``Transformer2DModel`` does; else unchanged."""
    if mask is None or mask.dim() != 2:
        return mask
    return ((1 - mask.to(dtype)) * -10000.0).unsqueeze(1)  # (B, 1, Sk)


# --------------------------------------------------------------------------------------------- #
# Linear -> 1x1 conv
# --------------------------------------------------------------------------------------------- #


class Conv1x1(nn.Conv2d):
    """A 1x1 ``nn.Conv2d`` standing in for an ``nn.Linear`` on (B, C_in, 1, S) -> (B, C_out, 1, S).

    Loading a state dict also accepts the Linear's 2-D (out, in) weight (it is viewed as (out, in, 1, 1)),
    so checkpoints of the original model load into the rewritten one.
    """

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Conv1x1":
        conv = cls(
            linear.in_features,
            linear.out_features,
            kernel_size=1,
            bias=linear.bias is not None,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
        )
        with torch.no_grad():
            conv.weight.copy_(linear.weight[:, :, None, None])  # (out, in) -> (out, in, 1, 1), lossless
            if linear.bias is not None:
                conv.bias.copy_(linear.bias)  # (out,)
        conv.train(linear.training)
        return conv

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "weight"
        weight = state_dict.get(key)
        if weight is not None and weight.dim() == 2:
            state_dict[key] = weight[:, :, None, None]  # Linear checkpoint (out, in) -> (out, in, 1, 1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def linear_to_conv(module: nn.Module) -> nn.Module:
    """Return a ``Conv1x1`` equivalent of an ``nn.Linear``; any other module is returned unchanged."""
    return Conv1x1.from_linear(module) if isinstance(module, nn.Linear) else module


def _check_kind(kind: str) -> None:
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"unknown attention kind {kind!r}; expected one of {ATTENTION_KINDS}")


# --------------------------------------------------------------------------------------------- #
# diffusers Attention: processor
# --------------------------------------------------------------------------------------------- #


class ANEAttnProcessor:
    """diffusers attention processor computing attention in the (B, C, 1, S) layout.

    Expects the ``Attention``'s ``to_q``/``to_k``/``to_v``/``to_out[0]`` to be 1x1 convolutions (see
    ``convert_attention``). Accepts what diffusers passes to processors:

    - hidden_states (B, S, C): transposed to (B, C, 1, S) and back (for unconverted callers), or
      4-D (B, C, H, W) / (B, C, 1, S): only viewed as (B, C, 1, H*W), no transpose.
    - encoder_hidden_states (B, Sk, Ce) or (B, Ce, 1, Sk).
    - attention_mask: an additive bias, see ``mask_to_bc1s``.

    Returns the same layout it was given, like diffusers' own processors.
    """

    def __init__(self, kind: str = "split_einsum", chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        _check_kind(kind)
        self.kind = kind
        self.chunk_size = chunk_size

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        residual = hidden_states
        input_ndim = hidden_states.dim()
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)  # (B, C, H, W)
        if input_ndim == 4:
            b, _, height, width = hidden_states.shape
        x = to_bc1s(hidden_states)  # (B, C, 1, S)

        if attn.group_norm is not None:
            x = attn.group_norm(x)  # GroupNorm over (B, C, 1, S) == over (B, C, S)

        q = attn.to_q(x)  # (B, inner, 1, Sq)
        ctx = x if encoder_hidden_states is None else to_bc1s(encoder_hidden_states)  # (B, Ce, 1, Sk)
        k = attn.to_k(ctx)  # (B, inner, 1, Sk)
        v = attn.to_v(ctx)  # (B, inner, 1, Sk)
        mask = mask_to_bc1s(attention_mask, q.dtype)  # (B|1, Sk, 1, Sq|1) or None

        out = attention(
            q, k, v, attn.heads, kind=self.kind, scale=attn.scale, mask=mask, chunk_size=self.chunk_size
        )  # (B, inner, 1, Sq)
        out = attn.to_out[0](out)  # (B, C_out, 1, Sq)
        out = attn.to_out[1](out)  # dropout

        if input_ndim == 4:
            out = out.reshape(b, out.shape[1], height, width)  # (B, C_out, H, W)
        else:
            out = from_bc1s(out)  # (B, Sq, C_out)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def convert_attention(
    attn: Attention, kind: str = "split_einsum", chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Attention:
    """In place: 1x1-conv projections and an ``ANEAttnProcessor`` on a diffusers ``Attention``."""
    unsupported = {
        "added_kv_proj_dim": attn.added_kv_proj_dim is not None,
        "norm_cross": attn.norm_cross is not None,
        "qk_norm": attn.norm_q is not None or attn.norm_k is not None,
        "kv_heads": attn.inner_kv_dim != attn.inner_dim,
        "pre_only": attn.to_out is None,
        "is_causal": bool(getattr(attn, "is_causal", False)),
    }
    bad = [name for name, flag in unsupported.items() if flag]
    if bad:
        raise NotImplementedError(f"ANE attention rewrite does not support Attention with {bad}")
    attn.to_q = linear_to_conv(attn.to_q)
    attn.to_k = linear_to_conv(attn.to_k)
    attn.to_v = linear_to_conv(attn.to_v)
    attn.to_out[0] = linear_to_conv(attn.to_out[0])
    attn.set_processor(ANEAttnProcessor(kind, chunk_size))
    return attn


# --------------------------------------------------------------------------------------------- #
# diffusers transformer blocks
# --------------------------------------------------------------------------------------------- #


class ANEFeedForward(nn.Module):
    """diffusers ``FeedForward`` on (B, C, 1, S): its Linear layers as 1x1 convs, gates split on axis 1.

    Keeps the original ``net`` ModuleList (so state-dict keys are unchanged).
    """

    _ACTIVATIONS = (GEGLU, GELU, ApproximateGELU, SwiGLU, LinearActivation)

    def __init__(self, ff: FeedForward) -> None:
        super().__init__()
        act = ff.net[0]
        if not isinstance(act, self._ACTIVATIONS):
            raise NotImplementedError(f"unsupported feed-forward activation {type(act).__name__}")
        act.proj = linear_to_conv(act.proj)
        ff.net[2] = linear_to_conv(ff.net[2])
        self.net = ff.net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, 1, S)
        act = self.net[0]
        h = act.proj(x)  # (B, inner or 2*inner, 1, S)
        if isinstance(act, GEGLU):
            h, gate = h.chunk(2, dim=1)  # (B, inner, 1, S) each; value first, gate second
            h = h * F.gelu(gate)
        elif isinstance(act, SwiGLU):
            h, gate = h.chunk(2, dim=1)
            h = h * act.activation(gate)
        elif isinstance(act, GELU):
            h = F.gelu(h, approximate=act.approximate)
        elif isinstance(act, ApproximateGELU):
            h = h * torch.sigmoid(1.702 * h)
        else:  # LinearActivation: elementwise activation
            h = act.activation(h)
        for module in self.net[1:]:  # dropout, Conv1x1 (inner -> C), [dropout]
            h = module(h)
        return h  # (B, C, 1, S)


class ANEBasicTransformerBlock(nn.Module):
    """diffusers ``BasicTransformerBlock`` (norm_type "layer_norm") whose residual stream is (B, C, 1, S)."""

    def __init__(
        self, block: BasicTransformerBlock, kind: str = "split_einsum", chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> None:
        super().__init__()
        if block.norm_type != "layer_norm":
            raise NotImplementedError(f"norm_type {block.norm_type!r} is not supported (only 'layer_norm')")
        if block.pos_embed is not None or hasattr(block, "fuser"):
            raise NotImplementedError("positional embeddings / GLIGEN fuser are not supported")
        self.only_cross_attention = block.only_cross_attention
        self.norm1 = LayerNormANE.from_layer_norm(block.norm1)
        self.attn1 = convert_attention(block.attn1, kind, chunk_size)
        if block.attn2 is not None:
            self.norm2 = LayerNormANE.from_layer_norm(block.norm2)
            self.attn2 = convert_attention(block.attn2, kind, chunk_size)
        else:
            self.norm2 = None
            self.attn2 = None
        self.norm3 = LayerNormANE.from_layer_norm(block.norm3)
        self.ff = ANEFeedForward(block.ff)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # hidden_states: (B, C, 1, S); encoder_hidden_states: (B, Ce, 1, Sk) or None
        x = hidden_states
        x = x + self.attn1(
            self.norm1(x),
            encoder_hidden_states=encoder_hidden_states if self.only_cross_attention else None,
            attention_mask=attention_mask,
        )  # (B, C, 1, S)
        if self.attn2 is not None:
            x = x + self.attn2(
                self.norm2(x), encoder_hidden_states=encoder_hidden_states, attention_mask=encoder_attention_mask
            )  # (B, C, 1, S)
        return x + self.ff(self.norm3(x))  # (B, C, 1, S)


class ANETransformer2DModel(nn.Module):
    """diffusers ``Transformer2DModel`` (continuous input) computed on (B, C, 1, H*W).

    Call signature and outputs match ``Transformer2DModel.forward`` so UNet blocks call it unchanged.
    """

    def __init__(
        self, model: Transformer2DModel, kind: str = "split_einsum", chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> None:
        super().__init__()
        if not model.is_input_continuous:
            raise NotImplementedError("only continuous-input Transformer2DModel is supported")
        self.config = model.config  # read-only, for code that inspects sub-model configs
        self.norm = model.norm  # GroupNorm, works on (B, C, H, W)
        self.proj_in = linear_to_conv(model.proj_in)  # Linear or 1x1 Conv2d: (B, C, H, W) -> (B, inner, H, W)
        self.transformer_blocks = nn.ModuleList(
            ANEBasicTransformerBlock(block, kind, chunk_size) for block in model.transformer_blocks
        )
        self.proj_out = linear_to_conv(model.proj_out)  # (B, inner, H, W) -> (B, C, H, W)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        timestep: torch.Tensor | None = None,
        added_cond_kwargs: dict | None = None,
        class_labels: torch.Tensor | None = None,
        cross_attention_kwargs: dict | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ):
        b, _, height, width = hidden_states.shape  # (B, C, H, W)
        residual = hidden_states
        x = self.proj_in(self.norm(hidden_states))  # (B, inner, H, W)
        inner = x.shape[1]
        x = x.reshape(b, inner, 1, height * width)  # (B, inner, 1, S), token order y*W + x as diffusers
        ctx = None if encoder_hidden_states is None else to_bc1s(encoder_hidden_states)  # (B, Ce, 1, Sk)
        self_mask = mask_to_bc1s(keep_mask_to_bias(attention_mask, x.dtype), x.dtype)  # (B, S, 1, 1|S)
        cross_mask = mask_to_bc1s(keep_mask_to_bias(encoder_attention_mask, x.dtype), x.dtype)  # (B, Sk, 1, 1)
        for block in self.transformer_blocks:
            x = block(x, ctx, attention_mask=self_mask, encoder_attention_mask=cross_mask)  # (B, inner, 1, S)
        x = self.proj_out(x.reshape(b, inner, height, width))  # (B, C, H, W)
        out = x + residual
        if not return_dict:
            return (out,)
        return Transformer2DModelOutput(sample=out)


# --------------------------------------------------------------------------------------------- #
# Whole-model rewrites
# --------------------------------------------------------------------------------------------- #


def _replace_children(model: nn.Module, cls: type, factory) -> int:
    """Replace every descendant instance of ``cls`` by ``factory(instance)``; returns the count."""
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, cls)
    ]
    for parent, name, child in targets:
        setattr(parent, name, factory(child))
    return len(targets)


def _convert_remaining_attention(model: nn.Module, kind: str, chunk_size: int) -> int:
    count = 0
    for module in model.modules():
        if isinstance(module, Attention) and not isinstance(module.processor, ANEAttnProcessor):
            convert_attention(module, kind, chunk_size)
            count += 1
    return count


def rewrite_unet(unet: nn.Module, attention_kind: str = "split_einsum", chunk_size: int = DEFAULT_CHUNK_SIZE):
    """Rewrite a diffusers ``UNet2DConditionModel`` in place for the ANE and return it.

    Transformer2DModel -> ANETransformer2DModel (blocks on (B, C, 1, S), Linear -> 1x1 conv,
    LayerNorm over channels); any other ``Attention`` (e.g. a UNetMidBlock2D self-attention) gets conv
    projections and the ANE processor. Outputs are unchanged (up to float rounding).
    """
    _check_kind(attention_kind)
    _replace_children(unet, Transformer2DModel, lambda m: ANETransformer2DModel(m, attention_kind, chunk_size))
    _convert_remaining_attention(unet, attention_kind, chunk_size)
    return unet


def rewrite_vae(vae: nn.Module, attention_kind: str = "split_einsum", chunk_size: int = DEFAULT_CHUNK_SIZE):
    """Rewrite a diffusers ``AutoencoderKL`` (encoder and decoder) in place for the ANE and return it."""
    _check_kind(attention_kind)
    _replace_children(vae, Transformer2DModel, lambda m: ANETransformer2DModel(m, attention_kind, chunk_size))
    _convert_remaining_attention(vae, attention_kind, chunk_size)
    return vae


# --------------------------------------------------------------------------------------------- #
# transformers CLIP text model
# --------------------------------------------------------------------------------------------- #


class ANECLIPAttention(nn.Module):
    """CLIP self-attention on (B, C, 1, S) with 1x1-conv projections (names as in ``CLIPAttention``)."""

    def __init__(self, attn: nn.Module, kind: str, chunk_size: int) -> None:
        super().__init__()
        self.num_heads = attn.num_heads
        self.scale = attn.scale
        self.kind = kind
        self.chunk_size = chunk_size
        self.q_proj = linear_to_conv(attn.q_proj)
        self.k_proj = linear_to_conv(attn.k_proj)
        self.v_proj = linear_to_conv(attn.v_proj)
        self.out_proj = linear_to_conv(attn.out_proj)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        # x: (B, C, 1, S); mask: (1, S, 1, S) additive causal bias
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)  # (B, C, 1, S) each
        out = attention(
            q, k, v, self.num_heads, kind=self.kind, scale=self.scale, mask=mask, chunk_size=self.chunk_size
        )  # (B, C, 1, S)
        return self.out_proj(out)  # (B, C, 1, S)


class ANECLIPMLP(nn.Module):
    """CLIP MLP on (B, C, 1, S): fc1 / fc2 as 1x1 convs, the (elementwise) activation shared."""

    def __init__(self, mlp: nn.Module) -> None:
        super().__init__()
        self.fc1 = linear_to_conv(mlp.fc1)
        self.fc2 = linear_to_conv(mlp.fc2)
        self.activation_fn = mlp.activation_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(x)))  # (B, C, 1, S) -> (B, I, 1, S) -> (B, C, 1, S)


class ANECLIPEncoderLayer(nn.Module):
    """Pre-norm CLIP encoder layer on (B, C, 1, S)."""

    def __init__(self, layer: nn.Module, kind: str, chunk_size: int) -> None:
        super().__init__()
        self.layer_norm1 = LayerNormANE.from_layer_norm(layer.layer_norm1)
        self.self_attn = ANECLIPAttention(layer.self_attn, kind, chunk_size)
        self.layer_norm2 = LayerNormANE.from_layer_norm(layer.layer_norm2)
        self.mlp = ANECLIPMLP(layer.mlp)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), mask)  # (B, C, 1, S)
        return x + self.mlp(self.layer_norm2(x))  # (B, C, 1, S)


class ANECLIPTextModel(nn.Module):
    """transformers ``CLIPTextModel`` computed on (B, C, 1, S) with a causal mask, no padding mask.

    forward(input_ids (B, S) int or float) -> (last_hidden_state (B, S, C), pooled_output (B, C)), the
    same values as ``CLIPTextModel(input_ids)``'s ``last_hidden_state`` and ``pooler_output``
    (Stable Diffusion pads prompts with the end token and uses no attention mask).
    """

    def __init__(self, model: nn.Module, kind: str = "split_einsum", chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        super().__init__()
        _check_kind(kind)
        text = getattr(model, "text_model", model)  # transformers 4.x nests a CLIPTextTransformer
        self.eos_token_id = int(model.config.eos_token_id)
        self.embeddings = text.embeddings  # shared with `model`, used unchanged
        self.layers = nn.ModuleList(ANECLIPEncoderLayer(layer, kind, chunk_size) for layer in text.encoder.layers)
        self.final_layer_norm = LayerNormANE.from_layer_norm(text.final_layer_norm)
        max_len = self.embeddings.position_embedding.weight.shape[0]
        causal = torch.triu(torch.full((max_len, max_len), MASK_BIAS), diagonal=1)  # (Sq, Sk): key after query
        self.register_buffer("causal_mask", causal.t().reshape(1, max_len, 1, max_len), persistent=False)

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids = input_ids.to(torch.long)  # (B, S); float ids (Apple's converter workaround) are cast
        seq = ids.shape[1]
        x = to_bc1s(self.embeddings(input_ids=ids))  # (B, S, C) -> (B, C, 1, S)
        mask = self.causal_mask[:, :seq, :, :seq].to(x.dtype)  # (1, Sk, 1, Sq)
        for layer in self.layers:
            x = layer(x, mask)  # (B, C, 1, S)
        last = from_bc1s(self.final_layer_norm(x))  # (B, S, C)
        ids32 = ids.to(torch.int32)
        if self.eos_token_id == 2:  # legacy configs: end token has the largest id
            eos_pos = ids32.argmax(dim=-1)  # (B,)
        else:  # first occurrence of the end token
            eos_pos = (ids32 == self.eos_token_id).to(torch.int32).argmax(dim=-1)  # (B,)
        pooled = last[torch.arange(last.shape[0], device=last.device), eos_pos]  # (B, C)
        return last, pooled


def rewrite_clip_text_model(
    model: nn.Module, attention_kind: str = "split_einsum", chunk_size: int = DEFAULT_CHUNK_SIZE
) -> ANECLIPTextModel:
    """Return an ``ANECLIPTextModel`` equivalent of a transformers ``CLIPTextModel`` (left untouched)."""
    return ANECLIPTextModel(model, attention_kind, chunk_size)


# --------------------------------------------------------------------------------------------- #
# Trace wrappers (plain tensors in, plain tensors out)
# --------------------------------------------------------------------------------------------- #


class UNetANEWrapper(nn.Module):
    """forward(sample (B, 4, h, w), timestep (B,), encoder_hidden_states (B, C, 1, S) or (B, S, C),
    [timestep_cond (B, D)]) -> noise_pred (B, 4, h, w). Apple's UNet contract, plus the optional
    guidance embedding input of guidance-distilled UNets (``time_cond_proj_dim``)."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        timestep_cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states.dim() == 4 and getattr(self.unet, "encoder_hid_proj", None) is not None:
            encoder_hidden_states = from_bc1s(encoder_hidden_states)  # the projection wants (B, S, C)
        return self.unet(
            sample, timestep, encoder_hidden_states, timestep_cond=timestep_cond, return_dict=False
        )[0]


class VAEDecoderANEWrapper(nn.Module):
    """forward(z (B, 4, h, w)) -> image (B, 3, H, W) in [-1, 1]; z is already divided by the scaling factor."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.post_quant_conv = vae.post_quant_conv
        self.decoder = vae.decoder

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)


class VAEEncoderANEWrapper(nn.Module):
    """forward(x (B, 3, H, W)) -> moments (B, 2 * latent_channels, h, w): mean then log-variance."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.encoder = vae.encoder
        self.quant_conv = vae.quant_conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x)
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        return h
