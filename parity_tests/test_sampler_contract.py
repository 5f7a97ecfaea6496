"""The sampler contract, both frameworks (``jax_impl/samplers.py`` docstring):

* pre-drawn noise enters every driver the same way (``x_T=`` the start, ``noise=`` the
  per-step noise), and drawing from ``rng`` / ``generator`` is the same as passing the
  start it would draw;
* predictors and correctors are protocols: a user's own class works in ``pc_sample``;
* ``import jax_impl.samplers`` does not load diffrax; an adaptive ODE does;
* every wrong call gets the project's own error naming the argument (or the function)
  before compilation: what ``score_fn`` / ``model_fn`` / ``denoised_fn`` return, NaN / Inf
  in pre-drawn or data arrays, non-bool flags, empty batches, non-key ``rng``,
  non-Generator ``generator``, malformed noise dicts and components; ``clip_denoised``
  warns on non-image data.
"""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import spec
from jax_impl import controllable as jc
from jax_impl import fast_samplers as jfs
from jax_impl import ode as jode
from jax_impl import samplers as js
from jax_impl import samplers_discrete as jdisc
from jax_impl import sde as jsde
from jax_impl.diffusion import GaussianDiffusion as JDiffusion
from jax_impl.sharding import per_sample_normal
from parity_tests.helpers import to_np
from parity_tests.test_samplers_pc import j_iso_score as j_score
from parity_tests.test_samplers_pc import t_iso_score as t_score
from torch_ref import controllable as tc
from torch_ref import fast_samplers as tfs
from torch_ref import ode as tode
from torch_ref import samplers as ts
from torch_ref import samplers_discrete as tdisc
from torch_ref import sde as tsde
from torch_ref.diffusion import GaussianDiffusion as TDiffusion

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 25


# --------------------------------------------------------- user-written components


class UserEulerMaruyama:
    """A predictor written from the protocol alone (no subclassing): the Euler-Maruyama
    step of the reverse SDE, dt = -1/N, in the framework of ``xp`` (jnp or torch)."""

    nfe = 1

    def __init__(self, xp):
        self.xp = xp

    def noise_shape(self, shape):
        return tuple(shape)

    def check(self, sde):
        if not hasattr(sde, "reverse"):
            raise TypeError("needs an SDE")

    def step(self, sde, score_fn, x, t, z):
        dt = -1.0 / sde.N
        drift, g = sde.sde(x, t)
        score = score_fn(x, t)
        g2 = (g**2).reshape((-1,) + (1,) * (x.ndim - 1))
        x_mean = x + (drift - g2 * score) * dt
        return x_mean + g.reshape(g2.shape) * math.sqrt(-dt) * z, x_mean


class DoNothingCorrector:
    """A corrector that leaves x alone, evaluates nothing and draws no noise."""

    nfe = 0

    def noise_shape(self, shape):
        return None

    def check(self, sde):
        pass

    def step(self, sde, score_fn, x, t, z):
        return x, x


