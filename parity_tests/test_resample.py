"""Schedule samplers: jax_impl.resample == torch_ref.resample == an independent deque
oracle; sampling frequencies match the weights (chi-square); the importance-weighted
loss is unbiased and, with second-moment weights, has lower variance than uniform."""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
import torch

import spec
from jax_impl import diffusion as jd
from jax_impl import resample as jr
from parity_tests.helpers import to_np
from torch_ref import resample as tr

T, H = 8, 10


class DequeOracle:
    """improved-diffusion's rule written with bounded deques (independent of both sides)."""

    def __init__(self, T, H, u):
        self.T, self.H, self.u = T, H, u
        self.hist = [collections.deque(maxlen=H) for _ in range(T)]

    def update(self, ts, losses):
        for t, loss in zip(ts, losses):
            self.hist[int(t)].append(float(loss))

    def weights(self):
        if any(len(h) < self.H for h in self.hist):
            return np.ones(self.T)
        rms = np.array([np.sqrt(np.mean(np.square(h))) for h in self.hist])
        return (1 - self.u) * rms / rms.sum() + self.u / self.T


def _feed(batches, u=0.001):
    """Feed the same (t, losses) batches to all three; return them."""
    js = jr.LossSecondMomentResampler(T, history_per_term=H, uniform_prob=u)
    state = js.init()
    ts = tr.LossSecondMomentResampler(T, history_per_term=H, uniform_prob=u)
    oracle = DequeOracle(T, H, u)
    update = jax.jit(js.update)
    for t, losses in batches:
        state = update(state, jnp.asarray(t), jnp.asarray(losses))
        ts.update_with_all_losses(torch.as_tensor(t), torch.as_tensor(losses))
        oracle.update(t, losses)
    return js, state, ts, oracle


def _batches(rng, n, batch=16):
    """Per-step losses with a step-dependent scale, so the weights are far from uniform."""
    scale = np.linspace(0.2, 3.0, T)
    out = []
    for _ in range(n):
        t = rng.integers(0, T, size=batch)  # repeated steps inside a batch on purpose
        out.append((t, np.abs(rng.normal(size=batch)) * scale[t] + 0.05))
    return out


def test_warmup_then_identical_weights(np_rng):
    batches = _batches(np_rng, 12)
    js, state, ts, oracle = _feed(batches[:2])  # 32 losses: not every step has 10 yet
    assert not bool(js.warmed_up(state)) and not ts.warmed_up()
    for w in (to_np(js.weights(state)), ts.weights(), oracle.weights()):
        np.testing.assert_array_equal(w, np.ones(T))

    js, state, ts, oracle = _feed(batches)  # 192 losses: warmed up, histories shifted
    assert bool(js.warmed_up(state)) and ts.warmed_up()
    np.testing.assert_array_equal(to_np(state.loss_counts), ts._loss_counts)
    np.testing.assert_allclose(to_np(state.loss_history), ts._loss_history, rtol=0, atol=0)
    for t in range(T):
        np.testing.assert_array_equal(ts._loss_history[t], np.asarray(oracle.hist[t]))
    w_j = to_np(jax.jit(js.weights)(state))
    w_t = ts.weights()
    np.testing.assert_allclose(w_j, w_t, rtol=1e-14)
    np.testing.assert_allclose(w_t, oracle.weights(), rtol=1e-14)
    np.testing.assert_allclose(w_t.sum(), 1.0, rtol=1e-14)
    assert w_t.max() / w_t.min() > 5  # far from uniform


def test_sampling_frequencies_match_weights(np_rng):
    js, state, ts, _ = _feed(_batches(np_rng, 12))
    p = ts.weights() / ts.weights().sum()
    n = 20000
    t_j, w_j = jax.jit(js.sample, static_argnums=2)(jax.random.PRNGKey(0), state, n)
    t_t, w_t = ts.sample(n, generator=torch.Generator().manual_seed(0))
    assert t_j.dtype == jnp.int32 and t_t.dtype == torch.int64 and w_t.dtype == torch.float32
    for t, w in ((to_np(t_j), to_np(w_j)), (to_np(t_t), to_np(w_t))):
        counts = np.bincount(t, minlength=T)
        assert scipy.stats.chisquare(counts, n * p).pvalue > 1e-3
        np.testing.assert_allclose(w, 1.0 / (T * p[t]), rtol=1e-6)


