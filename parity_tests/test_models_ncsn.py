"""NCSN v1 / NCSNv2 score networks: jax == torch == numpy oracle, counts, checkpoints, errors.

Small networks (ngf 8, 16x16 or 32x32 images, batch 2); the torch weights are random
and perturbed (no zero-initialised beta or embedding column can hide a mismatch),
converted to flax through the explicit key table, and both sides are compared in
float32 (outputs and input gradients of a scalar loss, each also against the torch
float64 result) and in float64 (to rounding), the JAX side under ``jax.jit``.
InstanceNorm++ is checked against a float64 numpy oracle of its formula.
"""

from __future__ import annotations

import copy
import functools
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jax_impl.models import ncsn as jncsn
from jax_impl.models import ncsn_layers as jl
from jax_impl.models import ncsnv2 as jv2
from parity_tests import netutils
from parity_tests.helpers import to_np
from spec import ncsn_configs
from torch_ref.convert import flatten_paths, flax_to_torch, torch_to_flax
from torch_ref.models import ncsn as tncsn
from torch_ref.models import ncsn_layers as tl
from torch_ref.models import ncsnv2 as tv2

REL = 1e-5  # float32 parity budget, relative to the largest magnitude


def max_rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def nchw(x):
    return np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)))


def nhwc(x):
    return np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1)))


def perturbed(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Add N(0, 0.1^2) to every parameter (beta, embedding bias columns are zero at init)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return module.eval()


def flax_shapes(model, cfg):
    x = jax.ShapeDtypeStruct((1, cfg.image_size, cfg.image_size, cfg.num_channels), jnp.float32)
    y = jax.ShapeDtypeStruct((1,), jnp.int32)
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), x, y)


