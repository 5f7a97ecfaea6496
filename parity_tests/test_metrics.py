"""Sample-quality metrics (``jax_impl/metrics.py`` vs ``torch_ref/metrics.py`` vs the numpy
oracle ``spec/digits_classifier.py``) and the shipped digits classifier.

Checks: classifier outputs, Frechet distance, classifier score, sliced Wasserstein and
energy distance three ways (jax == torch == numpy); closed forms (the Frechet distance of
two feature sets against the formula with an independent matrix root, FD(a, a) = 0, FD of
a translate = the squared shift, the energy distance 0 for identical sets and > 0 otherwise
and equal to scipy's in 1-D, SW of a shifted set = the RMS of the shift's projections, SW
of unequal sizes against replicated equal-size sets); the shipped weights equal a fresh
``train_digits_classifier()`` and have test accuracy >= 0.95; the digits baselines order
(real FD << noise FD) and the report's shape, cross-framework agreement and handling of
NaN samples; the toy report's floor; the bits/dim wrappers equal the library calls on an
exact-score mixture and a tiny diffusion; the exact-score probability-flow likelihood of
the mixture's test points; bad inputs raise naming the argument.
"""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch

import spec
from jax_impl import diffusion as jd
from jax_impl import gmm as jgmm
from jax_impl import metrics as jm
from jax_impl import ode as jode
from jax_impl import sde as jsde
from spec import digits_classifier as dc
from spec.datasets import DataConfig, load_dataset
from spec.oracles.gmm import GaussianMixture, demo_mixture
from torch_ref import diffusion as td
from torch_ref import gmm as tgmm
from torch_ref import metrics as tm
from torch_ref import ode as tode
from torch_ref import sde as tsde

F64 = dict(rel=1e-10, abs=1e-10)  # pytest.approx, float64 on every side: round-off only
F32_VS_F64 = dict(rtol=1e-5, atol=1e-5)  # the float32 network against the float64 oracle


@pytest.fixture(scope="module")
def digits():
    train, test = load_dataset(DataConfig(dataset="digits"))
    return train, test


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


# --- the classifier --------------------------------------------------------------------------


def test_shipped_weights_equal_a_fresh_training():
    """The shipped float32 file is ``train_digits_classifier(0)`` rounded to float32.

    Tolerance 1e-6 absolute (the weights are below 1 in magnitude, float32 spacing there is
    6e-8): on the machine that wrote the file the two are bit-identical; on another BLAS
    build only the summation order of the products differs (~1e-16 relative per product),
    and the training does not amplify such perturbations: a 1e-13 relative change of the
    learning rate moved the final weights by 1e-13 (measured), so differences stay ~1e-12,
    far below the tolerance, while any change of the recipe moves weights by >= 1e-3."""
    shipped = dc.load_digits_classifier()
    fresh = dc.train_digits_classifier(seed=0)
    assert set(shipped) == set(fresh) == set(dc.PARAM_NAMES)
    for k in dc.PARAM_NAMES:
        assert shipped[k].dtype == np.float32 and shipped[k].shape == dc.PARAM_SHAPES[k]
        np.testing.assert_allclose(shipped[k], fresh[k].astype(np.float32), rtol=0, atol=1e-6,
                                   err_msg=k)


def test_classifier_accuracy_and_file(digits):
    _, test = digits
    _, y_test = dc.digits_labels()
    acc = dc.classifier_accuracy(dc.load_digits_classifier(), test, y_test)
    assert acc >= 0.95
    assert dc.test_accuracy() == pytest.approx(acc, abs=1e-12)
    info = dc.load_digits_classifier_info()
    assert info["seed"] == 0 and info["train_accuracy"] >= acc - 0.05
    assert dc.WEIGHTS_FILE.stat().st_size < 300 * 1024


def test_labels_align_with_the_images(digits):
    from sklearn.datasets import load_digits

    train, test = digits
    raw = load_digits()
    y_train, y_test = dc.digits_labels()
    train_idx, test_idx = spec.datasets.split_indices(1797, 0.2)
    np.testing.assert_array_equal(y_test, raw.target[test_idx])
    np.testing.assert_allclose(test[..., 0], 2 * raw.images[test_idx] / 16 - 1, atol=1e-6)
    np.testing.assert_allclose(train[..., 0], 2 * raw.images[train_idx] / 16 - 1, atol=1e-6)
    assert len(y_train) == len(train) == 1438 and len(y_test) == len(test) == 359


