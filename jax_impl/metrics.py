"""Sample-quality metrics: a Frechet distance and a classifier score on digits, distances of
2-D samples to held-out data, exact Gaussian-mixture likelihoods, and bits/dim.

Twin: ``torch_ref/metrics.py`` (same public names and semantics, PyTorch, NCHW images);
float64 numpy oracle of the digits metrics: ``spec/digits_classifier.py``.

Digits (8x8 images, JAX NHWC ``[N, 8, 8, C]``, C = 1 or 3: channels averaged; pixels in
[-1, 1] with ``centered=True``, else [0, 1]):

* ``classifier_outputs``: the project's shipped digits classifier
  (``spec/data/digits_classifier.npz``, trained by ``spec.digits_classifier``; test accuracy
  about 0.986), run in float32: its 64-d penultimate ReLU activations (the features) and
  p(y | x).
* ``frechet_distance``: ``||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)``
  of the Gaussian fits of two feature sets (Heusel et al. 2017's FID with this classifier
  in place of Inception), computed in float64 (``jax.enable_x64`` around the linear algebra)
  with both matrix roots from ``eigh`` (eigenvalues below 0 from rounding count as 0; the
  result is clipped at 0).
* ``classifier_score``: ``exp(E_x KL(p(y|x) || p(y)))`` (Salimans et al. 2016's Inception
  score with this classifier; 1 to 10).
* ``digits_report``: the two numbers for samples, beside the same two numbers for held-out
  real digits and for Gaussian noise (the baselines), every FD against the features of the
  1438 TRAINING digits. The baselines use the same N as the samples: ``min(N, 359)`` test
  digits (all of them when N >= 359, else a subset drawn without replacement from
  ``numpy.random.default_rng([seed, 0])``), and N images of N(0, 1) pixels in [-1, 1]
  space (the VP / DDPM prior an untrained sampler returns) from ``default_rng([seed, 1])``.
  FD with a few dozen samples is biased upwards (it falls as N grows), hence same-N
  baselines.

  Non-finite samples (an untrained or diverging model produces NaN / Inf): the report
  never raises for them. ``num_nonfinite`` counts the samples holding any NaN / Inf; then
  ``fd`` is ``inf`` (a run that produced NaN is worse than any finite one; Python's
  ``json`` writes it as ``Infinity``), and ``classifier_score``, ``mean_confidence`` and
  ``class_histogram`` describe the finite samples only (``None`` / zeros when there are
  none).

2-D sets (``[N, D]`` points, D = 2 for the built-in sets):

* ``sliced_wasserstein``: ``SW_2 = sqrt(mean_theta W_2^2(theta^T a, theta^T b))`` over
  ``num_projections`` directions ``theta`` drawn from ``numpy.random.default_rng(seed)``
  (``standard_normal((num_projections, D))``, rows normalised; numpy, so both frameworks use
  the same directions), each 1-D ``W_2`` exact for empirical measures of any sizes N and M
  (the quantile functions compared on the merged grid of ``i / N`` and ``j / M``).
* ``energy_distance``: ``sqrt(2 E|X - Y| - E|X - X'| - E|Y - Y'|)`` (Szekely & Rizzo; the
  V-statistics, so it is 0 exactly for identical sets and > 0 otherwise; the same as
  scipy's ``energy_distance`` in one dimension), float64, pairwise distances in chunks.
* ``toy_report``: both distances from the samples to the held-out test split of a 2-D
  ``spec.DataConfig``, beside the FLOOR: the same distances for an exact sample of the same
  size (``spec.datasets.make_toy_data`` from ``default_rng([seed, 3, index of the
  dataset])``, a stream the data sets never use), i.e. what a perfect model would score at
  that N. For ``"gmm"`` also ``mean_log_density`` (the exact mixture log-density of the
  samples, ``spec.oracles.gmm.demo_mixture``; the floor's is the exact sample's). Non-finite
  samples: distances ``inf``, ``mean_log_density`` ``-inf``, ``num_nonfinite`` > 0.
* ``gmm_likelihood_report``: the model's probability-flow log-likelihood
  (``jax_impl.ode.likelihood``, exact divergence; ``method`` / ``num_steps`` handed on) of
  the first ``num_points`` test points of the ``"gmm"`` set, against their exact
  log-density.

Bits/dim (means over the batch):

* ``bits_per_dim_ode``: ``jax_impl.ode.bits_per_dim`` (uniform dequantisation of
  ``num_levels``-level data, the probability-flow ODE; the keyword options ``hutchinson``,
  ``method``, ``num_steps`` are handed on with ``ode``'s defaults: exact divergence,
  dopri5).
* ``bits_per_dim_vlb``: the variational bound of a ``GaussianDiffusion``
  (``calc_bpd_loop`` with the noise ``calc_bpd_loop_random`` draws from ``rng``:
  ``noise[j] = normal(fold_in(rng, j))``). Data: ``num_levels``-level pixels
  ``2 k / (L - 1) - 1`` in [-1, 1], the convention of ``bits_per_dim_ode(centered=True)``.
  improved-diffusion's decoder L_0 is a Gaussian discretised to 256 levels; for
  ``num_levels`` = 256 the result is ``calc_bpd_loop``'s ``total_bpd`` itself, for another
  L the L_0 term is replaced by the same decoder discretised to L levels (bins of half-width
  ``1 / (L - 1)``, the edge bins open), so that the bound is in bits per dimension of the
  L-level data (17 for digits), comparable with ``bits_per_dim_ode``.

Inputs are checked before any compute (shapes, channel counts, dtypes, NaN / Inf where it
is an error), with messages naming the argument. Returned numbers are Python floats;
reports are JSON-able dicts.

These are host-side evaluation functions (they return Python numbers; do not call them
under ``jax.jit``). Inside, the classifier, the Frechet distance, the classifier score and
both 2-D distances are jitted kernels whose row counts are padded (to a power of two >= 64,
above 1024 to a multiple of 1024) and masked, so a new sample count rarely compiles again;
the float64 kernels run under ``jax.enable_x64(True)`` whatever the global setting. With
the weights and training features cached, ``digits_report`` on 359 samples takes about
0.2 s (the first call of a process about 5 s: the scikit-learn digits and the compilation).
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jax_impl import ode
from jax_impl.diffusion import approx_standard_normal_cdf, mean_flat
from jax_impl.validate import check_array, check_diffusion, check_key, check_sde
from spec import digits_classifier as _dc
from spec.datasets import TOY_DATASETS, DataConfig, load_dataset, make_toy_data
from spec.oracles.gmm import demo_mixture
from spec.validate import check_bool, check_callable, check_int

__all__ = [
    "bits_per_dim_ode",
    "bits_per_dim_vlb",
    "classifier_outputs",
    "classifier_score",
    "digits_report",
    "energy_distance",
    "frechet_distance",
    "gmm_likelihood_report",
    "load_digits_classifier",
    "sliced_wasserstein",
    "toy_report",
]

_PAIRWISE_CHUNK_ELEMENTS = 1 << 21  # entries of one [chunk, M, D] block of differences


# --- the digits classifier ------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _weights() -> dict:
    return {k: jnp.asarray(v, jnp.float32) for k, v in _dc.load_digits_classifier().items()}


def load_digits_classifier() -> dict:
    """The shipped digits classifier as float32 ``jax.Array`` s: ``{W1 [64, 128], b1 [128],
    W2 [128, 64], b2 [64], W3 [64, 10], b3 [10]}`` (dense kernels ``(in, out)``). A missing
    or damaged ``spec/data/digits_classifier.npz`` raises naming it."""
    return dict(_weights())


def _bucket(n: int) -> int:
    """The padded batch size for ``n`` rows: the next power of two >= max(n, 64) up to 1024,
    then the next multiple of 1024, so that the jitted kernels compile once per bucket, not
    once per sample count."""
    n = int(n)
    if n <= 1024:
        return max(64, 1 << (n - 1).bit_length())
    return -(-n // 1024) * 1024


def _pad_rows(a: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``a`` zero-padded to ``size`` rows, and the row mask ``[size]`` (1 for real rows)."""
    n = len(a)
    out = np.zeros((size,) + a.shape[1:], a.dtype)
    out[:n] = a
    return out, (np.arange(size) < n).astype(a.dtype)


