"""Sample-quality metrics in PyTorch: a Frechet distance and a classifier score on digits,
distances of 2-D samples to held-out data, exact Gaussian-mixture likelihoods, and bits/dim.

Twin: ``jax_impl/metrics.py`` (same public names and semantics; every definition, the
baselines, the random streams and the handling of non-finite samples are in its
docstring); float64 numpy oracle of the digits metrics: ``spec/digits_classifier.py``.

Differences that the frameworks impose:
  * images are NCHW ``[N, C, 8, 8]`` (C = 1 or 3);
  * the Frechet distance, classifier score and 2-D distances run in torch float64 (no
    precision switch needed); pairwise distances are ``torch.cdist`` with
    ``compute_mode="donot_use_mm_for_euclid_dist"`` (the direct differences, as the JAX
    side computes them, not the less accurate matrix-product expansion);
  * no padding or compilation: every call runs eagerly (``digits_report`` on 359 samples:
    about 0.07 s once the weights and training features are cached);
  * randomness: ``gmm_likelihood_report``, ``bits_per_dim_ode`` and ``bits_per_dim_vlb``
    take a keyword-only ``generator`` (a ``torch.Generator``) where the JAX twin takes
    ``rng`` first; ``bits_per_dim_vlb`` draws its noise ``[T, B, ...]`` with one
    ``torch.randn`` from it, as ``GaussianDiffusion.calc_bpd_loop_random`` does. The numpy
    streams (the directions of ``sliced_wasserstein``, the baselines of ``digits_report``,
    the floor of ``toy_report``) are the JAX side's, so both frameworks report the same
    numbers for the same samples.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Optional

import numpy as np
import torch

from spec import digits_classifier as _dc
from spec.datasets import TOY_DATASETS, DataConfig, load_dataset, make_toy_data
from spec.oracles.gmm import demo_mixture
from spec.validate import check_bool, check_callable, check_int
from torch_ref import ode
from torch_ref.diffusion import approx_standard_normal_cdf, mean_flat
from torch_ref.validate import check_array, check_diffusion, check_generator, check_sde

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

_PAIRWISE_CHUNK_ELEMENTS = 1 << 21  # entries of one [chunk, M] block of distances (x D)


# --- the digits classifier ------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _weights() -> dict:
    return {k: torch.tensor(np.array(v), dtype=torch.float32)
            for k, v in _dc.load_digits_classifier().items()}


def load_digits_classifier() -> dict:
    """The shipped digits classifier as float32 tensors: ``{W1 [64, 128], b1 [128],
    W2 [128, 64], b2 [64], W3 [64, 10], b3 [10]}`` (kernels ``(in, out)``, used as
    ``x @ W + b``; copies, so editing them changes nothing). A missing or damaged
    ``spec/data/digits_classifier.npz`` raises naming it."""
    return {k: v.clone() for k, v in _weights().items()}


def _check_images(name: str, x, centered) -> tuple[torch.Tensor, bool]:
    centered = check_bool("centered", centered)
    x = check_array(name, x, finite=False)
    if x.ndim != 4 or tuple(x.shape[2:]) != (8, 8) or x.shape[1] not in (1, 3) or x.shape[0] < 1:
        raise ValueError(f"{name} must be 8x8 digit images NCHW [N, C, 8, 8] with N >= 1 and "
                         f"C = 1 or 3 (channels are averaged), got shape {tuple(x.shape)}")
    return x.detach().to(device="cpu", dtype=torch.float32), centered


@torch.no_grad()
def _forward(x: torch.Tensor, centered: bool):
    p = _weights()
    x = x.mean(dim=1)
    if not centered:
        x = 2.0 * x - 1.0
    x = x.reshape(x.shape[0], 64)
    h1 = torch.relu(x @ p["W1"] + p["b1"])
    f = torch.relu(h1 @ p["W2"] + p["b2"])
    return f, torch.softmax(f @ p["W3"] + p["b3"], dim=-1)


def classifier_outputs(x, *, centered: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features [N, 64], probs [N, 10])`` of the digits classifier (float32, CPU) for
    images ``x`` ``[N, C, 8, 8]`` (C = 1 or 3) in [-1, 1] (``centered``) or [0, 1]. A sample
    holding NaN / Inf gets NaN rows (no error: see ``digits_report``)."""
    x, centered = _check_images("x", x, centered)
    return _forward(x, centered)