@pytest.mark.parametrize("side", ["jax", "torch"])
def test_user_predictor_and_corrector_work_in_pc_sample(side, np_rng):
    """A hand-written Euler-Maruyama predictor equals ours; a do-nothing corrector equals
    corrector "none" (same pre-drawn noise, every PC combination of the two)."""
    shape = (4, 2)
    z = np_rng.standard_normal(shape)
    pn, cn = np_rng.standard_normal((N, *shape)), np_rng.standard_normal((N, 1, *shape))
    if side == "jax":
        sde = jsde.VPSDE(N=N)
        conv, run = jnp.asarray, lambda **kw: js.pc_sample(
            None, sde, j_score(sde), shape, x_T=sde.prior_from_noise(jnp.asarray(z)), **kw)
        user_pred = UserEulerMaruyama(jnp)
    else:
        sde = tsde.VPSDE(N=N)
        conv, run = torch.as_tensor, lambda **kw: ts.pc_sample(
            sde, t_score(sde), shape, x_T=sde.prior_from_noise(torch.as_tensor(z)), **kw)
        user_pred = UserEulerMaruyama(torch)
    noise = {"predictor": conv(pn), "corrector": conv(cn)}
    ours, nfe = run(predictor="euler_maruyama", corrector="langevin", noise=noise)
    mine, my_nfe = run(predictor=user_pred, corrector="langevin", noise=noise)
    np.testing.assert_allclose(to_np(mine), to_np(ours), rtol=1e-12, atol=1e-13)
    assert nfe == my_nfe == 2 * N
    none, nfe0 = run(predictor="euler_maruyama", corrector="none", noise=noise)
    idle, nfe1 = run(predictor="euler_maruyama", corrector=DoNothingCorrector(), noise=noise)
    np.testing.assert_array_equal(to_np(idle), to_np(none))
    assert nfe0 == nfe1 == N
    both, _ = run(predictor=user_pred, corrector=DoNothingCorrector(), noise={"predictor": conv(pn)})
    np.testing.assert_allclose(to_np(both), to_np(none), rtol=1e-12, atol=1e-13)
    # the protocols describe them (runtime-checkable)
    mod = js if side == "jax" else ts
    assert isinstance(user_pred, mod.Predictor) and isinstance(DoNothingCorrector(), mod.Corrector)
    assert isinstance(mod.get_predictor("ancestral_sampling"), mod.Predictor)


def test_user_predictor_draws_from_the_key_like_ours():
    """Drawing from a key, a protocol object gets exactly the noise ours gets."""
    sde = jsde.VESDE(N=N)
    key = jax.random.PRNGKey(3)
    ours, _ = js.pc_sample(key, sde, j_score(sde), (5, 2), predictor="euler_maruyama", corrector="ald")
    mine, _ = js.pc_sample(key, sde, j_score(sde), (5, 2), predictor=UserEulerMaruyama(jnp), corrector="ald")
    np.testing.assert_allclose(mine, ours, rtol=1e-12)


# ------------------------------------------------------------ x_T is the start


def test_given_start_equals_the_drawn_one():
    """``x_T`` is the actual start: passing the start a driver draws from ``split(rng)[0]``
    (per sample: row j from ``fold_in(split(rng)[0], j)``, ``sharding.per_sample_normal``;
    with the same rng for the rest) reproduces the all-drawn run, for every driver that
    draws a start from a key."""
    key = jax.random.PRNGKey(7)
    k0 = jax.random.split(key)[0]
    shape = (4, 2)
    vp, ve = jsde.VPSDE(N=N), jsde.VESDE(N=N)
    cases = []
    # PC: x_T = sde.prior_from_noise(per-sample normal(split(rng)[0]))
    x_T = ve.prior_from_noise(per_sample_normal(k0, shape, jnp.float64))
    cases.append((js.pc_sample(key, ve, j_score(ve), shape, dtype=jnp.float64)[0],
                  js.pc_sample(key, ve, j_score(ve), shape, x_T=x_T)[0]))
    # ALD: x_T = sigma_1 N(0, I)
    sig = (2.0, 0.5, 0.1)
    lvl = lambda x, level: -x  # noqa: E731
    x_T = 2.0 * per_sample_normal(k0, shape, jnp.float64)
    cases.append((js.ald_sample(key, sig, lvl, shape, n_steps_each=3, dtype=jnp.float64)[0],
                  js.ald_sample(key, sig, lvl, shape, n_steps_each=3, x_T=x_T)[0]))
    # ODE: x_T = sde.prior_from_noise(per-sample normal(split(rng)[0]))
    x_T = ve.prior_from_noise(per_sample_normal(k0, shape, jnp.float64))
    kw = dict(method="euler", num_steps=5)
    cases.append((jode.ode_sample(key, ve, j_score(ve), shape, dtype=jnp.float64, **kw)[0],
                  jode.ode_sample(None, ve, j_score(ve), shape, x_T=x_T, **kw)[0]))
    # EDM (with churn: the step noise still comes from split(rng)[1]) and DPM-Solver++
    with jax.ensure_compile_time_eval():
        s_T = float(jfs.sigma_from_t(vp, jnp.asarray([0.0, 1.0, 1e-3]))[1])
    x_T = s_T * per_sample_normal(k0, shape, jnp.float64)
    kw = dict(num_steps=4, S_churn=1.0)
    cases.append((jfs.edm_heun_sample(key, vp, j_score(vp), shape, dtype=jnp.float64, **kw)[0],
                  jfs.edm_heun_sample(key, vp, j_score(vp), shape, x_T=x_T, **kw)[0]))
    cases.append((jfs.dpm_solver_pp_sample(key, vp, j_score(vp), shape, num_steps=4, dtype=jnp.float64)[0],
                  jfs.dpm_solver_pp_sample(None, vp, j_score(vp), shape, num_steps=4, x_T=x_T)[0]))
    # inpainting: x_T is the unconditional prior state
    data = jnp.zeros(shape) + 0.25
    mask = jnp.asarray([[1.0, 0.0]] * 4)
    x_T = ve.prior_from_noise(per_sample_normal(k0, shape, jnp.float64))
    cases.append((jc.pc_inpaint(key, ve, j_score(ve), data, mask)[0],
                  jc.pc_inpaint(key, ve, j_score(ve), data, mask, x_T=x_T)[0]))
    for a, b in cases:
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-14)


