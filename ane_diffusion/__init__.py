"""ane-diffusion: guidance-distilled 1-4 step text-to-image diffusion for the Apple Neural Engine.

Start with :func:`generate` (text to image) or :func:`load_pipeline`; the w convention is the
paper's (``guidance_scale = 1 + w``, see :mod:`ane_diffusion.guidance`).
"""

__version__ = "0.1.0"

from .api import edit, generate, inpaint, load_pipeline  # noqa: E402

__all__ = ["edit", "generate", "inpaint", "load_pipeline", "__version__"]
