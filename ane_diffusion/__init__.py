"""ane-diffusion: guidance-distilled 1-4 step text-to-image diffusion for the Apple Neural Engine."""

__version__ = "0.1.0"