def test_torch_generator_device_and_start():
    """torch: the start drawn from the generator equals the same draw passed as x_T, and
    the samples live on the generator's device."""
    sde = tsde.VESDE(N=N)
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    drawn, _ = ts.pc_sample(sde, t_score(sde), (3, 2), dtype=torch.float64, generator=g())
    gen = g()
    x_T = sde.prior_sampling((3, 2), torch.float64, generator=gen)
    given, _ = ts.pc_sample(sde, t_score(sde), (3, 2), x_T=x_T, generator=gen)
    torch.testing.assert_close(drawn, given, rtol=0, atol=0)
    assert drawn.device == torch.Generator().device


# --------------------------------------------------------------- lazy diffrax

_LAZY_SCRIPT = """
import sys
import jax_impl.samplers as s
assert 'diffrax' not in sys.modules, 'import jax_impl.samplers loaded diffrax'
assert callable(s.ode_sample) and 'ode_sample' in s.__all__
import jax
from jax_impl import sde
vp = sde.VPSDE()
x, nfe = s.ode_sample(jax.random.PRNGKey(0), vp, lambda x, t: -x, (2, 2), method='rk4', num_steps=2)
assert 'diffrax' not in sys.modules, 'a fixed-step ODE loaded diffrax'
x, nfe = s.ode_sample(jax.random.PRNGKey(0), vp, lambda x, t: -x, (2, 2), method='dopri5')
assert 'diffrax' in sys.modules
print('ok')
"""


def test_samplers_module_imports_without_diffrax():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run([sys.executable, "-c", _LAZY_SCRIPT], capture_output=True, text=True,
                          env=env, timeout=120, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]


# ------------------------------------------------------------------ wrong calls


