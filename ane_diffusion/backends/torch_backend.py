"""The PyTorch backend: diffusers/transformers modules on MPS, CUDA or CPU."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..guidance import GuidanceEmbedding
from ..torch_models import import_torch as require_torch
from ..torch_models import load_components


DEVICE_TYPES = ("cpu", "cuda", "mps")
VAE_PRECISIONS = ("auto", "float16", "float32")
"""``--vae-precision``: ``auto`` follows the backend's dtype (float16 on GPUs); ``float32`` is the
remedy for float16 VAE decoders whose activations overflow (NaN/inf, black images)."""


def check_device(preference: str):
    """``preference`` as a torch device that exists on this machine, else a one-line ``ValueError``."""
    torch = require_torch()
    try:
        device = torch.device(preference)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {preference!r}: use cpu, cuda, cuda:N or mps") from None
    if device.type not in DEVICE_TYPES:
        raise ValueError(f"unsupported device {preference!r}: use cpu, cuda, cuda:N or mps")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"--device {preference}: CUDA is not available here (no GPU, or a CPU-only torch); "
                             "use --device cpu")
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {preference}: this machine has {count} CUDA device(s), 0..{count - 1}")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) is not None
                                     and torch.backends.mps.is_available()):
        raise ValueError(f"--device {preference}: MPS (Apple GPU) is not available here; use --device cpu")
    return device


def select_device(preference: Optional[str] = None):
    """``preference`` if given (checked: :func:`check_device`), else MPS when present, then CUDA, then CPU."""
    torch = require_torch()
    if preference:
        return check_device(preference)
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
                 vae_precision: str = "auto", threads: Optional[int] = None):
        """``vae_precision``: ``auto`` (the backend's dtype), ``float16`` or ``float32`` for the VAE alone
        (``float32`` cures black/NaN images from float16 decoder overflow).
        ``threads``: torch CPU threads; None applies :func:`ane_diffusion.threads.planned_threads`
        (``ANE_DIFFUSION_THREADS``, else one thread for small models, else torch's default) when the
        backend loads the bundle itself. Given ``components`` (training, benchmarks), the caller's
        thread setting is left alone unless ``threads`` is given."""
        from ..threads import apply_thread_policy

        self.torch = require_torch()
        if vae_precision not in VAE_PRECISIONS:
            raise ValueError(f"vae_precision must be one of {', '.join(VAE_PRECISIONS)}, got {vae_precision!r}")
        if components is None or threads is not None:
            apply_thread_policy(self.torch, bundle, threads)
        self.threads = self.torch.get_num_threads()
        self.device = select_device(device)
        self.dtype = dtype or default_dtype(self.device)
        self.bundle = bundle
        self.components = components or load_components(bundle, self.device, self.dtype, lean=True)
        self.vae_dtype = self.dtype if vae_precision == "auto" else getattr(self.torch, vae_precision)
        if self.vae_dtype != self.dtype:
            self._cast_vae(self.vae_dtype)
        self.guidance_dim = self.components.unet.config.get("time_cond_proj_dim")
        self.guidance = (GuidanceEmbedding(int(self.guidance_dim), bundle.card.guidance_embedding_scale)
                         if self.guidance_dim else None)

    def precision(self, component: str) -> str:
        """``float16`` / ``float32`` / ``bfloat16``: the dtype ``component`` computes in."""
        dtype = self.vae_dtype if component.startswith("vae") else self.dtype
        return str(dtype).replace("torch.", "")

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
            if self.guidance is not None:
                w = np.zeros(batch, np.float32) if w is None else np.full(batch, w, np.float32) if np.ndim(w) == 0 else w
                cond = self.guidance.torch(self._tensor(w, torch.float32)).to(self.dtype)
            out = self.components.unet(self._tensor(sample), t, encoder_hidden_states=self._tensor(hidden),
                                       timestep_cond=cond).sample
            return self._numpy(out)

    def _cast_vae(self, dtype) -> None:
        """Move the VAE to ``dtype``, without diffusers' note on casting with ``.to()`` (not for the user)."""
        import sys

        logging = sys.modules.get("diffusers.utils.logging")  # only when diffusers built the VAE
        level = logging.get_verbosity() if logging else None
        if logging:
            logging.set_verbosity_error()
        try:
            self.components.vae.to(dtype=dtype)
        finally:
            if logging:
                logging.set_verbosity(level)

    def _tiny(self, part: str):
        """The tiny autoencoder's decoder or encoder in the full VAE's convention (built once)."""
        from ..decoders import DecoderChoiceError, tiny_decoder, tiny_encoder

        key = f"_tiny_{part}"
        if getattr(self, key, None) is None:
            if self.components.vae_tiny is None:
                raise DecoderChoiceError(f"{self.bundle.source} has no tiny decoder; use --decoder full")
            make = tiny_decoder if part == "decoder" else tiny_encoder
            setattr(self, key, make(self.components.vae_tiny, self.bundle.scaling_factor))
        return getattr(self, key)

    def decode(self, latents, decoder: str = "full") -> np.ndarray:
        with self.torch.inference_mode():
            if decoder == "tiny":
                return self._numpy(self._tiny("decoder")(self._tensor(latents)))
            return self._numpy(self.components.vae.decode(self._tensor(latents, self.vae_dtype)).sample)

    def encode_image(self, images, encoder: str = "full") -> np.ndarray:
        with self.torch.inference_mode():
            if encoder == "tiny":
                return self._numpy(self._tiny("encoder")(self._tensor(images)))
            return self._numpy(self.components.vae.encode(self._tensor(images, self.vae_dtype)).latent_dist.mean)
