"""Stage 3, the tiny decoder: training lowers the decoder error, resume is exact, the tiny decoder
and encoder convert and verify through the executor, and ``--decoder`` picks (or refuses) one."""

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ane_diffusion.bundle import resolve_bundle
from ane_diffusion.decoders import build_tiny, resolve_decoder, tiny_config
from ane_diffusion.distill import DistillConfig, distill_decoder
from ane_diffusion.distill.decoder import DECODER_CARD, fidelity
from ane_diffusion.distill.engine import Engine
from ane_diffusion.pipeline import GenerationError
from ane_diffusion.testing import TINY_CORPUS, make_tiny_bundle
from ane_diffusion.torch_models import load_components

PROMPT = TINY_CORPUS[0]


def write_images(folder, count=8):
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(count):  # smooth blobs: something a decoder can learn in a few dozen updates
        yy, xx = np.mgrid[0:16, 0:16] / 15.0
        image = np.stack([np.sin(3 * xx * rng.uniform(0.5, 2) + c) * 0.5 + 0.5 + 0 * yy for c in range(3)], -1)
        Image.fromarray((image * 255).astype(np.uint8)).save(folder / f"{i}.png")
        rows.append(json.dumps({"file": f"{i}.png", "caption": TINY_CORPUS[i % len(TINY_CORPUS)]}))
    (folder / "manifest.jsonl").write_text("\n".join(rows) + "\n")
    return folder


def config(root, output, **overrides):
    settings = dict(model=str(root / "student"), output=str(output), data=str(root / "images"), updates=24,
                    batch_size=8, lr=2e-3, warmup=0, checkpoint_every=12, progress=False, log_every=5, seed=0)
    return DistillConfig(**(settings | overrides))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-decoder")
    make_tiny_bundle(root / "student", student=True, prediction_type="v_prediction", steps=4)
    write_images(root / "images")
    cfg = config(root, root / "run")
    return root, cfg, distill_decoder(cfg)