@dataclasses.dataclass
class Side:
    """One framework's drivers behind one calling convention: ``call(name, *args, **kw)``
    passes ``rng`` (JAX) or ``generator`` (torch) the way each side takes it."""

    name: str

    def __post_init__(self):
        jax_side = self.name == "jax"
        self.mod = dict(pc_sample=js if jax_side else ts, ald_sample=js if jax_side else ts,
                        ode_sample=jode if jax_side else tode, likelihood=jode if jax_side else tode,
                        bits_per_dim=jode if jax_side else tode,
                        edm_heun_sample=jfs if jax_side else tfs,
                        dpm_solver_pp_sample=jfs if jax_side else tfs,
                        ddpm_sample=jdisc if jax_side else tdisc, ddim_sample=jdisc if jax_side else tdisc,
                        ddim_invert=jdisc if jax_side else tdisc,
                        pc_inpaint=jc if jax_side else tc, pc_colorize=jc if jax_side else tc)
        self.sde = (jsde if jax_side else tsde).VPSDE(N=N)
        cfg = spec.DiffusionConfig(steps=1000, timestep_respacing="10")
        self.diffusion = (JDiffusion if jax_side else TDiffusion)(cfg)
        self.xp = jnp if jax_side else torch
        self.img = (2, 2, 2, 3) if jax_side else (2, 3, 2, 2)
        self.calls = []

    def arr(self, shape, fill=0.0, dtype=None):
        if self.name == "jax":
            return jnp.full(shape, fill, jnp.float64 if dtype is None else dtype)
        return torch.full(shape, fill, dtype=torch.float64 if dtype is None else dtype)

    def score(self, kind="ok"):
        def fn(x, t):
            self.calls.append(1)
            if kind == "shape":
                return x.reshape(x.shape[0], -1)[:, :1]
            if kind == "int":
                return self.xp.zeros(tuple(x.shape), dtype=self.xp.int32)
            return -x
        return fn

    def call(self, name, *args, rng=None, **kw):
        fn = getattr(self.mod[name], name)
        if self.name == "jax":
            rng = jax.random.PRNGKey(0) if rng is None else rng
            if name == "ddim_invert":
                return fn(*args, **kw)
            return fn(rng, *args, **kw)
        if rng is not None:
            kw["generator"] = rng
        return fn(*args, **kw)


def _score_cases(s):
    """(label, thunk, exception, message) for what a user function returns."""
    x2 = s.arr((4, 2), 0.5)
    cases = []
    for kind, exc, msg in (("shape", ValueError, "score_fn returned shape (4, 1) for x of shape (4, 2)"),
                           ("int", TypeError, "score_fn returned dtype")):
        sf = s.score(kind)
        cases += [
            (f"pc_sample/{kind}", lambda sf=sf: s.call("pc_sample", s.sde, sf, (4, 2)), exc, msg),
            (f"pc_sample corrector-only/{kind}", lambda sf=sf: s.call(
                "pc_sample", s.sde, sf, (4, 2), predictor="none"), exc, msg),
            (f"ald_sample/{kind}", lambda sf=sf: s.call("ald_sample", (1.0, 0.1), sf, (4, 2), n_steps_each=2),
             exc, msg),
            (f"ode_sample/{kind}", lambda sf=sf: s.call("ode_sample", s.sde, sf, (4, 2), method="euler",
                                                        num_steps=2), exc, msg),
            (f"edm_heun_sample/{kind}", lambda sf=sf: s.call("edm_heun_sample", s.sde, sf, (4, 2),
                                                             num_steps=3), exc, msg),
            (f"dpm_solver_pp_sample/{kind}", lambda sf=sf: s.call("dpm_solver_pp_sample", s.sde, sf, (4, 2),
                                                                  num_steps=3), exc, msg),
            (f"likelihood/{kind}", lambda sf=sf: s.call("likelihood", s.sde, sf, x2, method="euler",
                                                        num_steps=2), exc, msg),
            (f"bits_per_dim/{kind}", lambda sf=sf: s.call("bits_per_dim", s.sde, sf, x2, method="euler",
                                                          num_steps=2), exc, msg),
            (f"pc_inpaint/{kind}", lambda sf=sf: s.call("pc_inpaint", s.sde, sf, x2, s.arr((4, 2), 1.0)),
             exc, msg),
        ]
    img_msg = f"score_fn returned shape (2, 1) for x of shape {s.img}"
    cases.append(("pc_colorize/shape", lambda: s.call("pc_colorize", s.sde, s.score("shape"), s.arr(s.img, 0.2)),
                  ValueError, img_msg))
    for kind, exc, msg in (("shape", ValueError, "model_fn returned shape (4, 1) for x of shape (4, 2)"),
                           ("int", TypeError, "model_fn returned dtype")):
        mf = s.score(kind)
        kw = dict(clip_denoised=False)
        cases += [
            (f"ddpm_sample/{kind}", lambda mf=mf: s.call("ddpm_sample", s.diffusion, mf, (4, 2), **kw), exc, msg),
            (f"ddim_sample/{kind}", lambda mf=mf: s.call("ddim_sample", s.diffusion, mf, (4, 2), **kw), exc, msg),
            (f"ddim_invert/{kind}", lambda mf=mf: s.call("ddim_invert", s.diffusion, mf, x2), exc, msg),
        ]
    bad_denoised = lambda x0: x0[:, :1]  # noqa: E731
    for name in ("ddpm_sample", "ddim_sample"):
        cases.append((f"{name}/denoised_fn", lambda name=name: s.call(
            name, s.diffusion, s.score(), (4, 2), clip_denoised=False, denoised_fn=bad_denoised),
            ValueError, "denoised_fn returned shape (4, 1) for x of shape (4, 2)"))
    return cases


