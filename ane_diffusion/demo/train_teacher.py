"""Stage B of the demo recipe: train the guided teacher (text encoder + UNet, jointly).

Stable Diffusion freezes a pretrained CLIP. Given ``text_encoder`` (the recipe's contrastively
pretrained one, :mod:`ane_diffusion.demo.train_text`) the teacher does the same: the encoder stays
frozen (``train_text=False``; its embeddings of the distinct captions are computed once) or is
fine-tuned with the UNet. Without one, a fresh encoder learns jointly with the UNet (the first demo
teacher; it never separated the corner captions, see issue 11). Captions are dropped (replaced by the empty prompt) with
probability ``caption_dropout`` so that the same network is also the unconditional model that
classifier-free guidance needs. eps-prediction on Stable Diffusion's schedule, as SD 1.x; an
exponential moving average of the weights is what gets saved.
"""

from __future__ import annotations

import copy
import json
import time

import numpy as np


def encode_latents(vae, images: np.ndarray, batch: int = 512):
    """uint8 images -> scaled VAE posterior means (N, 4, h, w)."""
    import torch

    from .train_vae import images_to_tensor

    with torch.no_grad():
        return torch.cat([vae.encode(images_to_tensor(images[i:i + batch])).latent_dist.mean
                          for i in range(0, len(images), batch)]) * vae.config.scaling_factor


def _ema_update(ema, model, decay: float) -> None:
    import torch

    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p, 1.0 - decay)


def train_teacher(latents, token_ids: np.ndarray, empty_ids: np.ndarray, text_config: dict, steps: int,
                  batch_size: int = 64, lr: float = 3e-4, caption_dropout: float = 0.1, ema_decay: float = 0.999,
                  seed: int = 0, log=print, text_encoder=None, train_text: bool = True):
    """Returns ``(text_encoder, unet_ema, summary)`` (the encoder's EMA when it was trained).

    ``latents`` (N, 4, h, w) scaled; ``token_ids`` (N, 77) the captions' ids; ``empty_ids`` (77,).
    ``text_encoder``: a pretrained ``CLIPTextModel`` to start from (default: a fresh one from
    ``text_config``); ``train_text``: fine-tune it with the UNet (True) or keep it frozen (False).
    """
    import torch
    from diffusers import UNet2DConditionModel
    from tqdm import tqdm
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..schedule import DiscreteSchedule, add_noise
    from .configs import unet_config

    from ..backends.torch_backend import select_device

    device = select_device()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(unet_config()).to(device)
    pretrained = text_encoder is not None
    text_encoder = (text_encoder if pretrained else CLIPTextModel(CLIPTextConfig(**text_config))).to(device)
    text_encoder.train(train_text).requires_grad_(train_text)
    latents = latents.to(device)
    ema_unet = copy.deepcopy(unet).requires_grad_(False)
    ema_text = copy.deepcopy(text_encoder).requires_grad_(False) if train_text else text_encoder
    params = list(unet.parameters()) + (list(text_encoder.parameters()) if train_text else [])
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    warmup = max(steps // 50, 1)
    schedule_lr = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: min(1.0, (i + 1) / warmup) * max(0.0, 1.0 - i / steps))
    alphas_cumprod = torch.from_numpy(DiscreteSchedule.scaled_linear().alphas_cumprod).float().to(device)
    ids = torch.from_numpy(token_ids.astype(np.int64)).to(device)
    empty = torch.from_numpy(empty_ids.astype(np.int64)).to(device)
    if not train_text:  # a frozen encoder: embed each distinct caption (and the empty one) once
        distinct, inverse = np.unique(np.concatenate([token_ids, empty_ids[None]]), axis=0, return_inverse=True)
        with torch.no_grad():
            table = torch.cat([text_encoder(torch.from_numpy(distinct[i:i + 256].astype(np.int64)).to(device))[0]
                               for i in range(0, len(distinct), 256)])
        ids = torch.from_numpy(inverse.reshape(-1)[:-1].astype(np.int64)).to(device)
        empty = torch.from_numpy(inverse.reshape(-1)[-1:].astype(np.int64)).to(device)[0]

        def encode(batch_ids):
            return table[batch_ids]
    else:
        def encode(batch_ids):
            return text_encoder(batch_ids)[0]
    generator = torch.Generator().manual_seed(seed)
    start, bar = time.time(), tqdm(range(steps), desc="teacher", mininterval=5)
    for step in bar:
        index = torch.randint(0, len(latents), (batch_size,), generator=generator).to(device)
        x = latents[index]
        batch_ids = ids[index].clone()
        drop = (torch.rand(batch_size, generator=generator) < caption_dropout).to(device)
        batch_ids[drop] = empty
        t = torch.randint(0, 1000, (batch_size,), generator=generator).to(device)
        eps = torch.randn(x.shape, generator=generator).to(device)
        abar = alphas_cumprod[t].view(-1, 1, 1, 1)
        z = add_noise(x, eps, abar.sqrt(), (1 - abar).sqrt())
        prediction = unet(z, t, encode(batch_ids)).sample
        loss = torch.nn.functional.mse_loss(prediction, eps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule_lr.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        _ema_update(ema_unet, unet, decay)
        if train_text:
            _ema_update(ema_text, text_encoder, decay)
        if step % 100 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{loss.item():.4f}")
            log(json.dumps({"stage": "teacher", "step": step, "loss": loss.item(),
                            "lr": schedule_lr.get_last_lr()[0], "elapsed_s": time.time() - start}))
    ema_text.to("cpu"), ema_unet.to("cpu")
    summary = {"device": str(device), "steps": steps, "batch_size": batch_size, "lr": lr, "caption_dropout": caption_dropout,
               "text_encoder": ("pretrained, " if pretrained else "fresh, ") + ("trained with the UNet" if train_text
                                                                             else "frozen"),
               "ema_decay": ema_decay, "final_loss": loss.item(), "seconds": time.time() - start,
               "objective": "epsilon MSE, uniform t over 1000 SD timesteps"}
    return ema_text.eval(), ema_unet.eval(), summary
