"""spec/: numpy-only, float64 tables equal closed forms and improved-diffusion's rules."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

import spec
from spec import schedules


def test_spec_imports_with_jax_and_torch_blocked():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('jax', 'jaxlib', 'torch', 'flax'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import spec, spec.configs, spec.schedules, spec.grids, spec.sampler_args, spec.diffusion_process\n"
        "import spec.model_configs, spec.ncsn_configs, spec.oracles.gmm, spec.oracles.sde, spec.oracles.diffusion\n"
        "spec.DiffusionConfig(noise_schedule='cosine', timestep_respacing='ddim50').tables()\n"
        "assert not any(m.split('.')[0] in ('jax', 'torch') for m in sys.modules)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


def test_linear_betas_match_ddpm():
    b = schedules.get_named_beta_schedule("linear", 1000)
    assert b.dtype == np.float64 and b.shape == (1000,)
    assert b[0] == pytest.approx(1e-4, abs=1e-15) and b[-1] == pytest.approx(0.02, abs=1e-15)
    # improved-diffusion scales by 1000/T so that any T gives the same process in the limit.
    b100 = schedules.get_named_beta_schedule("linear", 100)
    assert b100[0] == pytest.approx(1e-3) and b100[-1] == pytest.approx(0.2)


def test_cosine_betas_closed_form():
    T = 1000
    b = schedules.get_named_beta_schedule("cosine", T)
    f = lambda t: math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    ab = np.cumprod(1 - b)
    # alpha_bar_t = f(t+1)/f(0) wherever no beta was capped at 0.999.
    capped = b >= 0.999
    assert capped.sum() >= 1 and capped[-1]
    for i in (0, 10, 500, 900):
        assert ab[i] == pytest.approx(f(i + 1) / f(0), rel=1e-12)
    assert b.max() == 0.999


def test_vp_discrete_betas_equal_ddpm_linear():
    np.testing.assert_allclose(spec.VPSDEConfig().discrete_betas,
                               schedules.get_named_beta_schedule("linear", 1000), rtol=1e-14)


def test_sigma_ladders():
    s = schedules.geometric_sigmas(1.0, 0.01, 10)
    assert s[0] == pytest.approx(1.0) and s[-1] == pytest.approx(0.01)
    np.testing.assert_allclose(s[1:] / s[:-1], np.full(9, 0.01 ** (1 / 9)), rtol=1e-12)
    v = spec.VESDEConfig(sigma_min=0.01, sigma_max=50, N=5).discrete_sigmas
    np.testing.assert_allclose(v, np.geomspace(0.01, 50, 5), rtol=1e-12)
    k = schedules.karras_sigmas(18, 0.002, 80.0)
    assert k.shape == (19,) and k[-1] == 0 and k[0] == pytest.approx(80) and k[-2] == pytest.approx(0.002)
    assert np.all(np.diff(k) < 0)


@pytest.mark.parametrize(
    "section, expected",
    [
        ("10", [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]),
        ("ddim10", list(range(0, 1000, 100))),
        ("ddim50", list(range(0, 1000, 20))),
    ],
)
def test_space_timesteps_known_values(section, expected):
    assert sorted(schedules.space_timesteps(1000, section)) == expected


def test_space_timesteps_sections():
    # 300 steps, 3 sections of 100: 10, 15 and 20 evenly strided (rounded) steps each.
    kept = sorted(schedules.space_timesteps(300, "10,15,20"))
    assert len(kept) == 45
    first, second, third = kept[:10], kept[10:25], kept[25:]
    assert first[0] == 0 and first[-1] == 99 and second[0] == 100 and second[-1] == 199
    assert third[0] == 200 and third[-1] == 299
    assert first == [round(i * 99 / 9) for i in range(10)]
    # uneven split: the first T % len sections are one step longer
    kept = sorted(schedules.space_timesteps(10, [2, 2, 2]))
    assert kept == [0, 3, 4, 6, 7, 9]


def test_respaced_process_reproduces_alpha_bar():
    for schedule in ("linear", "cosine"):
        cfg = spec.DiffusionConfig(noise_schedule=schedule, timestep_respacing="25,10")
        base_ab = np.cumprod(1 - cfg.base_betas)
        tab = cfg.tables()
        np.testing.assert_allclose(tab.alphas_cumprod, base_ab[tab.timestep_map], rtol=1e-9)
        assert tab.num_timesteps == 35 and tab.original_num_steps == 1000


def test_unrespaced_process_is_respaced_identity():
    cfg = spec.DiffusionConfig()
    tab = cfg.tables()
    np.testing.assert_allclose(tab.betas, cfg.base_betas, rtol=1e-10)
    np.testing.assert_array_equal(tab.timestep_map, np.arange(1000))


def test_diffusion_tables_closed_forms():
    tab = spec.DiffusionConfig(steps=50, noise_schedule="cosine").tables()
    b, ab = tab.betas, tab.alphas_cumprod
    np.testing.assert_allclose(tab.posterior_variance[1:], b[1:] * (1 - ab[:-1]) / (1 - ab[1:]), rtol=1e-12)
    assert tab.posterior_variance[0] == 0.0
    assert tab.posterior_log_variance_clipped[0] == pytest.approx(np.log(tab.posterior_variance[1]))
    # posterior mean coefficients recover x_{t-1}'s mean: coef1 x0 + coef2 x_t
    np.testing.assert_allclose(tab.posterior_mean_coef1 + tab.posterior_mean_coef2 * np.sqrt(ab),
                               np.sqrt(tab.alphas_cumprod_prev), rtol=1e-10)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: spec.VPSDEConfig(N=0), "N must be >= 1"),
        (lambda: spec.VPSDEConfig(N=2.5), "N must be an integer"),
        (lambda: spec.VPSDEConfig(beta_min=30.0), "beta_min must be <= beta_max"),
        (lambda: spec.subVPSDEConfig(beta_min=-1.0), "beta_min must be >= 0"),
        (lambda: spec.VESDEConfig(sigma_min=50.0, sigma_max=50.0), "sigma_min must be < sigma_max"),
        (lambda: spec.VESDEConfig(sigma_min=0.0), "sigma_min must be > 0"),
        (lambda: spec.DiffusionConfig(timestep_respacing="fast"), "unknown timestep respacing 'fast'"),
        (lambda: spec.DiffusionConfig(timestep_respacing="ddim7x"), "ddimN"),
        (lambda: spec.DiffusionConfig(timestep_respacing="ddim999"), "no integer stride"),
        (lambda: spec.DiffusionConfig(steps=10, noise_schedule="cosine", timestep_respacing="11"), "cannot take 11 steps"),
        (lambda: spec.DiffusionConfig(noise_schedule="quadratic"), "unknown noise_schedule"),
        (lambda: spec.DiffusionConfig(steps=20), "linear schedule.s betas reach"),
        (lambda: spec.DiffusionConfig(loss_type="l1"), "unknown loss_type"),
        (lambda: spec.DiffusionConfig(model_var_type="big"), "unknown model_var_type"),
    ],
)
def test_bad_config_errors_name_the_argument(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_vp_discrete_view_needs_n_above_beta_max():
    cfg = spec.VPSDEConfig(N=10)  # the continuous SDE is fine with any N
    assert cfg.N == 10
    with pytest.raises(ValueError, match=r"discrete betas reach 2 >= 1.*need N > beta_max"):
        cfg.discrete_betas
    assert spec.VPSDEConfig(N=21).discrete_betas.max() < 1


def test_configs_are_hashable_and_coerce_enums():
    cfg = spec.DiffusionConfig(model_var_type="learned_range", loss_type="RESCALED_MSE")
    assert cfg.model_var_type is spec.ModelVarType.LEARNED_RANGE
    assert cfg.loss_type is spec.LossType.RESCALED_MSE
    assert hash(cfg) == hash(spec.DiffusionConfig(model_var_type="learned_range", loss_type="rescaled_mse"))
    assert {spec.VPSDEConfig(): 1}[spec.VPSDEConfig(beta_min=0.1)] == 1
