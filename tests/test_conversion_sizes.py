"""convert --sizes: one export, several image sizes (Core ML enumerated shapes); verify and generate use each."""

import json

import numpy as np
import pytest

SIZES = "16x16,16x24"


@pytest.fixture(scope="module")
def multi_size_export(tiny_student, tmp_path_factory):
    from ane_diffusion_conversion import ConvertOptions, convert_bundle
    from ane_diffusion_conversion.progress import Progress

    out = tmp_path_factory.mktemp("sizes") / "export"
    convert_bundle(ConvertOptions(model=str(tiny_student), output=out, sizes=SIZES,
                                  components="text_encoder,unet,vae_decoder"), progress=Progress(enabled=False))
    return out


def test_contract_and_packages_list_every_size(multi_size_export):
    import coremltools as ct

    contract = json.loads((multi_size_export / "ane_diffusion_coreml.json").read_text())
    assert [(s["height"], s["width"]) for s in contract["sizes"]] == [(16, 16), (16, 24)]
    assert (contract["image"]["height"], contract["image"]["width"]) == (16, 16)  # the default: the first
    sample = {i["name"]: i for i in contract["components"]["Unet"]["inputs"]}["sample"]
    assert sample["shapes"] == [[1, 4, 8, 8], [1, 4, 8, 12]]
    assert contract["components"]["VAEDecoder"]["outputs"][0]["shapes"] == [[1, 3, 16, 16], [1, 3, 16, 24]]
    assert "shapes" not in contract["components"]["TextEncoder"]["inputs"][0]
    spec = ct.models.MLModel(str(multi_size_export / "Unet.mlpackage"), skip_model_load=True).get_spec()
    enumerated = spec.description.input[0].type.multiArrayType.enumeratedShapes.shapes
    assert [list(s.shape) for s in enumerated] == [[1, 4, 8, 8], [1, 4, 8, 12]]


def test_verify_runs_every_size(multi_size_export, tiny_student):
    from ane_diffusion_conversion import verify_export

    report = verify_export(str(tiny_student), multi_size_export)
    assert report.ok, report.table()
    labels = [row.case for row in report.rows if row.component in ("Unet", "VAEDecoder")]
    assert any(label.endswith("8x8") for label in labels) and any(label.endswith("8x12") for label in labels)
    assert all(row.psnr >= 35.0 for row in report.rows)


def test_generate_chooses_by_size(multi_size_export, tiny_student):
    from ane_diffusion.backends.coreml_backend import CoreMLBackend, load_export_bundle
    from ane_diffusion.backends.torch_backend import TorchBackend
    from ane_diffusion.bundle import resolve_bundle
    from ane_diffusion.pipeline import GenerationError, Pipeline, Settings

    bundle = load_export_bundle(multi_size_export)
    coreml = Pipeline(bundle, CoreMLBackend(bundle, engine="executor"))
    settings = Settings(steps=2, w=3.0, seed=4, height=16, width=24)
    image = np.asarray(coreml.text_to_image("a red circle", settings).images[0], np.float32)
    torch_bundle = resolve_bundle(str(tiny_student))
    ref = np.asarray(Pipeline(torch_bundle, TorchBackend(torch_bundle)).text_to_image("a red circle", settings)
                     .images[0], np.float32)
    assert image.shape == (16, 24, 3)
    mse = float(np.mean((image - ref) ** 2))
    assert 10 * np.log10(255.0 ** 2 / max(mse, 1e-10)) >= 30.0
    with pytest.raises(GenerationError, match="16x16, 16x24"):
        coreml.text_to_image("a red circle", Settings(steps=2, w=3.0, height=24, width=24))


def test_runner_refuses_an_unlisted_shape(multi_size_export):
    from ane_diffusion_conversion.contract import read_contract
    from ane_diffusion_conversion.runtime import ComponentRunner

    runner = ComponentRunner(multi_size_export, read_contract(multi_size_export), "VAEDecoder", engine="executor")
    assert runner.predict({"z": np.zeros((1, 4, 8, 12), np.float32)})["image"].shape == (1, 3, 16, 24)
    with pytest.raises(ValueError, match=r"\[1, 4, 8, 8\] or \[1, 4, 8, 12\]"):
        runner.predict({"z": np.zeros((1, 4, 12, 12), np.float32)})