def test_training_lowers_the_decoder_error(trained):
    root, cfg, path = trained
    bundle = resolve_bundle(path)
    assert bundle.configs["vae_tiny"]["_class_name"] == "AutoencoderTiny"
    trained_modules = load_components(bundle)
    torch.manual_seed(cfg.seed)
    start = build_tiny(tiny_config(bundle.configs["vae"]))  # what training started from (same seed)
    latents = torch.randn(8, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    before = fidelity(trained_modules.vae, start, bundle.scaling_factor, latents, "cpu")
    after = fidelity(trained_modules.vae, trained_modules.vae_tiny, bundle.scaling_factor, latents, "cpu")
    assert after["decoder_psnr_db"] > before["decoder_psnr_db"] + 3, (before, after)
    assert after["encoder_latent_rel_rmse"] < before["encoder_latent_rel_rmse"]
    card = json.loads((path / "vae_tiny" / DECODER_CARD).read_text())
    assert card["distilled_from"]["vae_of"]["source"] == cfg.model
    assert card["student_latents_from"] == [cfg.model]
    assert card["training"]["final_loss"] < card["training"]["initial_loss"]
    held = card["fidelity"]["student_latents_heldout"]
    assert held["images"] > 0 and np.isfinite(held["decoder_psnr_db"])
    assert not list((path / "vae_tiny").glob("*.bin"))  # safetensors only


def test_resume_continues_exactly(trained, tmp_path, monkeypatch):
    root, cfg, path = trained
    original = Engine._update

    class Killed(Exception):
        pass

    def dying(self, model, optimizer, scheduler, loss_fn, data, phase, step):
        if step == 17:  # after the checkpoint at 12: updates 13-17 are lost and redone
            raise Killed
        return original(self, model, optimizer, scheduler, loss_fn, data, phase, step)

    killed = config(root, tmp_path / "killed")
    with monkeypatch.context() as patch:
        patch.setattr(Engine, "_update", dying)
        with pytest.raises(Killed):
            distill_decoder(killed)
    assert json.loads((tmp_path / "killed" / "checkpoint" / "state.json").read_text())["meta"]["update"] == 12
    resumed = distill_decoder(config(root, tmp_path / "killed", resume=True))
    from safetensors.torch import load_file

    a = load_file(str(path / "vae_tiny" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(resumed / "vae_tiny" / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0.0, atol=1e-6)


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "ane_diffusion", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_decoder_choice_and_its_errors(trained, tmp_path):
    root, _, path = trained
    from ane_diffusion.api import generate, load_pipeline

    pipe = load_pipeline(str(path))
    tiny = generate(PROMPT, pipeline=pipe, steps=4, seed=3)
    full = generate(PROMPT, pipeline=pipe, steps=4, seed=3, decoder="full")
    assert tiny.metadata[0]["decoder"] == "tiny" and full.metadata[0]["decoder"] == "full"
    a, b = (np.asarray(r.images[0], np.float64) for r in (tiny, full))
    assert 0 < np.abs(a - b).mean() < 128  # the same latents, two decoders: close but not identical
    plain = load_pipeline(str(root / "student"))
    assert resolve_decoder(plain.bundle, None) == "full"
    with pytest.raises(GenerationError, match="has no tiny decoder"):
        generate(PROMPT, pipeline=plain, steps=1, decoder="tiny")
    out = tmp_path / "x.png"
    proc = run_cli("generate", PROMPT, "--model", root / "student", "--steps", "1", "--decoder", "tiny", "-o", out,
                   cwd=tmp_path)
    assert proc.returncode == 2 and not out.exists()
    assert proc.stderr.strip().count("\n") == 0 and "has no tiny decoder" in proc.stderr
    from ane_diffusion.api import edit

    edited = edit(root / "images" / "0.png", PROMPT, pipeline=pipe, output=out)  # tiny encoder and decoder
    from PIL import Image

    assert json.loads(Image.open(out).text["ane_diffusion"])["decoder"] == "tiny"
    assert edited.metadata[0]["mode"] == "edit"


def test_tiny_decoder_converts_and_verifies(trained, tmp_path):
    root, _, path = trained
    from ane_diffusion.backends.coreml_backend import load_export_bundle, vae_component
    from ane_diffusion.bundle import ModelLoadError
    from ane_diffusion_conversion.runtime import ComponentRunner
    from ane_diffusion_conversion.convert import convert_bundle
    from ane_diffusion_conversion.options import ConversionError, ConvertOptions
    from ane_diffusion_conversion.progress import Progress
    from ane_diffusion_conversion.verify import verify_export

    out = tmp_path / "export"
    convert_bundle(ConvertOptions(model=str(path), output=out,
                                  components="vae_decoder,vae_encoder,vae_decoder_full"),
                   progress=Progress(enabled=False))
    contract = json.loads((out / "ane_diffusion_coreml.json").read_text())
    assert contract["decoders"] == {"tiny": "VAEDecoder", "full": "VAEDecoderFull"}
    assert contract["encoders"] == {"tiny": "VAEEncoder"}
    assert contract["components"]["VAEDecoder"]["variant"] == "tiny"
    report = verify_export(str(path), out, engine="executor",
                           components=["vae_decoder", "vae_encoder", "vae_decoder_full"])
    assert report.ok and {r.component for r in report.rows} == {"VAEDecoder", "VAEEncoder", "VAEDecoderFull"}
    assert all(r.psnr >= 35 for r in report.rows)
    # the runtime finds each decoder through the contract (what the Core ML backend does)
    bundle = load_export_bundle(out)
    assert resolve_decoder(bundle, None) == "tiny" and resolve_decoder(bundle, "full") == "full"
    with pytest.raises(ModelLoadError, match="no full encoder"):
        vae_component(contract, "encoder", "full")

    def decode(variant):
        name = vae_component(contract, "decoder", variant)
        return ComponentRunner(out, contract, name, "executor").predict({"z": z})["image"]

    z = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32) / bundle.scaling_factor
    torch_side = load_components(resolve_bundle(path))
    from ane_diffusion.decoders import tiny_decoder

    with torch.no_grad():
        want_tiny = tiny_decoder(torch_side.vae_tiny, bundle.scaling_factor)(torch.from_numpy(z)).numpy()
        want_full = torch_side.vae.decode(torch.from_numpy(z)).sample.numpy()
    np.testing.assert_allclose(decode("tiny"), want_tiny, atol=0.02)
    np.testing.assert_allclose(decode("full"), want_full, atol=0.02)
    # a tiny decoder asked of a bundle without one: one line, nothing written
    with pytest.raises(ConversionError, match="no tiny decoder"):
        convert_bundle(ConvertOptions(model=str(root / "student"), output=tmp_path / "none",
                                      components="vae_decoder", decoder="tiny"), progress=Progress(enabled=False))
    assert not (tmp_path / "none").exists()


def test_width_sets_the_tiny_autoencoders_channels(trained, tmp_path):
    root, _, _ = trained
    vae = resolve_bundle(root / "student").configs["vae"]
    default = tiny_config(vae)
    assert tiny_config(vae, None) == default
    wide = tiny_config(vae, 2 * default["decoder_block_out_channels"][0])
    assert wide["decoder_block_out_channels"] == wide["encoder_block_out_channels"] == \
        [2 * c for c in default["decoder_block_out_channels"]]
    assert sum(p.numel() for p in build_tiny(wide).parameters()) > sum(p.numel() for p in build_tiny(default).parameters())
    with pytest.raises(ValueError, match="positive number of channels"):
        tiny_config(vae, 0)
    with pytest.raises(ValueError, match="--width must be >= 1"):
        config(root, tmp_path / "bad", tiny_width=0).check("decoder")
    path = distill_decoder(config(root, tmp_path / "run", updates=2, tiny_width=24))
    saved = resolve_bundle(path).configs["vae_tiny"]
    assert saved["decoder_block_out_channels"] == [24] * len(default["decoder_block_out_channels"])
    card = json.loads((path / "vae_tiny" / DECODER_CARD).read_text())
    assert card["training"]["settings"]["tiny_width"] == 24
    proc = run_cli("distill", "decoder", "--model", root / "student", "--data", root / "images", "--output",
                   tmp_path / "cli", "--width", "0", cwd=tmp_path)
    assert proc.returncode == 2 and "--width must be >= 1" in proc.stderr and not (tmp_path / "cli" / "bundle").exists()


def test_edge_term_measures_sharpness_and_weights_the_loss(trained, tmp_path):
    from ane_diffusion.distill.decoder import DecoderLoss, _trainee, edge_error

    sharp = torch.zeros(2, 3, 16, 16)
    sharp[:, :, 4:12, 4:12] = 1.0  # a square with hard corners
    blurred = torch.nn.functional.avg_pool2d(sharp, 3, stride=1, padding=1, count_include_pad=False)
    assert edge_error(sharp, sharp) == 0 and torch.isclose(edge_error(sharp + 0.3, sharp), torch.tensor(0.0))
    assert edge_error(blurred, sharp) > 0.01  # blur is an edge error; a colour shift is not
    dx = torch.zeros(1, 1, 2, 3)
    dx[..., 1] = 1.0  # a column off by 1: every horizontal difference is +-1, every vertical one 0
    assert torch.isclose(edge_error(dx, torch.zeros_like(dx)), torch.tensor(1.0))

    root, _, path = trained
    bundle = resolve_bundle(path)
    modules = load_components(bundle)
    trainee = _trainee(modules.vae_tiny, bundle.scaling_factor)
    x0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    batch = SimpleNamespace(x0=x0)  # all the loss reads of a MicroBatch
    plain = DecoderLoss(modules.vae, bundle.scaling_factor, edge_weight=0.0)
    edged = DecoderLoss(modules.vae, bundle.scaling_factor, edge_weight=3.0)
    terms = plain.terms(trainee, x0)
    assert terms["edge"] > 0
    torch.testing.assert_close(edged(trainee, batch) - plain(trainee, batch), 3.0 * terms["edge"])
    with pytest.raises(ValueError, match="--edge-weight must be >= 0"):
        config(root, tmp_path / "bad", edge_weight=-1.0).check("decoder")
    proc = run_cli("distill", "decoder", "--model", root / "student", "--data", root / "images", "--output",
                   tmp_path / "cli", "--edge-weight", "-1", cwd=tmp_path)
    assert proc.returncode == 2 and "--edge-weight must be >= 0" in proc.stderr
    assert not (tmp_path / "cli" / "bundle").exists()


def test_student_w_samples_the_students_across_guidance_weights(trained, tmp_path):
    from ane_diffusion.distill.data import sample_latents
    from ane_diffusion.distill.decoder import student_latents

    root, cfg, _ = trained
    bundle = resolve_bundle(cfg.model)
    modules = load_components(bundle)
    data = Engine(config(root, tmp_path / "data"), "decoder").training_set(bundle, modules)
    shape = (bundle.latent_channels, bundle.default_size // bundle.vae_scale_factor,
             bundle.default_size // bundle.vae_scale_factor)
    conds = data.embeddings[data.caption_index][:5]
    default = student_latents([cfg.model], data, 0, "cpu", count=5)
    torch.testing.assert_close(student_latents([cfg.model], data, 0, "cpu", count=5,
                                               weights=[bundle.card.default_w]), default)
    spread = student_latents([cfg.model], data, 0, "cpu", count=5, weights=[0.0, 6.0])
    assert spread.shape == default.shape
    at0 = sample_latents(bundle, modules, conds[0::2], data.uncond, 0.0, 4, 0, shape, "cpu").float()
    at6 = sample_latents(bundle, modules, conds[1::2], data.uncond, 6.0, 4, 104729, shape, "cpu").float()
    torch.testing.assert_close(spread[0::2], at0)  # captions 0, 2, 4 at w = 0; 1, 3 at w = 6
    torch.testing.assert_close(spread[1::2], at6)
    same_noise_w6 = sample_latents(bundle, modules, conds[0::2], data.uncond, 6.0, 4, 0, shape, "cpu").float()
    assert (same_noise_w6 - at0).abs().max() > 1e-3  # the weight reaches the student
    with pytest.raises(ValueError, match="--student-w must list finite weights >= 0"):
        config(root, tmp_path / "bad", student_w=[3.0, -1.0]).check("decoder")
    path = distill_decoder(config(root, tmp_path / "run", updates=2, student_w=[0.0, 6.0]))
    card = json.loads((path / "vae_tiny" / DECODER_CARD).read_text())
    assert card["training"]["settings"]["student_w"] == [0.0, 6.0]
    proc = run_cli("distill", "decoder", "--model", root / "student", "--data", root / "images", "--output",
                   tmp_path / "cli", "--student-w", "nan", cwd=tmp_path)
    assert proc.returncode == 2 and "--student-w must list finite weights" in proc.stderr
    assert not (tmp_path / "cli" / "bundle").exists()


def test_decoder_quality_sweeps_psnr_across_w(trained):
    """benchmarks/decoder_quality.py's w sweep: one PSNR per w the students take, from latents that
    really change with w, and a markdown table that shows them."""
    from ane_diffusion.api import load_pipeline
    from benchmarks.decoder_quality import SWEEP_W, markdown, w_sweep_row

    _, _, path = trained
    pipe = load_pipeline(str(path))
    row = w_sweep_row(pipe, list(TINY_CORPUS[:3]), 4, "train")
    assert list(row["psnr_db"]) == [str(w) for w in SWEEP_W] and row["images"] == 3
    values = np.array(list(row["psnr_db"].values()))
    assert np.all(np.isfinite(values)) and np.ptp(values) > 0  # different latents at each w
    assert all(row["psnr_db_p5"][w] <= row["psnr_db"][w] + 1e-9 for w in row["psnr_db"])
    text = markdown({"settings": {"threads": 1, "w": 3.0, "images_per_prompt": 1}, "date": "d",
                     "machine": {"cpu": "c", "cores": 2}, "psnr": [], "accuracy_differences": [
                         {"split": "train", "steps": 4, "attribute": "shape", "full": 1.0, "tiny": 1.0,
                          "difference_points": 0.0, "interval_points": [0.0, 0.0], "wrong_only_with_tiny": 0,
                          "wrong_only_with_full": 0}], "target_met": True, "w_sweep": [row]})
    assert "| w = 0 | w = 1 | w = 3 | w = 6 |" in text and f"{row['psnr_db']['6.0']:.2f}" in text
