"""Core ML export end to end on tiny bundles: convert, contract, parity, compression, chunks, re-runs,
and the Core ML backend (numpy MIL executor here; Core ML itself needs macOS).

Exports are built once per module: the tiny student (all four components) and teacher (all four).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ct = pytest.importorskip("coremltools")
pytest.importorskip("diffusers")
pytest.importorskip("sklearn")

from ane_diffusion.atomic import OutputError  # noqa: E402
from ane_diffusion.bundle import resolve_bundle  # noqa: E402
from ane_diffusion_conversion import ConvertOptions, convert_bundle, read_contract, verify_export  # noqa: E402
from ane_diffusion_conversion.contract import CONTRACT_NAME  # noqa: E402
from ane_diffusion_conversion.mil_executor import MILExecutor  # noqa: E402
from ane_diffusion_conversion.options import ConversionError  # noqa: E402
from ane_diffusion_conversion.progress import Progress  # noqa: E402
from ane_diffusion_conversion.runtime import ComponentRunner  # noqa: E402
from ane_diffusion_conversion.verify import psnr, threshold  # noqa: E402

PACKAGES = ["TextEncoder.mlpackage", "Unet.mlpackage", "VAEDecoder.mlpackage", "VAEEncoder.mlpackage"]


def convert(model, output, **options):
    progress = Progress(enabled=False)
    result = convert_bundle(ConvertOptions(model=model, output=output, **options), progress=progress)
    return result


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "ane_diffusion", *map(str, args)], capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def student_export(tiny_student, tmp_path_factory):
    out = tmp_path_factory.mktemp("coreml") / "student"
    return out, convert(tiny_student, out)


@pytest.fixture(scope="module")
def teacher_export(tiny_teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("coreml") / "teacher"
    return out, convert(tiny_teacher, out)


# --------------------------------------------------------------------------------------------- #
# Layout and contract
# --------------------------------------------------------------------------------------------- #


def io_of(package: Path):
    """{name: (shape, dtype)} of a saved package's inputs and outputs, from its spec."""
    spec = ct.models.MLModel(str(package), skip_model_load=True).get_spec()
    kinds = {65552: "float16", 65568: "float32", 131104: "int32"}

    def table(features):
        return {f.name: (list(f.type.multiArrayType.shape), kinds[f.type.multiArrayType.dataType]) for f in features}

    return table(spec.description.input), table(spec.description.output)