def _input_cases(s):
    """(label, thunk, exception, message) rejected before the score is ever evaluated."""
    nan = float("nan")
    x2, ok = s.arr((4, 2), 0.5), s.score()
    ones = s.arr((4, 2), 1.0)
    pc_noise = {"predictor": s.arr((N, 4, 2)), "corrector": s.arr((N, 1, 4, 2))}
    nan_noise = dict(pc_noise, predictor=s.arr((N, 4, 2), nan))
    fast = dict(num_steps=3)
    inf = float("inf")
    cases = [
        # NaN / Inf in pre-drawn arrays and data
        ("pc x_T NaN", lambda: s.call("pc_sample", s.sde, ok, (4, 2), x_T=s.arr((4, 2), nan)), ValueError,
         "x_T contains NaN or Inf"),
        ("pc x_T Inf", lambda: s.call("pc_sample", s.sde, ok, (4, 2), x_T=s.arr((4, 2), inf)), ValueError,
         "x_T contains NaN or Inf"),
        ("pc noise NaN", lambda: s.call("pc_sample", s.sde, ok, (4, 2), noise=nan_noise), ValueError,
         "noise['predictor'] contains NaN or Inf"),
        ("ald x_T NaN", lambda: s.call("ald_sample", (1.0, 0.1), ok, (4, 2), n_steps_each=2,
                                       x_T=s.arr((4, 2), nan)), ValueError, "x_T contains NaN"),
        ("ald noise NaN", lambda: s.call("ald_sample", (1.0, 0.1), ok, (4, 2), n_steps_each=2,
                                         noise=s.arr((4, 4, 2), nan)), ValueError, "noise contains NaN"),
        ("ode x_T NaN", lambda: s.call("ode_sample", s.sde, ok, (4, 2), x_T=s.arr((4, 2), nan)), ValueError,
         "x_T contains NaN"),
        ("edm x_T NaN", lambda: s.call("edm_heun_sample", s.sde, ok, (4, 2), x_T=s.arr((4, 2), nan), **fast),
         ValueError, "x_T contains NaN"),
        ("edm noise NaN", lambda: s.call("edm_heun_sample", s.sde, ok, (4, 2), S_churn=1.0,
                                         noise=s.arr((3, 4, 2), nan), **fast), ValueError, "noise contains NaN"),
        ("dpm x_T NaN", lambda: s.call("dpm_solver_pp_sample", s.sde, ok, (4, 2), x_T=s.arr((4, 2), nan),
                                       **fast), ValueError, "x_T contains NaN"),
        ("ddpm x_T NaN", lambda: s.call("ddpm_sample", s.diffusion, ok, (4, 2), clip_denoised=False,
                                        x_T=s.arr((4, 2), nan)), ValueError, "x_T contains NaN"),
        ("ddpm noise NaN", lambda: s.call("ddpm_sample", s.diffusion, ok, (4, 2), clip_denoised=False,
                                          noise=s.arr((10, 4, 2), nan)), ValueError, "noise contains NaN"),
        ("ddim x_T NaN", lambda: s.call("ddim_sample", s.diffusion, ok, (4, 2), clip_denoised=False,
                                        x_T=s.arr((4, 2), nan)), ValueError, "x_T contains NaN"),
        ("ddim_invert x0 NaN", lambda: s.call("ddim_invert", s.diffusion, ok, s.arr((4, 2), nan)), ValueError,
         "x0 contains NaN"),
        ("likelihood x NaN", lambda: s.call("likelihood", s.sde, ok, s.arr((4, 2), nan)), ValueError,
         "x contains NaN"),
        ("likelihood probe NaN", lambda: s.call("likelihood", s.sde, ok, x2, hutchinson="gaussian",
                                                noise=s.arr((4, 2), nan)), ValueError, "noise contains NaN"),
        ("bits_per_dim x NaN", lambda: s.call("bits_per_dim", s.sde, ok, s.arr((4, 2), nan)), ValueError,
         "x contains NaN"),
        ("bits_per_dim u NaN", lambda: s.call("bits_per_dim", s.sde, ok, x2,
                                              noise={"dequantization": s.arr((4, 2), nan)}), ValueError,
         "noise['dequantization'] contains NaN"),
        ("inpaint data NaN", lambda: s.call("pc_inpaint", s.sde, ok, s.arr((4, 2), nan), ones), ValueError,
         "data contains NaN"),
        ("inpaint mask NaN", lambda: s.call("pc_inpaint", s.sde, ok, x2, s.arr((4, 2), nan)), ValueError,
         "mask must contain only 0"),
        ("inpaint x_T NaN", lambda: s.call("pc_inpaint", s.sde, ok, x2, ones, x_T=s.arr((4, 2), nan)),
         ValueError, "x_T contains NaN"),
        ("colorize gray NaN", lambda: s.call("pc_colorize", s.sde, ok, s.arr(s.img, nan)), ValueError,
         "gray contains NaN"),
        # flags must be real bools
        ("pc probability_flow='yes'", lambda: s.call("pc_sample", s.sde, ok, (4, 2), probability_flow="yes"),
         TypeError, "probability_flow must be a bool"),
        ("pc probability_flow=1", lambda: s.call("pc_sample", s.sde, ok, (4, 2), probability_flow=1),
         TypeError, "probability_flow must be a bool"),
        ("pc denoise='yes'", lambda: s.call("pc_sample", s.sde, ok, (4, 2), denoise="yes"), TypeError,
         "denoise must be a bool"),
        ("get_predictor probability_flow", lambda: s.mod["pc_sample"].get_predictor(
            "euler_maruyama", probability_flow="no"), TypeError, "probability_flow must be a bool"),
        ("ald denoise=1", lambda: s.call("ald_sample", (1.0, 0.1), ok, (4, 2), denoise=1), TypeError,
         "denoise must be a bool"),
        ("ald final_only='no'", lambda: s.call("ald_sample", (1.0, 0.1), ok, (4, 2), final_only="no"),
         TypeError, "final_only must be a bool"),
        ("ode denoise='yes'", lambda: s.call("ode_sample", s.sde, ok, (4, 2), denoise="yes"), TypeError,
         "denoise must be a bool"),
        ("bits centered='yes'", lambda: s.call("bits_per_dim", s.sde, ok, x2, centered="yes"), TypeError,
         "centered must be a bool"),
        ("bits dequantize=1", lambda: s.call("bits_per_dim", s.sde, ok, x2, dequantize=1), TypeError,
         "dequantize must be a bool"),
        ("ddpm clip_denoised='yes'", lambda: s.call("ddpm_sample", s.diffusion, ok, (4, 2),
                                                    clip_denoised="yes"), TypeError,
         "clip_denoised must be a bool"),
        ("ddim_invert clip_denoised=1", lambda: s.call("ddim_invert", s.diffusion, ok, x2, clip_denoised=1),
         TypeError, "clip_denoised must be a bool"),
        ("inpaint probability_flow='yes'", lambda: s.call("pc_inpaint", s.sde, ok, x2, ones,
                                                          probability_flow="yes"), TypeError,
         "probability_flow must be a bool"),
        # empty batches, as the samplers reject them
        ("likelihood batch 0", lambda: s.call("likelihood", s.sde, ok, s.arr((0, 2))), ValueError,
         "x must have shape [B, ...] with B >= 1"),
        ("bits_per_dim batch 0", lambda: s.call("bits_per_dim", s.sde, ok, s.arr((0, 2))), ValueError,
         "x must have shape [B, ...] with B >= 1"),
        ("inpaint batch 0", lambda: s.call("pc_inpaint", s.sde, ok, s.arr((0, 2)), s.arr((0, 2), 1.0)),
         ValueError, "data.shape[0] must be >= 1"),
        # malformed noise dicts and components
        ("pc noise not a dict", lambda: s.call("pc_sample", s.sde, ok, (4, 2), noise=s.arr((N, 4, 2))),
         TypeError, "noise must be a dict"),
        ("pc noise unknown key", lambda: s.call("pc_sample", s.sde, ok, (4, 2),
                                                noise=dict(pc_noise, predicter=s.arr((N, 4, 2)))),
         ValueError, "noise has unknown keys ['predicter']"),
        ("bits noise unknown key", lambda: s.call("bits_per_dim", s.sde, ok, x2, noise={"u": x2}), ValueError,
         "noise has unknown keys ['u']"),
        ("predictor without step", lambda: s.call("pc_sample", s.sde, ok, (4, 2), predictor=object()),
         TypeError, "predictor must be a name in"),
        ("corrector with nfe=-1", lambda: s.call(
            "pc_sample", s.sde, ok, (4, 2), corrector=type("C", (DoNothingCorrector,), {"nfe": -1})()),
         TypeError, "nfe=-1 is not an int >= 0"),
    ]
    return cases


