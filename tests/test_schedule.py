"""Schedules and parameterisations against diffusers and the defining identities."""

import numpy as np
import pytest

from ane_diffusion.schedule import (CLEAN, CosineSchedule, DiscreteSchedule, add_noise, from_x0, to_eps, to_x0,
                                    trailing_timesteps)


def test_scaled_linear_matches_diffusers_alphas_cumprod():
    from diffusers import DDIMScheduler

    ours = DiscreteSchedule.scaled_linear()
    theirs = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod
    np.testing.assert_allclose(ours.alphas_cumprod, theirs.double().numpy(), rtol=1e-6)


@pytest.mark.parametrize("beta_schedule", ["scaled_linear", "linear", "squaredcos_cap_v2"])
def test_from_diffusers_config(beta_schedule):
    from diffusers import DDIMScheduler

    theirs = DDIMScheduler(beta_schedule=beta_schedule)
    ours = DiscreteSchedule.from_diffusers_config(dict(theirs.config))
    np.testing.assert_allclose(ours.alphas_cumprod, theirs.alphas_cumprod.double().numpy(), rtol=1e-5, atol=1e-9)


def test_unknown_beta_schedule_is_rejected():
    with pytest.raises(ValueError, match="beta_schedule"):
        DiscreteSchedule.from_diffusers_config({"beta_schedule": "sigmoid-ish"})


@pytest.mark.parametrize("schedule", [DiscreteSchedule.scaled_linear(), CosineSchedule()])
def test_alpha_sigma_identities(schedule):
    t = np.array([0, 1, 250, 500, 999])
    alpha, sigma = schedule.alpha_sigma(t)
    np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, atol=1e-12)
    assert np.all(np.diff(alpha) < 0), "alpha must decrease with t"
    np.testing.assert_allclose(schedule.log_snr(t), np.log(alpha**2) - np.log(sigma**2))
    assert schedule.alpha_sigma(CLEAN) == (1.0, 0.0)


def test_cosine_schedule_values():
    alpha, sigma = CosineSchedule().alpha_sigma(np.array([0.0, 500.0, 1000.0]))
    s = 0.008
    expected = np.cos((0.5 + s) / (1 + s) * np.pi / 2) / np.cos(s / (1 + s) * np.pi / 2)
    np.testing.assert_allclose(alpha, [1.0, expected, 0.0], atol=1e-12)


def test_discrete_timestep_out_of_range():
    with pytest.raises(ValueError, match="out of range"):
        DiscreteSchedule.scaled_linear().alpha_sigma(1000)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_parameterisation_round_trip(kind):
    rng = np.random.default_rng(0)
    x, eps = rng.standard_normal((2, 4, 3, 3))
    alpha, sigma = DiscreteSchedule.scaled_linear().alpha_sigma(600)
    z = add_noise(x, eps, alpha, sigma)
    target = from_x0(x, z, alpha, sigma, kind)
    np.testing.assert_allclose(to_x0(target, z, alpha, sigma, kind), x, atol=1e-10)
    np.testing.assert_allclose(to_eps(x, z, alpha, sigma), eps, atol=1e-10)


def test_v_definition():
    rng = np.random.default_rng(1)
    x, eps = rng.standard_normal((2, 8))
    alpha, sigma = 0.6, 0.8
    z = add_noise(x, eps, alpha, sigma)
    np.testing.assert_allclose(from_x0(x, z, alpha, sigma, "v_prediction"), alpha * eps - sigma * x, atol=1e-12)
    v = alpha * eps - sigma * x
    np.testing.assert_allclose(sigma * z + alpha * v, eps, atol=1e-12)


def test_unknown_prediction_type():
    with pytest.raises(ValueError, match="prediction type"):
        to_x0(1.0, 1.0, 1.0, 0.0, "flow")


@pytest.mark.parametrize("steps", [1, 2, 4, 8, 10, 50])
def test_trailing_grid_matches_diffusers(steps):
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(timestep_spacing="trailing")
    scheduler.set_timesteps(steps)
    np.testing.assert_array_equal(trailing_timesteps(steps), scheduler.timesteps.numpy())


def test_trailing_grids_are_nested():
    for n in (1, 2, 4):
        assert set(trailing_timesteps(n)) <= set(trailing_timesteps(2 * n))


def test_trailing_grid_has_exactly_n_points_for_every_n():
    for n in range(1, 1001):
        grid = trailing_timesteps(n)
        assert len(grid) == n and grid[0] == 999 and grid[-1] >= 0 and np.all(np.diff(grid) < 0)