def test_student_export_layout_and_contract(student_export, tiny_student):
    out, result = student_export
    assert result.converted == ["text_encoder", "unet", "vae_decoder", "vae_encoder"] and result.skipped == []
    assert sorted(p.name for p in out.iterdir()) == sorted(PACKAGES + ["merges.txt", "vocab.json", CONTRACT_NAME])
    bundle = resolve_bundle(tiny_student)
    contract = json.loads((out / CONTRACT_NAME).read_text())
    assert contract == read_contract(out) == result.contract
    assert list(contract)[:9] == ["format_version", "model", "w_convention", "image", "latent", "schedule",
                                  "tokenizer", "components", "recommended"]
    assert contract["format_version"] == 1
    assert contract["model"] == bundle.card.to_dict()
    assert contract["w_convention"] == "paper: guidance_scale = 1 + w"
    assert contract["image"] == {"height": 16, "width": 16}
    assert contract["latent"] == {"channels": 4, "height": 8, "width": 8, "scaling_factor": 0.18215}
    assert contract["schedule"] == bundle.configs["scheduler"]
    assert contract["tokenizer"] == {"vocab": "vocab.json", "merges": "merges.txt", "max_length": 77}
    assert (out / "vocab.json").read_text() == bundle.tokenizer_files["vocab.json"]
    assert contract["recommended"] == {"sampler": "ddim", "steps": 4, "w": 3.0}
    assert contract["attention"] == "split_einsum" and contract["minimum_deployment_target"] == "iOS16"
    assert contract["compression"]["Unet"]["spec"] == "none" and contract["compression"]["Unet"]["bytes"] > 0
    assert contract["converter"]["coremltools"] == ct.__version__
    assert contract["converter"]["torch"] == torch.__version__

    comps = contract["components"]
    assert list(comps) == ["TextEncoder", "Unet", "VAEDecoder", "VAEEncoder"]
    shapes = {name: ({i["name"]: (i["shape"], i["dtype"]) for i in c["inputs"]},
                     {o["name"]: (o["shape"], o["dtype"]) for o in c["outputs"]}) for name, c in comps.items()}
    assert shapes["TextEncoder"] == ({"input_ids": ([1, 77], "int32")},
                                     {"last_hidden_state": ([1, 77, 32], "float16"),
                                      "pooled_outputs": ([1, 32], "float16")})
    assert shapes["Unet"] == ({"sample": ([1, 4, 8, 8], "float16"), "timestep": ([1], "float16"),
                               "encoder_hidden_states": ([1, 32, 1, 77], "float16"),
                               "guidance_weight": ([1], "float32")},
                              {"noise_pred": ([1, 4, 8, 8], "float16")})
    assert comps["Unet"]["batch"] == 1 and "chunks" not in comps["Unet"]
    assert shapes["VAEDecoder"] == ({"z": ([1, 4, 8, 8], "float16")}, {"image": ([1, 3, 16, 16], "float16")})
    assert shapes["VAEEncoder"] == ({"x": ([1, 3, 16, 16], "float16")}, {"latent": ([1, 8, 8, 8], "float16")})
    for name, component in comps.items():
        assert component["file"] == f"{name}.mlpackage"
        assert all(item["description"] for item in component["inputs"] + component["outputs"])
        # the packages take and return exactly what the contract says
        inputs, outputs = io_of(out / component["file"])
        assert (inputs, outputs) == shapes[name]


def test_package_metadata(student_export):
    out, _ = student_export
    model = ct.models.MLModel(str(out / "Unet.mlpackage"), skip_model_load=True)
    assert "student UNet" in model.short_description and "16x16" in model.short_description
    assert model.author.startswith("ane-diffusion")
    assert "paper's guidance weight w" in model.input_description["guidance_weight"]
    assert "v_prediction" in model.output_description["noise_pred"]
    meta = model.user_defined_metadata
    assert meta["ane_diffusion.component"] == "Unet" and meta["ane_diffusion.model_kind"] == "guidance-distilled"
    assert meta["ane_diffusion.w_convention"] == "paper: guidance_scale = 1 + w"
    assert meta["ane_diffusion.latent_shape"] == "4x8x8" and meta["ane_diffusion.batch"] == "1"
    decoder = ct.models.MLModel(str(out / "VAEDecoder.mlpackage"), skip_model_load=True)
    assert "divided by scaling_factor" in decoder.input_description["z"]
    assert "[-1, 1]" in decoder.output_description["image"]


def test_contract_matches_swift_fixture_shape(student_export):
    """Every field the Swift package's fixture contract has, ours has too (same nesting)."""
    fixture = Path(__file__).resolve().parents[1] / "swift_bridge/Tests/ANEDiffusionTests/Fixtures/contract_example.json"
    if not fixture.exists():
        pytest.skip("swift_bridge fixture not present")
    theirs = json.loads(fixture.read_text())
    ours = read_contract(student_export[0])

    def keys(a, b, where):
        if isinstance(a, dict):
            missing = set(a) - set(b) - {"chunks"}  # chunks only when chunked
            assert not missing, f"{where}: {missing}"
            for k in a:
                if k in b:
                    keys(a[k], b[k], f"{where}.{k}")
        elif isinstance(a, list) and a and isinstance(a[0], dict):
            keys(a[0], b[0], f"{where}[0]")

    keys(theirs, ours, "contract")