def test_classifier_outputs_three_way(digits, np_rng):
    _, test = digits
    x = np.concatenate([test[:40], np_rng.standard_normal((8, 8, 8, 1)).astype(np.float32)])
    params64 = {k: v.astype(np.float64) for k, v in dc.load_digits_classifier().items()}
    f_np, p_np = dc.classifier_outputs_numpy(params64, x)
    f_j, p_j = jm.classifier_outputs(x)
    f_t, p_t = tm.classifier_outputs(_nchw(x))
    assert f_j.shape == f_t.shape == (48, dc.FEATURE_DIM) and p_j.shape == p_t.shape == (48, 10)
    assert f_j.dtype == jnp.float32 and f_t.dtype == torch.float32
    np.testing.assert_allclose(np.asarray(f_j), f_np, **F32_VS_F64)
    np.testing.assert_allclose(f_t.numpy(), f_np, **F32_VS_F64)
    np.testing.assert_allclose(np.asarray(p_j), p_np, **F32_VS_F64)
    np.testing.assert_allclose(p_t.numpy(), p_np, **F32_VS_F64)
    # [0, 1] input and 3 channels (averaged) give the same outputs
    unit3 = np.repeat((x + 1) / 2, 3, axis=-1)
    np.testing.assert_allclose(np.asarray(jm.classifier_outputs(unit3, centered=False)[0]),
                               f_np, **F32_VS_F64)
    np.testing.assert_allclose(tm.classifier_outputs(_nchw(unit3), centered=False)[0].numpy(),
                               f_np, **F32_VS_F64)
    # the framework weights are the shipped file's
    for k, v in dc.load_digits_classifier().items():
        np.testing.assert_array_equal(np.asarray(jm.load_digits_classifier()[k]), v)
        np.testing.assert_array_equal(tm.load_digits_classifier()[k].numpy(), v)


# --- Frechet distance and classifier score ---------------------------------------------------