@jax.jit
def _forward(params: dict, x_flat: jax.Array):
    h1 = jax.nn.relu(x_flat @ params["W1"] + params["b1"][None, :])
    f = jax.nn.relu(h1 @ params["W2"] + params["b2"][None, :])
    return f, jax.nn.softmax(f @ params["W3"] + params["b3"][None, :], axis=-1)


def _check_images(name: str, x, centered) -> tuple[np.ndarray, bool]:
    """Digit images ``[N, 8, 8, C]`` (C = 1 or 3, N >= 1) as float32 numpy; NaN allowed."""
    centered = check_bool("centered", centered)
    x = check_array(name, x, finite=False)
    if x.ndim != 4 or x.shape[1:3] != (8, 8) or x.shape[3] not in (1, 3) or x.shape[0] < 1:
        raise ValueError(f"{name} must be 8x8 digit images NHWC [N, 8, 8, C] with N >= 1 and "
                         f"C = 1 or 3 (channels are averaged), got shape {tuple(x.shape)}")
    return np.asarray(x, np.float32), centered


def _outputs(x: np.ndarray, centered: bool) -> tuple[np.ndarray, np.ndarray]:
    """The classifier on float32 NHWC numpy images, as float32 numpy ``(features, probs)``."""
    flat = x.mean(axis=-1, dtype=np.float32).reshape(len(x), 64)
    if not centered:
        flat = np.float32(2.0) * flat - np.float32(1.0)
    padded, _ = _pad_rows(flat, _bucket(len(flat)))
    f, p = _forward(_weights(), jnp.asarray(padded, jnp.float32))
    return np.asarray(f)[:len(x)], np.asarray(p)[:len(x)]