# --- Frechet distance and classifier score ---------------------------------------------------


def _check_features(name: str, f, min_rows: int) -> torch.Tensor:
    f = check_array(name, f)
    if f.ndim != 2 or f.shape[0] < min_rows or f.shape[1] < 1:
        raise ValueError(f"{name} must be a 2-D array [N, F] with N >= {min_rows}, "
                         f"got shape {tuple(f.shape)}")
    return f.detach().to(device="cpu", dtype=torch.float64)


def _moments(f: torch.Tensor):
    mu = f.mean(dim=0)
    d = f - mu
    return mu, d.T @ d / (f.shape[0] - 1)


def _sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    w, q = torch.linalg.eigh(0.5 * (a + a.T))
    return (q * torch.sqrt(torch.clamp(w, min=0.0))) @ q.T


def frechet_distance(features_a, features_b) -> float:
    """Frechet distance of the Gaussian fits of ``features_a [N, F]`` and ``features_b
    [M, F]`` (N, M >= 2; unbiased covariances), in float64."""
    a = _check_features("features_a", features_a, 2)
    b = _check_features("features_b", features_b, 2)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"features_a and features_b must have the same feature dimension, "
                         f"got {a.shape[1]} and {b.shape[1]}")
    mu_a, s_a = _moments(a)
    mu_b, s_b = _moments(b)
    root_a = _sqrtm_psd(s_a)
    cross = torch.sqrt(torch.clamp(torch.linalg.eigvalsh(root_a @ s_b @ root_a), min=0.0)).sum()
    diff = mu_a - mu_b
    fd = diff @ diff + torch.trace(s_a) + torch.trace(s_b) - 2.0 * cross
    return max(float(fd), 0.0)


def classifier_score(probs) -> float:
    """``exp(E_x KL(p(y|x) || p(y)))`` of class probabilities ``probs [N, K]`` (rows of
    non-negative numbers summing to 1), ``p(y)`` their mean over the samples; float64."""
    p = check_array("probs", probs)
    if p.ndim != 2 or p.shape[0] < 1 or p.shape[1] < 1:
        raise ValueError(f"probs must be a 2-D array [N, K] of class probabilities, got shape "
                         f"{tuple(p.shape)}")
    p = p.detach().to(device="cpu", dtype=torch.float64)
    if float(p.min()) < 0 or float((p.sum(dim=1) - 1.0).abs().max()) > 1e-3:
        raise ValueError("probs must hold probabilities: non-negative rows summing to 1")
    p_y = p.mean(dim=0, keepdim=True)
    pos = p > 0
    one = torch.ones_like(p)
    log_ratio = torch.log(torch.where(pos, p, one)) - torch.log(torch.where(pos, p_y.expand_as(p), one))
    kl = torch.where(pos, p * log_ratio, torch.zeros_like(p)).sum(dim=1)
    return float(torch.exp(kl.mean()))


# --- the digits report ---------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _digits_splits():
    train, test = load_dataset(DataConfig(dataset="digits"))
    return torch.from_numpy(train).permute(0, 3, 1, 2), torch.from_numpy(test).permute(0, 3, 1, 2)


@functools.lru_cache(maxsize=1)
def _train_features() -> torch.Tensor:
    return classifier_outputs(_digits_splits()[0])[0]


