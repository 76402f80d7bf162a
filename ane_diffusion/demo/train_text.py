"""Stage "text" of the demo recipe: pretrain the CLIP text encoder contrastively, as CLIP was.

Why: Stable Diffusion conditions on a *pretrained* CLIP text encoder, whose embeddings already tell
apart what the captions say. The first demo teacher learned its tiny text encoder jointly with the
UNet from scratch; early on the UNet cannot use the position words yet, so nothing pushes the
encoder to separate them, and it never did: the four corner captions ended up within ~3% of each
other and the teacher put the object in whichever corner the noise suggested (issue 11). Here the
encoder first learns, against a small image tower, which caption belongs to which image (the
symmetric InfoNCE loss of CLIP, Radford et al. 2021), so "top left" and "top right" must map to
different embeddings before the UNet ever sees them; the teacher then trains on top of it, with the
encoder frozen (as in Stable Diffusion) by default.

Model: :class:`transformers.CLIPTextModel` (the shipped class, unchanged) + a linear projection of
its pooled (end-of-text) output; image tower: a 3-stage strided CNN whose flattened 4x4 map keeps
*where* things are, + a linear projection; both projections L2-normalised, a learnable temperature.
Captions that are the same string (partial captions such as "a red circle" recur in a batch) are
all positives of each other: the targets are uniform over them.
"""

from __future__ import annotations

import json
import time

import numpy as np


def _image_tower(width: int, embed_dim: int):
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.SiLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.SiLU(),
        nn.Conv2d(64, width, 3, stride=2, padding=1), nn.SiLU(),
        nn.Flatten(), nn.Linear(width * 16, 256), nn.SiLU(), nn.Linear(256, embed_dim))


def contrastive_loss(image_emb, text_emb, logit_scale, caption_index):
    """Symmetric InfoNCE over a batch: ``image_emb``, ``text_emb`` (B, D) L2-normalised, ``logit_scale``
    a scalar (log of the inverse temperature), ``caption_index`` (B,) int: equal values are the same
    caption (each other's positives). Returns ``(loss, image->text top-1 accuracy)``."""
    import torch
    import torch.nn.functional as F

    logits = logit_scale.exp().clamp(max=100.0) * image_emb @ text_emb.T
    same = (caption_index[:, None] == caption_index[None, :]).float()
    targets = same / same.sum(1, keepdim=True)
    loss = 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))
    with torch.no_grad():
        accuracy = same.gather(1, logits.argmax(1, keepdim=True)).mean()
    return loss, float(accuracy)


def pooled_text(text_encoder, ids):
    """The encoder's pooled (end-of-text) output (B, D) for token ids (B, L)."""
    return text_encoder(ids).pooler_output


def train_text_encoder(images: np.ndarray, token_ids: np.ndarray, text_config: dict, steps: int,
                       batch_size: int = 256, lr: float = 1e-3, seed: int = 0, log=print):
    """Contrastively train a fresh ``CLIPTextModel(text_config)`` on (image, caption) pairs.

    ``images`` uint8 (N, 32, 32, 3); ``token_ids`` (N, 77) int, the captions' ids (padded with
    end-of-text, as :class:`~ane_diffusion.tokenizer.CLIPTokenizer` writes them). Returns
    ``(text_encoder, summary)``, the encoder in eval mode on the CPU; ``summary`` records the
    settings, the final loss and the image->caption top-1 accuracy on the last batches.
    """
    import torch
    from tqdm import tqdm
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..backends.torch_backend import select_device
    from .train_vae import images_to_tensor

    device = select_device()
    torch.manual_seed(seed)
    config = CLIPTextConfig(**text_config)
    text_encoder = CLIPTextModel(config).to(device).train()
    embed_dim = config.projection_dim
    image_tower = _image_tower(128, embed_dim).to(device)
    text_projection = torch.nn.Linear(config.hidden_size, embed_dim, bias=False).to(device)
    logit_scale = torch.nn.Parameter(torch.tensor(float(np.log(1 / 0.07)), device=device))
    params = [*text_encoder.parameters(), *image_tower.parameters(), *text_projection.parameters(), logit_scale]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    warmup = max(steps // 20, 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: min(1.0, (i + 1) / warmup) * max(0.0, 1.0 - i / steps))
    # causal attention: tokens after the first end-of-text never change the pooled output, so the
    # padding tail is cut off for speed (the teacher later reads all 77 positions)
    length = int(_first_eos(token_ids, text_config["eos_token_id"]).max()) + 1
    captions, caption_index = np.unique(token_ids[:, :length], axis=0, return_inverse=True)
    ids = torch.from_numpy(captions.astype(np.int64)).to(device)
    caption_index = torch.from_numpy(caption_index.reshape(-1).astype(np.int64))
    pixels = images_to_tensor(images).to(device)
    generator = torch.Generator().manual_seed(seed)
    start, bar = time.time(), tqdm(range(steps), desc="text encoder", mininterval=5)
    recent = []
    for step in bar:
        index = torch.randint(0, len(pixels), (batch_size,), generator=generator)
        which = caption_index[index]
        image_emb = torch.nn.functional.normalize(image_tower(pixels[index.to(device)]), dim=-1)
        text_emb = torch.nn.functional.normalize(text_projection(pooled_text(text_encoder, ids[which.to(device)])),
                                                 dim=-1)
        loss, accuracy = contrastive_loss(image_emb, text_emb, logit_scale, which.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        recent = (recent + [accuracy])[-20:]
        if step % 100 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{np.mean(recent):.2f}")
            log(json.dumps({"stage": "text", "step": step, "loss": loss.item(), "accuracy": float(np.mean(recent)),
                            "temperature": float(1 / logit_scale.detach().exp().clamp(max=100.0)),
                            "elapsed_s": time.time() - start}))
    summary = {"device": str(device), "steps": steps, "batch_size": batch_size, "lr": lr,
               "objective": "symmetric InfoNCE (CLIP) against a small CNN image tower; identical captions are "
                            "each other's positives",
               "final_loss": loss.item(), "final_batch_accuracy": float(np.mean(recent)),
               "distinct_captions": int(len(captions)), "seconds": time.time() - start}
    return text_encoder.to("cpu").eval(), summary


def _first_eos(token_ids: np.ndarray, eos: int) -> np.ndarray:
    """Index (N,) of the first end-of-text token of each row (the pooled position)."""
    is_eos = token_ids == eos
    if not is_eos.any(axis=1).all():
        raise ValueError("a caption has no end-of-text token")
    return is_eos.argmax(axis=1)


def caption_separation(text_encoder, token_ids: np.ndarray) -> dict:
    """How far apart the encoder puts a set of captions: the mean, over pairs, of the relative L2
    distance ``|h_i - h_j| / mean(|h_i|, |h_j|)`` of the full (77, D) last hidden states (what the
    UNet attends to), and the same for the pooled output. ``token_ids`` (K, 77), K >= 2."""
    import torch

    with torch.no_grad():
        out = text_encoder(torch.from_numpy(token_ids.astype(np.int64)))
    result = {}
    for name, h in (("hidden", out.last_hidden_state), ("pooled", out.pooler_output)):
        h = h.reshape(len(h), -1).double()
        norms = h.norm(dim=1)
        pairs = [(h[i] - h[j]).norm() / ((norms[i] + norms[j]) / 2)
                 for i in range(len(h)) for j in range(i + 1, len(h))]
        result[f"{name}_relative_distance"] = float(torch.stack(pairs).mean())
    return result