def classifier_outputs(x, *, centered: bool = True) -> tuple[jax.Array, jax.Array]:
    """``(features [N, 64], probs [N, 10])`` of the digits classifier (float32) for images
    ``x`` ``[N, 8, 8, C]`` (C = 1 or 3) in [-1, 1] (``centered``) or [0, 1]. A sample
    holding NaN / Inf gets NaN rows (no error: see ``digits_report``). The batch is padded
    to a power of two (>= 64) for the jitted network, so new sizes rarely recompile."""
    x, centered = _check_images("x", x, centered)
    f, p = _outputs(x, centered)
    return jnp.asarray(f), jnp.asarray(p)


# --- Frechet distance and classifier score ---------------------------------------------------


def _check_features(name: str, f, min_rows: int) -> np.ndarray:
    f = check_array(name, f)
    if f.ndim != 2 or f.shape[0] < min_rows or f.shape[1] < 1:
        raise ValueError(f"{name} must be a 2-D array [N, F] with N >= {min_rows}, "
                         f"got shape {tuple(f.shape)}")
    return np.asarray(f, np.float64)


def _moments(f: jax.Array, mask: jax.Array, n: jax.Array):
    """Mean and unbiased covariance of the rows of ``f`` where ``mask`` is 1 (n of them)."""
    mu = jnp.sum(f * mask[:, None], axis=0) / n
    d = (f - mu[None, :]) * mask[:, None]
    return mu, d.T @ d / (n - 1.0)


def _sqrtm_psd(a: jax.Array) -> jax.Array:
    w, q = jnp.linalg.eigh(0.5 * (a + a.T))
    return (q * jnp.sqrt(jnp.clip(w, 0.0, None))[None, :]) @ q.T


