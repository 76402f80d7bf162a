"""convert --target apple-pipeline: packages as Apple's Swift StableDiffusionPipeline feeds and reads them."""

import json
from pathlib import Path

import numpy as np
import pytest

# Written from apple/ml-stable-diffusion swift/StableDiffusion/pipeline/*.swift (read 2026-12):
# component -> (inputs: {name or FIRST: rank}, fed by name?, outputs read: {name or FIRST: rank}).
# Every tensor is MLShapedArray<Float32>. The Unet is fed exactly these three names (an extra required
# input fails the prediction) and its first output is read; TextEncoder and decoders are fed their first
# input whatever its name; TextEncoder's output is read by name.
FIRST = "<first>"
APPLE_CONTRACT = {
    "TextEncoder": ({FIRST: 2}, False, {"last_hidden_state": 3}),
    "Unet": ({"sample": 4, "timestep": 1, "encoder_hidden_states": 4}, True, {FIRST: 4}),
    "VAEDecoder": ({FIRST: 4}, False, {FIRST: 4}),
    "VAEEncoder": ({FIRST: 4}, False, {FIRST: 4}),
}
APPLE_RESOURCES = {"TextEncoder.mlpackage", "Unet.mlpackage", "VAEDecoder.mlpackage", "VAEEncoder.mlpackage",
                   "vocab.json", "merges.txt"}
VAE_SCALE = 0.5  # not Apple's 0.18215: the export must fold it


