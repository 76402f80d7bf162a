"""The catalogue of bad inputs (issue 12: nothing silent).

Every row of :data:`CATALOGUE` is a command line (run in-process through ``cli.main``) or a Python
API call that must fail cleanly:

* the expected exit code (CLI) or exception class (API);
* exactly one message line on stderr (``notice:`` lines aside) that contains the expected text, as a
  terminal shows it (a closed progress bar's ``\\r`` rewrites are rendered, so an error printed on a
  bar's line fails the check), and no traceback;
* nothing written: the row's working folder stays empty and every input file (models, exports,
  images, data) keeps its size, modification time and mode.

Adding a row is one line: ``Case(id, kind, call, code, message)``. ``call`` is a command string
with ``{placeholders}`` naming the inputs built by :func:`world` (``{work}`` is the row's empty
working folder), or a function ``call(world, work)`` for an API row; ``code`` is the exit code or the
exception class. The kinds are the issue's five: non-finite outputs, tracebacks, inputs accepted when
they should not be, files trusted without checking, hygiene. Behaviour that must *succeed* (16-bit
images scaled, grey RGB masks converted, damaged packages re-converted, the float32 decoder remedy,
umask-honouring modes) is tested after the table.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Union

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("coremltools")
pytest.importorskip("diffusers")

from PIL import Image  # noqa: E402

NONFINITE, TRACEBACK, ACCEPTED, FILES, HYGIENE = ("non-finite", "traceback", "accepted", "files", "hygiene")
KINDS = (NONFINITE, TRACEBACK, ACCEPTED, FILES, HYGIENE)


@dataclass(frozen=True)
class Case:
    id: str
    kind: str
    call: Union[str, Callable]
    """A command line with {placeholders}, or ``call(world, work)`` for the Python API."""
    code: Union[int, type]
    """The CLI's exit code, or the exception class an API call raises."""
    message: Union[str, tuple]
    """Text the single error line must contain (a tuple: every one of them)."""


def api(fn_name: str, *args, **kwargs) -> Callable:
    """An API row: ``ane_diffusion.<fn_name>(*args, **kwargs)`` with ``{placeholders}`` in string
    arguments filled from the world, and ``output`` put in the row's working folder."""

    def call(world, work):
        import ane_diffusion

        fill = (lambda v: v.format(**vars(world), work=work) if isinstance(v, str) else v)
        filled = {k: fill(v) for k, v in kwargs.items()}
        filled.setdefault("output", work / "api.png")
        return getattr(ane_diffusion, fn_name)(*map(fill, args), **filled)

    call.__name__ = fn_name
    return call


GEN = "generate 'a red circle' -o {work}/a.png --quiet"
EDIT = "edit 'a red circle' --image {source} -o {work}/a.png --quiet"
INPAINT = "inpaint 'a red circle' --image {source} --mask {mask} -o {work}/a.png --quiet"

