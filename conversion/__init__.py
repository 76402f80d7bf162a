"""Conversion of guidance-distilled Stable Diffusion components to Core ML for the Apple Neural Engine.

Imported as ``ane_diffusion_conversion`` (pyproject maps the ``conversion/`` folder to that name).

Sub-modules (imported on demand, so importing this package stays cheap and torch-free):

- ``ane.layer_norm``  LayerNorm over the channel axis of (B, C, 1, S) tensors.
- ``ane.attention``   split-einsum (v1, v2 with query chunking) and "original" attention on (B, C, 1, S).
- ``ane.rewrite``     in-place rewrites / wrappers of diffusers UNet and VAE and transformers CLIP text
                      models into the (B, C, 1, S) layout with 1x1 convolutions.
- ``mil_executor``    op-by-op numpy executor of a saved ``.mlpackage`` (Core ML parity checks on Linux).
"""
