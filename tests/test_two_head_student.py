"""Two-head students: one evaluation outputs the conditional and unconditional predictions, combined
with w by classifier-free guidance's formula (``--guidance-heads 2``). Initialisation, the stage-1
loss, card, runtime, stage 2 and the Core ML export (through the numpy executor)."""

import contextlib

import numpy as np
import pytest
import torch

from ane_diffusion.bundle import resolve_bundle
from ane_diffusion.card import CardError, ModelCard
from ane_diffusion.distill import DistillConfig, distill_guidance, distill_progressive
from ane_diffusion.distill.models import alpha_sigma, predict_x0, predict_x0_heads
from ane_diffusion.distill.stage1 import GuidanceLoss, teacher_branches_x0
from ane_diffusion.guidance import STUDENT_W_SCALE, GuidanceEmbedding, combine, combine_heads
from ane_diffusion.student import add_guidance_input
from ane_diffusion.testing import make_tiny_bundle
from ane_diffusion.torch_models import load_components

from test_distill_stage1 import heldout, write_dataset

DIM = 256
TWO_HEADS = GuidanceEmbedding(DIM, STUDENT_W_SCALE, heads=2)


def test_combine_heads_is_guidance_on_the_halves():
    rng = np.random.default_rng(0)
    out = rng.standard_normal((3, 8, 4, 5))
    w = np.array([0.0, 1.5, 6.0])
    expected = combine(out[:, :4], out[:, 4:], w[:, None, None, None])
    np.testing.assert_allclose(combine_heads(out, w), expected, atol=1e-12)
    np.testing.assert_allclose(combine_heads(torch.from_numpy(out), torch.from_numpy(w)).numpy(), expected,
                               atol=1e-12)
    np.testing.assert_allclose(combine_heads(out, 2.0), combine(out[:, :4], out[:, 4:], 2.0), atol=1e-12)
    with pytest.raises(ValueError, match="even channel count"):
        combine_heads(out[:, :7], w)
    assert GuidanceEmbedding(DIM, 1.0).output(out, w) is out  # one head: the output is the prediction


def test_card_guidance_heads():
    student = dict(kind="guidance-distilled", guidance_embedding_dim=DIM)
    assert ModelCard(**student).validate().guidance_embedding.heads == 1
    assert ModelCard(**student, guidance_heads=2).validate().guidance_embedding.heads == 2
    with pytest.raises(CardError, match="guidance_heads must be 1 or 2"):
        ModelCard(**student, guidance_heads=3).validate()
    with pytest.raises(CardError, match="for students"):
        ModelCard(kind="teacher", guidance_heads=2).validate()