CATALOGUE = [
    # 1. non-finite values: refused with the component, the step and a remedy, never a black PNG
    Case("generate-w-nan", NONFINITE, GEN + " --model demo-teacher --steps 4 -w nan", 2, "w must be a finite number"),
    Case("generate-w-inf", NONFINITE, GEN + " --model {student} -w inf", 2, "w must be a finite number"),
    Case("api-w-nan", NONFINITE, api("generate", "x", model="{student}", w=float("nan")), ValueError,
         "w must be a finite number"),
    Case("edit-strength-nan", NONFINITE, EDIT + " --model {student} --strength nan", 2,
         "strength must be a finite number"),
    Case("generate-nan-unet", NONFINITE, GEN + " --model {nan_unet} --steps 2", 2,
         "UNet's output at denoising step 1 (timestep"),
    Case("edit-nan-unet", NONFINITE, EDIT + " --model {nan_unet} --steps 2 --strength 1", 2,
         "UNet's output at denoising step 1"),
    Case("inpaint-nan-unet", NONFINITE, INPAINT + " --model {nan_unet} --steps 2", 2,
         "UNet's output at denoising step 1"),
    Case("generate-nan-text-encoder", NONFINITE, GEN + " --model {nan_text}", 2,
         "text encoder's output is not finite"),
    Case("generate-nan-decoder", NONFINITE, GEN + " --model {nan_decoder}", 2,
         "VAE decoder's output (image 1 of 1) is not finite"),
    Case("generate-nan-decoder-fp16", NONFINITE, GEN + " --model {nan_decoder} --vae-precision float16", 2,
         "pass --vae-precision float32"),
    Case("inpaint-nan-decoder", NONFINITE, INPAINT + " --model {nan_decoder}", 2,
         "VAE decoder's output (image 1 of 1) is not finite"),
    Case("edit-nan-encoder", NONFINITE, EDIT + " --model {nan_encoder}", 2, "VAE encoder's output is not finite"),
    Case("coreml-fp16-decoder-overflow", NONFINITE, GEN + " --backend coreml --model {overflow_export}", 2,
         ("overflowed inside the VAE decoder", "--vae-decoder-precision float32")),
    # 2. tracebacks: each of these used to print one
    Case("generate-device-bogus", TRACEBACK, GEN + " --model {student} --device bogus", 2, "unknown device 'bogus'"),
    Case("generate-device-cuda", TRACEBACK, GEN + " --model {student} --device cuda", 2, "CUDA is not available"),
    Case("generate-device-mps", TRACEBACK, GEN + " --model {student} --device mps", 2,
         "MPS (Apple GPU) is not available"),
    Case("bench-device-bogus", TRACEBACK, "bench --check-unet --device bogus", 2, "unknown device 'bogus'"),
    Case("bench-device-cuda", TRACEBACK, "bench --quick --device cuda --output-dir {work}", 2,
         "CUDA is not available"),
    Case("truncated-unet-weights", TRACEBACK, GEN + " --model {truncated}", 2,
         "diffusion_pytorch_model.safetensors is not a readable safetensors file"),
    Case("card-default-w-string", TRACEBACK, GEN + " --model {card_w_string}", 2,
         "card field default_w must be a finite number, got '3'"),
    Case("card-steps-string", TRACEBACK, GEN + " --model {card_steps_string}", 2,
         "card field recommended_steps must be a whole number, got '4'"),
    Case("huge-size", TRACEBACK, GEN + " --model {student} --width 100000 --height 100000", 2,
         "larger than the 4096-pixel limit"),
    Case("huge-batch", TRACEBACK, GEN + " --model {student} --num-images 1000000000", 2,
         "--num-images must be <= 65536"),
    Case("huge-batch-pixels", TRACEBACK, GEN + " --model {student} --num-images 20 --height 1024 --width 1024", 2,
         "use at most 16 and run again"),
    Case("distill-huge-resolution", TRACEBACK, "distill guidance --teacher {teacher} --data {data} -o {work}/run "
         "--resolution 100000 --quiet", 2, "--resolution must be in 1..4096"),
    Case("api-huge-batch", TRACEBACK, api("generate", "x", model="{student}", num_images=10**9), ValueError,
         "--num-images must be <= 65536"),
    Case("convert-huge-size", TRACEBACK, "convert --model {student} --output {work}/x --height 100000 --width 64",
         2, "larger than the 4096-pixel limit"),
    Case("coreml-weight-bin-deleted", TRACEBACK, GEN + " --backend coreml --model {export_no_weights}", 2,
         "weight.bin is missing; convert it again"),
    Case("verify-weight-bin-deleted", TRACEBACK, "verify --model default --coreml {export_no_weights}", 1,
         "FAIL: Unet damaged"),
    Case("distill-fp16-on-cpu", TRACEBACK, "distill guidance --teacher {teacher} --data {data} -o {work}/run "
         "--mixed-precision fp16 --updates 1 --quiet", 2, "--mixed-precision fp16 needs a CUDA or MPS device"),
    Case("edit-inpainting-unet", TRACEBACK, EDIT + " --model {inpaint9}", 2, "use inpaint"),
    Case("generate-inpainting-unet", TRACEBACK, GEN + " --model {inpaint9}", 2, "use inpaint"),
    # 3. accepted when it should not be, or silently changed
    Case("zero-size", ACCEPTED, GEN + " --model {student} --height 0 --width 0", 2, "height must be positive, got 0"),
    Case("teacher-w-huge", ACCEPTED, GEN + " --model demo-teacher --steps 4 -w 1e9", 2, "outside this model's range"),
    Case("teacher-w-negative", ACCEPTED, GEN + " --model demo-teacher --steps 4 -w -5", 2,
         "outside this model's range"),
    Case("api-steps-fraction", ACCEPTED, api("generate", "x", model="{student}", steps=2.5), ValueError,
         "steps must be a whole number, got 2.5"),
    Case("api-seed-fraction", ACCEPTED, api("generate", "x", model="{student}", seed=2.5), ValueError,
         "seed must be a whole number, got 2.5"),
    Case("api-num-images-fraction", ACCEPTED, api("generate", "x", model="{student}", num_images=1.5), ValueError,
         "--num-images must be a whole number"),
    Case("api-height-string", ACCEPTED, api("generate", "x", model="{student}", height="16"), ValueError,
         "height must be a whole number"),
    Case("api-edit-steps-fraction", ACCEPTED, api("edit", "{source}", "x", model="{student}", steps=2.5), ValueError,
         "steps must be a whole number"),
    Case("strength-hint-works", ACCEPTED, EDIT + " --model {teacher} --steps 3 --strength 0.33", 2,
         "raise --strength to at least 0.34"),
    Case("mask-with-colour", ACCEPTED, INPAINT.replace("{mask}", "{mask_colour}") + " --model {student}", 2,
         "the mask has colour"),
    Case("api-inpaint-mask-with-colour", ACCEPTED, api("inpaint", "{source}", "{mask_colour}", "x", model="{student}"),
         ValueError, "the mask has colour"),
    Case("api-inpaint-seed-fraction", ACCEPTED, api("inpaint", "{source}", "{mask}", "x", model="{student}", seed=0.5),
         ValueError, "seed must be a whole number"),
    Case("coreml-vae-precision", ACCEPTED, GEN + " --backend coreml --model {export_no_weights} "
         "--vae-precision float32", 2, "convert --vae-decoder-precision float32"),
    Case("convert-decoder-precision-without-decoder", ACCEPTED, "convert --model {student} --output {work}/x "
         "--components unet --vae-decoder-precision float32", 2, "needs vae_decoder among --components"),
    # 4. files trusted without checking
    Case("verify-interrupted-export", FILES, "verify --model {student} --coreml {interrupted}", 1,
         "missing Unet, VAEDecoder (an interrupted convert"),
    Case("generate-interrupted-export", FILES, GEN + " --backend coreml --model {interrupted}", 2,
         "lacks Unet, VAEDecoder"),
    Case("verify-changed-bytes", FILES, "verify --model {overflow_model} --coreml {export_changed} --components "
         "text_encoder", 1, "SHA-256 differs"),
    Case("coreml-truncated-weight-bin", FILES, GEN + " --backend coreml --model {export_truncated}", 2,
         "TextEncoder in"),
    Case("contract-vocab-outside", FILES, GEN + " --backend coreml --model {contract_parent}", 2,
         "must be a plain file name inside"),
    Case("contract-vocab-absolute", FILES, GEN + " --backend coreml --model {contract_absolute}", 2,
         "must be a plain file name inside"),
    Case("contract-package-outside", FILES, "verify --model default --coreml {contract_package}", 2,
         "must be a plain file name inside"),
    Case("convert-into-escaping-contract", FILES, "convert --model {student} --output {contract_parent} "
         "--components text_encoder", 2, "must be a plain file name inside"),
    Case("manifest-image-outside", FILES, "distill guidance --teacher {teacher} --data {data_outside} -o {work}/run "
         "--updates 1 --quiet", 2, "must be a relative path inside"),
    Case("checkpoint-file-outside", FILES, "distill guidance --teacher {teacher} --data {data} -o {run_escape} "
         "--updates 1 --resume --quiet", 2, "must be a plain file name inside"),
    # 5. hygiene
    Case("seed-names-what-was-typed", HYGIENE, GEN + " --model {student} --seed 4294967295 --num-images 2", 2,
         "seed 4294967295 with 2 images"),
    Case("distill-bad-data-creates-nothing", HYGIENE, "distill guidance --teacher {teacher} --data {data_missing} "
         "-o {work}/run --updates 1 --quiet", 2, "does not exist"),
    Case("error-not-on-progress-bar", HYGIENE, GEN.replace(" --quiet", "") + " --model {nan_unet} --steps 2", 2,
         "UNet's output at denoising step 1"),
]


