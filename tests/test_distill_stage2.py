"""Stage 2 (progressive distillation): a 2-step student learns the 4-step teacher's two steps."""

import contextlib
import json

import numpy as np
import pytest
import torch

from ane_diffusion.bundle import resolve_bundle
from ane_diffusion.distill import DistillConfig, distill_progressive
from ane_diffusion.distill.data import load_training_set
from ane_diffusion.distill.models import alpha_sigma
from ane_diffusion.distill.stage2 import ProgressiveLoss
from ane_diffusion.guidance import STUDENT_W_SCALE, GuidanceEmbedding
from ane_diffusion.schedule import add_noise, expand_like
from ane_diffusion.testing import TINY_CORPUS, make_tiny_bundle
from ane_diffusion.torch_models import load_components

EMBEDDING_DIM = 16  # make_tiny_bundle's default


def write_dataset(folder, count=12):
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        rows.append(f"{i}.png,{TINY_CORPUS[i % len(TINY_CORPUS)]}")
    (folder / "manifest.csv").write_text("file,caption\n" + "\n".join(rows) + "\n")
    return folder


STAGE1_RANGE = {"low": [-1.5, -2.0, -1.0, -0.5], "high": [1.0, 2.5, 1.5, 0.75], "percentiles": [0.05, 99.95],
                "examples": 12}


def distill_tiny(root, stage1_prediction_type: str, lr: float):
    """A 4-step stage-1 student (tiny, random) -> a 2-step student (default: v), 60 updates."""
    student = make_tiny_bundle(root / "stage1", student=True, prediction_type=stage1_prediction_type)
    card = resolve_bundle(student).card
    card.latent_range = STAGE1_RANGE
    card.save(student)
    cfg = DistillConfig(model=str(student), output=str(root / "run"), data=str(write_dataset(root / "images")),
                        start_steps=4, target_steps=2, updates=60, lr=lr, batch_size=4, progress=False)
    return cfg, distill_progressive(cfg)


def noisy_batch(cfg, bundle, components, loss, index, seed: int):
    """``(z, cond)``: eight training latents noised at the student grid points ``index`` (8,)."""
    data = load_training_set(cfg, bundle, components, f"{cfg.output}/cache", "cpu")
    x0, cond, _ = data.batch(np.arange(8))
    alpha, sigma = alpha_sigma(bundle.schedule, loss.timesteps(index)[0], "cpu")
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    return add_noise(x0, eps, expand_like(alpha, x0), expand_like(sigma, x0)), cond


def losses_before_and_after(loss, untrained, trained, z, index, cond, ws):
    """``[(w, loss of untrained, loss of trained)]`` on one noisy batch."""
    with torch.no_grad():
        return [(w, loss.loss_at(untrained, z, index, cond, torch.full((8,), w)).item(),
                 loss.loss_at(trained, z, index, cond, torch.full((8,), w)).item()) for w in ws]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return distill_tiny(tmp_path_factory.mktemp("stage2"), "v_prediction", 1e-4)


def test_two_step_student_matches_the_four_step_teacher_better(run):
    cfg, paths = run
    assert [p.name for p in paths] == ["steps-2"]
    bundle = resolve_bundle(cfg.model)
    components = load_components(bundle)
    teacher = components.unet  # also the student before training
    trained = load_components(resolve_bundle(paths[0])).unet
    index = torch.tensor([0, 1] * 4)
    loss = ProgressiveLoss(teacher, bundle.schedule, "v_prediction", GuidanceEmbedding(EMBEDDING_DIM, STUDENT_W_SCALE),
                           2, 0.0, 8.0, contextlib.nullcontext)
    z, cond = noisy_batch(cfg, bundle, components, loss, index, 99)
    for w, before, after in losses_before_and_after(loss, teacher, trained, z, index, cond, (1.0, 3.0, 6.0)):
        assert after < 0.7 * before, (w, before, after)