def n_params(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def jit_fast(fn):
    """``jax.jit(fn)``, compiled on the first call with ``netutils.FAST_COMPILE`` (less XLA
    optimisation effort, the same float32 / float64 ops); later calls take the same shapes."""
    compiled = []

    def call(*args):
        if not compiled:
            compiled.append(netutils.compile_fast(fn, *args))
        return compiled[0](*args)

    return call


def fwd_and_grad(model):
    """jit(variables, x, y, w) -> (out, d/dx sum(out * w)) in one compilation."""

    def f(variables, x, y, w):
        out, vjp = jax.vjp(lambda xx: model.apply(variables, xx, y), x)
        return out, vjp(w)[0]

    return jit_fast(f)


# -------------------------------------------------------------- one copy of the data


def test_configs_and_plans_live_once_in_spec():
    """Both sides re-export the very objects of ``spec.ncsn_configs`` (one copy of the data)."""
    shared = {
        (jl, tl): ("ACTIVATIONS", "INSTANCE_NORM_EPS", "Stage", "Refine", "RefineNetPlan", "REFINENET_PLANS",
                   "lookup_config"),
        (jncsn, tncsn): ("NCSNConfig", "NCSN_CIFAR10", "NCSN_MNIST", "NCSN_PLAN", "NORMALIZATIONS"),
        (jv2, tv2): ("NCSNv2Config", "NCSNV2_CIFAR10", "NCSNV2_NAMES", "SIGMA_DISTS", "NORMALIZATIONS"),
    }
    for (jmod, tmod), names in shared.items():
        for name in names:
            assert getattr(jmod, name) is getattr(tmod, name) is getattr(ncsn_configs, name), name
    # The data itself: ermongroup/ncsnv2 ``NCSNv2`` wires refine1 = RefineBlock([2ngf], 2ngf,
    # start), refine2 = ([2ngf, 2ngf], 2ngf), refine3 = ([2ngf, 2ngf], ngf), refine4 =
    # ([ngf, ngf], ngf, end), reading stages res4, res3, res2, res1.
    R = ncsn_configs.Refine
    assert ncsn_configs.REFINENET_PLANS["ncsnv2_64"].refines(8) == (
        R("refine1", 3, (16,), 16, True, False), R("refine2", 2, (16, 16), 16, False, False),
        R("refine3", 1, (16, 16), 8, False, False), R("refine4", 0, (8, 8), 8, False, True))
    assert [p.down_factor for p in ncsn_configs.REFINENET_PLANS.values()] == [2, 4, 8]
    hash(jv2.NCSNV2_CIFAR10), hash(jncsn.NCSN_CIFAR10)  # jit-static
    # The preset's ladder is the official float32 buffer: 50 -> 0.01 geometric, L = 232.
    sig = jv2.NCSNV2_CIFAR10.sigmas
    official = np.exp(np.linspace(np.log(50.0), np.log(0.01), 232))
    np.testing.assert_array_equal(sig, official)
    assert jv2.NCSNV2_CIFAR10.nf == 128


def test_config_from_official_yaml():
    yml = {"data": {"dataset": "CIFAR10", "image_size": 32, "channels": 3, "logit_transform": False,
                    "rescaled": False},
           "model": {"sigma_begin": 50, "num_classes": 232, "ema": True, "ema_rate": 0.999, "spec_norm": False,
                     "sigma_dist": "geometric", "sigma_end": 0.01, "normalization": "InstanceNorm++",
                     "nonlinearity": "elu", "ngf": 128}}
    assert jv2.NCSNv2Config.from_ncsnv2_config(yml) == jv2.NCSNV2_CIFAR10
    assert tv2.NCSNv2Config.from_ncsnv2_config(yml) == tv2.NCSNV2_CIFAR10
    lsun = {**yml, "data": {**yml["data"], "dataset": "LSUN", "image_size": 128, "rescaled": True}}
    cfg = jv2.NCSNv2Config.from_ncsnv2_config(lsun)
    assert (cfg.name, cfg.centered) == ("ncsnv2_128", True)
    ffhq_like = {**yml, "data": {**yml["data"], "dataset": "OTHER", "image_size": 256}}
    assert tv2.NCSNv2Config.from_ncsnv2_config(ffhq_like).name == "ncsnv2_256"
    with pytest.raises(ValueError, match="spec_norm"):
        jv2.NCSNv2Config.from_ncsnv2_config({**yml, "model": {**yml["model"], "spec_norm": True}})
    with pytest.raises(KeyError, match="model.ngf"):
        tv2.NCSNv2Config.from_ncsnv2_config({**yml, "model": {"num_classes": 3}})
    sde = {"model": {"name": "ncsnv2_64", "nf": 128, "num_scales": 232, "sigma_min": 0.01, "sigma_max": 50.0,
                     "normalization": "InstanceNorm++", "nonlinearity": "elu"},
           "data": {"image_size": 32, "num_channels": 3, "centered": False}}
    assert jv2.NCSNv2Config.from_score_sde_config(sde) == jv2.NCSNV2_CIFAR10
    ncsn_yml = {"data": {"image_size": 28, "channels": 1, "logit_transform": False},
                "model": {"sigma_begin": 1, "sigma_end": 0.01, "num_classes": 10, "ngf": 64}}
    assert jncsn.NCSNConfig.from_ncsn_config(ncsn_yml) == jncsn.NCSN_MNIST
    assert tncsn.NCSNConfig.from_ncsn_config(ncsn_yml) == tncsn.NCSN_MNIST


# ---------------------------------------------------------------------- primitives


def instance_norm_plus_oracle(x, alpha, gamma, beta, eps=1e-5, ddof=1):
    """float64 numpy InstanceNorm++ (NCHW), straight from the formula: unbiased variance
    of the channel means (``ddof=1``), biased spatial variance."""
    mu = x.mean(axis=(2, 3))  # [B, C]
    mu_n = (mu - mu.mean(-1, keepdims=True)) / np.sqrt(mu.var(-1, ddof=ddof, keepdims=True) + eps)
    s2 = x.var(axis=(2, 3))
    h = (x - mu[:, :, None, None]) / np.sqrt(s2[:, :, None, None] + eps) + alpha[..., None, None] * mu_n[:, :, None, None]
    return gamma[..., None, None] * h + beta[..., None, None]


def test_instance_norm_plus_oracle(np_rng):
    B, C, H, W = 3, 5, 6, 7
    x = np_rng.normal(size=(B, C, H, W)) * np_rng.uniform(0.5, 3, size=(1, C, 1, 1)) + np_rng.normal(size=(B, C, 1, 1))
    alpha, gamma, beta = (np_rng.normal(size=C) for _ in range(3))
    want = instance_norm_plus_oracle(x, alpha, gamma, beta)
    got_j = jax.jit(jl.instance_norm_plus)(jnp.asarray(nhwc(x)), alpha, gamma, beta)
    got_t = tl.instance_norm_plus(torch.from_numpy(x), *(torch.from_numpy(a) for a in (alpha, gamma, beta)))
    np.testing.assert_allclose(nchw(np.asarray(got_j)), want, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(to_np(got_t), want, rtol=1e-10, atol=1e-10)
    # The test discriminates: with the biased variance of the channel means (score_sde's
    # JAX port) the result is far off.
    biased = instance_norm_plus_oracle(x, alpha, gamma, beta, ddof=0)
    assert np.max(np.abs(biased - want)) > 1e-2

    # Conditional module, float32: per-example (gamma, alpha, beta) rows of the embedding.
    L = 4
    y = np.array([3, 0, 2])
    tmod = tl.ConditionalInstanceNorm2dPlus(C, L)
    with torch.no_grad():
        tmod.embed.weight.copy_(torch.from_numpy(np_rng.normal(size=(L, 3 * C)).astype(np.float32)))
    emb = tmod.embed.weight.detach().numpy().astype(np.float64)
    g, a, b = emb[y, :C], emb[y, C:2 * C], emb[y, 2 * C:]
    x32 = x.astype(np.float32)
    want32 = instance_norm_plus_oracle(x32.astype(np.float64), a, g, b)
    jmod = jl.ConditionalInstanceNorm2dPlus(C, L)
    variables = {"params": {"embed": {"embedding": jnp.asarray(emb.astype(np.float32))}}}
    got_j = jax.jit(jmod.apply)(variables, jnp.asarray(nhwc(x32)), jnp.asarray(y))
    got_t = tmod(torch.from_numpy(x32), torch.from_numpy(y))
    assert max_rel(nchw(np.asarray(got_j)), want32) < REL
    assert max_rel(to_np(got_t), want32) < REL


@pytest.mark.parametrize("src,dst", [((3, 5), (7, 9)), ((8, 8), (16, 16)), ((6, 4), (5, 3)), ((1, 4), (3, 4))])
def test_resize_bilinear_align_corners(np_rng, src, dst):
    x = np_rng.normal(size=(2, 3, *src)).astype(np.float32)
    want = F.interpolate(torch.from_numpy(x), size=dst, mode="bilinear", align_corners=True).numpy()
    got = nchw(np.asarray(jax.jit(jl.resize_bilinear, static_argnums=1)(jnp.asarray(nhwc(x)), dst)))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    # float64 oracle of align_corners=True: sample at i * (n_in - 1) / (n_out - 1).
    def axis_matrix(n_in, n_out):
        src_pos = np.arange(n_out) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
        return np.stack([np.interp(src_pos, np.arange(n_in), e) for e in np.eye(n_in)], axis=1)
    oracle = np.einsum("Hh,bchw,Ww->bcHW", axis_matrix(src[0], dst[0]), x.astype(np.float64), axis_matrix(src[1], dst[1]))
    np.testing.assert_allclose(got, oracle, rtol=1e-5, atol=1e-5)


def test_pools_match_torch(np_rng):
    x = np_rng.normal(size=(2, 3, 7, 6)).astype(np.float32)
    xt = torch.from_numpy(x)
    np.testing.assert_allclose(nchw(np.asarray(jl.max_pool5(jnp.asarray(nhwc(x))))),
                               F.max_pool2d(xt, 5, 1, 2).numpy(), rtol=0, atol=0)
    np.testing.assert_allclose(nchw(np.asarray(jl.avg_pool5(jnp.asarray(nhwc(x))))),
                               F.avg_pool2d(xt, 5, 1, 2).numpy(), rtol=1e-6, atol=1e-6)


def test_init_follows_official_distributions():
    """Fresh weights as the official code draws them, on both sides: conv kernels and
    biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch default), InstanceNorm++ scales
    N(1, 0.02) and zero beta, conditional embeddings (gamma, alpha) ~ N(1, 0.02), beta 0."""
    C, L = 16, 7
    torch.manual_seed(0)  # torch's default init draws from the global generator
    x = jnp.zeros((1, 5, 5, C), jnp.float32)
    conv = jax.jit(jl.Conv2d(32, 3, 1).init)(jax.random.PRNGKey(1), x)["params"]
    tconv = tl.conv3x3(C, 32)
    bound = 1 / np.sqrt(9 * C)
    for k, t in ((conv["kernel"], tconv.weight), (conv["bias"], tconv.bias)):
        for a in (np.asarray(k), to_np(t)):
            assert np.abs(a).max() <= bound and np.abs(a).max() > 0.75 * bound  # P(fail) < 1e-4
            assert abs(a.std() - bound / np.sqrt(3)) < 0.15 * bound
    norm = jl.InstanceNorm2dPlus(C).init(jax.random.PRNGKey(2), x)["params"]
    tnorm = tl.InstanceNorm2dPlus(C)
    for a in (np.asarray(norm["alpha"]), np.asarray(norm["gamma"]), to_np(tnorm.alpha), to_np(tnorm.gamma)):
        assert abs(a.mean() - 1) < 0.03 and 0.005 < a.std() < 0.04
    assert not np.asarray(norm["beta"]).any() and not to_np(tnorm.beta).any()
    cond = jl.ConditionalInstanceNorm2dPlus(C, L).init(jax.random.PRNGKey(3), x, jnp.zeros((1,), jnp.int32))
    for emb in (np.asarray(cond["params"]["embed"]["embedding"]), to_np(tl.ConditionalInstanceNorm2dPlus(C, L).embed.weight)):
        assert emb.shape == (L, 3 * C)
        assert abs(emb[:, :2 * C].mean() - 1) < 0.01 and 0.01 < emb[:, :2 * C].std() < 0.03
        assert not emb[:, 2 * C:].any()


# --------------------------------------------------------------- network parity

CASES = {
    "ncsn_v1": (jncsn.CondRefineNetDilated, jncsn.NCSNConfig, jncsn.key_table,
                tncsn.CondRefineNetDilated, tncsn.NCSNConfig, dict(ngf=8, num_scales=6, image_size=16)),
    "ncsnv2_32px": (jv2.NCSNv2, jv2.NCSNv2Config, jv2.key_table, tv2.NCSNv2, tv2.NCSNv2Config,
                    dict(name="ncsnv2_64", ngf=8, num_scales=6, sigma_max=5.0, image_size=16)),
    "ncsnv2_128": (jv2.NCSNv2, jv2.NCSNv2Config, jv2.key_table, tv2.NCSNv2, tv2.NCSNv2Config,
                   dict(name="ncsnv2_128", ngf=8, num_scales=6, sigma_max=5.0, image_size=32)),
    "ncsnv2_256": (jv2.NCSNv2, jv2.NCSNv2Config, jv2.key_table, tv2.NCSNv2, tv2.NCSNv2Config,
                   dict(name="ncsnv2_256", ngf=8, num_scales=6, sigma_max=5.0, image_size=32,
                        nonlinearity="swish", centered=True)),
}


@functools.lru_cache(maxsize=None)
def converted(case):
    """(jax model, torch model, flax variables) with random perturbed torch weights; built
    once per case in this file (the float32 and float64 parity tests share it; neither
    changes it: the torch model is deep-copied before use)."""
    jcls, jcfg_cls, jtable, tcls, tcfg_cls, kw = CASES[case]
    jcfg, tcfg = jcfg_cls(**kw), tcfg_cls(**kw)
    torch.manual_seed(0)  # the default init draws from the global generator
    tmodel = perturbed(tcls(tcfg), seed=1)
    jmodel = jcls(jcfg)
    variables = torch_to_flax(tmodel.state_dict(), jtable(jcfg), flax_shapes=flax_shapes(jmodel, jcfg),
                              ignore=("sigmas",))
    assert n_params(variables) == sum(p.numel() for p in tmodel.parameters())
    return jmodel, tmodel, variables


def torch_fwd_and_grad(tmodel, x, y, w, dtype):
    m = copy.deepcopy(tmodel).to(dtype)
    xt = torch.from_numpy(x).to(dtype).requires_grad_(True)
    out = m(xt, torch.from_numpy(y))
    (out * torch.from_numpy(w).to(dtype)).sum().backward()
    return to_np(out), to_np(xt.grad)


# The float32 gradient budget. These deep nets amplify float32 rounding in their input
# gradients: measured against the float64 gradient, each float32 implementation is
# typically off by 1e-5 to 1.3e-4 of the largest entry, with outliers up to 8e-4 (torch)
# and 5.5e-4 (XLA:CPU, whose reduction order varies between processes). That the
# formulas agree exactly is shown in float64 (outputs and gradients to ~1e-13) below.
GRAD_REL = 2e-3


# The deeper NCSNv2 layouts (128 / 256 px: more stages of the same blocks) are opt-in
# (`-m slow`) to keep the default suite under its time budget; their key tables and
# parameter counts stay in the default suite.
@pytest.mark.parametrize("case", ["ncsn_v1", "ncsnv2_32px",
                                  pytest.param("ncsnv2_128", marks=pytest.mark.slow)])
def test_network_parity(case, np_rng):
    jmodel, tmodel, variables = converted(case)
    cfg = jmodel.config
    B, S, C = 2, cfg.image_size, cfg.num_channels
    x = np_rng.uniform(size=(B, C, S, S)).astype(np.float32)
    y = np.array([0, cfg.num_scales - 1])
    w = np_rng.normal(size=(B, C, S, S)).astype(np.float32)

    out_t, grad_t = torch_fwd_and_grad(tmodel, x, y, w, torch.float32)
    out_64, grad_64 = torch_fwd_and_grad(tmodel, x, y, w, torch.float64)
    f = fwd_and_grad(jmodel)
    out_j, grad_j = f(variables, jnp.asarray(nhwc(x)), jnp.asarray(y), jnp.asarray(nhwc(w)))
    assert out_j.dtype == jnp.float32
    out_j, grad_j = nchw(np.asarray(out_j)), nchw(np.asarray(grad_j))
    assert max_rel(out_j, out_t) < REL
    assert max_rel(out_j, out_64) < REL and max_rel(out_t, out_64) < REL
    # Both float32 gradients are held to the float64 truth (see GRAD_REL).
    assert max_rel(grad_j, grad_64) < GRAD_REL and max_rel(grad_t, grad_64) < GRAD_REL
    if isinstance(jmodel, jv2.NCSNv2):
        # Output divided by sigma_y: out(y) * sigma_y does not depend on the label.
        y2 = np.array([1, 2])
        out2, _ = f(variables, jnp.asarray(nhwc(x)), jnp.asarray(y2), jnp.asarray(nhwc(w)))
        sig = cfg.sigmas.astype(np.float32)[:, None, None, None]
        np.testing.assert_allclose(nchw(np.asarray(out2)) * sig[y2], out_j * sig[y], rtol=1e-5, atol=1e-6)
    else:
        # NCSN v1 is conditioned through its norms: another label, another output.
        out2, _ = f(variables, jnp.asarray(nhwc(x)), jnp.asarray(y[::-1].copy()), jnp.asarray(nhwc(w)))
        assert max_rel(nchw(np.asarray(out2))[::-1], out_j) > 1e-3


@pytest.mark.parametrize("case,with_grad", [("ncsn_v1", False), ("ncsnv2_32px", True),
                                             pytest.param("ncsnv2_256", False, marks=pytest.mark.slow)])
def test_network_parity_float64(case, with_grad, np_rng):
    """The same formulas: in float64 the two sides agree to rounding (1e-10), outputs and
    (for the 32 px NCSNv2: max-pool CRP, mean-pool and dilated stages) input gradients."""
    jmodel, tmodel, variables = converted(case)
    cfg = jmodel.config
    shape = (2, cfg.num_channels, cfg.image_size, cfg.image_size)
    x, w = np_rng.uniform(size=shape), np_rng.normal(size=shape)
    y = np.array([cfg.num_scales - 1, 1])
    want_out, want_grad = torch_fwd_and_grad(tmodel, x, y, w, torch.float64)
    v64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
    if with_grad:
        out, grad = fwd_and_grad(jmodel)(v64, jnp.asarray(nhwc(x)), jnp.asarray(y), jnp.asarray(nhwc(w)))
        assert max_rel(nchw(np.asarray(grad)), want_grad) < 1e-10
    else:
        out = jit_fast(jmodel.apply)(v64, jnp.asarray(nhwc(x)), jnp.asarray(y))
    assert out.dtype == jnp.float64
    assert max_rel(nchw(np.asarray(out)), want_out) < 1e-10


# ------------------------------------------------------------------ parameter counts


def test_param_count_cifar10_preset():
    cfg = jv2.NCSNV2_CIFAR10
    assert n_params(flax_shapes(jv2.NCSNv2(cfg), cfg)["params"]) == 29_694_083
    with torch.device("meta"):
        tmodel = tv2.NCSNv2(tv2.NCSNV2_CIFAR10)
    assert sum(p.numel() for p in tmodel.parameters()) == 29_694_083
    assert tmodel.sigmas.shape == (232,)
    # NCSN v1 CIFAR-10 (ngf 128, L = 10): both sides agree.
    with torch.device("meta"):
        t1 = tncsn.CondRefineNetDilated(tncsn.NCSN_CIFAR10)
    j1 = n_params(flax_shapes(jncsn.CondRefineNetDilated(jncsn.NCSN_CIFAR10), jncsn.NCSN_CIFAR10))
    assert j1 == sum(p.numel() for p in t1.parameters())


# ---------------------------------------------------------------- official checkpoints


SMALL = dict(ngf=8, num_classes=6, sigma_begin=5.0, sigma_end=0.01)


def small_yaml(image_size=16):
    return {"data": {"dataset": "CIFAR10", "image_size": image_size, "channels": 3, "logit_transform": False,
                     "rescaled": False},
            "model": {**SMALL, "ema": True, "ema_rate": 0.999, "spec_norm": False, "sigma_dist": "geometric",
                      "normalization": "InstanceNorm++", "nonlinearity": "elu"}}


def official_checkpoint(yml, seed=3):
    """[model_state (module.-prefixed, with sigmas), optimizer_state, epoch, step, ema_shadow]
    as ermongroup/ncsnv2 saves it; the EMA helper unwraps DataParallel (no prefix) and
    holds parameters only."""
    cfg = tv2.NCSNv2Config.from_ncsnv2_config(yml)
    raw = perturbed(tv2.NCSNv2(cfg), seed)
    ema = perturbed(tv2.NCSNv2(cfg), seed + 1)
    model_state = {"module." + k: v.clone() for k, v in raw.state_dict().items()}
    shadow = {k: p.detach().clone() for k, p in ema.named_parameters()}
    optim = {"state": {}, "param_groups": [{"lr": 1e-4, "eps": 1e-8, "params": list(range(len(shadow)))}]}
    return [model_state, optim, 7, 5000, shadow], raw, ema


@pytest.fixture(scope="module")
def ckpt():
    return official_checkpoint(small_yaml())


def test_from_ncsnv2_matches_torch(ckpt, tmp_path, np_rng):
    states, raw, ema = ckpt
    yml = small_yaml()
    path = tmp_path / "checkpoint_5000.pth"
    torch.save(states, path)
    tmodel = tv2.from_ncsnv2(path, yml)  # EMA present -> EMA weights, as the official sampler
    for k, p in ema.state_dict().items():
        assert torch.equal(tmodel.state_dict()[k], p), k
    jmodel, variables = jv2.from_ncsnv2(states, yml, weights="ema")
    x = np_rng.uniform(size=(2, 3, 16, 16)).astype(np.float32)
    y = np.array([5, 2])
    with torch.no_grad():
        out_t = tmodel(torch.from_numpy(x), torch.from_numpy(y)).numpy()
        out_ema = ema(torch.from_numpy(x), torch.from_numpy(y)).numpy()
    apply = jit_fast(jmodel.apply)  # one program: EMA and raw weights have the same shapes
    out_j = nchw(np.asarray(apply(variables, jnp.asarray(nhwc(x)), jnp.asarray(y))))
    np.testing.assert_array_equal(out_t, out_ema)
    assert max_rel(out_j, out_t) < REL

    # raw weights, and a bare (prefixed) state_dict, give the raw model.
    with torch.no_grad():
        out_raw = raw(torch.from_numpy(x), torch.from_numpy(y)).numpy()
    jm_raw, v_raw = jv2.from_ncsnv2(states, yml, weights="raw")
    assert jm_raw == jmodel
    assert max_rel(nchw(np.asarray(apply(v_raw, jnp.asarray(nhwc(x)), jnp.asarray(y)))), out_raw) < REL
    t_bare = tv2.from_ncsnv2(states[0], tv2.NCSNv2Config.from_ncsnv2_config(yml))
    with torch.no_grad():
        np.testing.assert_array_equal(t_bare(torch.from_numpy(x), torch.from_numpy(y)).numpy(), out_raw)
    assert max_rel(out_raw, out_t) > 1e-3  # EMA and raw weights really differ

    # Round trip jax -> torch -> jax is exact, and the torch state_dict loads strictly.
    table = jv2.key_table(jmodel.config)
    torch_shapes = {k: tuple(v.shape) for k, v in tmodel.state_dict().items() if k != "sigmas"}
    sd = flax_to_torch(variables, table, torch_shapes=torch_shapes)
    back = torch_to_flax(sd, table)
    flat_a, flat_b = flatten_paths(jax.tree.map(np.asarray, variables)), flatten_paths(back)
    assert flat_a.keys() == flat_b.keys()
    for k in flat_a:
        np.testing.assert_array_equal(flat_a[k], flat_b[k])
    fresh = tv2.NCSNv2(tmodel.config)
    fresh.load_state_dict({**sd, "sigmas": fresh.sigmas}, strict=True)
    for k, v in tmodel.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


def test_from_ncsnv2_errors(ckpt):
    states, _, _ = ckpt
    yml = small_yaml()
    model_state, shadow = states[0], states[4]

    def with_model_state(ms):
        return [ms, *states[1:]]

    missing = dict(model_state)
    del missing["module.refine2.msf.convs.1.weight"]
    for load in (jv2.from_ncsnv2, tv2.from_ncsnv2):
        with pytest.raises(KeyError, match=r"refine2\.msf\.convs\.1\.weight"):
            load(with_model_state(missing), yml)
        with pytest.raises(KeyError, match=r"res9\.0\.conv1\.weight"):
            load(with_model_state({**model_state, "module.res9.0.conv1.weight": torch.zeros(1)}), yml)
        bad = {**model_state, "module.res2.0.shortcut.conv.weight": torch.zeros(16, 8, 3, 3)}
        with pytest.raises(ValueError, match=r"res2\.0\.shortcut\.conv\.weight"):
            load(with_model_state(bad), yml)
        short_shadow = {k: v for k, v in shadow.items() if k != "end_conv.bias"}
        with pytest.raises(KeyError, match=r"end_conv\.bias"):
            load([*states[:4], short_shadow], yml, weights="ema")
        with pytest.raises(ValueError, match="sigmas"):
            load(with_model_state({**model_state, "module.sigmas": model_state["module.sigmas"] * 2}), yml)
        with pytest.raises(ValueError, match="EMA"):
            load(states[:4], yml, weights="ema")
        with pytest.raises(ValueError, match="bare state_dict"):
            load(model_state, yml, weights="ema")
        with pytest.raises(ValueError, match="weights"):
            load(states, yml, weights="shadow")
        with pytest.raises(TypeError, match="checkpoint"):
            load(42, yml)
    # A 4-entry checkpoint (trained without EMA) loads its raw weights by default.
    tv2.from_ncsnv2(states[:4], yml)


# -------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def tiny_models():
    kw = dict(ngf=4, num_scales=5, image_size=8)
    out = {}
    for key, jcls, jcfg, tcls, tcfg in (
        ("v1", jncsn.CondRefineNetDilated, jncsn.NCSNConfig(**kw), tncsn.CondRefineNetDilated, tncsn.NCSNConfig(**kw)),
        ("v2", jv2.NCSNv2, jv2.NCSNv2Config(**kw), tv2.NCSNv2, tv2.NCSNv2Config(**kw)),
    ):
        jm = jcls(jcfg)
        # Zero parameters of the right shapes (no init compute): inputs are rejected first.
        variables = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), flax_shapes(jm, jcfg))
        out[key] = (jm, variables, tcls(tcfg))
    return out