# --------------------------------------------------------------------------------------------- #
# The inputs the rows name
# --------------------------------------------------------------------------------------------- #


def _edit_weights(folder: Path, component: str, fn) -> None:
    from safetensors.torch import load_file, save_file

    from ane_diffusion.bundle import WEIGHT_FILES

    path = folder / component / WEIGHT_FILES[component]
    state = load_file(str(path))
    fn(state)
    save_file(state, str(path))


def _poison(key: str):
    def fn(state):
        state[key].view(-1)[0] = float("nan")
    return fn


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _interrupt_on_unet(bundle, name):
    from ane_diffusion_conversion.components import load_module

    if name == "unet":
        raise KeyboardInterrupt
    return load_module(bundle, name)


@pytest.fixture(scope="module")
def world(tiny_student, tiny_teacher, tmp_path_factory):
    """Every input the catalogue names, built once: broken model copies, images, data folders, exports."""
    from ane_diffusion.bundle import embedded_coreml
    from ane_diffusion.testing import make_tiny_bundle
    from ane_diffusion_conversion import ConvertOptions, convert_bundle
    from ane_diffusion_conversion.contract import CONTRACT_NAME
    from ane_diffusion_conversion.progress import Progress

    root = tmp_path_factory.mktemp("world")
    w = SimpleNamespace(student=str(tiny_student), teacher=str(tiny_teacher))

    def copy(source, name) -> Path:
        shutil.copytree(source, root / name)
        setattr(w, name, str(root / name))
        return root / name

    _edit_weights(copy(tiny_teacher, "nan_unet"), "unet", _poison("conv_in.weight"))
    _edit_weights(copy(tiny_student, "nan_text"), "text_encoder", _poison("final_layer_norm.weight"))
    _edit_weights(copy(tiny_student, "nan_decoder"), "vae", _poison("decoder.conv_in.weight"))
    _edit_weights(copy(tiny_student, "nan_encoder"), "vae", _poison("encoder.conv_in.weight"))
    weights = copy(tiny_teacher, "truncated") / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    _edit_json(copy(tiny_student, "card_w_string") / "ane_diffusion.json", default_w="3")
    _edit_json(copy(tiny_student, "card_steps_string") / "ane_diffusion.json", recommended_steps="4")
    w.inpaint9 = str(make_tiny_bundle(root / "inpaint9", seed=3, unet_in_channels=9))

    images = root / "images"
    images.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(images / "source.png")
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 255
    Image.fromarray(mask).save(images / "mask.png")
    Image.new("RGB", (16, 16), (255, 0, 0)).save(images / "mask_colour.png")
    w.source, w.mask, w.mask_colour = (str(images / n) for n in ("source.png", "mask.png", "mask_colour.png"))

    def data_folder(name, rows):
        folder = root / name
        folder.mkdir()
        shutil.copy(images / "source.png", folder / "a.png")
        (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        setattr(w, name, str(folder))

    data_folder("data", [{"file": "a.png", "caption": "a red circle"}])
    data_folder("data_outside", [{"file": "../images/source.png", "caption": "a red circle"}])
    data_folder("data_missing", [{"file": "nope.png", "caption": "a red circle"}])
    run = root / "run_escape" / "checkpoint"
    run.mkdir(parents=True)
    (run / "state.json").write_text(json.dumps({"format": 1, "files": {"../student.safetensors": 1}, "meta": {},
                                                "optimizer": {}, "lr_scheduler": {}}))
    w.run_escape = str(root / "run_escape")

    # the embedded export, its Unet's weights deleted (an export written before content records)
    no_weights = copy(embedded_coreml(), "export_no_weights")
    (no_weights / "Unet.mlpackage" / "Data" / "com.apple.CoreML" / "weights" / "weight.bin").unlink()
    for name, vocab in (("contract_parent", "../outside/vocab.json"), ("contract_absolute", str(images / "x.json"))):
        contract = copy(embedded_coreml(), name) / CONTRACT_NAME
        data = json.loads(contract.read_text())
        data["tokenizer"]["vocab"] = vocab
        contract.write_text(json.dumps(data))
    contract = copy(embedded_coreml(), "contract_package") / CONTRACT_NAME
    data = json.loads(contract.read_text())
    data["components"]["Unet"]["file"] = "../Unet.mlpackage"
    contract.write_text(json.dumps(data))

    # a student whose VAE decoder overflows in float16 (first conv x 4000: harmless in float32);
    # its conversion is interrupted once after the TextEncoder (a copy keeps that state), then finished
    overflow = copy(tiny_student, "overflow_model")
    _edit_weights(overflow, "vae", lambda s: [s[k].mul_(4000) for k in ("decoder.conv_in.weight",
                                                                      "decoder.conv_in.bias")])
    export = root / "overflow_export"
    options = ConvertOptions(model=str(overflow), output=export, components="text_encoder,unet,vae_decoder")
    with pytest.raises(KeyboardInterrupt):
        convert_bundle(options, progress=Progress(enabled=False), module_loader=_interrupt_on_unet)
    shutil.copytree(export, root / "interrupted")
    w.interrupted = str(root / "interrupted")
    convert_bundle(options, progress=Progress(enabled=False))
    w.overflow_export = str(export)
    text_weights = Path("TextEncoder.mlpackage") / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    changed = copy(export, "export_changed") / text_weights
    raw = bytearray(changed.read_bytes())
    raw[-1] ^= 0xFF
    changed.write_bytes(bytes(raw))
    truncated = copy(export, "export_truncated") / text_weights
    truncated.write_bytes(truncated.read_bytes()[:-64])
    w.root = root
    return w


# --------------------------------------------------------------------------------------------- #
# Running a row
# --------------------------------------------------------------------------------------------- #


def snapshot(*folders) -> dict:
    """{path: (mode, size, SHA-256)} of every file and folder below ``folders`` (content, not mtimes:
    coremltools rewrites a package's Manifest.json unchanged when it opens one)."""
    import hashlib

    found = {}
    for folder in folders:
        for path in [Path(folder), *Path(folder).rglob("*")]:
            stat = path.lstat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
            found[str(path)] = (stat.st_mode, stat.st_size if digest else 0, digest)
    return found


def terminal_lines(text: str) -> list[str]:
    """Non-empty lines as a terminal shows them: a carriage return restarts its line."""
    return [line.rsplit("\r", 1)[-1].strip() for line in text.split("\n") if line.rsplit("\r", 1)[-1].strip()]


def run_row(case: Case, world, work: Path, capfd):
    """``(exit code or exception, stderr)`` of one row, run in-process with ``work`` as the cwd."""
    from ane_diffusion.cli import main

    previous = (os.getcwd(), warnings.showwarning)
    os.chdir(work)
    try:
        if callable(case.call):
            with warnings.catch_warnings():
                try:
                    case.call(world, work)
                    outcome = None
                except Exception as exc:  # noqa: BLE001 - the row says which class it must be
                    outcome = exc
            return outcome, str(outcome) if outcome is not None else ""
        argv = shlex.split(case.call.format(**vars(world), work=work))
        if argv[0] == "distill":  # accelerate keeps one state per process; a new run needs a fresh one
            from accelerate.state import AcceleratorState

            AcceleratorState._reset_state(reset_partial_state=True)
        try:
            outcome = main(argv)
        except SystemExit as exc:  # argparse
            outcome = exc.code
        return outcome, capfd.readouterr().err
    finally:
        os.chdir(previous[0])
        warnings.showwarning = previous[1]


@pytest.mark.parametrize("case", CATALOGUE, ids=[c.id for c in CATALOGUE])
def test_bad_input(case, world, tmp_path, capfd):
    assert case.kind in KINDS
    work = tmp_path / "work"
    work.mkdir()
    before = snapshot(world.root, world.student, world.teacher)
    capfd.readouterr()
    outcome, err = run_row(case, world, work, capfd)
    wanted = case.message if isinstance(case.message, tuple) else (case.message,)
    if callable(case.call):
        assert isinstance(outcome, case.code), f"{case.id}: raised {outcome!r}"
        assert all(text in err for text in wanted) and "\n" not in err, err
    else:
        assert outcome == case.code, f"{case.id}: exit {outcome}, stderr:\n{err}"
        assert "Traceback" not in err, err
        lines = [line for line in terminal_lines(err) if not line.startswith("notice:")]
        assert len(lines) == 1, f"{case.id}: expected one message line, got:\n" + "\n".join(lines)
        assert all(text in lines[0] for text in wanted), lines[0]
        assert lines[0].startswith(("error:", "FAIL:")), lines[0]
    assert list(work.iterdir()) == [], f"{case.id} wrote {list(work.iterdir())}"
    assert snapshot(world.root, world.student, world.teacher) == before, f"{case.id} changed its inputs"


def test_catalogue_covers_every_kind():
    assert {case.kind for case in CATALOGUE} == set(KINDS)
    assert len({case.id for case in CATALOGUE}) == len(CATALOGUE)


# --------------------------------------------------------------------------------------------- #
# What must work instead (the other side of each fix)
# --------------------------------------------------------------------------------------------- #


def _cli(argv, capfd):
    from ane_diffusion.cli import main

    previous = warnings.showwarning
    try:
        code = main([str(a) for a in argv])
    finally:
        warnings.showwarning = previous
    return code, capfd.readouterr().err


def test_float32_decoder_cures_the_fp16_overflow(world, tmp_path, capfd):
    """The remedy the overflow message names: the same export with a float32 VAEDecoder generates a
    real (not flat) image, and verify passes it at the float32 threshold."""
    from ane_diffusion_conversion import read_contract, verify_export

    export = tmp_path / "export"
    shutil.copytree(world.overflow_export, export)
    code, err = _cli(["convert", "--model", world.overflow_model, "--output", export, "--components", "vae_decoder",
                      "--vae-decoder-precision", "float32", "--force", "--quiet"], capfd)
    assert code == 0, err
    decoder = read_contract(export)["components"]["VAEDecoder"]
    assert decoder["inputs"][0]["dtype"] == "float32" and decoder["outputs"][0]["dtype"] == "float32"
    assert read_contract(export)["components"]["Unet"]["inputs"][0]["dtype"] == "float16"  # the rest unchanged
    code, err = _cli(["generate", "a red circle", "--backend", "coreml", "--model", export, "-o", tmp_path / "a.png",
                      "--quiet"], capfd)
    assert code == 0, err
    pixels = np.asarray(Image.open(tmp_path / "a.png"), np.float32)
    assert pixels.std() > 5.0  # the overflowing float16 decoder made a flat image
    report = verify_export(world.overflow_model, export, components=["vae_decoder"])
    assert report.ok and report.rows[0].threshold == 60.0, report.table()
    # torch: --vae-precision float32 is accepted and gives the float32 CPU result
    for flag, name in (("auto", "b.png"), ("float32", "c.png")):
        code, err = _cli(["generate", "a red circle", "--model", world.overflow_model, "-o", tmp_path / name,
                          "--quiet", "--vae-precision", flag], capfd)
        assert code == 0, err
    assert np.array_equal(np.asarray(Image.open(tmp_path / "b.png")), np.asarray(Image.open(tmp_path / "c.png")))


def test_convert_rerun_reconverts_a_damaged_package(world, tmp_path, capfd):
    """A re-run over an export whose weight.bin was deleted converts that component again (it used to
    report "skipped (already converted)"); the contract records every file's size and SHA-256."""
    from ane_diffusion_conversion import read_contract
    from ane_diffusion_conversion.integrity import problems

    export = tmp_path / "export"
    shutil.copytree(world.overflow_export, export)
    records = read_contract(export)["converter"]["components"]
    weights = "TextEncoder.mlpackage/Data/com.apple.CoreML/weights/weight.bin"
    assert set(records["TextEncoder"]["content"]) >= {weights, "TextEncoder.mlpackage/Manifest.json"}
    assert all(len(entry["sha256"]) == 64 for record in records.values() for entry in record["content"].values())
    (export / weights).unlink()
    code, err = _cli(["convert", "--model", world.overflow_model, "--output", export, "--components",
                      "text_encoder"], capfd)
    assert code == 0, err
    assert f"{weights} is missing: converting it again" in err and "converted: text_encoder" in err, err
    contract = read_contract(export)
    assert all(problems(export, record) == [] for record in contract["converter"]["components"].values())
    code, err = _cli(["convert", "--model", world.overflow_model, "--output", export, "--components",
                      "text_encoder"], capfd)
    assert code == 0 and "skipped (already converted): text_encoder" in err, err


def test_16_bit_images_are_scaled_not_clipped():
    from ane_diffusion.editing import image_to_array, mask_to_array

    grey16 = Image.fromarray(np.full((4, 4), 32896, np.uint16))  # mid-grey: 128 * 257
    assert grey16.mode.startswith("I;16")
    np.testing.assert_allclose(image_to_array(grey16), 128 / 127.5 - 1.0, atol=1e-6)
    mask16 = np.zeros((4, 4), np.uint16)
    mask16[:2] = 65535
    np.testing.assert_array_equal(mask_to_array(Image.fromarray(mask16))[0, 0], (mask16 > 0).astype(np.float32))


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "P", "I;16"])
def test_grey_masks_in_any_mode_are_converted(mode):
    """What editors save for a black-and-white mask (RGB, RGBA, LA, palette) is accepted."""
    from ane_diffusion.editing import mask_to_array

    values = np.zeros((4, 4), np.uint8)
    values[1:3, 1:3] = 255
    grey = Image.fromarray(values)
    mask = grey.convert("RGB").convert("P") if mode == "P" else (
        Image.fromarray(values.astype(np.uint16) * 257) if mode == "I;16" else grey.convert(mode))
    np.testing.assert_array_equal(mask_to_array(mask)[0, 0], values / 255)