def test_teacher_export(teacher_export, tiny_teacher):
    out, result = teacher_export
    contract = result.contract
    assert contract["model"]["kind"] == "teacher"
    unet = contract["components"]["Unet"]
    assert unet["batch"] == 2  # classifier-free guidance: unconditional and conditional rows
    assert [i["name"] for i in unet["inputs"]] == ["sample", "timestep", "encoder_hidden_states"]
    assert unet["inputs"][0]["shape"] == [2, 4, 8, 8] and unet["outputs"][0]["shape"] == [2, 4, 8, 8]
    assert io_of(out / "Unet.mlpackage")[0]["encoder_hidden_states"] == ([2, 32, 1, 77], "float16")


# --------------------------------------------------------------------------------------------- #
# Numerics
# --------------------------------------------------------------------------------------------- #


def test_student_fp16_parity(student_export, tiny_student):
    """Every component >= 35 dB against PyTorch; the UNet at w = 0, 3, 6 (angles up to 6000 rad)."""
    report = verify_export(tiny_student, student_export[0], ws=[0.0, 3.0, 6.0])
    print(report.table())
    assert {r.component for r in report.rows} == {"TextEncoder", "Unet", "VAEDecoder", "VAEEncoder"}
    assert [r.case.split()[0] for r in report.rows if r.component == "Unet"] == ["w=0", "w=3", "w=6"]
    assert all(r.threshold == 35.0 and r.precision == "float16" for r in report.rows)
    assert report.ok, report.table()


def test_teacher_fp16_parity(teacher_export, tiny_teacher):
    report = verify_export(tiny_teacher, teacher_export[0])
    assert report.ok, report.table()
    assert len([r for r in report.rows if r.component == "Unet"]) == 2


def test_sinusoid_embeddings_run_in_float32(student_export):
    """sin/cos (guidance and timestep embeddings) and everything feeding them are fp32; the rest fp16."""
    from coremltools.converters.mil.mil import types

    ex = MILExecutor(student_export[0] / "Unet.mlpackage")
    dtype = {op.name: op.outputs[0].dtype for op in ex._ops}
    trig = [op for op in ex._ops if op.op_type in ("sin", "cos")]
    assert len(trig) == 4  # timestep + guidance embeddings
    assert all(op.outputs[0].dtype == types.fp32 for op in trig)
    feeding = [op for op in ex._ops if op.op_type == "mul" and any(child.op_type in ("sin", "cos")
                                                                    for child in op.outputs[0].child_ops)]
    assert feeding and all(dtype[op.name] == types.fp32 for op in feeding)
    convs = [op for op in ex._ops if op.op_type == "conv"]
    assert convs and all(op.outputs[0].dtype == types.fp16 for op in convs)


def test_plain_float16_would_break_the_guidance_embedding(tmp_path):
    """The reason for the selector: a guidance embedding converted with plain float16 is noise at
    large w, the selector keeps it exact. (Converts a 2-op model, so it is cheap.)"""
    from ane_diffusion.guidance import torch_guidance_embedding
    from ane_diffusion_conversion.precision import compute_precision

    class Embed(torch.nn.Module):
        def forward(self, w):
            return torch_guidance_embedding(w, 16) * 1.0

    traced = torch.jit.trace(Embed(), (torch.tensor([3.0]),))
    w = np.array([7.77], np.float32)
    ref = Embed()(torch.from_numpy(w)).numpy()
    scores = {}
    for name, precision in (("plain", ct.precision.FLOAT16), ("selector", compute_precision("float16"))):
        model = ct.convert(traced, inputs=[ct.TensorType("w", shape=(1,), dtype=np.float32)],
                           outputs=[ct.TensorType("emb", dtype=np.float16)], convert_to="mlprogram",
                           compute_precision=precision, minimum_deployment_target=ct.target.iOS16,
                           skip_model_load=True)
        model.save(str(tmp_path / f"{name}.mlpackage"))
        scores[name] = psnr(MILExecutor(tmp_path / f"{name}.mlpackage").predict({"w": w})["emb"], ref)
    assert scores["plain"] < 20 < 60 < scores["selector"], scores


