"""The distillation formulas: exact in float64, against the DDIM step they are defined by."""

import numpy as np
import pytest

from ane_diffusion.distill.config import halving_schedule
from ane_diffusion.distill.stage2 import two_step_timesteps
from ane_diffusion.distill.targets import guided_target, truncated_snr_weight, two_step_target, weighted_mse
from ane_diffusion.guidance import combine
from ane_diffusion.samplers.ddim import ddim_step
from ane_diffusion.schedule import CLEAN, DiscreteSchedule, expand_like, to_x0, trailing_timesteps

SCHEDULE = DiscreteSchedule.scaled_linear()
SHAPE = (3, 4, 8, 8)


def coefficients(t, like):
    alpha, sigma = SCHEDULE.alpha_sigma(t)
    return expand_like(alpha, like), expand_like(sigma, like)


def teacher_x0(z, t):
    """Any smooth stand-in for a teacher's x estimate (float64)."""
    return np.tanh(0.9 * z + 0.002 * np.asarray(t, dtype=np.float64).reshape(-1, 1, 1, 1)) * 1.3


@pytest.mark.parametrize("student_steps", [1, 2, 4, 8])
def test_x_tilde_makes_one_student_step_land_on_two_teacher_steps(student_steps):
    rng = np.random.default_rng(student_steps)
    for index in range(student_steps):  # every grid point, the last one (t'' = CLEAN) included
        idx = np.full(SHAPE[0], index)
        t, t_mid, t_end = two_step_timesteps(student_steps, idx)
        z_t = rng.standard_normal(SHAPE)
        (a_t, s_t), (a_m, s_m), (a_e, s_e) = (coefficients(s, z_t) for s in (t, t_mid, t_end))
        z_mid = ddim_step(teacher_x0(z_t, t), z_t, a_t, s_t, a_m, s_m)
        z_end = ddim_step(teacher_x0(z_mid, t_mid), z_mid, a_m, s_m, a_e, s_e)
        x_tilde = two_step_target(z_t, z_end, a_t, s_t, a_e, s_e)
        np.testing.assert_allclose(ddim_step(x_tilde, z_t, a_t, s_t, a_e, s_e), z_end, rtol=0, atol=1e-12)
        if t_end[0] == CLEAN:  # the last step's target is the teacher's final x estimate
            np.testing.assert_allclose(x_tilde, z_end, atol=1e-12)


def test_two_step_timesteps_follow_the_nested_trailing_grids():
    t, t_mid, t_end = two_step_timesteps(2, np.array([0, 1]))
    assert t.tolist() == [999, 499]
    assert t_mid.tolist() == [749, 249]
    assert t_end.tolist() == [499, CLEAN]
    assert trailing_timesteps(8)[::2].tolist() == trailing_timesteps(4).tolist()


def test_halving_schedule():
    assert halving_schedule(8, 1) == [4, 2, 1]
    assert halving_schedule(16, 4) == [8, 4]
    for start, target in [(6, 4), (8, 8), (8, 3), (4, 8)]:
        with pytest.raises(ValueError, match="not reachable"):
            halving_schedule(start, target)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_guided_target_is_guidance_in_x_space(kind):
    rng = np.random.default_rng(0)
    z, cond, uncond = rng.standard_normal((3, *SHAPE))
    t = np.array([10, 500, 999])
    alpha, sigma = SCHEDULE.alpha_sigma(t)
    w = np.array([0.0, 2.5, 7.0])
    a, s, ww = (expand_like(c, z) for c in (alpha, sigma, w))
    expected = combine(to_x0(cond, z, a, s, kind), to_x0(uncond, z, a, s, kind), ww)
    np.testing.assert_allclose(guided_target(cond, uncond, z, alpha, sigma, w, kind), expected, atol=1e-9)