@jax.jit
def _frechet(fa, mask_a, n_a, fb, mask_b, n_b):
    mu_a, s_a = _moments(fa, mask_a, n_a)
    mu_b, s_b = _moments(fb, mask_b, n_b)
    root_a = _sqrtm_psd(s_a)
    cross = jnp.sum(jnp.sqrt(jnp.clip(jnp.linalg.eigvalsh(root_a @ s_b @ root_a), 0.0, None)))
    diff = mu_a - mu_b
    return jnp.dot(diff, diff) + jnp.trace(s_a) + jnp.trace(s_b) - 2.0 * cross


def frechet_distance(features_a, features_b) -> float:
    """Frechet distance of the Gaussian fits of ``features_a [N, F]`` and ``features_b
    [M, F]`` (N, M >= 2; unbiased covariances), computed in float64 (one jitted kernel,
    rows padded to a power of two and masked)."""
    a = _check_features("features_a", features_a, 2)
    b = _check_features("features_b", features_b, 2)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"features_a and features_b must have the same feature dimension, "
                         f"got {a.shape[1]} and {b.shape[1]}")
    pa, ma = _pad_rows(a, _bucket(len(a)))
    pb, mb = _pad_rows(b, _bucket(len(b)))
    with jax.enable_x64(True):
        fd = _frechet(jnp.asarray(pa), jnp.asarray(ma), jnp.asarray(float(len(a))),
                      jnp.asarray(pb), jnp.asarray(mb), jnp.asarray(float(len(b))))
        return max(float(fd), 0.0)


@jax.jit
def _log_classifier_score(p, mask, n):
    p_y = jnp.sum(p * mask[:, None], axis=0, keepdims=True) / n
    pos = p > 0
    log_ratio = jnp.log(jnp.where(pos, p, 1.0)) - jnp.log(jnp.where(pos, p_y, 1.0))
    kl = jnp.sum(jnp.where(pos, p * log_ratio, 0.0), axis=1)
    return jnp.sum(kl * mask) / n


def classifier_score(probs) -> float:
    """``exp(E_x KL(p(y|x) || p(y)))`` of class probabilities ``probs [N, K]`` (rows of
    non-negative numbers summing to 1), ``p(y)`` their mean over the samples; float64."""
    p = check_array("probs", probs)
    if p.ndim != 2 or p.shape[0] < 1 or p.shape[1] < 1:
        raise ValueError(f"probs must be a 2-D array [N, K] of class probabilities, got shape "
                         f"{tuple(p.shape)}")
    p = np.asarray(p, np.float64)
    if p.min() < 0 or np.abs(p.sum(axis=1) - 1.0).max() > 1e-3:
        raise ValueError("probs must hold probabilities: non-negative rows summing to 1")
    padded, mask = _pad_rows(p, _bucket(len(p)))
    with jax.enable_x64(True):
        log_score = _log_classifier_score(jnp.asarray(padded), jnp.asarray(mask),
                                          jnp.asarray(float(len(p))))
        return math.exp(float(log_score))


# --- the digits report ---------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _digits_splits():
    return load_dataset(DataConfig(dataset="digits"))


@functools.lru_cache(maxsize=1)
def _train_features() -> np.ndarray:
    return _outputs(_digits_splits()[0], True)[0]