def _fd_closed_form(a, b):
    """The formula from the sample moments, the cross term from scipy's general (Schur)
    matrix square root of the non-symmetric product S_a S_b (an independent algorithm)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    cross = scipy.linalg.sqrtm(s_a @ s_b)
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(s_a) + np.trace(s_b)
                 - 2 * np.trace(cross).real)


def test_frechet_distance_three_way_and_closed_form(np_rng):
    d = 12
    a = np_rng.standard_normal((300, d)) @ np_rng.standard_normal((d, d)) + 0.5
    b = np_rng.standard_normal((200, d)) * np.linspace(0.5, 2.0, d) - 0.3
    expected = _fd_closed_form(a, b)
    values = [dc.frechet_distance_numpy(a, b), jm.frechet_distance(a, b),
              tm.frechet_distance(torch.from_numpy(a), torch.from_numpy(b))]
    for v in values:
        assert isinstance(v, float)
        assert v == pytest.approx(expected, rel=1e-8)
    # identical sets: 0; a translate: the squared shift (same covariance)
    for fd in (dc.frechet_distance_numpy, jm.frechet_distance, tm.frechet_distance):
        conv = torch.from_numpy if fd is tm.frechet_distance else (lambda v: v)
        assert abs(fd(conv(a), conv(a))) < 1e-9
        shift = np.linspace(-1, 1, d)
        assert fd(conv(a), conv(a + shift)) == pytest.approx(float(shift @ shift), rel=1e-8)


def test_frechet_distance_of_rank_deficient_features(np_rng):
    """Fewer samples than features (N = 20 < F = 64, as digits_report with few samples):
    singular covariances, no NaN, jax == torch == numpy."""
    a, b = np_rng.standard_normal((20, 64)), np_rng.standard_normal((30, 64)) + 0.2
    ref = dc.frechet_distance_numpy(a, b)
    assert math.isfinite(ref) and ref > 0
    # the roots of eigenvalues ~1e-15 amplify round-off to ~1e-8 absolute: rel 1e-7
    assert jm.frechet_distance(a, b) == pytest.approx(ref, rel=1e-7)
    assert tm.frechet_distance(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(ref, rel=1e-7)


def test_classifier_score_three_way_and_closed_forms(np_rng):
    logits = np_rng.standard_normal((50, 10)) * 3
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    ref = dc.classifier_score_numpy(p)
    p_y = p.mean(0)
    assert ref == pytest.approx(math.exp(np.mean(np.sum(p * np.log(p / p_y), 1))), rel=1e-12)
    assert jm.classifier_score(p) == pytest.approx(ref, **F64)
    assert tm.classifier_score(torch.from_numpy(p)) == pytest.approx(ref, **F64)
    same = np.tile(p[:1], (7, 1))            # every sample the same distribution: 1
    onehot = np.eye(10)[np.arange(40) % 10]  # confident and balanced: the number of classes
    for cs in (dc.classifier_score_numpy, jm.classifier_score,
               lambda v: tm.classifier_score(torch.from_numpy(v))):
        assert cs(same) == pytest.approx(1.0, abs=1e-12)
        assert cs(onehot) == pytest.approx(10.0, rel=1e-12)


# --- the digits report -----------------------------------------------------------------------


def test_digits_report_baselines_and_agreement(digits):
    _, test = digits
    rj = jm.digits_report(test[:64], seed=0)
    rt = tm.digits_report(_nchw(test[:64]), seed=0)
    json.dumps(rj), json.dumps(rt)
    assert set(rj) == set(rt) == {"fd", "classifier_score", "num_samples", "num_nonfinite",
                                  "baselines", "classifier_test_accuracy", "mean_confidence",
                                  "class_histogram"}
    assert rj["num_samples"] == 64 and rj["num_nonfinite"] == 0
    assert sum(rj["class_histogram"]) == 64 and rj["class_histogram"] == rt["class_histogram"]
    real, noise = rj["baselines"]["real"], rj["baselines"]["noise"]
    assert real["num_samples"] == noise["num_samples"] == 64
    assert real["fd"] < noise["fd"] / 3 and rj["fd"] < noise["fd"] / 3
    assert real["classifier_score"] > noise["classifier_score"]
    for key in ("fd", "classifier_score", "mean_confidence"):
        assert rt[key] == pytest.approx(rj[key], rel=1e-5)
    for base in ("real", "noise"):
        for key in ("fd", "classifier_score"):
            assert rt["baselines"][base][key] == pytest.approx(rj["baselines"][base][key], rel=1e-5)
    # against the float64 oracle with the same features space
    params64 = {k: v.astype(np.float64) for k, v in dc.load_digits_classifier().items()}
    f_train, _ = dc.classifier_outputs_numpy(params64, digits[0])
    f_s, p_s = dc.classifier_outputs_numpy(params64, test[:64])
    assert rj["fd"] == pytest.approx(dc.frechet_distance_numpy(f_s, f_train), rel=1e-4)
    assert rj["classifier_score"] == pytest.approx(dc.classifier_score_numpy(p_s), rel=1e-5)


def test_digits_report_all_test_digits_is_the_real_baseline(digits):
    """With N = 359 the real baseline is the whole test set: the samples' FD equals it."""
    _, test = digits
    r = jm.digits_report(test)
    assert r["baselines"]["real"]["num_samples"] == 359
    assert r["fd"] == pytest.approx(r["baselines"]["real"]["fd"], rel=1e-12)
    assert r["fd"] < r["baselines"]["noise"]["fd"] / 10
    assert r["classifier_test_accuracy"] == dc.test_accuracy()
    assert r["mean_confidence"] > 0.9


def test_digits_report_nonfinite_samples(digits):
    x = digits[1][:10].copy()
    x[2, 3, 3, 0] = np.nan
    x[5] = np.inf
    for report in (jm.digits_report(x), tm.digits_report(_nchw(x))):
        assert report["num_nonfinite"] == 2 and report["fd"] == math.inf
        assert sum(report["class_histogram"]) == 8 and report["classifier_score"] > 1
        json.dumps(report)
    everything_nan = np.full((4, 8, 8, 1), np.nan, np.float32)
    report = jm.digits_report(everything_nan)
    assert report["classifier_score"] is None and report["class_histogram"] == [0] * 10


# --- 2-D distances ----------------------------------------------------------------------------