def test_strength_hint_names_a_value_that_works():
    from ane_diffusion.editing import EditInputError, min_strength, strength_timesteps

    for steps in range(1, 60):
        grid = np.arange(steps)
        hint = min_strength(steps)
        assert len(strength_timesteps(grid, hint)) >= 1
        if hint > 0.01:
            with pytest.raises(EditInputError, match=f"at least {hint}"):
                strength_timesteps(grid, round(hint - 0.01, 2))


def test_outputs_honour_the_umask(tmp_path):
    """PNGs, bundle folders and rewritten logs get 0666/0777 minus the umask, not mkstemp's 0600/0700."""
    from ane_diffusion.atomic import atomic_directory, atomic_file
    from ane_diffusion.images import save_png

    old = os.umask(0o027)
    try:
        save_png(Image.new("RGB", (2, 2)), tmp_path / "a.png", {"x": 1})
        with atomic_directory(tmp_path / "student") as folder:
            (folder / "f").write_text("x")
        with atomic_file(tmp_path / "log.jsonl") as tmp:
            tmp.write_text("{}\n")
    finally:
        os.umask(old)
    assert (tmp_path / "a.png").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "student").stat().st_mode & 0o777 == 0o750
    assert (tmp_path / "log.jsonl").stat().st_mode & 0o777 == 0o640


