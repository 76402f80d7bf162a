"""Multi-head attention over (B, C, 1, S) tensors in three Core ML friendly forms.

What: ``split_einsum``, ``split_einsum_v2`` and ``original`` compute
``softmax(Q K^T * scale + mask) V`` for every head, with q of shape (B, C, 1, Sq) and k, v of shape
(B, C, 1, Sk) where C = heads * dim_head, and return (B, C, 1, Sq).

Why three forms:

- ``split_einsum`` (ANE): heads are split explicitly and each head is two einsums,
  ``bchq,bkhc->bkhq`` for the scores and ``bkhq,bchk->bchq`` for the weighted values. coremltools
  keeps these as native MIL ``einsum`` ops, every tensor stays 4-D channels-first, and no
  (B, heads, S, d) transposes are needed, which is what the Neural Engine wants. The softmax runs
  over axis 1 (keys), so scores are laid out (B, Sk, 1, Sq).
- ``split_einsum_v2`` (ANE, large latents): additionally cuts the query sequence into chunks (512 by
  default; a 64x64 latent has 4096 tokens) so that each score tensor is (B, Sk, 1, chunk). Unlike
  Apple's reference, a last chunk shorter than ``chunk_size`` is kept, so any length works.
- ``original`` (GPU): all heads in one batched einsum, the usual layout for the GPU.

Masks are additive biases laid out like the split-einsum scores: broadcastable to (B, Sk, 1, Sq)
(e.g. (1, Sk, 1, Sq) for a causal mask, (B, Sk, 1, 1) for key padding).
"""

from __future__ import annotations

import torch

ATTENTION_KINDS = ("split_einsum", "split_einsum_v2", "original")
DEFAULT_CHUNK_SIZE = 512


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> int:
    """Validate shapes and return dim_head."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4 or q.shape[2] != 1 or k.shape[2] != 1 or v.shape[2] != 1:
        raise ValueError(
            f"q, k, v must be (B, C, 1, S), got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape[1] != k.shape[1] or k.shape[1] != v.shape[1] or k.shape[3] != v.shape[3]:
        raise ValueError(f"q/k/v channel or key-length mismatch: {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[1] % heads:
        raise ValueError(f"{q.shape[1]} channels do not split into {heads} heads")
    return q.shape[1] // heads


def split_einsum(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    scale: float | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-head einsum attention. q: (B, C, 1, Sq), k, v: (B, C, 1, Sk) -> (B, C, 1, Sq)."""
    dim_head = _check(q, k, v, heads)
    scale = dim_head**-0.5 if scale is None else scale
    k_t = k.transpose(1, 3)  # (B, Sk, 1, C)
    out = []
    for h in range(heads):
        lo, hi = h * dim_head, (h + 1) * dim_head
        qh = q[:, lo:hi]  # (B, d, 1, Sq)
        kh = k_t[:, :, :, lo:hi]  # (B, Sk, 1, d)
        vh = v[:, lo:hi]  # (B, d, 1, Sk)
        w = torch.einsum("bchq,bkhc->bkhq", qh, kh) * scale  # (B, Sk, 1, Sq)
        if mask is not None:
            w = w + mask  # (B, Sk, 1, Sq)
        w = w.softmax(dim=1)  # softmax over keys
        out.append(torch.einsum("bkhq,bchk->bchq", w, vh))  # (B, d, 1, Sq)
    return torch.cat(out, dim=1)  # (B, C, 1, Sq)


def split_einsum_v2(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    scale: float | None = None,
    mask: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """Per-head einsum attention with the query sequence cut into chunks of ``chunk_size``.

    q: (B, C, 1, Sq), k, v: (B, C, 1, Sk) -> (B, C, 1, Sq). The last chunk may be shorter than
    ``chunk_size`` (Apple's reference silently drops it; here every query position is computed).
    """
    dim_head = _check(q, k, v, heads)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    scale = dim_head**-0.5 if scale is None else scale
    seq_q = q.shape[3]
    bounds = [(s, min(s + chunk_size, seq_q)) for s in range(0, seq_q, chunk_size)]
    mask_per_query = mask is not None and mask.shape[3] != 1  # a (.., Sq) mask is chunked with q
    k_t = k.transpose(1, 3)  # (B, Sk, 1, C)
    out = []
    for h in range(heads):
        lo, hi = h * dim_head, (h + 1) * dim_head
        kh = k_t[:, :, :, lo:hi]  # (B, Sk, 1, d)
        vh = v[:, lo:hi]  # (B, d, 1, Sk)
        chunks = []
        for s, e in bounds:
            qc = q[:, lo:hi, :, s:e]  # (B, d, 1, c)
            w = torch.einsum("bchq,bkhc->bkhq", qc, kh) * scale  # (B, Sk, 1, c)
            if mask is not None:
                w = w + (mask[:, :, :, s:e] if mask_per_query else mask)  # (B, Sk, 1, c)
            w = w.softmax(dim=1)
            chunks.append(torch.einsum("bkhq,bchk->bchq", w, vh))  # (B, d, 1, c)
        out.append(torch.cat(chunks, dim=3) if len(chunks) > 1 else chunks[0])  # (B, d, 1, Sq)
    return torch.cat(out, dim=1)  # (B, C, 1, Sq)


def original(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    scale: float | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Batched-heads attention (GPU friendly). q: (B, C, 1, Sq), k, v: (B, C, 1, Sk) -> (B, C, 1, Sq)."""
    dim_head = _check(q, k, v, heads)
    scale = dim_head**-0.5 if scale is None else scale
    b = q.shape[0]
    qh = q.reshape(b, heads, dim_head, -1)  # (B, H, d, Sq)
    kh = k.reshape(b, heads, dim_head, -1)  # (B, H, d, Sk)
    vh = v.reshape(b, heads, dim_head, -1)  # (B, H, d, Sk)
    w = torch.einsum("bhcq,bhck->bhqk", qh, kh) * scale  # (B, H, Sq, Sk)
    if mask is not None:
        w = w + mask.permute(0, 2, 3, 1)  # (B|1, Sk, 1, Sq|1) -> (B|1, 1, Sq|1, Sk)
    w = w.softmax(dim=3)
    out = torch.einsum("bhqk,bhck->bhcq", w, vh)  # (B, H, d, Sq)
    return out.reshape(b, heads * dim_head, 1, -1)  # (B, C, 1, Sq)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    kind: str = "split_einsum",
    scale: float | None = None,
    mask: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """Dispatch to one of ``ATTENTION_KINDS``. q: (B, C, 1, Sq), k, v: (B, C, 1, Sk) -> (B, C, 1, Sq)."""
    if kind == "split_einsum":
        return split_einsum(q, k, v, heads, scale=scale, mask=mask)
    if kind == "split_einsum_v2":
        return split_einsum_v2(q, k, v, heads, scale=scale, mask=mask, chunk_size=chunk_size)
    if kind == "original":
        return original(q, k, v, heads, scale=scale, mask=mask)
    raise ValueError(f"unknown attention kind {kind!r}; expected one of {ATTENTION_KINDS}")