BAD_INPUTS = [
    ("channels", (2, 8, 8, 1), np.array([0, 1]), ValueError, "channels"),
    ("spatial", (2, 12, 12, 3), np.array([0, 1]), ValueError, "spatial size"),
    ("rank", (2, 8, 8), np.array([0, 1]), ValueError, "x must be"),
    ("label_shape", (2, 8, 8, 3), np.array([[0], [1]]), ValueError, "y must have shape"),
    ("label_batch", (2, 8, 8, 3), np.array([0, 1, 2]), ValueError, "y must have shape"),
    ("label_scalar", (2, 8, 8, 3), np.array(1), ValueError, "y must have shape"),
    ("label_float", (2, 8, 8, 3), np.array([0.0, 1.0]), TypeError, "integer"),
    ("label_high", (2, 8, 8, 3), np.array([0, 5]), ValueError, r"\[0, num_scales\)"),
    ("label_negative", (2, 8, 8, 3), np.array([-1, 0]), ValueError, r"\[0, num_scales\)"),
]


@pytest.mark.parametrize("net", ["v1", "v2"])
@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_raises_before_compute(tiny_models, net, case, monkeypatch):
    _, shape, y, exc, msg = case
    jm, variables, tm = tiny_models[net]
    x = np.zeros(shape, np.float32)
    with pytest.raises(exc, match=msg):
        jm.apply(variables, jnp.asarray(x), jnp.asarray(y))
    if not case[0].startswith("label_high") and not case[0].startswith("label_neg"):
        with pytest.raises(exc, match=msg):  # under jit: raised while tracing, before compiling
            jax.jit(jm.apply)(variables, jnp.asarray(x), jnp.asarray(y))

    def no_compute(*args, **kwargs):
        raise AssertionError("the network computed before validating its input")

    monkeypatch.setattr(tm.begin_conv, "forward", no_compute)
    xt = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1))) if x.ndim == 4 else torch.from_numpy(x)
    with pytest.raises(exc, match=msg):
        tm(xt, torch.from_numpy(y))


