"""Conversion targets: who runs the packages. ``ane-diffusion`` (default: this project's runtime and
``swift_bridge``, w an input) and ``apple-pipeline`` (:mod:`.apple_pipeline`: Apple's Swift
``StableDiffusionPipeline``, w fixed, epsilon output, float32 tensors)."""

DEFAULT = "ane-diffusion"
TARGETS = (DEFAULT, "apple-pipeline")