def _sw_oracle(a, b, num_projections, seed):
    """Equal sizes by replication (N | L and M | L): 1-D W2 = sorted matching."""
    theta = np.random.default_rng(seed).standard_normal((num_projections, a.shape[1]))
    theta /= np.linalg.norm(theta, axis=1, keepdims=True)
    size = math.lcm(len(a), len(b))
    pa = np.sort(np.repeat(a, size // len(a), axis=0) @ theta.T, axis=0)
    pb = np.sort(np.repeat(b, size // len(b), axis=0) @ theta.T, axis=0)
    return math.sqrt(np.mean(np.mean((pa - pb) ** 2, axis=0)))


def _energy_oracle(a, b):
    d = lambda x, y: np.sqrt(((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)).mean()  # noqa: E731
    return math.sqrt(max(2 * d(a, b) - d(a, a) - d(b, b), 0.0))


def test_sliced_wasserstein_three_way_and_shift(np_rng):
    a = np_rng.standard_normal((30, 2))
    b = np_rng.standard_normal((20, 2)) * 1.5 + 0.3
    ref = _sw_oracle(a, b, 64, 3)
    assert jm.sliced_wasserstein(a, b, num_projections=64, seed=3) == pytest.approx(ref, **F64)
    assert tm.sliced_wasserstein(torch.from_numpy(a), torch.from_numpy(b), num_projections=64,
                                 seed=3) == pytest.approx(ref, **F64)
    # a shifted copy: every projection moves by <theta, s>, so SW_2 = RMS of the projections
    shift = np.array([0.7, -0.2])
    theta = np.random.default_rng(0).standard_normal((256, 2))
    theta /= np.linalg.norm(theta, axis=1, keepdims=True)
    expected = math.sqrt(np.mean((theta @ shift) ** 2))
    assert jm.sliced_wasserstein(a, a + shift) == pytest.approx(expected, rel=1e-10)
    assert tm.sliced_wasserstein(torch.from_numpy(a), torch.from_numpy(a + shift)) == \
        pytest.approx(expected, rel=1e-10)
    assert jm.sliced_wasserstein(a, a) == 0.0


def test_energy_distance_three_way_and_closed_forms(np_rng):
    a = np_rng.standard_normal((40, 2))
    b = np_rng.standard_normal((25, 2)) + np.array([0.5, 0.0])
    ref = _energy_oracle(a, b)
    assert jm.energy_distance(a, b) == pytest.approx(ref, **F64)
    assert tm.energy_distance(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(ref, **F64)
    assert ref > 0.1
    assert jm.energy_distance(a, a) == 0.0
    assert tm.energy_distance(torch.from_numpy(a), torch.from_numpy(a)) == 0.0
    # one dimension: scipy's definition
    a1, b1 = a[:, :1], b[:, :1]
    sp = scipy.stats.energy_distance(a1[:, 0], b1[:, 0])
    assert jm.energy_distance(a1, b1) == pytest.approx(sp, rel=1e-10)


def test_toy_report_floor_and_agreement():
    cfg = DataConfig(dataset="gmm", num_test=600)
    samples = load_dataset(DataConfig(dataset="gmm", seed=5, num_test=200))[1]
    rj = jm.toy_report(samples, cfg)
    rt = tm.toy_report(torch.from_numpy(samples), cfg)
    json.dumps(rj)
    assert rj["num_samples"] == 200 and rj["num_nonfinite"] == 0
    for key in ("sliced_wasserstein", "energy_distance", "mean_log_density"):
        assert rt[key] == pytest.approx(rj[key], rel=1e-9)
        assert rt["floor"][key] == pytest.approx(rj["floor"][key], rel=1e-9)
    # exact samples score like the floor; a shifted set does not
    shifted = jm.toy_report(samples + 1.0, cfg)
    for key in ("sliced_wasserstein", "energy_distance"):
        assert rj[key] < 3 * rj["floor"][key] + 0.02
        assert shifted[key] > 5 * rj["floor"][key]
    assert shifted["mean_log_density"] < rj["mean_log_density"] - 0.5
    mix = demo_mixture()
    assert rj["mean_log_density"] == pytest.approx(float(np.mean(mix.log_prob(samples))), rel=1e-12)
    bad = samples.copy()
    bad[0, 0] = np.nan
    r_bad = jm.toy_report(bad, DataConfig(dataset="moons", num_test=600))
    assert r_bad["num_nonfinite"] == 1 and r_bad["energy_distance"] == math.inf
    assert "mean_log_density" not in r_bad


# --- likelihoods and bits/dim ------------------------------------------------------------------


class _Spy:
    """Wraps a library function: records each call's arguments and result (the wrapper under
    test is then compared with exactly what the library returned, at the cost of one JAX
    compilation instead of two); ``replay`` returns the first result again."""

    def __init__(self, fn, replay=False):
        self.fn, self.replay, self.calls = fn, replay, []

    def __call__(self, *args, **kwargs):
        if self.replay and self.calls:
            result = self.calls[0][2]
        else:
            result = self.fn(*args, **kwargs)
        self.calls.append((args, kwargs, result))
        return result


def test_gmm_likelihood_report_wraps_the_library(monkeypatch):
    """The report is ``ode.likelihood`` of the first test points against their exact
    log-density (the accuracy of exact-score likelihoods is test_likelihood's; here 8 RK4
    steps of the exact mixture score under a VP SDE: 0.16 nats at most, measured)."""
    cfg = DataConfig(dataset="gmm", num_test=50)
    js, ts = jsde.VPSDE(), tsde.VPSDE()
    mix = demo_mixture()
    x = load_dataset(cfg)[1][:3]
    exact = mix.log_prob(x)
    jfn, tfn = jgmm.score_fn_for_sde(js, mix), tgmm.score_fn_for_sde(ts, mix)
    opts = dict(method="rk4", num_steps=8)
    spy_j, spy_t = _Spy(jode.likelihood), _Spy(tode.likelihood)
    monkeypatch.setattr(jm.ode, "likelihood", spy_j)
    monkeypatch.setattr(tm.ode, "likelihood", spy_t)
    rj = jm.gmm_likelihood_report(None, js, jfn, cfg, num_points=3, **opts)
    rt = tm.gmm_likelihood_report(ts, tfn, cfg, num_points=3, **opts)
    for r, spy in ((rj, spy_j), (rt, spy_t)):
        (args, kwargs, (logp, _, _)), = spy.calls
        np.testing.assert_array_equal(np.asarray(args[-1]), x)
        assert kwargs["method"] == "rk4" and kwargs["num_steps"] == 8
        ref = np.asarray(logp, np.float64)
        json.dumps(r)
        assert r["num_points"] == 3
        assert r["exact_mean_loglik"] == pytest.approx(float(exact.mean()), rel=1e-12)
        assert r["model_mean_loglik"] == pytest.approx(float(ref.mean()), rel=1e-12)
        assert r["max_abs_error"] == pytest.approx(float(np.abs(ref - exact).max()), rel=1e-9)
        assert r["max_abs_error"] < 0.3
    assert rt["model_mean_loglik"] == pytest.approx(rj["model_mean_loglik"], abs=1e-4)


def test_bits_per_dim_ode_wraps_the_library(monkeypatch):
    """A one-component mixture (a Gaussian) with its exact score under a VP SDE."""
    gauss = GaussianMixture(np.ones(1), np.array([[0.2, -0.1]]), (0.3 * np.eye(2))[None])
    js, ts = jsde.VPSDE(), tsde.VPSDE()
    levels = np.array([[0, 16], [5, 9], [12, 3]])
    x = (2.0 * levels / 16 - 1).astype(np.float64)
    key = jax.random.key(1)
    opts = dict(centered=True, num_levels=17, method="euler", num_steps=2)
    spy_j, spy_t = _Spy(jode.bits_per_dim), _Spy(tode.bits_per_dim)
    monkeypatch.setattr(jm.ode, "bits_per_dim", spy_j)
    monkeypatch.setattr(tm.ode, "bits_per_dim", spy_t)
    got = jm.bits_per_dim_ode(key, js, jgmm.score_fn_for_sde(js, gauss), jnp.asarray(x), **opts)
    gen = torch.Generator().manual_seed(0)
    got_t = tm.bits_per_dim_ode(ts, tgmm.score_fn_for_sde(ts, gauss), torch.from_numpy(x),
                                generator=gen, **opts)
    for value, spy in ((got, spy_j), (got_t, spy_t)):
        (args, kwargs, (bpd, _, _)), = spy.calls
        assert all(kwargs[k] == v for k, v in opts.items())
        assert value == pytest.approx(float(np.mean(np.asarray(bpd))), rel=1e-12)
        assert 0 < value < 10
    assert spy_j.calls[0][0][0] is key and spy_t.calls[0][1]["generator"] is gen
    assert got_t == pytest.approx(got, abs=0.2)  # different dequantisation draws


def test_bits_per_dim_vlb_wraps_the_library(np_rng):
    """JAX: the wrapper against the library's bound fed calc_bpd_loop_random's noise
    (``noise[j] = normal(fold_in(rng, j))``), evaluated by the torch twin of
    ``calc_bpd_loop`` (eager, float64; the JAX and torch diffusions agree to round-off,
    test_diffusion) so that only one JAX program is compiled; torch: the wrapper against
    ``calc_bpd_loop_random`` with the same generator seed. 17 levels: the library's total
    with L_0 replaced by the 17-level decoder of the model's p(x_0 | x_1) (closed form)."""
    cfg = spec.DiffusionConfig(steps=8, noise_schedule="cosine")
    dj, dt_ = jd.GaussianDiffusion(cfg), td.GaussianDiffusion(cfg)
    T = dj.num_timesteps
    x = (2.0 * np_rng.integers(0, 17, (3, 4)) / 16 - 1).astype(np.float64)  # 17 levels
    xt = torch.from_numpy(x)
    key = jax.random.key(2)
    jfn = lambda v, t: 0.3 * v  # noqa: E731
    tfn = lambda v, t: 0.3 * v  # noqa: E731
    b256 = jm.bits_per_dim_vlb(key, dj, jfn, jnp.asarray(x), num_levels=256)
    b17 = jm.bits_per_dim_vlb(key, dj, jfn, jnp.asarray(x), num_levels=17)
    noise = np.array(jax.vmap(lambda j: jax.random.normal(jax.random.fold_in(key, j), x.shape,
                                                            jnp.float64))(jnp.arange(T)))
    out = dt_.calc_bpd_loop(tfn, xt, torch.from_numpy(noise))
    assert b256 == pytest.approx(float(out["total_bpd"].mean()), rel=1e-10)
    t0 = torch.zeros(3, dtype=torch.long)
    p = dt_.p_mean_variance(tfn, dt_.q_sample(xt, t0, torch.from_numpy(noise[T - 1])), t0)
    mean, s = p["mean"].numpy(), np.exp(0.5 * p["log_variance"].numpy())
    lo = np.where(x < -0.99, -np.inf, x - 1 / 16)
    hi = np.where(x > 0.99, np.inf, x + 1 / 16)
    mass = scipy.stats.norm.cdf((hi - mean) / s) - scipy.stats.norm.cdf((lo - mean) / s)
    l0 = np.mean(-np.log(mass), axis=1) / math.log(2)
    expected = out["total_bpd"].numpy() - out["vb"].numpy()[:, T - 1] + l0
    assert b17 == pytest.approx(float(expected.mean()), rel=2e-3)  # the tanh CDF approximation
    assert b17 < b256  # coarser bins hold more mass
    # torch: the wrapper around its calc_bpd_loop_random's draw
    gen_a, gen_b = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    t256 = tm.bits_per_dim_vlb(dt_, tfn, xt, num_levels=256, generator=gen_a)
    ref_t = dt_.calc_bpd_loop_random(tfn, xt, generator=gen_b)["total_bpd"]
    assert t256 == pytest.approx(float(ref_t.mean()), rel=1e-12)
    t17 = tm.bits_per_dim_vlb(dt_, tfn, xt, num_levels=17,
                              generator=torch.Generator().manual_seed(0))
    assert math.isfinite(t17) and t17 < t256  # (its noise differs from the JAX draw)
    # the decoder at 256 levels is the library's on the grid
    x256 = 2.0 * np_rng.integers(0, 256, (3, 4)) / 255 - 1
    means, log_scales = np_rng.standard_normal((3, 4)) * 0.2, np.full((3, 4), -1.5)
    lib = jd.discretized_gaussian_log_likelihood(jnp.asarray(x256), means=jnp.asarray(means),
                                                 log_scales=jnp.asarray(log_scales))
    for fn, conv in ((jm._discretized_log_likelihood, jnp.asarray),
                     (tm._discretized_log_likelihood, torch.from_numpy)):
        mine = np.asarray(fn(conv(x256), conv(means), conv(log_scales), 256))
        # rtol 1e-6: a bin mass of 1e-9 is a difference of CDF values near 1, so fused
        # and unfused evaluations differ by 1e-16 / 1e-9 relative (measured 6e-9)
        np.testing.assert_allclose(mine, np.asarray(lib), rtol=1e-6, atol=1e-12)


# --- bad inputs ------------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["jax", "torch"])
def test_bad_inputs_name_the_argument(side, digits):
    m = jm if side == "jax" else tm
    conv = (lambda v: v) if side == "jax" else (lambda v: torch.from_numpy(np.asarray(v)))
    img = (lambda v: v) if side == "jax" else _nchw
    test = digits[1]
    with pytest.raises(ValueError, match="^x must be 8x8 digit images"):
        m.classifier_outputs(conv(np.zeros((4, 8, 8), np.float32)))
    with pytest.raises(ValueError, match="C = 1 or 3"):
        m.classifier_outputs(img(np.zeros((4, 8, 8, 2), np.float32)))
    with pytest.raises(ValueError, match="^samples must hold at least 2"):
        m.digits_report(img(test[:1]))
    with pytest.raises(ValueError, match="^samples must be 8x8"):
        m.digits_report(conv(np.zeros((4, 16, 16, 1), np.float32)))
    with pytest.raises(TypeError, match="centered"):
        m.digits_report(img(test[:4]), centered="yes")
    with pytest.raises(ValueError, match="^features_a must be a 2-D"):
        m.frechet_distance(conv(np.zeros((1, 3))), conv(np.zeros((5, 3))))
    with pytest.raises(ValueError, match="same feature dimension"):
        m.frechet_distance(conv(np.zeros((5, 3))), conv(np.zeros((5, 4))))
    with pytest.raises(ValueError, match="^features_b contains NaN"):
        m.frechet_distance(conv(np.zeros((5, 3))), conv(np.full((5, 3), np.nan)))
    with pytest.raises(ValueError, match="^probs must hold probabilities"):
        m.classifier_score(conv(np.full((3, 10), 0.5)))
    with pytest.raises(ValueError, match="^probs must be a 2-D"):
        m.classifier_score(conv(np.full((10,), 0.1)))
    with pytest.raises(ValueError, match="^a must be points"):
        m.energy_distance(conv(np.zeros(5)), conv(np.zeros((5, 2))))
    with pytest.raises(ValueError, match="same dimension"):
        m.sliced_wasserstein(conv(np.zeros((5, 3))), conv(np.zeros((5, 2))))
    with pytest.raises(ValueError, match="num_projections"):
        m.sliced_wasserstein(conv(np.zeros((5, 2))), conv(np.zeros((5, 2))), num_projections=0)
    with pytest.raises(ValueError, match="^data_config.dataset must be a 2-D set"):
        m.toy_report(conv(np.zeros((5, 2))), DataConfig(dataset="digits"))
    with pytest.raises(TypeError, match="^data_config must be a spec.DataConfig"):
        m.toy_report(conv(np.zeros((5, 2))), "gmm")
    with pytest.raises(ValueError, match="^samples must be points"):
        m.toy_report(conv(np.zeros((5, 3))), DataConfig(dataset="gmm", num_test=10))


def test_bad_weights_file_is_named(tmp_path, monkeypatch):
    missing = tmp_path / "digits_classifier.npz"
    monkeypatch.setattr(dc, "WEIGHTS_FILE", missing)
    dc._read_weights_file.cache_clear()
    try:
        with pytest.raises(FileNotFoundError, match="digits_classifier.npz"):
            dc.load_digits_classifier()
        missing.write_bytes(b"not a zip")
        dc._read_weights_file.cache_clear()
        with pytest.raises(ValueError, match="digits_classifier.npz.*cannot be read"):
            dc.load_digits_classifier()
        np.savez(missing, W1=np.zeros((3, 3), np.float32))
        dc._read_weights_file.cache_clear()
        with pytest.raises(ValueError, match="lacks the arrays"):
            dc.load_digits_classifier()
    finally:
        monkeypatch.undo()
        dc._read_weights_file.cache_clear()
    assert dc.load_digits_classifier()["W1"].shape == (64, 128)