def test_palettized_6bit_chunked_unet(tiny_student, student_export, tmp_path):
    """6-bit k-means on a chunked UNet: compressed after the split, verify reports its PSNR."""
    out = tmp_path / "six"
    result = convert(tiny_student, out, components="unet", compress="unet=6", chunk_unet=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["UnetChunk1.mlpackage", "UnetChunk2.mlpackage", "merges.txt", "vocab.json", CONTRACT_NAME])
    contract = result.contract
    assert contract["components"]["Unet"]["chunks"] == ["UnetChunk1.mlpackage", "UnetChunk2.mlpackage"]
    info = contract["compression"]["Unet"]
    assert info["spec"] == "6" and info["mode"] == "palettize" and info["nbits"] == 6
    assert info["bytes"] < 0.6 * info["uncompressed_bytes"]
    for chunk in ("UnetChunk1.mlpackage", "UnetChunk2.mlpackage"):
        assert MILExecutor(out / chunk).op_counts.get("constexpr_lut_to_dense", 0) > 0, chunk
    stages = [e["stage"] for e in result.events if e["component"] == "Unet"]
    assert stages == ["load", "trace", "convert", "chunk", "compress", "save"]
    chunk1 = ct.models.MLModel(str(out / "UnetChunk1.mlpackage"), skip_model_load=True)
    assert chunk1.user_defined_metadata["ane_diffusion.component"] == "UnetChunk1"
    assert chunk1.user_defined_metadata["ane_diffusion.compression"] == "6"
    assert chunk1.short_description.startswith("chunk 1 of 2")
    assert "UnetChunk2" in chunk1.output_description[chunk1.get_spec().description.output[0].name]
    report = verify_export(tiny_student, out, ws=[0.0, 6.0])
    print(report.table())
    assert all(r.compression == "6" and r.threshold == threshold("float16", "6") for r in report.rows)
    assert report.ok, report.table()


def test_ios18_compression(tiny_student, tmp_path):
    """int4 blocks need iOS18: the package is built for it and the contract says so."""
    out = tmp_path / "int4"
    contract = convert(tiny_student, out, components="vae_decoder", compress="vae_decoder=int4",
                       min_target="iOS18").contract
    assert contract["minimum_deployment_target"] == "iOS18"
    assert contract["compression"]["VAEDecoder"]["granularity"] == "per_block"
    spec = ct.models.MLModel(str(out / "VAEDecoder.mlpackage"), skip_model_load=True).get_spec()
    assert spec.specificationVersion == 9  # iOS18
    report = verify_export(tiny_student, out)
    assert report.ok and report.rows[0].threshold == threshold("float16", "int4"), report.table()


def test_chunked_unet_matches_unchunked(tiny_student, student_export, tmp_path):
    out = tmp_path / "chunked"
    contract = convert(tiny_student, out, components="unet", chunk_unet=True).contract
    chunk1, chunk2 = MILExecutor(out / "UnetChunk1.mlpackage"), MILExecutor(out / "UnetChunk2.mlpackage")
    assert chunk1.input_names == ["sample", "timestep", "encoder_hidden_states", "guidance_weight"]
    assert chunk2.output_names == ["noise_pred"]
    assert set(chunk2.input_names) - {"encoder_hidden_states"} <= set(chunk1.output_names)
    rng = np.random.default_rng(0)
    feeds = {"sample": rng.standard_normal((1, 4, 8, 8)), "timestep": np.array([731.0]),
             "encoder_hidden_states": rng.standard_normal((1, 32, 1, 77)), "guidance_weight": np.array([5.5])}
    chunked = ComponentRunner(out, contract, "Unet", engine="executor").predict(feeds)["noise_pred"]
    whole = ComponentRunner(student_export[0], read_contract(student_export[0]), "Unet",
                            engine="executor").predict(feeds)["noise_pred"]
    assert np.abs(chunked - whole).max() <= 1e-3 * np.abs(whole).max()


