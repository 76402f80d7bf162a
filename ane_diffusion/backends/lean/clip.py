"""The CLIP text encoder (transformers' ``CLIPTextModel``): ``model(input_ids)[0]`` = last hidden state."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"quick_gelu": lambda x: x * torch.sigmoid(1.702 * x), "gelu": F.gelu}


class _Embeddings(nn.Module):
    def __init__(self, vocab: int, positions: int, dim: int):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, dim)
        self.position_embedding = nn.Embedding(positions, dim)

    def forward(self, ids):
        return self.token_embedding(ids) + self.position_embedding.weight[: ids.shape[1]][None]


class _SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):
        batch, length, dim = x.shape

        def split(t):
            return t.view(batch, length, self.heads, dim // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)),
                                             is_causal=True)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, dim))


class _MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str):
        super().__init__()
        self.act = ACTIVATIONS[act]
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class _Layer(nn.Module):
    def __init__(self, c: dict):
        super().__init__()
        dim, eps = int(c["hidden_size"]), float(c.get("layer_norm_eps", 1e-5))
        self.self_attn = _SelfAttention(dim, int(c["num_attention_heads"]))
        self.layer_norm1 = nn.LayerNorm(dim, eps=eps)
        self.mlp = _MLP(dim, int(c["intermediate_size"]), c.get("hidden_act", "quick_gelu"))
        self.layer_norm2 = nn.LayerNorm(dim, eps=eps)

    def forward(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class _Encoder(nn.Module):
    def __init__(self, c: dict):
        super().__init__()
        self.layers = nn.ModuleList([_Layer(c) for _ in range(int(c["num_hidden_layers"]))])


class TextEncoder(nn.Module):
    """Keys as transformers >= 5.6 saves them (``embeddings.*``, ``encoder.layers.*``,
    ``final_layer_norm.*``); :func:`load_state` also takes the older ``text_model.`` prefix."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)
        dim = int(config["hidden_size"])
        self.embeddings = _Embeddings(int(config["vocab_size"]), int(config.get("max_position_embeddings", 77)), dim)
        self.encoder = _Encoder(config)
        self.final_layer_norm = nn.LayerNorm(dim, eps=float(config.get("layer_norm_eps", 1e-5)))

    def forward(self, input_ids, **_):
        """input_ids (B, L) int64 -> ``(last_hidden_state (B, L, hidden_size),)``; causal attention."""
        h = self.embeddings(input_ids)
        for layer in self.encoder.layers:
            h = layer(h)
        return (self.final_layer_norm(h),)
