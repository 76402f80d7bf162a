"""The architectures the benchmark times, built in memory with random weights.

Latency does not depend on weight values, so nothing is downloaded or saved: each architecture is
a guided teacher (plain UNet) and its guidance-distilled student (the same UNet plus the guidance
input, :func:`ane_diffusion.student.add_guidance_input`), sharing one text encoder and one VAE,
each wrapped in a real :class:`ane_diffusion.pipeline.Pipeline` on the torch backend.

* ``demo``: the embedded demo model (32x32 images, 8x8 latents). Its configs come from the shipped
  bundle ``ane_diffusion/assets/demo`` when it is installed, else from
  :mod:`ane_diffusion.demo.configs`.
* ``sd15``: Stable Diffusion 1.5 at 512x512 (:mod:`ane_diffusion.testing.sd15`), about 1.1 B parameters in float32.

Both carry a tiny decoder (``vae_tiny``, :func:`ane_diffusion.decoders.tiny_config` of the VAE: for
SD 1.5 that is TAESD's own shape), random like the rest, so the decoder's share can be timed both ways.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from typing import Optional

from ane_diffusion.decoders import TINY, tiny_config

ARCHITECTURES = ("demo", "sd15")
PROMPTS = {"demo": "a small red circle at the top left on a blue background",
           "sd15": "a photo of an astronaut riding a horse on mars"}
GUIDANCE_EMBEDDING_DIM = 256


class BenchError(ValueError):
    """A benchmark request that cannot run; the message is one line."""


def check_arch(arch: str) -> str:
    if arch not in ARCHITECTURES:
        raise BenchError(f"unknown architecture {arch!r}; choose one of: {', '.join(ARCHITECTURES)}")
    return arch


@dataclass
class ArchSpec:
    """Configs, tokenizer and cards of one architecture (no modules yet)."""

    name: str
    teacher_configs: dict
    tokenizer_files: dict
    default_w: float
    guidance_dim: int = GUIDANCE_EMBEDDING_DIM
    configs_from: str = ""
    info: dict = field(default_factory=dict)

    @property
    def student_configs(self) -> dict:
        return dict(self.teacher_configs,
                    unet=self.teacher_configs["unet"] | {"time_cond_proj_dim": int(self.guidance_dim)})

    def cards(self):
        from ane_diffusion.card import ModelCard

        prediction = self.teacher_configs["scheduler"].get("prediction_type", "epsilon")
        teacher = ModelCard(kind="teacher", prediction_type=prediction, default_w=self.default_w,
                            recommended_sampler="dpmpp-2m", recommended_steps=20,
                            description=f"benchmark: random-weight {self.name} teacher").validate()
        student = ModelCard(kind="guidance-distilled", prediction_type=prediction, steps=None, w_min=0.0,
                            w_max=14.0, default_w=self.default_w, guidance_embedding_dim=int(self.guidance_dim),
                            recommended_sampler="ddim", recommended_steps=4,
                            description=f"benchmark: random-weight {self.name} student").validate()
        return teacher, student

    def bundles(self):
        from ane_diffusion.bundle import Bundle

        teacher_card, student_card = self.cards()
        return (Bundle(source=f"bench:{self.name}-teacher", configs=self.teacher_configs, card=teacher_card,
                       tokenizer_files=self.tokenizer_files),
                Bundle(source=f"bench:{self.name}-student", configs=self.student_configs, card=student_card,
                       tokenizer_files=self.tokenizer_files))


def _tokenizer_files(corpus) -> dict:
    from ane_diffusion.tokenizer import MERGES_HEADER, build_clip_vocab

    vocab, merges = build_clip_vocab(corpus)
    merges_text = MERGES_HEADER + "\n" + "".join(f"{a} {b}\n" for a, b in merges)
    return {"vocab.json": json.dumps(vocab), "merges.txt": merges_text}


def _private_free(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def arch_spec(arch: str) -> ArchSpec:
    check_arch(arch)
    if arch == "sd15":
        from ..testing import sd15

        files = _tokenizer_files([PROMPTS["sd15"]])
        vocab = json.loads(files["vocab.json"])
        bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
        configs = sd15.configs(bos, eos, eos)
        configs[TINY] = tiny_config(configs["vae"])  # TAESD's own shape (64 channels, 3 upsamplings)
        return ArchSpec("sd15", configs, files, default_w=6.5,
                        configs_from="ane_diffusion/testing/sd15.py",
                        info={"weights": "random (latency does not depend on weight values)",
                              "tokenizer": "CLIP BPE built from the prompt (valid ids < 49408)"})
    from ane_diffusion.bundle import EMBEDDED_MODELS, embedded_root, resolve_bundle

    if (embedded_root() / "models" / EMBEDDED_MODELS["default"]).is_dir():
        bundle = resolve_bundle("default")
        configs = {name: _private_free(bundle.configs[name]) for name in ("unet", "text_encoder", "vae")}
        configs["unet"].pop("time_cond_proj_dim", None)
        configs["scheduler"] = bundle.configs["scheduler"]
        configs[TINY] = _private_free(bundle.configs[TINY]) if TINY in bundle.configs else tiny_config(configs["vae"])
        return ArchSpec("demo", configs, bundle.tokenizer_files, default_w=bundle.card.default_w,
                        guidance_dim=bundle.card.guidance_embedding_dim or GUIDANCE_EMBEDDING_DIM,
                        configs_from="ane_diffusion/assets/demo",
                        info={"weights": "random (latency does not depend on weight values)"})
    from ane_diffusion.demo import configs as demo

    files, vocab = demo.tokenizer_files()
    configs = {"unet": demo.unet_config(), "vae": demo.vae_config(), "text_encoder": demo.text_encoder_config(vocab),
               "scheduler": demo.scheduler_config()}
    configs[TINY] = tiny_config(configs["vae"])
    return ArchSpec("demo", configs, files, default_w=3.0, configs_from="ane_diffusion/demo/configs.py",
                    info={"weights": "random (ane_diffusion/assets/demo not installed; latency does not "
                                     "depend on weight values)"})


ARCHITECTURE_KEYS = {
    "unet": ("in_channels", "sample_size", "block_out_channels", "layers_per_block", "down_block_types",
             "up_block_types", "cross_attention_dim", "attention_head_dim", "time_cond_proj_dim"),
    "vae": ("latent_channels", "block_out_channels", "layers_per_block"),
    "text_encoder": ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "max_position_embeddings"),
}
"""Config keys that change a network's work: checked between ``--arch`` and a Core ML export."""