def _rng_cases(s):
    """A wrong ``rng`` (JAX) / ``generator`` (torch) for every driver that draws."""
    ok, x2 = s.score(), s.arr((4, 2), 0.5)
    drivers = {
        "pc_sample": lambda r: s.call("pc_sample", s.sde, ok, (4, 2), rng=r),
        "ald_sample": lambda r: s.call("ald_sample", (1.0, 0.1), ok, (4, 2), n_steps_each=2, rng=r),
        "ode_sample": lambda r: s.call("ode_sample", s.sde, ok, (4, 2), rng=r),
        "edm_heun_sample": lambda r: s.call("edm_heun_sample", s.sde, ok, (4, 2), rng=r),
        "dpm_solver_pp_sample": lambda r: s.call("dpm_solver_pp_sample", s.sde, ok, (4, 2), rng=r),
        "ddpm_sample": lambda r: s.call("ddpm_sample", s.diffusion, ok, (4, 2), clip_denoised=False, rng=r),
        "ddim_sample": lambda r: s.call("ddim_sample", s.diffusion, ok, (4, 2), clip_denoised=False, rng=r),
        "likelihood": lambda r: s.call("likelihood", s.sde, ok, x2, hutchinson="rademacher", rng=r),
        "bits_per_dim": lambda r: s.call("bits_per_dim", s.sde, ok, x2, rng=r),
        "pc_inpaint": lambda r: s.call("pc_inpaint", s.sde, ok, x2, s.arr((4, 2), 1.0), rng=r),
        "pc_colorize": lambda r: s.call("pc_colorize", s.sde, ok, s.arr(s.img, 0.2), rng=r),
    }
    if s.name == "jax":
        bad = {"int": (0, "rng must be a JAX PRNG key, got int"),
               "numpy Generator": (np.random.default_rng(0), "rng must be a JAX PRNG key, got a numpy"),
               "torch Generator": (torch.Generator(), "rng must be a JAX PRNG key, got a torch"),
               "batch of keys": (jax.random.split(jax.random.PRNGKey(0), 3), "rng must be a single PRNG key")}
    else:
        bad = {"int": (0, "generator must be None or a torch.Generator"),
               "numpy Generator": (np.random.default_rng(0), "generator must be None or a torch.Generator"),
               "jax key": (np.zeros(2, np.uint32), "generator must be None or a torch.Generator")}
    return [(f"{name} rng={what}", lambda f=f, r=r: f(r), TypeError, msg)
            for name, f in drivers.items() for what, (r, msg) in bad.items()]