def test_phase_bundle_card_and_chaining(run, tmp_path):
    cfg, paths = run
    card = resolve_bundle(paths[0]).card
    assert card.kind == "progressive" and card.steps == 2 and card.recommended_steps == 2
    assert card.guidance_embedding_dim == EMBEDDING_DIM and card.prediction_type == "v_prediction"
    assert [entry["kind"] for entry in card.lineage] == ["guidance-distilled"]
    assert card.training["teacher_steps"] == 4 and card.training["updates"] == 60
    assert card.training["settings"]["target_steps"] == 2 and "w_min" not in card.training["settings"]
    assert card.training["settings"]["w_power"] == 1.0
    assert card.latent_range == STAGE1_RANGE  # --clamp's bounds come down the lineage
    log = [json.loads(line) for line in (paths[0].parent / "log.jsonl").read_text().splitlines()]
    assert {r["phase"] for r in log} == {"steps-2"}
    # A phase bundle is a valid input for the next halving; its step count is taken from the card.
    nxt = DistillConfig(model=str(paths[0]), output=str(tmp_path / "next"), data=cfg.data, target_steps=1,
                        updates=2, progress=False)
    (path,) = distill_progressive(nxt)
    assert resolve_bundle(path).card.lineage[-1]["steps"] == 2
    with pytest.raises(ValueError, match="--start-steps must be 2"):
        distill_progressive(DistillConfig(model=str(paths[0]), output=str(tmp_path / "bad"), data=cfg.data,
                                          start_steps=4, target_steps=1, progress=False))


class EpsilonAsV(torch.nn.Module):
    """An epsilon network whose output is converted exactly to v: a perfect parameterisation switch."""

    def __init__(self, unet, schedule):
        super().__init__()
        self.unet, self.schedule = unet, schedule

    def forward(self, z, t, **kwargs):
        eps = self.unet(z, t, **kwargs).sample
        alpha, sigma = alpha_sigma(self.schedule, t.cpu(), z.device)
        # v = alpha eps - sigma x with x = (z - sigma eps) / alpha
        v = (eps - expand_like(sigma, z) * z) / expand_like(alpha, z)
        return type("Out", (), {"sample": v})()


@pytest.fixture(scope="module")
def switched(tmp_path_factory):
    """An EPSILON stage-1 student -> a 2-step student at the default parameterisation (v)."""
    return distill_tiny(tmp_path_factory.mktemp("stage2-eps"), "epsilon", 1e-3)


def test_the_student_loss_reads_the_output_in_the_students_parameterisation(switched):
    cfg, _ = switched
    bundle = resolve_bundle(cfg.model)
    components = load_components(bundle)
    unet = components.unet
    index, w = torch.tensor([0, 1] * 4), torch.full((8,), 3.0)
    common = (unet, bundle.schedule, "epsilon", GuidanceEmbedding(EMBEDDING_DIM, STUDENT_W_SCALE), 2, 0.0, 8.0,
              contextlib.nullcontext, 1.0)
    same, switch = ProgressiveLoss(*common), ProgressiveLoss(*common, "v_prediction")
    z, cond = noisy_batch(cfg, bundle, components, same, index, 5)
    with torch.no_grad():
        eps_loss = same.loss_at(unet, z, index, cond, w).item()
        converted = switch.loss_at(EpsilonAsV(unet, bundle.schedule), z, index, cond, w).item()
        raw = switch.loss_at(unet, z, index, cond, w).item()  # the epsilon output misread as v
    assert converted == pytest.approx(eps_loss, rel=1e-4)
    assert raw > 2 * eps_loss


def test_an_epsilon_stage1_student_gives_v_students_that_learn_the_switch(switched):
    cfg, paths = switched
    stage1 = resolve_bundle(cfg.model)
    out = resolve_bundle(paths[0])
    assert stage1.card.prediction_type == "epsilon"
    assert out.card.prediction_type == "v_prediction" and out.configs["scheduler"]["prediction_type"] == "v_prediction"
    assert out.card.lineage[-1]["prediction_type"] == "epsilon"
    assert out.card.training["settings"]["prediction_type"] == "v_prediction"
    components = load_components(stage1)
    trained = load_components(out).unet
    index = torch.tensor([1] * 8)  # t = 499: at t = 999 a random epsilon network's x estimate is noise / 0.07
    loss = ProgressiveLoss(components.unet, stage1.schedule, "epsilon",
                           GuidanceEmbedding(EMBEDDING_DIM, STUDENT_W_SCALE), 2, 0.0, 8.0, contextlib.nullcontext,
                           1.0, "v_prediction")
    z, cond = noisy_batch(cfg, stage1, components, loss, index, 7)
    # before: update 0, the stage-1 network's epsilon output read as v
    for w, before, after in losses_before_and_after(loss, components.unet, trained, z, index, cond, (0.0, 3.0, 6.0)):
        assert after < 0.5 * before, (w, before, after)