@pytest.fixture(scope="module")
def apple_student(tmp_path_factory):
    from ane_diffusion.testing import make_tiny_bundle

    path = make_tiny_bundle(tmp_path_factory.mktemp("apple") / "student", student=True, seed=3,
                            prediction_type="v_prediction", steps=4)
    config = json.loads((path / "vae" / "config.json").read_text())
    config["scaling_factor"] = VAE_SCALE
    (path / "vae" / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def apple_export(apple_student, tmp_path_factory):
    from ane_diffusion_conversion import ConvertOptions, convert_bundle
    from ane_diffusion_conversion.progress import Progress

    out = tmp_path_factory.mktemp("apple-export") / "export"
    convert_bundle(ConvertOptions(model=str(apple_student), output=out, target="apple-pipeline", guidance_weight=2.5),
                   progress=Progress(enabled=False))
    return out


def _features(package: Path):
    import coremltools as ct

    spec = ct.models.MLModel(str(package), skip_model_load=True).get_spec()
    array = ct.proto.FeatureTypes_pb2.ArrayFeatureType
    dtype = {array.FLOAT32: "float32", array.FLOAT16: "float16", array.INT32: "int32"}

    def table(features):
        return [(f.name, len(f.type.multiArrayType.shape), dtype[f.type.multiArrayType.dataType]) for f in features]

    return table(spec.description.input), table(spec.description.output), dict(spec.description.metadata.userDefined)


def test_export_matches_apples_swift_contract(apple_export):
    assert APPLE_RESOURCES <= {p.name for p in apple_export.iterdir()}
    for component, (inputs, by_name, outputs) in APPLE_CONTRACT.items():
        got_in, got_out, _ = _features(apple_export / f"{component}.mlpackage")
        assert all(dtype == "float32" for _, _, dtype in got_in + got_out), (component, got_in, got_out)
        if by_name:
            assert {name: rank for name, rank, _ in got_in} == inputs, component
        else:
            assert len(got_in) == 1 and got_in[0][1] == inputs[FIRST], component
        first_name, first_rank, _ = got_out[0]
        for name, rank in outputs.items():
            if name == FIRST:
                assert first_rank == rank, component
            else:
                assert (name, rank, "float32") in got_out, component
        if component == "Unet":
            assert len(got_out) == 1  # Apple reads featureNames.first: one output


def test_w_and_parameterisation_are_recorded(apple_export):
    contract = json.loads((apple_export / "ane_diffusion_coreml.json").read_text())
    section = contract["apple_pipeline"]
    assert contract["target"] == "apple-pipeline"
    assert section["guidance_weight"] == 2.5 and section["prediction_type"] == "epsilon"
    assert section["source_prediction_type"] == "v_prediction"
    assert section["settings"]["guidanceScale"] < 1 and section["settings"]["decoderScaleFactor"] == 0.18215
    assert "guidance_weight" not in [i["name"] for i in contract["components"]["Unet"]["inputs"]]
    _, _, meta = _features(apple_export / "Unet.mlpackage")
    assert meta["ane_diffusion.guidance_weight"] == "2.5" and meta["ane_diffusion.prediction_type"] == "epsilon"


def test_executor_matches_pytorch_at_float16(apple_export, apple_student):
    from ane_diffusion_conversion import verify_export

    report = verify_export(str(apple_student), apple_export)
    assert report.ok, report.table()
    for name in ("TextEncoder", "Unet", "VAEDecoder", "VAEEncoder"):
        assert report.min_psnr(name) >= 35.0


def test_epsilon_and_decoder_scale_against_independent_arithmetic(apple_export, apple_student):
    """Not the wrapper's own code: eps from x0 = alpha z - sigma v in float64, decode(latents / 0.5)."""
    import torch

    from ane_diffusion.bundle import resolve_bundle
    from ane_diffusion.guidance import torch_guidance_embedding
    from ane_diffusion.schedule import DiscreteSchedule
    from ane_diffusion_conversion.components import load_module
    from ane_diffusion_conversion.contract import read_contract
    from ane_diffusion_conversion.runtime import ComponentRunner
    from ane_diffusion_conversion.verify import psnr

    bundle = resolve_bundle(str(apple_student))
    contract = read_contract(apple_export)
    scale = bundle.card.guidance_embedding_scale  # the students' 1, not LCM's 1000: the wrapper must use it
    assert scale == 1.0
    rng = np.random.default_rng(5)
    unet, vae = load_module(bundle, "unet"), load_module(bundle, "vae")
    schedule = DiscreteSchedule.from_diffusers_config(bundle.configs["scheduler"])
    runner = ComponentRunner(apple_export, contract, "Unet", engine="executor")
    for t in (999, 250, 20):
        z = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
        ehs = rng.standard_normal((1, 32, 1, 77)).astype(np.float32)
        got = runner.predict({"sample": z, "timestep": np.array([t], np.float32), "encoder_hidden_states": ehs})
        with torch.no_grad():
            v = unet(torch.from_numpy(z), torch.tensor([float(t)]), torch.from_numpy(ehs).squeeze(2).transpose(1, 2),
                     timestep_cond=torch_guidance_embedding(torch.tensor([2.5]), 16, scale)).sample.double().numpy()
        alpha, sigma = (float(a) for a in schedule.alpha_sigma(t))
        x0 = alpha * z - sigma * v
        eps = (z - alpha * x0) / sigma
        assert psnr(got["noise_pred"], eps) >= 35.0, t
        assert psnr(got["noise_pred"], v) < 30.0 or t > 900  # v itself is not what comes out
    latents = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    decoder = ComponentRunner(apple_export, contract, "VAEDecoder", engine="executor")
    image = decoder.predict({"z": latents / 0.18215})["image"]  # what Apple's pipeline feeds
    with torch.no_grad():
        want = vae.decode(torch.from_numpy(latents / VAE_SCALE)).sample.numpy()
        unfolded = vae.decode(torch.from_numpy(latents / 0.18215)).sample.numpy()
    assert psnr(image, want) >= 35.0
    assert psnr(image, unfolded) < psnr(image, want) - 10  # the control: without the fold it differs


def test_backend_refuses_an_apple_export(apple_export):
    from ane_diffusion.backends.coreml_backend import load_export_bundle
    from ane_diffusion.bundle import ModelLoadError

    with pytest.raises(ModelLoadError, match="StableDiffusionPipeline"):
        load_export_bundle(apple_export)


@pytest.mark.parametrize("options, message", [
    ({"guidance_weight": 2.0}, "apple-pipeline"),
    ({"target": "apple-pipeline", "sizes": "16x16,16x24"}, "one folder per size"),
    ({"target": "coreml-apple"}, "unknown target"),
    ({"sizes": "16x16,16"}, "HEIGHTxWIDTH"),
    ({"sizes": "16x16", "height": 16}, "not both"),
])
def test_option_errors(options, message):
    from ane_diffusion_conversion.options import ConversionError, ConvertOptions

    with pytest.raises(ConversionError, match=message):
        ConvertOptions(model="m", output="o", **options).validated()


def test_bundle_errors(tiny_teacher, apple_student, tmp_path):
    from ane_diffusion_conversion import ConvertOptions, convert_bundle
    from ane_diffusion_conversion.options import ConversionError

    with pytest.raises(ConversionError, match="needs a guidance-distilled student"):
        convert_bundle(ConvertOptions(model=str(tiny_teacher), output=tmp_path / "a", target="apple-pipeline"))
    with pytest.raises(ConversionError, match="outside the student's range"):
        convert_bundle(ConvertOptions(model=str(apple_student), output=tmp_path / "b", target="apple-pipeline",
                                      guidance_weight=20.0))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