def _check_cases(cases, s, *, before_evaluation):
    for label, thunk, exc, msg in cases:
        s.calls.clear()
        with pytest.raises(exc) as info:
            thunk()
        assert msg in str(info.value), (label, str(info.value))
        if before_evaluation:
            assert not s.calls, f"{label}: the score / model was evaluated before the error"
        else:  # the output check rejects the first (traced) call's result
            assert len(s.calls) <= 2, label


@pytest.mark.parametrize("side", ["jax", "torch"])
def test_function_outputs_are_checked_at_trace_time(side):
    s = Side(side)
    with _no_warning_filter():
        _check_cases(_score_cases(s), s, before_evaluation=False)


@pytest.mark.parametrize("side", ["jax", "torch"])
def test_bad_inputs_rejected_before_evaluation(side):
    s = Side(side)
    with _no_warning_filter():
        _check_cases(_input_cases(s), s, before_evaluation=True)


@pytest.mark.parametrize("side", ["jax", "torch"])
def test_bad_rng_or_generator_rejected_before_evaluation(side):
    s = Side(side)
    with _no_warning_filter():
        _check_cases(_rng_cases(s), s, before_evaluation=True)


def test_jit_output_check_runs_while_tracing():
    """Under jit the output check raises while tracing (``jit(...).trace`` alone raises:
    nothing is lowered or compiled)."""
    sde = jsde.VPSDE(N=N)
    f = jax.jit(lambda k: js.pc_sample(k, sde, lambda x, t: x[:, :1], (4, 2))[0])
    with pytest.raises(ValueError, match=r"score_fn returned shape \(4, 1\)"):
        f.trace(jax.random.PRNGKey(0))


