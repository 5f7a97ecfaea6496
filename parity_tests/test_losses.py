"""Score-family losses: jax == torch == numpy oracle, gradients, closed forms, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jax_impl import losses as jl
from jax_impl import sde as jsde
from parity_tests.helpers import to_np, tol
from spec import schedules
from torch_ref import losses as tl
from torch_ref import sde as tsde

D = 3


def _linear_model(W, c, xp):
    """score/eps model ``x @ W + t c`` (t: float time or integer label), same on all sides."""

    def fn(x, t):
        flat = x.reshape(x.shape[0], -1)
        tt = t.astype(flat.dtype) if xp is not torch else t.to(flat.dtype)
        return (flat @ W + tt[:, None] * c[None, :]).reshape(x.shape)

    return fn


def _np_reduce(v, reduce_mean):
    v = v.reshape(len(v), -1)
    return v.mean(1) if reduce_mean else 0.5 * v.sum(1)


def _oracle(kind, x, t_or_labels, z, W, c, *, reduce_mean, likelihood_weighting=False, sigmas=None):
    """float64 numpy re-derivation of each loss."""
    from spec.oracles import sde as osde
    import spec

    model = lambda xx, tt: (xx.reshape(len(xx), -1) @ W + np.asarray(tt, np.float64)[:, None] * c).reshape(xx.shape)  # noqa: E731
    bc = lambda v: v.reshape((-1,) + (1,) * (x.ndim - 1))  # noqa: E731
    if kind == "dsm":
        s = sigmas[t_or_labels]
        xt = x + bc(s) * z
        return 0.5 * ((model(xt, t_or_labels) + z / bc(s)) ** 2).reshape(len(x), -1).sum(1) * s**2
    if kind == "sde_vp" or kind == "sde_ve":
        cfg = spec.VPSDEConfig() if kind == "sde_vp" else spec.VESDEConfig()
        mean, std = osde.marginal_prob(cfg, x, t_or_labels)
        xt = mean + bc(std) * z
        sc = model(xt, t_or_labels)
        if not likelihood_weighting:
            return _np_reduce((sc * bc(std) + z) ** 2, reduce_mean)
        g2 = osde.sde(cfg, np.zeros_like(x), t_or_labels)[1] ** 2
        return _np_reduce((sc + z / bc(std)) ** 2, reduce_mean) * g2
    if kind == "smld":
        s = spec.VESDEConfig().discrete_sigmas[::-1][t_or_labels]
        xt = x + bc(s) * z
        return _np_reduce((model(xt, t_or_labels) + z / bc(s)) ** 2, reduce_mean) * s**2
    if kind == "ddpm":
        ab = np.cumprod(1 - spec.VPSDEConfig().discrete_betas)[t_or_labels]
        xt = bc(np.sqrt(ab)) * x + bc(np.sqrt(1 - ab)) * z
        return _np_reduce((model(xt, t_or_labels) - z) ** 2, reduce_mean)
    raise AssertionError(kind)


CASES = [
    ("dsm", dict()),
    ("sde_vp", dict(reduce_mean=True)),
    ("sde_vp", dict(reduce_mean=False, likelihood_weighting=True)),
    ("sde_ve", dict(reduce_mean=False)),
    ("sde_ve", dict(reduce_mean=True, likelihood_weighting=True)),
    ("smld", dict(reduce_mean=False)),
    ("ddpm", dict(reduce_mean=True)),
    ("ddpm", dict(reduce_mean=False)),
]


def _call(side, kind, model, x, tl_, z, opts, sigmas):
    mod = jl if side == "jax" else tl
    S = jsde if side == "jax" else tsde
    if kind == "dsm":
        return mod.anneal_dsm_loss(model, x, tl_, z, sigmas)
    if kind == "sde_vp":
        return mod.sde_loss(S.VPSDE(), model, x, tl_, z, **opts)
    if kind == "sde_ve":
        return mod.sde_loss(S.VESDE(), model, x, tl_, z, **opts)
    if kind == "smld":
        return mod.smld_loss(S.VESDE(), model, x, tl_, z, **opts)
    return mod.ddpm_loss(S.VPSDE(), model, x, tl_, z, **opts)


@pytest.mark.parametrize("kind, opts", CASES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_losses_three_way_with_gradients(kind, opts, dtype, np_rng):
    B = 6
    x = np_rng.standard_normal((B, 2, D)).astype(dtype)  # rank-3 data: any rank works
    z = np_rng.standard_normal(x.shape).astype(dtype)
    W = (0.3 * np_rng.standard_normal((2 * D, 2 * D))).astype(dtype)
    c = (0.1 * np_rng.standard_normal(2 * D)).astype(dtype)
    sigmas = schedules.geometric_sigmas(1.0, 0.01, 10)
    if kind.startswith("sde"):
        tl_ = np_rng.uniform(1e-3, 1.0, B).astype(dtype)
    else:
        n = 10 if kind == "dsm" else 1000
        tl_ = np_rng.integers(0, n, B)

    def jloss(W, c):
        return _call("jax", kind, _linear_model(W, c, jnp), jnp.asarray(x), jnp.asarray(tl_), jnp.asarray(z), opts, sigmas)

    lj = jax.jit(jloss)(jnp.asarray(W), jnp.asarray(c))
    gWj, gcj = jax.grad(lambda W, c: jloss(W, c).sum(), argnums=(0, 1))(jnp.asarray(W), jnp.asarray(c))

    Wt = torch.tensor(W, requires_grad=True)
    ct = torch.tensor(c, requires_grad=True)
    lt = _call("torch", kind, _linear_model(Wt, ct, torch), torch.as_tensor(x), torch.as_tensor(tl_), torch.as_tensor(z), opts, sigmas)
    lt.sum().backward()

    lo = _oracle(kind, x.astype(np.float64), tl_, z.astype(np.float64), W.astype(np.float64),
                 c.astype(np.float64), reduce_mean=opts.get("reduce_mean", False),
                 likelihood_weighting=opts.get("likelihood_weighting", False), sigmas=sigmas)
    assert lj.shape == (B,) and lj.dtype == dtype
    # losses sum many terms and (VE) scale by sigma^2: relative tolerance, looser in float32
    t = tol(dtype) if dtype == np.float64 else dict(rtol=2e-4, atol=1e-5)
    np.testing.assert_allclose(to_np(lj), to_np(lt), **t)
    np.testing.assert_allclose(to_np(lj), lo, **t)
    np.testing.assert_allclose(to_np(gWj), to_np(Wt.grad), **t)
    np.testing.assert_allclose(to_np(gcj), to_np(ct.grad), **t)


def test_dsm_loss_closed_form_at_optimum():
    """For Gaussian data N(0, v I) the optimal NCSN score at level s is -x/(v + s^2), and
    the expected DSM loss there is 1/2 D s^2 (1/s^2 - 1/(v + s^2)) s^2 (closed form)."""
    v, s, Dm, n = 0.5, 0.3, 4, 200000
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((n, Dm)) * np.sqrt(v))
    z = jnp.asarray(rng.standard_normal((n, Dm)))
    labels = jnp.zeros(n, jnp.int32)
    loss = jl.anneal_dsm_loss(lambda xt, y: -xt / (v + s**2), x, labels, z, np.array([s]))
    expected = 0.5 * Dm * s**2 * (1 / s**2 - 1 / (v + s**2))
    assert float(loss.mean()) == pytest.approx(expected, rel=0.01)


def test_sde_loss_exact_score_has_lower_loss_than_perturbed():
    """The exact score of Gaussian data minimises the SDE denoising loss."""
    sde = jsde.VPSDE()
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.standard_normal((50000, 2)) * 0.5)
    z = jnp.asarray(rng.standard_normal((50000, 2)))
    t = jnp.asarray(rng.uniform(1e-3, 1, 50000))

    def score(scale):
        def fn(xt, tt):
            mean, std = sde.marginal_prob(jnp.ones_like(xt), tt)
            var = mean[:, :1] ** 2 * 0.25 + std[:, None] ** 2
            return -scale * xt / var
        return fn

    base = float(jl.sde_loss(sde, score(1.0), x, t, z).mean())
    for scale in (0.9, 1.1):
        assert float(jl.sde_loss(sde, score(scale), x, t, z).mean()) > base


def test_loss_factories_draw_inputs():
    sig = schedules.geometric_sigmas(1.0, 0.01, 10)
    x = jnp.ones((8, 3))
    model = lambda xx, t: -xx  # noqa: E731
    for fn in (jl.get_anneal_dsm_loss_fn(sig), jl.get_sde_loss_fn(jsde.VPSDE()),
               jl.get_smld_loss_fn(jsde.VESDE()), jl.get_ddpm_loss_fn(jsde.VPSDE())):
        a = jax.jit(lambda k: fn(k, model, x))(jax.random.PRNGKey(0))
        b = jax.jit(lambda k: fn(k, model, x))(jax.random.PRNGKey(1))
        assert a.shape == (8,) and np.all(np.isfinite(a)) and not np.allclose(a, b)
    xt = torch.ones(8, 3, dtype=torch.float64)
    for fn in (tl.get_anneal_dsm_loss_fn(sig), tl.get_sde_loss_fn(tsde.VPSDE()),
               tl.get_smld_loss_fn(tsde.VESDE()), tl.get_ddpm_loss_fn(tsde.VPSDE())):
        a = fn(lambda xx, t: -xx, xt, generator=torch.Generator().manual_seed(0))
        assert a.shape == (8,) and torch.isfinite(a).all()


@pytest.mark.parametrize("side", ["jax", "torch"])
def test_loss_bad_input(side):
    mod, S, arr = (jl, jsde, jnp.asarray) if side == "jax" else (tl, tsde, torch.as_tensor)
    x = arr(np.zeros((4, 2)))
    z = arr(np.zeros((4, 2)))
    model = lambda xx, t: xx  # noqa: E731
    with pytest.raises(ValueError, match="batch mismatch"):
        mod.sde_loss(S.VPSDE(), model, x, arr(np.full(3, 0.5)), z)
    with pytest.raises(ValueError, match="noise z must have the shape of x"):
        mod.sde_loss(S.VPSDE(), model, x, arr(np.full(4, 0.5)), arr(np.zeros((4, 3))))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1000\)"):
        mod.ddpm_loss(S.VPSDE(), model, x, arr(np.array([0, 1, 2, 1000])), z)
    with pytest.raises(TypeError, match="labels must be integer"):
        mod.smld_loss(S.VESDE(), model, x, arr(np.full(4, 0.5)), z)
    with pytest.raises(TypeError, match="needs a VPSDE"):
        mod.ddpm_loss(S.subVPSDE(), model, x, arr(np.zeros(4, np.int64)), z)
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        mod.sde_loss(S.VPSDE(), model, arr(np.zeros((4, 2), np.int32)), arr(np.full(4, 0.5)), arr(np.zeros((4, 2), np.int32)))
    with pytest.raises(ValueError, match=r"eps must lie in \(0, T"):
        mod.get_sde_loss_fn(S.VPSDE(), eps=0.0)