def test_file_names_must_stay_inside_their_folder(tmp_path):
    from ane_diffusion.names import inside

    assert inside(tmp_path, "vocab.json", "vocab") == tmp_path / "vocab.json"
    assert inside(tmp_path, "sub/a.png", "image", subfolders=True) == tmp_path / "sub" / "a.png"
    for name in ("../vocab.json", "/etc/passwd", "a/b.json", "C:\\x.json", "a\\..\\..\\b", "", ".", None, 3):
        with pytest.raises(ValueError):
            inside(tmp_path, name, "vocab")
    for name in ("../a.png", "/abs/a.png", "sub/../../a.png"):
        with pytest.raises(ValueError):
            inside(tmp_path, name, "image", subfolders=True)


def test_request_numbers():
    from ane_diffusion.checks import InputValueError, finite_number, seeds, whole_number

    assert whole_number(4, "steps") == 4 and whole_number(4.0, "steps") == 4 and whole_number(np.int64(3), "s") == 3
    for bad in (2.5, True, "4", float("nan"), float("inf"), None):
        with pytest.raises(InputValueError, match="steps must be a whole number"):
            whole_number(bad, "steps")
    assert finite_number(np.float32(1.5), "w") == 1.5
    for bad in (float("nan"), float("-inf"), "3", True):
        with pytest.raises(InputValueError, match="w must be a finite number"):
            finite_number(bad, "w")
    assert seeds(4294967294, 2) == 4294967294
    with pytest.raises(InputValueError, match="seed 4294967295 with 2 images .* use a seed <= 4294967294"):
        seeds(4294967295, 2)


def test_distill_stops_on_a_non_finite_loss(world, tmp_path, capfd):
    """A teacher with a NaN weight: the run stops at its first update with one line, no student saved."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    code, err = _cli(["distill", "guidance", "--teacher", world.nan_unet, "--data", world.data, "-o", tmp_path / "run",
                      "--updates", "2", "--batch-size", "1"], capfd)
    bar = re.compile(r"^guidance: .*\| \d+/\d+ \[")  # the training bar stays (leave=True); the error follows it
    lines = [line for line in terminal_lines(err) if not line.startswith("notice:") and not bar.match(line)]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "the distillation loss is not finite (nan) at update 1 of phase 1" in lines[0]
    assert not (tmp_path / "run" / "student").exists()