def test_wrong_call_case_count():
    """The number of wrong-call cases above, both frameworks (reported with the change)."""
    total = sum(len(fn(Side(side))) for side in ("jax", "torch")
                for fn in (_score_cases, _input_cases, _rng_cases))
    assert total == WRONG_CALL_CASES, total


WRONG_CALL_CASES = 2 * (9 * 2 + 1 + 6 + 2) + 2 * 41 + 11 * 4 + 11 * 3


class _no_warning_filter:
    """Silence the clip_denoised warning while checking errors."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", UserWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


# ------------------------------------------------------------- clip_denoised


@pytest.mark.parametrize("side", ["jax", "torch"])
def test_clip_denoised_warns_for_non_image_data(side):
    s = Side(side)
    with pytest.warns(UserWarning, match=r"clip_denoised=True clamps the predicted x_0 to \[-1, 1\]") as rec:
        fn = getattr(s.mod["ddpm_sample"], "ddpm_sample")
        fn(*((jax.random.PRNGKey(0),) if side == "jax" else ()), s.diffusion, s.score(), (4, 2))
    assert rec[0].filename == __file__  # the warning points at the user's call
    with pytest.warns(UserWarning, match="rank 2"):
        s.call("ddim_invert", s.diffusion, s.score(), s.arr((4, 2), 0.1), clip_denoised=True)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s.call("ddim_sample", s.diffusion, s.score(), (1, 4, 4, 1) if side == "jax" else (1, 1, 4, 4))
        s.call("ddim_sample", s.diffusion, s.score(), (4, 2), clip_denoised=False)