def test_out_of_range_label_under_jit_gives_nan():
    """Inside jit label values are unknown to the checks: the lookup makes them NaN, never
    another noise level (NumPy indexing would wrap -1 to the last row)."""
    table = jnp.arange(12.0, dtype=jnp.float32).reshape(4, 3)
    rows = np.asarray(jax.jit(jl.take_rows)(table, jnp.array([-1, 0, 3, 4])))
    assert np.isnan(rows[0]).all() and np.isnan(rows[3]).all()
    np.testing.assert_array_equal(rows[1:3], np.asarray(table)[[0, 3]])


def test_bad_x_dtype_and_configs(tiny_models):
    jm, variables, tm = tiny_models["v2"]
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        jm.apply(variables, jnp.zeros((2, 8, 8, 3), jnp.int32), jnp.array([0, 1]))
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        tm(torch.zeros(2, 3, 8, 8, dtype=torch.int64), torch.tensor([0, 1]))
    for cfg_cls in (ncsn_configs.NCSNv2Config,):
        with pytest.raises(ValueError, match="not divisible by 4"):
            cfg_cls(name="ncsnv2_128", image_size=18)
        with pytest.raises(ValueError, match="unknown name"):
            cfg_cls(name="ncsnv3")
        with pytest.raises(ValueError, match="ngf must be >= 2"):
            cfg_cls(ngf=1)
        with pytest.raises(ValueError, match="sigma_min must be < sigma_max"):
            cfg_cls(sigma_min=1.0, sigma_max=0.5)
        with pytest.raises(ValueError, match="unknown nonlinearity"):
            cfg_cls(nonlinearity="gelu")
        with pytest.raises(ValueError, match="unknown normalization"):
            cfg_cls(normalization="GroupNorm")
        with pytest.raises(ValueError, match="unknown sigma_dist"):
            cfg_cls(sigma_dist="cosine")
    for cfg_cls in (ncsn_configs.NCSNConfig,):
        with pytest.raises(ValueError, match="not divisible by 2"):
            cfg_cls(image_size=15)
        with pytest.raises(TypeError, match="num_scales must be an integer"):
            cfg_cls(num_scales=2.5)
    with pytest.raises(TypeError, match="NCSNv2Config"):
        jv2.key_table(jncsn.NCSN_CIFAR10)
    with pytest.raises(TypeError, match="NCSNConfig"):
        tncsn.CondRefineNetDilated(tv2.NCSNV2_CIFAR10)