def digits_report(samples, *, centered: bool = True, seed: int = 0) -> dict:
    """Digits sample quality beside the real and noise baselines (module docstring)::

        {"fd", "classifier_score", "num_samples", "num_nonfinite",
         "baselines": {"real": {"fd", "classifier_score", "num_samples"},
                       "noise": {"fd", "classifier_score", "num_samples"}},
         "classifier_test_accuracy", "mean_confidence", "class_histogram": [10 ints]}

    samples: ``[N, 8, 8, C]`` (N >= 2, C = 1 or 3) in [-1, 1] (``centered``) or [0, 1].
    seed: draws the real subset (N < 359) and the noise baseline (numpy)."""
    x, centered = _check_images("samples", samples, centered)
    seed = check_int("seed", seed, minimum=0)
    n = int(x.shape[0])
    if n < 2:
        raise ValueError(f"samples must hold at least 2 images for a Frechet distance, got {n}")
    finite = np.isfinite(x.reshape(n, -1)).all(axis=1)
    num_nonfinite = int(n - finite.sum())
    report = {"fd": math.inf, "classifier_score": None, "num_samples": n,
              "num_nonfinite": num_nonfinite}
    hist = np.zeros(10, np.int64)
    mean_conf = None
    if finite.any():
        feats, probs = _outputs(x[finite], centered)
        if num_nonfinite == 0:
            report["fd"] = frechet_distance(feats, _train_features())
        report["classifier_score"] = classifier_score(probs)
        probs = probs.astype(np.float64)
        mean_conf = float(probs.max(axis=1).mean())
        hist = np.bincount(probs.argmax(axis=1), minlength=10)
    test = _digits_splits()[1]
    n_real = min(n, len(test))
    if n_real < len(test):
        idx = np.sort(np.random.default_rng([seed, 0]).choice(len(test), n_real, replace=False))
        real = test[idx]
    else:
        real = test
    noise = np.random.default_rng([seed, 1]).standard_normal((n, 8, 8, 1)).astype(np.float32)
    baselines = {}
    for name, images in (("real", real), ("noise", noise)):
        feats, probs = _outputs(images, True)
        baselines[name] = {"fd": frechet_distance(feats, _train_features()),
                           "classifier_score": classifier_score(probs),
                           "num_samples": int(len(images))}
    report["baselines"] = baselines
    report["classifier_test_accuracy"] = _dc.test_accuracy()
    report["mean_confidence"] = mean_conf
    report["class_histogram"] = [int(c) for c in hist]
    return report


# --- 2-D distances ----------------------------------------------------------------------------


def _check_points(name: str, a, *, finite: bool = True) -> np.ndarray:
    a = check_array(name, a, finite=finite)
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"{name} must be points [N, D] (N >= 1), got shape {tuple(a.shape)}")
    return np.asarray(a, np.float64)


