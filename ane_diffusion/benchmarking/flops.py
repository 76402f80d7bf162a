"""Work counts: FLOPs of one call of each network, counted by ``torch.utils.flop_counter``.

Counting runs the networks on the *meta* device (shapes only, no arithmetic, no weights), so the
work of a full-size Stable Diffusion call is counted in about a second on any machine and is
independent of the backend being timed. The call shapes are the ones the pipeline uses: token ids
(B, 77), latents (B, 4, h, w) with the text encoder's hidden states (B, 77, C), and for a student
the guidance embedding (B, d).

What is counted: convolutions, matrix multiplies and attention (2 FLOPs per multiply-add), which
is what torch's counter covers. Normalisations, activations, resampling and the sampler's
arithmetic are not counted (a few per cent of a UNet's arithmetic, and none of its matmul work).
On the CPU, PyTorch runs attention as ``_scaled_dot_product_flash_attention_for_cpu``, which
torch's counter does not know; :data:`CUSTOM_FORMULAS` adds it (with the same formula as the GPU
kernels), so counting a real CPU call gives the same number as the meta count.
"""

from __future__ import annotations

from functools import lru_cache


def _cpu_flash_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def custom_formulas() -> dict:
    import torch

    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return {op: _cpu_flash_attention_flops} if op is not None else {}


def count_flops(fn) -> int:
    """FLOPs torch's counter sees while ``fn()`` runs (under ``inference_mode``)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping=custom_formulas())
    with torch.inference_mode(), counter:
        fn()
    return int(counter.get_total_flops())


class WorkCounter:
    """FLOPs per call of a bundle's text encoder, UNet and VAE decoder, for any batch size.

    ``configs``: the bundle's ``{"unet", "text_encoder", "vae", ...}`` config dicts; the latent
    size is ``height // vae_factor`` by ``width // vae_factor``.
    """

    def __init__(self, configs: dict, height: int, width: int, text_length: int = 77):
        self.configs = configs
        factor = 2 ** (len(configs["vae"].get("block_out_channels", [0, 0, 0, 0])) - 1)
        self.latent_shape = (int(configs["unet"].get("in_channels", 4)), height // factor, width // factor)
        self.text_length = text_length
        self.hidden_size = int(configs["text_encoder"]["hidden_size"])
        self.guidance_dim = configs["unet"].get("time_cond_proj_dim")
        self._modules: dict = {}
        self._cache: dict = {}

    def _module(self, name: str):
        if name not in self._modules:
            import torch
            from diffusers import AutoencoderKL, UNet2DConditionModel
            from transformers import CLIPTextConfig, CLIPTextModel

            with torch.device("meta"):
                if name == "unet":
                    config = {k: v for k, v in self.configs["unet"].items() if not k.startswith("_")}
                    module = UNet2DConditionModel.from_config(config)
                elif name == "vae":
                    module = AutoencoderKL.from_config({k: v for k, v in self.configs["vae"].items()
                                                        if not k.startswith("_")})
                elif name == "vae_tiny":
                    from ane_diffusion.decoders import TINY, build_tiny

                    module = build_tiny(self.configs[TINY])
                else:
                    text = {k: v for k, v in self.configs["text_encoder"].items() if not k.startswith("_")}
                    text.pop("architectures", None)
                    module = CLIPTextModel(CLIPTextConfig(**text))
            self._modules[name] = module.eval()
        return self._modules[name]

    def flops(self, component: str, batch: int = 1) -> int:
        """FLOPs of one call: ``component`` is ``text_encoder``, ``unet``, ``vae_decode`` or
        ``vae_decode_tiny`` (the configs' ``vae_tiny`` decoder, :mod:`ane_diffusion.decoders`)."""
        key = (component, int(batch))
        if key not in self._cache:
            self._cache[key] = self._count(component, int(batch))
        return self._cache[key]

    def _count(self, component: str, batch: int) -> int:
        import torch

        meta = torch.device("meta")
        if component == "text_encoder":
            module = self._module("text_encoder")
            ids = torch.zeros(batch, self.text_length, dtype=torch.long, device=meta)
            return count_flops(lambda: module(ids))
        if component == "unet":
            module = self._module("unet")
            sample = torch.zeros(batch, *self.latent_shape, device=meta)
            t = torch.zeros(batch, dtype=torch.long, device=meta)
            hidden = torch.zeros(batch, self.text_length, self.hidden_size, device=meta)
            cond = torch.zeros(batch, int(self.guidance_dim), device=meta) if self.guidance_dim else None
            return count_flops(lambda: module(sample, t, encoder_hidden_states=hidden, timestep_cond=cond))
        if component == "vae_decode":
            module = self._module("vae")
            latents = torch.zeros(batch, *self.latent_shape, device=meta)
            return count_flops(lambda: module.decode(latents))
        if component == "vae_decode_tiny":
            module = self._module("vae_tiny")
            latents = torch.zeros(batch, *self.latent_shape, device=meta)
            return count_flops(lambda: module.decode(latents))
        raise ValueError(f"unknown component {component!r}")

    def image_flops(self, evaluations: dict) -> int:
        """FLOPs of one image from its evaluations ``{(component, batch): calls}``."""
        return sum(calls * self.flops(component, batch) for (component, batch), calls in evaluations.items())


def _decode(decoder: str) -> str:
    return "vae_decode" if decoder == "full" else f"vae_decode_{decoder}"


def guided_evaluations(steps: int, decoder: str = "full") -> dict:
    """Calls per image of a guided teacher (one prompt, one image): the prompt and the empty
    negative prompt encoded separately, one batch-2 UNet call per step, one decode. This is what
    :meth:`Pipeline.text_to_image` does and what Apple's Swift pipeline does."""
    return {("text_encoder", 1): 2, ("unet", 2): int(steps), (_decode(decoder), 1): 1}


def student_evaluations(steps: int, decoder: str = "full") -> dict:
    """Calls per image of a guidance-distilled student: one encode, one batch-1 UNet call a step."""
    return {("text_encoder", 1): 1, ("unet", 1): int(steps), (_decode(decoder), 1): 1}


@lru_cache(maxsize=None)
def reference_work(model: str) -> tuple:
    """``(teacher WorkCounter, student WorkCounter)`` of a reference model at 512x512:
    ``sd15`` (= SD 1.4's architecture) or ``sd21-base``; used by the projection."""
    from ..decoders import tiny_config
    from ..testing import sd15

    if model == "sd15":
        configs = sd15.configs()
    elif model == "sd21-base":
        configs = sd15.sd21_base_configs()
    else:
        raise ValueError(f"no reference configs for {model!r}")
    configs = dict(configs, vae_tiny=tiny_config(configs["vae"]))  # TAESD's shape for SD's VAE
    student = dict(configs, unet=configs["unet"] | {"time_cond_proj_dim": sd15.GUIDANCE_EMBEDDING_DIM})
    return (WorkCounter(configs, sd15.RESOLUTION, sd15.RESOLUTION),
            WorkCounter(student, sd15.RESOLUTION, sd15.RESOLUTION))
