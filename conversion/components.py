"""The PyTorch side of a conversion: load one source module, rewrite it for the ANE, trace it.

- :func:`load_module` builds one of a bundle's modules (``text_encoder``, ``unet``, ``vae``) from its
  config and loads only its safetensors weights (a full SD checkpoint is never loaded whole just to
  convert the text encoder);
- :func:`traceable` wraps the rewritten module with the package's plain-tensor signature;
- :func:`example_inputs` / :func:`trace` produce the TorchScript module ``ct.convert`` takes.

The student UNet wrapper takes the raw guidance weight ``w`` (B,) and computes its sinusoidal
embedding itself (the card's :class:`ane_diffusion.guidance.GuidanceEmbedding`), so an app feeds w
directly; :mod:`.precision` keeps that embedding in float32 inside float16 packages.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

from .contract import Geometry


@contextlib.contextmanager
def quiet_libraries(progress_bars: bool = True):
    """Silence import-time and tracing chatter of coremltools / diffusers / torch.jit (not errors);
    with ``progress_bars=False`` also coremltools' own tqdm bars (written to stderr)."""
    names = ("coremltools", "diffusers", "transformers")
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.ExitStack() as stack:
            if not progress_bars:
                stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
            warnings.filterwarnings("ignore", category=UserWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            try:
                from torch.jit import TracerWarning

                warnings.filterwarnings("ignore", category=TracerWarning)
            except ImportError:  # pragma: no cover
                pass
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def import_coremltools():
    """``import coremltools`` without its Linux warnings (no native runtime, untested torch/sklearn)."""
    with quiet_libraries():
        import coremltools

    return coremltools


# --------------------------------------------------------------------------------------------- #
# Loading
# --------------------------------------------------------------------------------------------- #


def build_module(configs: dict, name: str):
    """A randomly initialised ``text_encoder`` (CLIPTextModel), ``unet`` or ``vae`` from its config."""
    from ane_diffusion.bundle import ModelLoadError

    config = configs.get(name)
    if not isinstance(config, dict):
        raise ModelLoadError(f"no {name} config")
    if name == "vae_tiny":
        from ane_diffusion.decoders import build_tiny

        with quiet_libraries():
            return build_tiny(config)
    with quiet_libraries():
        if name == "text_encoder":
            from transformers import CLIPTextConfig, CLIPTextModel

            text = {k: v for k, v in config.items() if not k.startswith("_") and k != "architectures"}
            return CLIPTextModel(CLIPTextConfig(**text))
        if name == "unet":
            from diffusers import UNet2DConditionModel

            return UNet2DConditionModel.from_config(config)
        from diffusers import AutoencoderKL

        return AutoencoderKL.from_config(config)


def load_module(bundle, name: str):
    """The bundle's ``text_encoder``, ``unet`` or ``vae`` as a float32 eval-mode torch module."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from ane_diffusion.bundle import WEIGHT_FILES, ModelLoadError

    if not isinstance(bundle.configs.get(name), dict):
        raise ModelLoadError(f"model {bundle.source} has no {name} config")
    module = build_module(bundle.configs, name)
    if bundle.single_file is not None:
        prefix = f"{name}."
        with safe_open(str(bundle.single_file), framework="pt") as handle:
            state = {key[len(prefix):]: handle.get_tensor(key) for key in handle.keys() if key.startswith(prefix)}
        where = f"{bundle.single_file}:{name}"
    elif bundle.component_dirs:
        path = bundle.weights_path(name)
        if not path.exists():
            raise ModelLoadError(f"model folder is missing {name}/{WEIGHT_FILES[name]}")
        state, where = load_file(str(path)), str(path)
    else:
        raise ModelLoadError(f"model {bundle.source} has no weights for {name}")
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise ModelLoadError(f"weights in {where} do not fit the config: {detail}")
    del state
    return module.eval().requires_grad_(False)  # built in float32; loaded weights are cast to it


# --------------------------------------------------------------------------------------------- #
# Wrappers
# --------------------------------------------------------------------------------------------- #


def _student_unet_class():
    import torch

    from ane_diffusion.guidance import GuidanceEmbedding

    from .ane.rewrite import UNetANEWrapper

    class StudentUNetANEWrapper(torch.nn.Module):
        """forward(sample, timestep, encoder_hidden_states (B, C, 1, S), guidance_weight (B,)) -> noise_pred.

        The raw w goes in; its embedding (the card's: sinusoid of w x scale) is computed here.
        """

        def __init__(self, unet, embedding: GuidanceEmbedding) -> None:
            super().__init__()
            self.inner = UNetANEWrapper(unet)
            self.embedding = embedding

        def forward(self, sample, timestep, encoder_hidden_states, guidance_weight):
            cond = self.embedding.torch(guidance_weight)  # (B, D) float32
            return self.inner(sample, timestep, encoder_hidden_states, cond)

    return StudentUNetANEWrapper


def rewrite(name: str, module, attention: str, chunk_size: int):
    """The ANE rewrite of a source module: in place for the UNet / VAE, a new module for CLIP; the
    tiny autoencoder (convolutions, ReLU and nearest upsampling only) needs none."""
    from .ane import rewrite as rw

    if name == "vae_tiny":
        return module.eval()
    if name == "text_encoder":
        return rw.rewrite_clip_text_model(module, attention, chunk_size).eval()
    if name == "unet":
        return rw.rewrite_unet(module, attention, chunk_size).eval()
    return rw.rewrite_vae(module, attention, chunk_size).eval()


def traceable(key: str, rewritten, geo: Geometry):
    """The plain-tensor module to trace for component ``key`` from its rewritten source module."""
    from .ane import rewrite as rw

    if key == "text_encoder":
        return rewritten
    if key == "unet":
        if geo.student:
            return _student_unet_class()(rewritten, geo.guidance).eval()
        return rw.UNetANEWrapper(rewritten).eval()
    if type(rewritten).__name__ == "AutoencoderTiny":
        from ane_diffusion.decoders import tiny_decoder

        if key == "vae_decoder":
            return tiny_decoder(rewritten, geo.scaling_factor).eval()
        return _tiny_moments_class()(rewritten, geo.scaling_factor).eval()
    if key in ("vae_decoder", "vae_decoder_full"):
        return rw.VAEDecoderANEWrapper(rewritten).eval()
    return rw.VAEEncoderANEWrapper(rewritten).eval()


def _tiny_moments_class():
    import torch

    from ane_diffusion.decoders import tiny_encoder

    from .contract import TINY_LOG_VARIANCE

    class TinyEncoderMoments(torch.nn.Module):
        """forward(x (1, 3, H, W) in [-1, 1]) -> latent (1, 2C, h, w): the tiny encoder's z (the full
        encoder's convention) and a constant log-variance, Apple's VAEEncoder layout."""

        def __init__(self, tiny, scaling_factor: float) -> None:
            super().__init__()
            self.encode = tiny_encoder(tiny, scaling_factor)

        def forward(self, x):
            z = self.encode(x)
            return torch.cat([z, torch.full_like(z, TINY_LOG_VARIANCE)], dim=1)

    return TinyEncoderMoments


def example_inputs(key: str, geo: Geometry, bundle, seed: int = 0) -> tuple:
    """Tracing inputs in the package's input order (float32; the package's dtypes are set at convert)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    c, h, w = geo.latent_channels, geo.latent_height, geo.latent_width
    if key == "text_encoder":
        text = bundle.configs["text_encoder"]
        bos, eos = int(text.get("bos_token_id", 0)), int(text.get("eos_token_id", 1))
        vocab = int(text.get("vocab_size", 1000))
        ids = torch.full((1, geo.max_length), eos, dtype=torch.int32)
        ids[0, 0] = bos
        ids[0, 1:8] = torch.randint(0, max(vocab - 2, 1), (7,), generator=gen, dtype=torch.int32)
        return (ids,)
    if key == "unet":
        b = geo.unet_batch
        inputs = (torch.randn(b, c, h, w, generator=gen), torch.full((b,), 500.0),
                  torch.randn(b, geo.text_hidden, 1, geo.max_length, generator=gen))
        return inputs + ((torch.full((b,), 3.0),) if geo.student else ())
    if key in ("vae_decoder", "vae_decoder_full"):
        return (torch.randn(1, c, h, w, generator=gen),)
    return (torch.rand(1, 3, geo.height, geo.width, generator=gen) * 2 - 1,)


def trace(module, inputs):
    import torch

    with torch.no_grad(), quiet_libraries():
        return torch.jit.trace(module, inputs, check_trace=False, strict=False)