def test_truncated_snr_weight_is_max_of_x_and_eps_error():
    """omega * x_mse == max(x_mse, eps_mse), since an x error e is an eps error (alpha/sigma) e."""
    import torch

    t = torch.tensor([0, 100, 400, 700, 999])
    alpha, sigma = (torch.as_tensor(c) for c in SCHEDULE.alpha_sigma(t.numpy()))
    x_err = torch.randn(5, 4, 8, 8, dtype=torch.float64)
    eps_err = (alpha / sigma).reshape(-1, 1, 1, 1) * x_err
    per_sample = lambda e: (e**2).reshape(5, -1).mean(1)  # noqa: E731
    weighted = truncated_snr_weight(alpha, sigma) * per_sample(x_err)
    torch.testing.assert_close(weighted, torch.maximum(per_sample(x_err), per_sample(eps_err)))
    torch.testing.assert_close(weighted_mse(x_err, torch.zeros_like(x_err), truncated_snr_weight(alpha, sigma)),
                               weighted.mean())


def test_guidance_weight_draws_uniform_and_towards_w_min():
    """w = w_min + (w_max - w_min) u^p: p = 1 is the uniform draw of earlier runs (same numbers); p = 2
    puts f^(1/2) of the draws in the lowest fraction f of the range."""
    import torch

    from ane_diffusion.distill.guidance_weights import draw_guidance_weights

    n, low, high = 200_000, 0.5, 6.5
    uniform = draw_guidance_weights(n, torch.Generator().manual_seed(3), low, high, 1.0)
    assert torch.equal(uniform, low + (high - low) * torch.rand(n, generator=torch.Generator().manual_seed(3)))
    skewed = draw_guidance_weights(n, torch.Generator().manual_seed(3), low, high, 2.0)
    assert skewed.min() >= low and skewed.max() <= high
    for fraction in (1 / 6, 0.5):
        below = low + fraction * (high - low)
        assert abs(float((uniform < below).double().mean()) - fraction) < 0.005
        assert abs(float((skewed < below).double().mean()) - fraction ** 0.5) < 0.005


@pytest.mark.parametrize("stage", ["guidance", "progressive"])
def test_both_stages_draw_w_with_the_configured_power(stage):
    """The losses' draw() goes through draw_guidance_weights with their w_power."""
    import torch

    from ane_diffusion.distill.engine import MicroBatch
    from ane_diffusion.distill.stage1 import GuidanceLoss
    from ane_diffusion.distill.stage2 import ProgressiveLoss

    def draw(power):
        common = dict(teacher=None, schedule=SCHEDULE, embedding=None, w_min=0.0, w_max=6.0, autocast=None,
                      w_power=power)
        loss = (GuidanceLoss(teacher_kind="epsilon", student_kind="v_prediction", **common) if stage == "guidance"
                else ProgressiveLoss(kind="v_prediction", student_steps=4, **common))
        batch = MicroBatch(x0=torch.zeros(4000, 1, 2, 2), cond=None, uncond=None,
                           generator=torch.Generator().manual_seed(0), device="cpu")
        return loss.draw(batch)[2]

    uniform, skewed = draw(1.0), draw(2.0)
    assert 0.13 < float((uniform < 1).double().mean()) < 0.2
    assert 0.37 < float((skewed < 1).double().mean()) < 0.45


def test_cards_record_the_fields_their_stage_reads():
    """w_power is read by stages 1 and 2, so both cards record it; the decoder's card does not."""
    from ane_diffusion.distill import DistillConfig

    cfg = DistillConfig(model="m", output="o", w_power=2.0)
    guidance, progressive, decoder = (cfg.settings_for(stage) for stage in ("guidance", "progressive", "decoder"))
    assert guidance["w_power"] == progressive["w_power"] == 2.0 and "w_power" not in decoder
    assert "w_min" in guidance and "w_min" not in progressive and "start_steps" not in guidance
    assert "edge_weight" in decoder and "edge_weight" not in guidance and "start_steps" in progressive
