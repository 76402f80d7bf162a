"""Conversion of guidance-distilled Stable Diffusion components to Core ML for the Apple Neural Engine.

Imported as ``ane_diffusion_conversion`` (pyproject maps the ``conversion/`` folder to that name).

Entry points (imported on first use, so importing this package stays cheap and torch-free)::

    from ane_diffusion_conversion import ConvertOptions, convert_bundle, verify_export
    convert_bundle(ConvertOptions(model="runs/student", output="export", compress="unet=6"))
    report = verify_export("runs/student", "export")      # PSNR per component vs PyTorch

Sub-modules:

- ``options``      ConvertOptions, compression specs, deployment targets (no torch, no coremltools).
- ``contract``     the export folder's ``ane_diffusion_coreml.json``: geometry, I/O specs, read/build.
- ``convert``      convert_bundle: load -> trace -> convert -> [chunk] -> [compress] -> save (-> compile).
- ``components``   source-module loading, ANE wrappers (the student UNet takes w), tracing.
- ``precision``    float16 compute with the sinusoid embeddings kept in float32.
- ``compression``  palettization / linear quantization configs.
- ``mixed_bit``    ``auto:35``: per-layer 4/6/8-bit palettization from measured sensitivity.
- ``targets``      who runs the packages: ``apple_pipeline`` (Apple's Swift StableDiffusionPipeline).
- ``runtime``      run an export's packages: Core ML on macOS, the numpy MIL executor elsewhere.
- ``verify``       PSNR of each converted component against its PyTorch source.
- ``ane.*``        (B, C, 1, S) layer norm, split-einsum attention, diffusers / CLIP rewrites.
- ``mil_executor`` op-by-op numpy executor of a saved ``.mlpackage`` (Core ML parity checks on Linux).
"""

_EXPORTS = {
    "ConvertOptions": "options", "ConversionError": "options", "CompressionSpec": "options",
    "parse_compression": "options", "convert_bundle": "convert", "ConvertResult": "convert",
    "read_contract": "contract", "CONTRACT_NAME": "contract", "verify_export": "verify",
    "VerifyReport": "verify", "psnr": "verify", "Progress": "progress",
}


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