def test_importance_weights_unbiased_and_variance_reducing(np_rng):
    """E_p[w_t L_t] = mean_t L_t exactly; Monte-Carlo within 5 standard errors; with
    deterministic per-step losses the second-moment weights make w_t L_t nearly constant."""
    L = np.linspace(0.1, 4.0, T) ** 2
    batches = [(np.arange(T), L) for _ in range(H)]
    js, state, ts, _ = _feed(batches, u=0.01)
    w = ts.weights()
    p = w / w.sum()
    np.testing.assert_allclose(np.sum(p * (1.0 / (T * p)) * L), L.mean(), rtol=1e-12)
    n = 40000
    for t, iw in (
        tuple(to_np(a) for a in js.sample(jax.random.PRNGKey(1), state, n)),
        tuple(to_np(a) for a in ts.sample(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)),
    ):
        est = iw * L[t]
        assert abs(est.mean() - L.mean()) < 5 * est.std() / np.sqrt(n)
        assert est.std() < 0.1 * L.std()  # uniform sampling has std(L)
    # the uniform sampler: weights 1, t uniform
    for t, iw in (tuple(to_np(a) for a in jr.UniformSampler(T).sample(jax.random.PRNGKey(2), None, n)),
                  tuple(to_np(a) for a in tr.UniformSampler(T).sample(n, generator=torch.Generator().manual_seed(2)))):
        np.testing.assert_array_equal(iw, np.ones(n))
        assert scipy.stats.chisquare(np.bincount(t, minlength=T)).pvalue > 1e-3


def test_samplers_accept_a_diffusion_and_names():
    d = jd.GaussianDiffusion(spec.DiffusionConfig(steps=50, timestep_respacing="6"))
    assert jr.UniformSampler(d).num_timesteps == 6
    assert tr.LossSecondMomentResampler(d).num_timesteps == 6
    assert isinstance(jr.create_named_schedule_sampler("loss-second-moment", d), jr.LossSecondMomentResampler)
    assert isinstance(tr.create_named_schedule_sampler("uniform", 6), tr.UniformSampler)
    assert jr.LossSecondMomentResampler(6) == jr.LossSecondMomentResampler(6)  # hashable static
    assert hash(jr.LossSecondMomentResampler(6)) == hash(jr.LossSecondMomentResampler(6))
    # all-zero losses: uniform rather than 0/0
    js = jr.LossSecondMomentResampler(2, history_per_term=1)
    state = js.update(js.init(), jnp.array([0, 1]), jnp.zeros(2))
    np.testing.assert_array_equal(to_np(js.weights(state)), np.ones(2))
    ts = tr.LossSecondMomentResampler(2, history_per_term=1)
    ts.update_with_all_losses([0, 1], [0.0, 0.0])
    np.testing.assert_array_equal(ts.weights(), np.ones(2))


def test_bad_input():
    for mod in (jr, tr):
        with pytest.raises(ValueError, match="num_timesteps must be >= 1"):
            mod.LossSecondMomentResampler(0)
        with pytest.raises(ValueError, match="history_per_term must be >= 1"):
            mod.LossSecondMomentResampler(4, history_per_term=0)
        with pytest.raises(ValueError, match="uniform_prob must lie in"):
            mod.LossSecondMomentResampler(4, uniform_prob=1.5)
        with pytest.raises(ValueError, match="unknown schedule sampler name"):
            mod.create_named_schedule_sampler("loss_second_moment", 4)
    js = jr.LossSecondMomentResampler(4)
    state = js.init()
    with pytest.raises(ValueError, match=r"t must lie in \[0, num_timesteps\)"):
        js.update(state, jnp.array([0, 4]), jnp.ones(2))
    with pytest.raises(ValueError, match="t and losses must both have shape"):
        js.update(state, jnp.array([0, 1]), jnp.ones(3))
    with pytest.raises(TypeError, match="t must be an integer"):
        js.update(state, jnp.array([0.0, 1.0]), jnp.ones(2))
    with pytest.raises(TypeError, match="state must be a LossSecondMomentState"):
        js.weights((state.loss_history, state.loss_counts))
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        js.sample(jax.random.PRNGKey(0), state, 0)
    ts = tr.LossSecondMomentResampler(4)
    with pytest.raises(ValueError, match=r"ts must lie in \[0, num_timesteps\)"):
        ts.update_with_all_losses([0, -1], [1.0, 1.0])
    with pytest.raises(ValueError, match="ts and losses must both have shape"):
        ts.update_with_all_losses([0, 1], [1.0])
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        ts.sample(0)