def test_ncsn_configs_import_with_jax_and_torch_blocked():
    """``spec.ncsn_configs`` is numpy/stdlib only: it imports, builds and reads every config
    and plan in a fresh interpreter where importing jax, jaxlib, torch or flax fails (a
    ``None`` entry in ``sys.modules`` makes ``import name`` and ``import name.sub`` raise)."""
    code = (
        "import sys\n"
        "BLOCKED = ('jax', 'jaxlib', 'torch', 'flax')\n"
        "sys.modules.update(dict.fromkeys(BLOCKED))\n"
        "import spec.ncsn_configs as c\n"
        "assert c.NCSNV2_CIFAR10.sigmas.shape == (232,) and c.NCSN_MNIST.sigmas.shape == (10,)\n"
        "assert [len(p.refines(4)) for p in c.REFINENET_PLANS.values()] == [4, 5, 6]\n"
        "sde = {'model': {'name': 'ncsnv2_128', 'nf': 8, 'num_scales': 3, 'sigma_min': 0.1,\n"
        "       'sigma_max': 1.0}, 'data': {'image_size': 96, 'num_channels': 3}}\n"
        "assert c.NCSNv2Config.from_score_sde_config(sde).name == 'ncsnv2_128'\n"
        "loaded = [k for k, v in sys.modules.items() if v is not None and k.split('.')[0] in BLOCKED]\n"
        "assert not loaded, loaded\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