def test_config_refuses_heads_with_lora(tmp_path):
    cfg = DistillConfig(model="x", output=str(tmp_path / "o"), data=str(tmp_path), guidance_heads=2, lora_rank=4)
    with pytest.raises(ValueError, match="full fine-tune"):
        cfg.check("guidance")
    with pytest.raises(ValueError, match="1 or 2"):
        DistillConfig(model="x", output=str(tmp_path / "o"), data=str(tmp_path), guidance_heads=3).check("guidance")
    with pytest.raises(ValueError, match="1 or 2 output heads"):
        add_guidance_input(load_components(resolve_bundle(str(make_tiny_bundle(tmp_path / "t")))).unet, DIM, 3)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 120-update two-head stage-1 run on the tiny v-prediction teacher of test_distill_stage1."""
    root = tmp_path_factory.mktemp("two-head")
    teacher = make_tiny_bundle(root / "teacher", prediction_type="v_prediction")
    cfg = DistillConfig(model=str(teacher), output=str(root / "run"), data=str(write_dataset(root / "images")),
                        w_min=0.0, w_max=4.0, guidance_embedding_dim=DIM, guidance_heads=2,
                        updates=120, lr=1e-4, batch_size=4, progress=False, checkpoint_every=1000)
    return cfg, distill_guidance(cfg)


def test_untrained_two_head_student_is_the_teachers_conditional_model(run):
    """Both halves start as the teacher's output layer: the combination is the conditional model at
    every w, so the guided error is zero at w = 0; the head term is not (the second half is not yet
    the unconditional model)."""
    cfg, _ = run
    bundle = resolve_bundle(cfg.model)
    teacher = load_components(bundle).unet
    student = add_guidance_input(teacher, DIM, heads=2)
    assert student.conv_out.out_channels == 2 * teacher.conv_out.out_channels
    z, t, cond, uncond = heldout(cfg, bundle, load_components(bundle))
    alpha, sigma = alpha_sigma(bundle.schedule, t, "cpu")
    with torch.no_grad():
        reference = predict_x0(teacher, z, t, cond, alpha, sigma, "v_prediction")
        for w in (0.0, 1.5, 4.0):
            x_hat = predict_x0(student, z, t, cond, alpha, sigma, "v_prediction", torch.full((8,), w), TWO_HEADS)
            torch.testing.assert_close(x_hat, reference, rtol=0, atol=1e-6)
        guided_only = GuidanceLoss(teacher, bundle.schedule, "v_prediction", "v_prediction", TWO_HEADS, 0.0, 4.0,
                                   contextlib.nullcontext, head_loss_weight=0.0)
        assert guided_only.loss_at(student, z, t, cond, uncond, torch.zeros(8)).item() < 1e-10
        with_heads = GuidanceLoss(teacher, bundle.schedule, "v_prediction", "v_prediction", TWO_HEADS, 0.0, 4.0,
                                  contextlib.nullcontext)
        assert with_heads.loss_at(student, z, t, cond, uncond, torch.zeros(8)).item() > 1e-4


def test_two_head_run_learns_both_halves(run):
    """After 120 updates the second half is closer to the teacher's unconditional x estimate than at
    the start (where it is the conditional one; measured 0.85x the error) and the combination is much
    closer to the guided teacher at w = 4 (0.34x)."""
    cfg, student_path = run
    bundle = resolve_bundle(cfg.model)
    components = load_components(bundle)
    z, t, cond, uncond = heldout(cfg, bundle, components)
    alpha, sigma = alpha_sigma(bundle.schedule, t, "cpu")
    student = resolve_bundle(student_path)
    assert student.card.guidance_heads == 2 and student.card.training["settings"]["guidance_heads"] == 2
    trained = load_components(student).unet
    initial = add_guidance_input(components.unet, DIM, heads=2)
    w = torch.full((8,), 4.0)
    with torch.no_grad():
        x_c, x_u = teacher_branches_x0(components.unet, z, t, cond, uncond, alpha, sigma, "v_prediction")
        target = combine(x_c, x_u, 4.0)

        def errors(unet):
            head_c, head_u = predict_x0_heads(unet, z, t, cond, alpha, sigma, "v_prediction", w, TWO_HEADS)
            guided = predict_x0(unet, z, t, cond, alpha, sigma, "v_prediction", w, TWO_HEADS)
            return [float(((a - b) ** 2).mean()) for a, b in ((head_u, x_u), (guided, target))]

        before, after = errors(initial), errors(trained)
    assert after[0] < 0.95 * before[0], (before, after)
    assert after[1] < 0.5 * before[1], (before, after)


def test_two_head_student_samples_and_stage2_keeps_the_heads(run, tmp_path):
    """The torch runtime combines the halves (w changes the image); stage 2 starts from the
    two-head student and its students keep ``guidance_heads`` = 2."""
    from ane_diffusion import load_pipeline
    from ane_diffusion.pipeline import Settings

    cfg, student_path = run
    pipe = load_pipeline(str(student_path))
    images = {w: pipe.text_to_image("a red circle", Settings(steps=2, w=w, seed=3)).images[0] for w in (0.0, 4.0)}
    assert all(np.isfinite(np.asarray(i, np.float32)).all() for i in images.values())
    assert np.abs(np.asarray(images[0.0], np.float32) - np.asarray(images[4.0], np.float32)).mean() > 0.5
    stage2 = DistillConfig(model=str(student_path), output=str(tmp_path / "s2"), data=cfg.data,
                           cache_dir=f"{cfg.output}/cache", start_steps=2, target_steps=1, updates=5, lr=1e-5,
                           batch_size=2, progress=False, checkpoint_every=1000)
    one_step = resolve_bundle(str(distill_progressive(stage2)[-1]))
    assert one_step.card.steps == 1 and one_step.card.guidance_heads == 2
    assert load_components(one_step).unet.conv_out.out_channels == 8


def test_two_head_student_exports_with_the_halves_combined_in_the_graph(tmp_path):
    """The Core ML Unet keeps Apple's one-prediction output: the halves are combined with
    ``guidance_weight`` inside the package. Checked through the numpy MIL executor against the torch
    backend at two w values."""
    pytest.importorskip("coremltools")
    from ane_diffusion.backends.torch_backend import TorchBackend
    from ane_diffusion_conversion import ConvertOptions, convert_bundle, verify_export
    from ane_diffusion_conversion.progress import Progress
    from ane_diffusion_conversion.runtime import ComponentRunner
    from ane_diffusion_conversion.verify import psnr

    from ane_diffusion_conversion import read_contract

    model = make_tiny_bundle(tmp_path / "student", student=True, prediction_type="v_prediction", heads=2)
    out = tmp_path / "coreml"
    convert_bundle(ConvertOptions(model=str(model), output=str(out), components="unet"),
                   progress=Progress(enabled=False))
    report = verify_export(str(model), out, ws=[0.0, 6.0])
    assert report.ok and {r.component for r in report.rows} == {"Unet"}, report.table()
    torch_backend = TorchBackend(resolve_bundle(str(model)))
    unet = ComponentRunner(out, read_contract(out), "Unet", engine="executor")
    rng = np.random.default_rng(0)
    sample = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    hidden = rng.standard_normal((1, 77, 32)).astype(np.float32)
    outputs = {}
    for w in (0.0, 5.0):
        got = unet.predict({"sample": sample, "timestep": np.array([500.0]),
                            "encoder_hidden_states": hidden.transpose(0, 2, 1)[:, :, None, :],
                            "guidance_weight": np.array([w])})["noise_pred"]
        want = torch_backend.predict(sample, 500, hidden, w)
        assert got.shape == want.shape == (1, 4, 8, 8)
        assert psnr(np.asarray(got, np.float32), want) >= 35.0
        outputs[w] = want
    assert np.abs(outputs[0.0] - outputs[5.0]).mean() > 1e-3  # the halves differ: w matters


def test_a_card_that_miscounts_the_heads_is_refused(tmp_path):
    """A two-head UNet under a one-head card (or the reverse) would sample garbage: refused at load."""
    import json

    from ane_diffusion.backends.torch_backend import TorchBackend
    from ane_diffusion.card import CARD_NAME

    model = make_tiny_bundle(tmp_path / "student", student=True, heads=2)
    card = json.loads((model / CARD_NAME).read_text())
    (model / CARD_NAME).write_text(json.dumps({**card, "guidance_heads": 1}))
    with pytest.raises(CardError, match="outputs 8 channels, but the card's guidance_heads = 1"):
        TorchBackend(resolve_bundle(str(model)))
