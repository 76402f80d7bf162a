"""Backends run the three networks; everything between them (sampling) is shared numpy code.

A backend offers, on numpy arrays:

* ``encode_text(input_ids (B, 77) int32) -> (B, 77, C) float32``
* ``predict(sample (B, 4, h, w), timestep int, hidden (B, 77, C), w (B,) or None) -> (B, 4, h, w)``,
  the raw UNet output in the model's parameterisation (w is fed only to students);
* ``decode(latents (B, 4, h, w), decoder="full") -> images (B, 3, H, W) in [-1, 1]`` (latents
  already divided by the VAE scaling factor; ``decoder="tiny"``: the bundle's distilled tiny
  decoder, same convention, see :mod:`ane_diffusion.decoders`);
* ``encode_image(images (B, 3, H, W) in [-1, 1], encoder="full") -> latents`` (posterior mean,
  unscaled; ``encoder="tiny"`` likewise).
"""

from __future__ import annotations

BACKENDS = ("torch", "coreml")


def make_backend(name: str, bundle, **options):
    """Instantiate backend ``name`` for a resolved bundle."""
    if name == "torch":
        from .torch_backend import TorchBackend

        return TorchBackend(bundle, **options)
    if name == "coreml":
        from .coreml_backend import CoreMLBackend

        return CoreMLBackend(bundle, **options)
    raise ValueError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
