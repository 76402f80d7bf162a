"""The PyTorch backend: diffusers/transformers modules on MPS, CUDA or CPU."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..guidance import torch_guidance_embedding
from ..torch_models import import_torch as require_torch
from ..torch_models import load_components


def select_device(preference: Optional[str] = None):
    """``preference`` if given, else MPS when present, then CUDA, then CPU."""
    torch = require_torch()
    if preference:
        return torch.device(preference)
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def default_dtype(device):
    """float16 on GPUs (MPS, CUDA), float32 on the CPU."""
    torch = require_torch()
    return torch.float32 if device.type == "cpu" else torch.float16


class TorchBackend:
    name = "torch"

    def __init__(self, bundle, device: Optional[str] = None, dtype=None, components=None,
                 threads: Optional[int] = None):
        """``threads``: torch CPU threads; None applies :func:`ane_diffusion.threads.planned_threads`
        (``ANE_DIFFUSION_THREADS``, else one thread for small models, else torch's default) when the
        backend loads the bundle itself. Given ``components`` (training, benchmarks), the caller's
        thread setting is left alone unless ``threads`` is given."""
        from ..threads import apply_thread_policy

        self.torch = require_torch()
        if components is None or threads is not None:
            apply_thread_policy(self.torch, bundle, threads)
        self.threads = self.torch.get_num_threads()
        self.device = select_device(device)
        self.dtype = dtype or default_dtype(self.device)
        self.bundle = bundle
        self.components = components or load_components(bundle, self.device, self.dtype, lean=True)
        self.guidance_dim = self.components.unet.config.get("time_cond_proj_dim")

    def _tensor(self, array, dtype=None):
        return self.torch.from_numpy(np.ascontiguousarray(array)).to(self.device, dtype or self.dtype)

    def _numpy(self, tensor) -> np.ndarray:
        return tensor.float().cpu().numpy()

    def encode_text(self, input_ids: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            ids = self._tensor(input_ids.astype(np.int64), self.torch.long)
            return self._numpy(self.components.text_encoder(ids)[0])

    def predict(self, sample, timestep: int, hidden, w=None) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            batch = sample.shape[0]
            t = torch.full((batch,), int(timestep), device=self.device, dtype=torch.long)
            cond = None
            if self.guidance_dim:
                w = np.zeros(batch, np.float32) if w is None else np.full(batch, w, np.float32) if np.ndim(w) == 0 else w
                cond = torch_guidance_embedding(self._tensor(w, torch.float32), self.guidance_dim).to(self.dtype)
            out = self.components.unet(self._tensor(sample), t, encoder_hidden_states=self._tensor(hidden),
                                       timestep_cond=cond).sample
            return self._numpy(out)

    def decode(self, latents) -> np.ndarray:
        with self.torch.inference_mode():
            return self._numpy(self.components.vae.decode(self._tensor(latents)).sample)

    def encode_image(self, images) -> np.ndarray:
        with self.torch.inference_mode():
            return self._numpy(self.components.vae.encode(self._tensor(images)).latent_dist.mean)
