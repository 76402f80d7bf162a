"""Stage A of the demo recipe: train the AutoencoderKL on scene images.

Reconstruction (L1 + MSE) plus a small KL term, as latent-diffusion autoencoders are trained
(without the adversarial and perceptual losses, which flat-colour scenes do not need). The object
covers a few percent of the pixels, so a plain mean lets the background dominate and the object's
colour and shape wash out; pixels that differ from the background (the corner colour) weigh
``object_weight`` times more. The latent scaling factor is measured afterwards as ``1 / std`` of the
training latents, as Stable Diffusion's 0.18215 was.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np


def images_to_tensor(images: np.ndarray):
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def object_weights(x, object_weight: float):
    """(B, 3, H, W) in [-1, 1] -> (B, 1, H, W): 1 on the background, ``object_weight`` on the object."""
    background = x[:, :, :1, :1]
    differs = (x - background).abs().amax(dim=1, keepdim=True) > 0.15
    return 1.0 + (object_weight - 1.0) * differs.float()


def train_vae(images: np.ndarray, steps: int, batch_size: int = 32, lr: float = 1e-3, kl_weight: float = 1e-6,
              object_weight: float = 10.0, seed: int = 0, log=print):
    """Returns ``(vae, summary)``; ``vae.config.scaling_factor`` is set from the measured latent std."""
    import torch
    from diffusers import AutoencoderKL
    from tqdm import tqdm

    from .configs import vae_config

    from ..backends.torch_backend import select_device

    device = select_device()
    torch.manual_seed(seed)
    vae = AutoencoderKL.from_config(vae_config()).to(device)
    data = images_to_tensor(images).to(device)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0 - i / steps)
    generator = torch.Generator().manual_seed(seed)
    start = time.time()
    bar = tqdm(range(steps), desc="vae", mininterval=5)
    for step in bar:
        x = data[torch.randint(0, len(data), (batch_size,), generator=generator).to(device)]
        posterior = vae.encode(x).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=generator).to(device)
        reconstruction = vae.decode(posterior.mean + posterior.std * noise).sample
        error = reconstruction - x
        weights = object_weights(x, object_weight)
        l1 = error.abs().mean()
        loss = ((error.abs() + error**2) * weights).mean() / weights.mean() + kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            bar.set_postfix(l1=f"{l1.item():.4f}")
            log(json.dumps({"stage": "vae", "step": step, "l1": l1.item(), "elapsed_s": time.time() - start}))
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        latents = torch.cat([vae.encode(data[i:i + 256]).latent_dist.mean for i in range(0, min(len(data), 4096), 256)])
        test = data[-512:]
        psnr = _psnr(vae.decode(vae.encode(test).latent_dist.mean).sample, test)
    scaling = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scaling)
    vae.to("cpu")
    summary = {"device": str(device), "steps": steps, "batch_size": batch_size, "lr": lr, "kl_weight": kl_weight,
               "object_weight": object_weight, "final_l1": l1.item(),
               "reconstruction_psnr_db": psnr, "scaling_factor": scaling, "seconds": time.time() - start}
    return vae, summary


def _psnr(a, b) -> float:
    mse = float(((a.clamp(-1, 1) - b) ** 2).mean()) / 4.0  # [-1, 1] -> [0, 1] scale
    return float(10 * np.log10(1.0 / max(mse, 1e-12)))


def save_vae(vae, folder: Path) -> None:
    vae.save_pretrained(str(folder), safe_serialization=True)
