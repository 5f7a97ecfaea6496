"""float64 numpy oracle of the VE / VP / sub-VP SDE formulas (Song et al. 2021, App. B).

Written independently of ``jax_impl/sde.py`` and ``torch_ref/sde.py`` (which the parity
tests compare against this). Inputs: x ``[B, ...]``, t ``[B]``; config = a spec config.
"""

from __future__ import annotations

import numpy as np

from spec.configs import VESDEConfig, VPSDEConfig, subVPSDEConfig


def _bc(c, x):
    return np.reshape(c, (-1,) + (1,) * (np.ndim(x) - 1))


def sde(cfg, x, t):
    """(drift, diffusion) of the forward SDE."""
    x, t = np.asarray(x, np.float64), np.asarray(t, np.float64)
    if isinstance(cfg, VESDEConfig):
        sigma = cfg.sigma_min * (cfg.sigma_max / cfg.sigma_min) ** t
        return np.zeros_like(x), sigma * np.sqrt(2 * np.log(cfg.sigma_max / cfg.sigma_min))
    beta = cfg.beta_min + t * (cfg.beta_max - cfg.beta_min)
    drift = -0.5 * _bc(beta, x) * x
    if isinstance(cfg, subVPSDEConfig):
        integral = cfg.beta_min * t + 0.5 * (cfg.beta_max - cfg.beta_min) * t**2  # int_0^t beta
        return drift, np.sqrt(beta * (1 - np.exp(-2 * integral)))
    return drift, np.sqrt(beta)


def marginal_prob(cfg, x, t):
    """(mean, std) of p_0t(x_t | x_0 = x)."""
    x, t = np.asarray(x, np.float64), np.asarray(t, np.float64)
    if isinstance(cfg, VESDEConfig):
        return x, cfg.sigma_min * (cfg.sigma_max / cfg.sigma_min) ** t
    integral = cfg.beta_min * t + 0.5 * (cfg.beta_max - cfg.beta_min) * t**2
    m = np.exp(-0.5 * integral)
    var_vp = 1 - m**2
    std = var_vp if isinstance(cfg, subVPSDEConfig) else np.sqrt(var_vp)
    return _bc(m, x) * x, std


def prior_logp(cfg, z):
    z = np.asarray(z, np.float64)
    s2 = cfg.sigma_max**2 if isinstance(cfg, VESDEConfig) else 1.0
    D = np.prod(z.shape[1:])
    return -0.5 * D * np.log(2 * np.pi * s2) - 0.5 * np.sum(z.reshape(len(z), -1) ** 2, axis=1) / s2


def discretize(cfg, x, t):
    """(f, G) of the official discretisation (index int(t (N-1) / T))."""
    x, t = np.asarray(x, np.float64), np.asarray(t, np.float64)
    if isinstance(cfg, subVPSDEConfig):
        drift, diffusion = sde(cfg, x, t)
        return drift / cfg.N, diffusion / np.sqrt(cfg.N)
    i = (t * (cfg.N - 1) / 1.0).astype(np.int64)
    if isinstance(cfg, VESDEConfig):
        sig = cfg.discrete_sigmas
        prev = np.where(i == 0, 0.0, sig[np.maximum(i - 1, 0)])
        return np.zeros_like(x), np.sqrt(sig[i] ** 2 - prev**2)
    assert isinstance(cfg, VPSDEConfig)
    beta = cfg.discrete_betas[i]
    return _bc(np.sqrt(1 - beta), x) * x - x, np.sqrt(beta)