# --------------------------------------------------------------------------------------------- #
# Re-runs, force, failures
# --------------------------------------------------------------------------------------------- #


def _stamp(folder: Path) -> dict:
    return {p.name: (p / "Manifest.json").stat().st_mtime_ns for p in folder.glob("*.mlpackage")}


def test_rerun_skips_finished_and_force_reconverts(student_export, tiny_student, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(student_export[0], out)
    before = _stamp(out)
    again = convert(tiny_student, out)
    assert again.converted == [] and again.skipped == ["text_encoder", "unet", "vae_decoder", "vae_encoder"]
    assert _stamp(out) == before and again.contract["components"] == student_export[1].contract["components"]

    with pytest.raises(ConversionError, match="VAEDecoder converted differently .*compression 'none' -> '8'.*--force"):
        convert(tiny_student, out, components="vae_decoder", compress="vae_decoder=8")
    assert _stamp(out) == before

    forced = convert(tiny_student, out, components="vae_decoder", compress="vae_decoder=int8", force=True)
    assert forced.converted == ["vae_decoder"]
    after = _stamp(out)
    assert after["VAEDecoder.mlpackage"] != before["VAEDecoder.mlpackage"]
    assert {k: v for k, v in after.items() if k != "VAEDecoder.mlpackage"} == \
        {k: v for k, v in before.items() if k != "VAEDecoder.mlpackage"}
    contract = read_contract(out)
    assert contract["compression"]["VAEDecoder"]["spec"] == "int8"
    assert contract["converter"]["components"]["VAEDecoder"]["options"]["compression"] == "int8"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary folders left

    # other components were made for 16x16: a different size for one of them alone is refused
    with pytest.raises(ConversionError, match="converted for height 16 \\(new 32\\)"):
        convert(tiny_student, out, components="vae_decoder", height=32, width=32, force=True)


def test_rerun_refuses_an_export_of_other_weights(student_export, tiny_teacher, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(student_export[0], out)
    with pytest.raises(ConversionError, match="TextEncoder converted differently .*source"):
        convert(tiny_teacher, out, components="text_encoder")
    with pytest.raises(ConversionError, match="holds Unet converted from different unet weights"):
        convert(tiny_teacher, out, components="text_encoder", force=True)


def test_failure_leaves_no_partial_package(tiny_student, tmp_path):
    from ane_diffusion_conversion.components import load_module

    def failing_loader(bundle, name):
        if name == "unet":
            raise RuntimeError("simulated crash while converting the UNet")
        return load_module(bundle, name)

    out = tmp_path / "export"
    with pytest.raises(RuntimeError, match="simulated crash"):
        convert_bundle(ConvertOptions(model=tiny_student, output=out, components="text_encoder,unet"),
                       progress=Progress(enabled=False), module_loader=failing_loader)
    # the finished text encoder stays (listed by the contract); nothing of the UNet, no temporaries
    assert sorted(p.name for p in out.iterdir()) == ["TextEncoder.mlpackage", CONTRACT_NAME, "merges.txt",
                                                     "vocab.json"]
    assert list(read_contract(out)["components"]) == ["TextEncoder"]

    fresh = tmp_path / "fresh"  # a failure before anything finished leaves no folder at all
    with pytest.raises(RuntimeError, match="simulated crash"):
        convert_bundle(ConvertOptions(model=tiny_student, output=fresh, components="unet"),
                       progress=Progress(enabled=False), module_loader=failing_loader)
    assert not fresh.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_output_folder_holding_something_else_is_refused(tiny_student, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not an ane-diffusion Core ML export"):
        convert(tiny_student, out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


# --------------------------------------------------------------------------------------------- #
# CLI
# --------------------------------------------------------------------------------------------- #


def test_cli_convert_progress_and_verify(tiny_student, student_export, tmp_path):
    out = tmp_path / "cli"
    proc = run_cli("convert", "--model", tiny_student, "--output", out, "--components", "vae_decoder")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    lines = proc.stderr.splitlines()
    for stage in ("load", "trace", "convert", "save"):
        assert any(line.startswith(f"[VAEDecoder] {stage}") and line.rstrip().split()[2] != "" for line in lines), \
            proc.stderr
    assert not any("Running MIL" in line or "Converting PyTorch" in line for line in lines)  # no library bars
    assert (out / "VAEDecoder.mlpackage").exists()
    rerun = run_cli("convert", "--model", tiny_student, "--output", out, "--components", "vae_decoder")
    assert rerun.returncode == 0 and "skipped" in rerun.stderr

    proc = run_cli("verify", "--model", tiny_student, "--coreml", student_export[0], "--json", tmp_path / "v.json")
    assert proc.returncode == 0, proc.stderr
    assert "notice:" in proc.stderr and "executor" in proc.stderr
    table = proc.stdout.splitlines()
    assert table[0].split()[:2] == ["component", "case"]
    assert {line.split()[0] for line in table[2:]} == {"TextEncoder", "Unet", "VAEDecoder", "VAEEncoder"}
    assert json.loads((tmp_path / "v.json").read_text())["ok"] is True


def test_cli_verify_fails_below_threshold(tiny_student, tiny_teacher, student_export, tmp_path):
    """An export checked against other weights (same kind) fails: exit 1 and a FAIL line."""
    other = tmp_path / "other-student"
    from ane_diffusion.testing import make_tiny_bundle

    make_tiny_bundle(other, student=True, seed=5, prediction_type="v_prediction", steps=4)
    proc = run_cli("verify", "--model", other, "--coreml", student_export[0], "--components", "vae_decoder")
    assert proc.returncode == 1
    assert "FAIL: VAEDecoder" in proc.stderr and "different vae weights" in proc.stderr


# --------------------------------------------------------------------------------------------- #
# The Core ML backend (numpy MIL executor here)
# --------------------------------------------------------------------------------------------- #


def image_psnr(a, b) -> float:
    return psnr(np.asarray(a, np.float32), np.asarray(b, np.float32))


def test_load_export_bundle(student_export, tiny_student):
    from ane_diffusion.backends.coreml_backend import load_export_bundle

    exported, original = load_export_bundle(student_export[0]), resolve_bundle(tiny_student)
    assert exported.card == original.card
    assert exported.configs["scheduler"] == original.configs["scheduler"]
    np.testing.assert_array_equal(exported.schedule.alphas_cumprod, original.schedule.alphas_cumprod)
    for name in ("vae_scale_factor", "latent_channels", "default_size", "scaling_factor"):
        assert getattr(exported, name) == getattr(original, name), name
    assert exported.configs["unet"]["block_out_channels"] == original.configs["unet"]["block_out_channels"]
    ids = "a red circle on a blue background"
    assert exported.tokenizer().encode(ids) == original.tokenizer().encode(ids)


def test_two_backends_agree_on_a_student_image(student_export, tiny_student, capsys):
    """Same seed, same sampler code: torch and Core ML (via the executor) images agree >= 30 dB."""
    from ane_diffusion import load_pipeline
    from ane_diffusion.backends.coreml_backend import EXECUTOR_NOTICE, CoreMLBackend, load_export_bundle
    from ane_diffusion.pipeline import Pipeline, Settings

    bundle = load_export_bundle(student_export[0])
    backend = CoreMLBackend(bundle)
    assert EXECUTOR_NOTICE in capsys.readouterr().err
    coreml = Pipeline(bundle, backend)
    reference = load_pipeline(str(tiny_student))
    settings = Settings(steps=4, w=3.0, seed=11, num_images=2)
    a = coreml.text_to_image("a red circle on a blue background", settings)
    b = reference.text_to_image("a red circle on a blue background", settings)
    assert a.timings.unet_calls == 4 and a.metadata[0]["backend"] == "coreml"
    scores = [image_psnr(x, y) for x, y in zip(a.images, b.images)]
    print("student image PSNR (coreml vs torch):", scores)
    assert min(scores) >= 30.0, scores
    # and the VAE encoder (image -> latent mean)
    images = np.random.default_rng(1).uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32)
    assert psnr(backend.encode_image(images), reference.backend.encode_image(images)) >= 35.0


def test_teacher_guided_on_coreml(teacher_export, tiny_teacher):
    """A teacher's batch-2 package runs classifier-free guidance (4 rows = 2 calls per step)."""
    from ane_diffusion import load_pipeline
    from ane_diffusion.backends.coreml_backend import CoreMLBackend, load_export_bundle
    from ane_diffusion.pipeline import Pipeline, Settings

    bundle = load_export_bundle(teacher_export[0])
    settings = Settings(steps=3, w=3.0, seed=2, num_images=2, sampler="ddim")
    a = Pipeline(bundle, CoreMLBackend(bundle)).text_to_image("a white cross", settings)
    b = load_pipeline(str(tiny_teacher)).text_to_image("a white cross", settings)
    scores = [image_psnr(x, y) for x, y in zip(a.images, b.images)]
    assert min(scores) >= 30.0, scores


def test_coreml_backend_errors(student_export, tiny_student):
    from ane_diffusion.backends.coreml_backend import CoreMLBackend, load_export_bundle
    from ane_diffusion.bundle import ModelLoadError
    from ane_diffusion.pipeline import GenerationError, Pipeline, Settings

    with pytest.raises(ModelLoadError, match="needs a Core ML export folder"):
        CoreMLBackend(resolve_bundle(tiny_student))
    with pytest.raises(ModelLoadError, match="not a Core ML export folder"):
        CoreMLBackend(tiny_student)
    with pytest.raises(ValueError, match="unknown compute units"):
        CoreMLBackend(student_export[0], compute_units="NPU")
    bundle = load_export_bundle(student_export[0])
    with pytest.raises(GenerationError, match="converted for 16x16 images"):
        Pipeline(bundle, CoreMLBackend(bundle)).text_to_image("a cat", Settings(steps=4, height=32, width=32))


def test_cli_generate_with_coreml_backend(student_export, tmp_path):
    """Needs bundle resolution to dispatch on the contract file (a change in ane_diffusion/bundle.py)."""
    from ane_diffusion.bundle import ModelLoadError

    try:
        resolve_bundle(student_export[0])
    except ModelLoadError:
        pytest.skip("resolve_bundle does not take Core ML export folders yet (see docs/coreml.md)")
    out = tmp_path / "img.png"
    proc = run_cli("generate", "a red circle", "--backend", "coreml", "--model", student_export[0],
                   "--steps", "2", "-w", "3", "--output", out)
    assert proc.returncode == 0, proc.stderr
    assert out.exists() and "notice:" in proc.stderr


def test_api_generate_with_the_proposed_bundle_dispatch(student_export, tmp_path, monkeypatch):
    """What ``generate --backend coreml --model EXPORT`` does once bundle resolution recognises the
    contract file (docs/coreml.md, "Integration"): simulated by swapping api.resolve_bundle."""
    import ane_diffusion.api as api
    from ane_diffusion.backends.coreml_backend import resolve_model
    from ane_diffusion.images import read_metadata

    monkeypatch.setattr(api, "resolve_bundle", resolve_model)
    result = api.generate("a red circle", model=str(student_export[0]), backend="coreml", steps=2, w=3.0,
                          output=tmp_path / "x.png", compute_units="CPU_AND_NE")
    meta = read_metadata(result.metadata[0]["path"])
    assert meta["backend"] == "coreml" and meta["model_kind"] == "guidance-distilled" and meta["w"] == 3.0