def digits_report(samples, *, centered: bool = True, seed: int = 0) -> dict:
    """Digits sample quality beside the real and noise baselines (as the JAX twin)::

        {"fd", "classifier_score", "num_samples", "num_nonfinite",
         "baselines": {"real": {"fd", "classifier_score", "num_samples"},
                       "noise": {"fd", "classifier_score", "num_samples"}},
         "classifier_test_accuracy", "mean_confidence", "class_histogram": [10 ints]}

    samples: ``[N, C, 8, 8]`` (N >= 2, C = 1 or 3) in [-1, 1] (``centered``) or [0, 1]."""
    x, centered = _check_images("samples", samples, centered)
    seed = check_int("seed", seed, minimum=0)
    n = int(x.shape[0])
    if n < 2:
        raise ValueError(f"samples must hold at least 2 images for a Frechet distance, got {n}")
    finite = torch.isfinite(x.reshape(n, -1)).all(dim=1)
    num_nonfinite = int(n - int(finite.sum()))
    report = {"fd": math.inf, "classifier_score": None, "num_samples": n,
              "num_nonfinite": num_nonfinite}
    hist = np.zeros(10, np.int64)
    mean_conf = None
    if bool(finite.any()):
        feats, probs = classifier_outputs(x[finite], centered=centered)
        if num_nonfinite == 0:
            report["fd"] = frechet_distance(feats, _train_features())
        report["classifier_score"] = classifier_score(probs)
        probs = probs.to(torch.float64)
        mean_conf = float(probs.max(dim=1).values.mean())
        hist = np.bincount(probs.argmax(dim=1).numpy(), minlength=10)
    test = _digits_splits()[1]
    n_real = min(n, len(test))
    if n_real < len(test):
        idx = np.sort(np.random.default_rng([seed, 0]).choice(len(test), n_real, replace=False))
        real = test[torch.from_numpy(idx)]
    else:
        real = test
    noise = np.random.default_rng([seed, 1]).standard_normal((n, 8, 8, 1)).astype(np.float32)
    noise = torch.from_numpy(noise).permute(0, 3, 1, 2)
    baselines = {}
    for name, images in (("real", real), ("noise", noise)):
        feats, probs = classifier_outputs(images)
        baselines[name] = {"fd": frechet_distance(feats, _train_features()),
                           "classifier_score": classifier_score(probs),
                           "num_samples": int(len(images))}
    report["baselines"] = baselines
    report["classifier_test_accuracy"] = _dc.test_accuracy()
    report["mean_confidence"] = mean_conf
    report["class_histogram"] = [int(c) for c in hist]
    return report


# --- 2-D distances ----------------------------------------------------------------------------


def _check_points(name: str, a, *, finite: bool = True) -> torch.Tensor:
    a = check_array(name, a, finite=finite)
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"{name} must be points [N, D] (N >= 1), got shape {tuple(a.shape)}")
    return a.detach().to(device="cpu", dtype=torch.float64)


def _check_same_dim(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must have the same dimension D, got a {tuple(a.shape)} and "
                         f"b {tuple(b.shape)}")


def _directions(dim: int, num_projections: int, seed: int) -> np.ndarray:
    theta = np.random.default_rng(seed).standard_normal((num_projections, dim))
    return theta / np.linalg.norm(theta, axis=1, keepdims=True)


def _quantile_grid(n: int, m: int):
    """Widths and sorted-sample indices of both quantile functions on the merged grid of
    ``i / n`` and ``j / m`` (numpy; midpoints avoid edge rounding)."""
    edges = np.unique(np.concatenate([np.arange(1, n + 1) / n, np.arange(1, m + 1) / m]))
    lower = np.concatenate([[0.0], edges[:-1]])
    mid = 0.5 * (lower + edges)
    idx_a = np.minimum(np.floor(mid * n).astype(np.int64), n - 1)
    idx_b = np.minimum(np.floor(mid * m).astype(np.int64), m - 1)
    return edges - lower, idx_a, idx_b