def _check_same_dim(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must have the same dimension D, got a {a.shape} and b {b.shape}")


def _directions(dim: int, num_projections: int, seed: int) -> np.ndarray:
    theta = np.random.default_rng(seed).standard_normal((num_projections, dim))
    return theta / np.linalg.norm(theta, axis=1, keepdims=True)


def _quantile_grid(n: int, m: int):
    """Interval widths and the sorted-sample indices of both quantile functions on the
    merged grid of ``i / n`` and ``j / m`` (numpy; midpoints avoid edge rounding)."""
    edges = np.unique(np.concatenate([np.arange(1, n + 1) / n, np.arange(1, m + 1) / m]))
    lower = np.concatenate([[0.0], edges[:-1]])
    mid = 0.5 * (lower + edges)
    idx_a = np.minimum(np.floor(mid * n).astype(np.int64), n - 1)
    idx_b = np.minimum(np.floor(mid * m).astype(np.int64), m - 1)
    return edges - lower, idx_a, idx_b


@jax.jit
def _sliced_w2(a, mask_a, b, mask_b, theta, widths, idx_a, idx_b):
    # padded rows project to +inf (sorted to the end, never indexed); widths are 0 on padding
    pa = jnp.sort(jnp.where(mask_a[:, None] > 0, a @ theta.T, jnp.inf), axis=0)
    pb = jnp.sort(jnp.where(mask_b[:, None] > 0, b @ theta.T, jnp.inf), axis=0)
    gap = pa[idx_a] - pb[idx_b]
    return jnp.mean(jnp.sum(widths[:, None] * gap**2, axis=0))


def sliced_wasserstein(a, b, *, num_projections: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between the point sets ``a [N, D]`` and ``b [M, D]``
    (float64; directions and 1-D transport in the module docstring)."""
    a, b = _check_points("a", a), _check_points("b", b)
    _check_same_dim(a, b)
    num_projections = check_int("num_projections", num_projections, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    theta = _directions(a.shape[1], num_projections, seed)
    widths, idx_a, idx_b = _quantile_grid(len(a), len(b))
    k = _bucket(len(widths))
    widths, idx_a, idx_b = (_pad_rows(v, k)[0] for v in (widths, idx_a, idx_b))
    pa, ma = _pad_rows(a, _bucket(len(a)))
    pb, mb = _pad_rows(b, _bucket(len(b)))
    with jax.enable_x64(True):
        w2 = _sliced_w2(*(jnp.asarray(v) for v in (pa, ma, pb, mb, theta, widths, idx_a, idx_b)))
        return math.sqrt(max(float(w2), 0.0))


@jax.jit
def _sum_pairwise_distances(x: jax.Array, x_mask: jax.Array, y: jax.Array, y_mask: jax.Array):
    # x: [num_chunks, chunk, D], x_mask: [num_chunks, chunk]; y: [M, D], y_mask: [M] (padded)
    def block(args):
        xc, mask = args
        d = jnp.sqrt(jnp.sum((xc[:, None, :] - y[None, :, :]) ** 2, axis=-1))
        return jnp.sum((d @ y_mask) * mask)

    return jnp.sum(jax.lax.map(block, (x, x_mask)))


def _mean_pairwise_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Mean of ``|x_i - y_j|`` over all pairs (rows padded and masked; the ``[chunk, M]``
    distance blocks are summed one at a time)."""
    d = x.shape[1]
    xp, xm = _pad_rows(x, _bucket(len(x)))
    yp, ym = _pad_rows(y, _bucket(len(y)))
    chunk = min(len(xp), 1024, max(1, _PAIRWISE_CHUNK_ELEMENTS // (len(yp) * d)))
    chunk = 1 << (chunk.bit_length() - 1)  # a power of two <= min(bucket, 1024): divides it
    with jax.enable_x64(True):
        total = _sum_pairwise_distances(jnp.asarray(xp.reshape(-1, chunk, d)),
                                        jnp.asarray(xm.reshape(-1, chunk)), jnp.asarray(yp),
                                        jnp.asarray(ym))
        return float(total) / (len(x) * len(y))


def _energy(a: np.ndarray, b: np.ndarray, mean_bb: float | None = None) -> float:
    if mean_bb is None:
        mean_bb = _mean_pairwise_distance(b, b)
    e2 = 2.0 * _mean_pairwise_distance(a, b) - _mean_pairwise_distance(a, a) - mean_bb
    return math.sqrt(max(e2, 0.0))


def energy_distance(a, b) -> float:
    """Energy distance ``sqrt(2 E|X-Y| - E|X-X'| - E|Y-Y'|)`` between the point sets
    ``a [N, D]`` and ``b [M, D]`` (V-statistics, float64)."""
    a, b = _check_points("a", a), _check_points("b", b)
    _check_same_dim(a, b)
    return _energy(a, b)


def _check_toy_config(data_config, *, gmm_only: bool = False) -> DataConfig:
    if not isinstance(data_config, DataConfig):
        raise TypeError(f"data_config must be a spec.DataConfig, got {type(data_config).__name__}")
    if gmm_only and data_config.dataset != "gmm":
        raise ValueError(f"data_config.dataset must be 'gmm' (the mixture with an exact density), "
                         f"got {data_config.dataset!r}")
    if data_config.dataset not in TOY_DATASETS:
        raise ValueError(f"data_config.dataset must be a 2-D set {TOY_DATASETS}, got "
                         f"{data_config.dataset!r}")
    return data_config


#: how many exact samples the 2-D floor averages
FLOOR_DRAWS = 8


def _floor(rows: list) -> dict:
    """``{"floor": mean over the exact draws, "floor_std": their standard deviation}``."""
    keys = rows[0].keys()
    return {"floor": {k: float(np.mean([r[k] for r in rows])) for k in keys},
            "floor_std": {k: float(np.std([r[k] for r in rows], ddof=1)) for k in keys}}


def toy_report(samples, data_config, *, seed: int = 0) -> dict:
    """Distances of 2-D ``samples [N, 2]`` to the held-out test split of ``data_config``,
    beside the exact-sample floor (module docstring)::

        {"sliced_wasserstein", "energy_distance", "num_samples", "num_nonfinite",
         "floor": {"sliced_wasserstein", "energy_distance"} (means over FLOOR_DRAWS
                  exact samples of the same size), "floor_std": their standard deviations,
         "mean_log_density" (gmm only; also in "floor")}
    """
    config = _check_toy_config(data_config)
    x = _check_points("samples", samples, finite=False)
    seed = check_int("seed", seed, minimum=0)
    _, test = load_dataset(config)
    if x.shape[1] != test.shape[1]:
        raise ValueError(f"samples must be points [N, {test.shape[1]}] of the "
                         f"{config.dataset!r} set, got shape {x.shape}")
    n = len(x)
    finite = np.isfinite(x).all(axis=1)
    num_nonfinite = int(n - finite.sum())
    # the floor: FLOOR_DRAWS independent exact samples of the same size (one draw is too
    # noisy: single draws of 2000 mixture points scored SW 0.024 to 0.084)
    exacts = [make_toy_data(config.dataset, n, np.random.default_rng(
        [seed, 3, TOY_DATASETS.index(config.dataset), k])) for k in range(FLOOR_DRAWS)]
    test = test.astype(np.float64)

    mean_test = _mean_pairwise_distance(test, test)  # E|Y - Y'|, shared by both rows

    def distances(points):
        return {"sliced_wasserstein": sliced_wasserstein(points, test, seed=seed),
                "energy_distance": _energy(np.asarray(points, np.float64), test, mean_test)}

    if num_nonfinite:
        report = {"sliced_wasserstein": math.inf, "energy_distance": math.inf}
    else:
        report = distances(x)
    report.update(num_samples=n, num_nonfinite=num_nonfinite,
                  **_floor([distances(e) for e in exacts]))
    if config.dataset == "gmm":
        mixture = demo_mixture()
        report["mean_log_density"] = (-math.inf if num_nonfinite
                                      else float(np.mean(mixture.log_prob(x))))
        report["floor"]["mean_log_density"] = float(np.mean(
            [np.mean(mixture.log_prob(e.astype(np.float64))) for e in exacts]))
    return report


def gmm_likelihood_report(rng, sde, score_fn: Callable, data_config, *, num_points: int = 200,
                          method: str = "dopri5", num_steps: Optional[int] = None) -> dict:
    """The model's probability-flow log-likelihood (nats, ``ode.likelihood`` with the exact
    divergence; ``method`` / ``num_steps`` as there, by default dopri5 with its default
    tolerances) of the first ``num_points`` test points of the ``"gmm"`` set of
    ``data_config``, against their exact mixture log-density::

        {"model_mean_loglik", "exact_mean_loglik", "max_abs_error", "num_points"}

    rng: a PRNG key or None (handed to ``ode.likelihood``; the exact divergence draws
    nothing)."""
    config = _check_toy_config(data_config, gmm_only=True)
    if rng is not None:
        check_key("rng", rng)
    check_sde(sde)
    check_callable("score_fn", score_fn, "score_fn(x, t)")
    num_points = check_int("num_points", num_points, minimum=1)
    _, test = load_dataset(config)
    if num_points > len(test):
        raise ValueError(f"num_points={num_points} is larger than the {len(test)} test points "
                         f"of data_config (data.num_test)")
    x = test[:num_points]
    logp, _, _ = ode.likelihood(rng, sde, score_fn, jnp.asarray(x), method=method,
                                num_steps=num_steps)
    logp = np.asarray(logp, np.float64)
    exact = demo_mixture().log_prob(x.astype(np.float64))
    return {"model_mean_loglik": float(logp.mean()), "exact_mean_loglik": float(exact.mean()),
            "max_abs_error": float(np.abs(logp - exact).max()), "num_points": num_points}


# --- bits per dimension --------------------------------------------------------------------


def bits_per_dim_ode(rng, sde, score_fn: Callable, x, *, centered: bool, num_levels: int,
                     hutchinson: Optional[str] = None, method: str = "dopri5",
                     num_steps: Optional[int] = None) -> float:
    """Mean over the batch of ``ode.bits_per_dim(rng, sde, score_fn, x, centered=centered,
    num_levels=num_levels, hutchinson=hutchinson, method=method, num_steps=num_steps)``
    (``x``: ``num_levels``-level data ``[B, ...]`` in [0, 1], or [-1, 1] with ``centered``;
    dequantisation noise and the Hutchinson probe from ``rng``)."""
    bpd, _, _ = ode.bits_per_dim(rng, sde, score_fn, x, centered=centered, num_levels=num_levels,
                                 hutchinson=hutchinson, method=method, num_steps=num_steps)
    return float(jnp.mean(bpd))


def _discretized_log_likelihood(x, means, log_scales, num_levels: int) -> jax.Array:
    """log P(x) of a Gaussian discretised to ``num_levels`` levels in [-1, 1] (bins of
    half-width 1 / (L - 1), the edge bins open), elementwise."""
    half = 1.0 / (num_levels - 1)
    inv_stdv = jnp.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (x - means + half))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (x - means - half))
    log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
    log_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
    return jnp.where(x < -1.0 + half, log_cdf_plus,
                     jnp.where(x > 1.0 - half, log_one_minus_cdf_min, log_delta))


@functools.partial(jax.jit, static_argnames=("diffusion", "model_fn"))
def _vlb_bits(key, x, num_levels, *, diffusion, model_fn):
    T = diffusion.num_timesteps
    noise = jax.vmap(lambda j: jax.random.normal(jax.random.fold_in(key, j), x.shape, x.dtype))(
        jnp.arange(T))
    out = diffusion.calc_bpd_loop(model_fn, x, noise)
    # L_0 re-discretised to num_levels (traced, so every L shares one compilation); for 256
    # levels the library's total is returned as it is
    t0 = jnp.zeros((x.shape[0],), jnp.int32)
    p = diffusion.p_mean_variance(model_fn, diffusion.q_sample(x, t0, noise[T - 1]), t0)
    nll = -_discretized_log_likelihood(x, p["mean"], 0.5 * p["log_variance"], num_levels)
    relevelled = out["total_bpd"] - out["vb"][:, T - 1] + mean_flat(nll) / math.log(2.0)
    return jnp.where(num_levels == 256, out["total_bpd"], relevelled)


def bits_per_dim_vlb(rng, diffusion, model_fn: Callable, x, *, num_levels: int) -> float:
    """Mean over the batch of the variational bound in bits/dim of ``num_levels``-level data
    ``x [B, ...]`` in [-1, 1] under ``diffusion`` (a ``GaussianDiffusion``) with
    ``model_fn(x_t, t) -> output`` (module docstring: ``calc_bpd_loop``'s ``total_bpd`` for
    256 levels, the L_0 decoder term re-discretised otherwise). The noise is
    ``calc_bpd_loop_random``'s, from ``rng``. The whole bound is one jitted program, with
    ``diffusion`` and ``model_fn`` static (a new ``model_fn`` object compiles again: pass
    the same one to repeated calls)."""
    key = check_key("rng", rng)
    check_diffusion(diffusion)
    check_callable("model_fn", model_fn, "model_fn(x_t, t) -> output")
    num_levels = check_int("num_levels", num_levels, minimum=2)
    x = check_array("x", x, min_ndim=1)
    if float(jnp.min(x)) < -1.0 or float(jnp.max(x)) > 1.0:
        raise ValueError(f"x must lie in [-1, 1] (num_levels-level data, centred), got values in "
                         f"[{float(jnp.min(x))}, {float(jnp.max(x))}]")
    total = _vlb_bits(key, x, jnp.asarray(num_levels, x.dtype), diffusion=diffusion,
                      model_fn=model_fn)
    return float(jnp.mean(total))
