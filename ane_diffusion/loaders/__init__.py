"""Loaders for the files Stable Diffusion users already have.

* :mod:`.original`: original-layout single-file checkpoints (SD 1.x, 2.x, inpainting, LCM-style
  students), offline, from configs and a tokenizer the package ships;
* :mod:`.clip_bpe`: the CLIP BPE tokenizer of SD 1.x / 2.x, shipped as text;
* :mod:`.lora`: LoRA files (kohya and diffusers/peft) applied through diffusers' own loaders.

Nothing here is imported on the default path (the embedded model); each module imports torch and
diffusers only inside the functions that need them.
"""