@torch.no_grad()
def sliced_wasserstein(a, b, *, num_projections: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between the point sets ``a [N, D]`` and ``b [M, D]``
    (float64; as the JAX twin, with the same directions)."""
    a, b = _check_points("a", a), _check_points("b", b)
    _check_same_dim(a, b)
    num_projections = check_int("num_projections", num_projections, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    theta = torch.from_numpy(_directions(a.shape[1], num_projections, seed))
    widths, idx_a, idx_b = _quantile_grid(len(a), len(b))
    pa = torch.sort(a @ theta.T, dim=0).values
    pb = torch.sort(b @ theta.T, dim=0).values
    gap = pa[torch.from_numpy(idx_a)] - pb[torch.from_numpy(idx_b)]
    w2 = (torch.from_numpy(widths)[:, None] * gap**2).sum(dim=0)
    return float(torch.sqrt(w2.mean()))


@torch.no_grad()
def _mean_pairwise_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    chunk = max(1, min(len(x), _PAIRWISE_CHUNK_ELEMENTS // (len(y) * x.shape[1])))
    total = torch.zeros((), dtype=torch.float64)
    for start in range(0, len(x), chunk):
        d = torch.cdist(x[start:start + chunk], y, compute_mode="donot_use_mm_for_euclid_dist")
        total = total + d.sum()
    return total / (len(x) * len(y))


@torch.no_grad()
def _energy(a: torch.Tensor, b: torch.Tensor, mean_bb: Optional[torch.Tensor] = None) -> float:
    if mean_bb is None:
        mean_bb = _mean_pairwise_distance(b, b)
    e2 = 2.0 * _mean_pairwise_distance(a, b) - _mean_pairwise_distance(a, a) - mean_bb
    return math.sqrt(max(float(e2), 0.0))


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
    beside the exact-sample floor (as the JAX twin)::

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
                         f"{config.dataset!r} set, got shape {tuple(x.shape)}")
    n = len(x)
    finite = torch.isfinite(x).all(dim=1)
    num_nonfinite = int(n - int(finite.sum()))
    # the floor: FLOOR_DRAWS independent exact samples of the same size (one draw is too
    # noisy: single draws of 2000 mixture points scored SW 0.024 to 0.084)
    exacts = [make_toy_data(config.dataset, n, np.random.default_rng(
        [seed, 3, TOY_DATASETS.index(config.dataset), k])) for k in range(FLOOR_DRAWS)]
    test = torch.from_numpy(test.astype(np.float64))

    mean_test = _mean_pairwise_distance(test, test)  # E|Y - Y'|, shared by both rows

    def distances(points):
        return {"sliced_wasserstein": sliced_wasserstein(points, test, seed=seed),
                "energy_distance": _energy(points, test, mean_test)}

    if num_nonfinite:
        report = {"sliced_wasserstein": math.inf, "energy_distance": math.inf}
    else:
        report = distances(x)
    report.update(num_samples=n, num_nonfinite=num_nonfinite,
                  **_floor([distances(torch.from_numpy(e.astype(np.float64))) for e in exacts]))
    if config.dataset == "gmm":
        mixture = demo_mixture()
        report["mean_log_density"] = (-math.inf if num_nonfinite
                                      else float(np.mean(mixture.log_prob(x.numpy()))))
        report["floor"]["mean_log_density"] = float(np.mean(
            [np.mean(mixture.log_prob(e.astype(np.float64))) for e in exacts]))
    return report


def gmm_likelihood_report(sde, score_fn: Callable, data_config, *, num_points: int = 200,
                          method: str = "dopri5", num_steps: Optional[int] = None,
                          generator: Optional[torch.Generator] = None) -> dict:
    """The model's probability-flow log-likelihood (``ode.likelihood``, exact divergence;
    ``method`` / ``num_steps`` as there) of the first ``num_points`` test points of the
    ``"gmm"`` set of ``data_config``, against their exact mixture log-density::

        {"model_mean_loglik", "exact_mean_loglik", "max_abs_error", "num_points"}

    generator: handed to ``ode.likelihood`` (the exact divergence draws nothing)."""
    config = _check_toy_config(data_config, gmm_only=True)
    check_generator("generator", generator)
    check_sde(sde)
    check_callable("score_fn", score_fn, "score_fn(x, t)")
    num_points = check_int("num_points", num_points, minimum=1)
    _, test = load_dataset(config)
    if num_points > len(test):
        raise ValueError(f"num_points={num_points} is larger than the {len(test)} test points "
                         f"of data_config (data.num_test)")
    x = test[:num_points]
    logp, _, _ = ode.likelihood(sde, score_fn, torch.from_numpy(x), method=method,
                                num_steps=num_steps, generator=generator)
    logp = logp.detach().cpu().to(torch.float64).numpy()
    exact = demo_mixture().log_prob(x.astype(np.float64))
    return {"model_mean_loglik": float(logp.mean()), "exact_mean_loglik": float(exact.mean()),
            "max_abs_error": float(np.abs(logp - exact).max()), "num_points": num_points}


# --- bits per dimension --------------------------------------------------------------------


def bits_per_dim_ode(sde, score_fn: Callable, x, *, centered: bool, num_levels: int,
                     hutchinson: Optional[str] = None, method: str = "dopri5",
                     num_steps: Optional[int] = None,
                     generator: Optional[torch.Generator] = None) -> float:
    """Mean over the batch of ``ode.bits_per_dim(sde, score_fn, x, centered=centered,
    num_levels=num_levels, hutchinson=hutchinson, method=method, num_steps=num_steps,
    generator=generator)``."""
    bpd, _, _ = ode.bits_per_dim(sde, score_fn, x, centered=centered, num_levels=num_levels,
                                 hutchinson=hutchinson, method=method, num_steps=num_steps,
                                 generator=generator)
    return float(bpd.mean())


def _discretized_log_likelihood(x, means, log_scales, num_levels: int) -> torch.Tensor:
    """log P(x) of a Gaussian discretised to ``num_levels`` levels in [-1, 1] (bins of
    half-width 1 / (L - 1), the edge bins open), elementwise."""
    half = 1.0 / (num_levels - 1)
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (x - means + half))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (x - means - half))
    log_cdf_plus = torch.log(torch.clamp(cdf_plus, min=1e-12))
    log_one_minus_cdf_min = torch.log(torch.clamp(1.0 - cdf_min, min=1e-12))
    log_delta = torch.log(torch.clamp(cdf_plus - cdf_min, min=1e-12))
    return torch.where(x < -1.0 + half, log_cdf_plus,
                       torch.where(x > 1.0 - half, log_one_minus_cdf_min, log_delta))


@torch.no_grad()
def bits_per_dim_vlb(diffusion, model_fn: Callable, x, *, num_levels: int,
                     generator: Optional[torch.Generator] = None) -> float:
    """Mean over the batch of the variational bound in bits/dim of ``num_levels``-level data
    ``x [B, ...]`` in [-1, 1] (as the JAX twin: ``calc_bpd_loop``'s ``total_bpd`` for 256
    levels, the L_0 decoder term re-discretised otherwise); the noise ``[T, B, ...]`` is
    drawn as ``calc_bpd_loop_random`` draws it, from ``generator``."""
    check_generator("generator", generator)
    check_diffusion(diffusion)
    check_callable("model_fn", model_fn, "model_fn(x_t, t) -> output")
    num_levels = check_int("num_levels", num_levels, minimum=2)
    x = check_array("x", x, min_ndim=1)
    if float(x.min()) < -1.0 or float(x.max()) > 1.0:
        raise ValueError(f"x must lie in [-1, 1] (num_levels-level data, centred), got values in "
                         f"[{float(x.min())}, {float(x.max())}]")
    T = diffusion.num_timesteps
    noise = torch.randn((T,) + tuple(x.shape), generator=generator, dtype=x.dtype, device=x.device)
    out = diffusion.calc_bpd_loop(model_fn, x, noise)
    total = out["total_bpd"]
    if num_levels != 256:
        t0 = torch.zeros((x.shape[0],), dtype=torch.long, device=x.device)
        x_1 = diffusion.q_sample(x, t0, noise[T - 1])
        p = diffusion.p_mean_variance(model_fn, x_1, t0)
        nll = -_discretized_log_likelihood(x, p["mean"], 0.5 * p["log_variance"], num_levels)
        total = total - out["vb"][:, T - 1] + mean_flat(nll) / math.log(2.0)
    return float(total.mean())