def _plain(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def config_mismatch(reference: dict, other: dict) -> Optional[str]:
    """The first architecture key ``other`` records with a value different from ``reference``'s
    (keys ``other`` does not record are not compared), or None when they agree."""
    for part, keys in ARCHITECTURE_KEYS.items():
        theirs = other.get(part) or {}
        for key in keys:
            if key not in theirs:
                continue
            value, expected = theirs[key], reference.get(part, {}).get(key)
            if isinstance(value, (list, tuple)) and 0 in value:
                continue  # a placeholder the export reader writes when it does not know the channels
            if _plain(value) != _plain(expected):
                return f"{part}.{key} is {value}, --arch has {expected}"
    return None


@dataclass
class TorchSetup:
    spec: ArchSpec
    teacher: object
    """Pipeline of the guided teacher."""
    student: object
    """Pipeline of the guidance-distilled student."""
    backend_info: dict


def build_torch(arch: str, device: Optional[str] = None, seed: int = 0, log=None) -> TorchSetup:
    """Random-weight teacher and student pipelines of ``arch`` on the torch backend."""
    import time

    import torch

    from ane_diffusion.backends.torch_backend import TorchBackend, default_dtype, select_device
    from ane_diffusion.pipeline import Pipeline
    from ane_diffusion.student import add_guidance_input
    from ane_diffusion.torch_models import TorchComponents, build_from_configs

    spec = arch_spec(arch)
    start = time.perf_counter()
    torch.manual_seed(seed)
    components = build_from_configs(spec.teacher_configs)
    with _quiet_diffusers():
        student_unet = add_guidance_input(components.unet, spec.guidance_dim)
    target = select_device(device)
    dtype = default_dtype(target)
    for module in (components.text_encoder, components.unet, components.vae, components.vae_tiny, student_unet):
        _place(module, target, dtype)
    teacher_bundle, student_bundle = spec.bundles()
    teacher = Pipeline(teacher_bundle, TorchBackend(teacher_bundle, device=str(target), dtype=dtype,
                                                    components=components))
    student = Pipeline(student_bundle, TorchBackend(student_bundle, device=str(target), dtype=dtype,
                                                    components=TorchComponents(components.text_encoder, student_unet,
                                                                               components.vae, components.vae_tiny)))
    if log:
        log(f"built {arch} teacher and student in {time.perf_counter() - start:.1f}s")
    info = {"name": "torch", "device": str(target), "dtype": str(dtype).replace("torch.", ""),
            "threads": torch.get_num_threads(),
            "parameters_m": {name: round(sum(p.numel() for p in m.parameters()) / 1e6, 3) for name, m in
                             (("text_encoder", components.text_encoder), ("unet_teacher", components.unet),
                              ("unet_student", student_unet), ("vae", components.vae),
                              ("vae_tiny", components.vae_tiny))}}
    return TorchSetup(spec, teacher, student, info)


def build_student_unet(arch: str, device: Optional[str] = None, seed: int = 0):
    """Only the student UNet of ``arch`` (for ``--check-unet``), with its spec."""
    import torch
    from diffusers import UNet2DConditionModel

    from ane_diffusion.backends.torch_backend import default_dtype, select_device
    from ane_diffusion.student import add_guidance_input

    spec = arch_spec(arch)
    torch.manual_seed(seed)
    teacher = UNet2DConditionModel.from_config(spec.teacher_configs["unet"])
    with _quiet_diffusers():
        student = add_guidance_input(teacher, spec.guidance_dim)
    del teacher
    target = select_device(device)
    return spec, _place(student, target, default_dtype(target)), target


def _place(module, device, dtype):
    """Eval mode, no gradients, on ``device`` in ``dtype`` (dtype only when it changes: diffusers warns
    about any explicit dtype cast)."""
    import torch

    module.eval().requires_grad_(False).to(device)
    if dtype != torch.float32:
        with _quiet_diffusers():
            module.to(dtype=dtype)
    return module


@contextlib.contextmanager
def _quiet_diffusers():
    """diffusers' "modules that should be kept in float32: []" warning on every ``.to(dtype=...)``."""
    from diffusers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)
