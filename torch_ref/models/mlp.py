"""A small time/noise-conditional MLP score (or eps) network for low-dimensional data.

Twin: ``jax_impl/models/mlp.py``. Config: ``spec.model_configs.MLPConfig``.

For inputs ``x [B, D]`` and labels ``[B]`` (a time ``t``, a DDPM step, or a noise level
sigma; whatever the score adapter feeds)::

    e      = emb(label)                          # [B, E]: sinusoidal (positional), or
                                                 # Gaussian Fourier features of log(label)
    temb   = temb_1(act(temb_0(e)))              # [B, 4E]
    temb   = temb + label_emb[y]   if num_classes = K > 0   # label_emb [K, 4E], y int [B]
    h_0    = x
    h_l    = act(layers_l(h_{l-1}) + temb_proj_l(act(temb)))   l = 1..L
    out    = out(h_L)                            # [B, D], or [B, 2D] = (eps, v) with learn_sigma
    out    = out / label   if scale_by_sigma

Without ``conditional`` the label is ignored (no embedding, no ``temb_*`` layers).
Dense layers use the DDPM initialiser (fan-avg uniform, zero bias). No dropout.

Class-conditional (``config.num_classes = K > 0``, improved-diffusion's ``label_emb``):
``forward(x, labels, y=y)`` with the class labels ``y`` (int ``[B]`` in ``[0, K)``;
required, and refused by an unconditional MLP); ``label_emb`` is an ``nn.Embedding(K, 4E)``
(N(0, 1) init; its ``weight`` is the twin's ``label_emb/embedding``).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from spec.model_configs import MLPConfig
from torch_ref.models.layers import ddpm_linear, get_act, get_timestep_embedding
from torch_ref.models.layerspp import GaussianFourierProjection

__all__ = [
    "MLP",
    "MLPConfig",
]


def _check_y(cfg: MLPConfig, y, batch: int, device):
    """The class labels ``y`` as int64 ``[B]``: required iff ``cfg.num_classes > 0``."""
    if not cfg.num_classes:
        if y is not None:
            raise ValueError("y: this MLP is unconditional (MLPConfig.num_classes=0); call it without y")
        return None
    if y is None:
        raise ValueError(f"y: this MLP is class-conditional (num_classes={cfg.num_classes}); call it "
                         "with the class labels, model(x, t, y=y)")
    y = torch.as_tensor(y, device=device)
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise TypeError(f"y must hold integer class labels, got dtype {y.dtype}")
    if tuple(y.shape) != (batch,):
        raise ValueError(f"y must have shape [B] = [{batch}], got shape {tuple(y.shape)}")
    if y.numel():
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= cfg.num_classes:
            raise ValueError(f"y must lie in [0, {cfg.num_classes}), got values in [{lo}, {hi}]")
    return y.long()


class MLP(nn.Module):
    """Time/noise-conditional MLP, ``forward(x [B, D], labels [B]) -> [B, D]``
    (``[B, 2D]``: eps then v, with ``config.learn_sigma``); with ``config.image_size``
    images ``[B, C, H, W] -> [B, C, H, W]`` (``2C`` channels with learn_sigma), flattened
    in NHWC order inside (as the twin, so the weights are the same). Class-conditional
    configs take ``y=`` (int ``[B]``)."""

    def __init__(self, config: MLPConfig):
        super().__init__()
        if not isinstance(config, MLPConfig):
            raise TypeError(f"config must be an MLPConfig, got {type(config).__name__}")
        self.config = cfg = config
        if cfg.conditional:
            if cfg.embedding_type == "fourier":
                self.embed = GaussianFourierProjection(cfg.embedding_dim // 2, cfg.fourier_scale)
            self.temb_0 = ddpm_linear(cfg.embedding_dim, cfg.temb_dim)
            self.temb_1 = ddpm_linear(cfg.temb_dim, cfg.temb_dim)
            self.temb_proj = nn.ModuleList([ddpm_linear(cfg.temb_dim, w) for w in cfg.hidden_dims])
        if cfg.num_classes:
            self.label_emb = nn.Embedding(cfg.num_classes, cfg.temb_dim)
        widths = (cfg.data_dim,) + cfg.hidden_dims
        self.layers = nn.ModuleList([ddpm_linear(widths[i], widths[i + 1]) for i in range(cfg.num_layers)])
        self.out = ddpm_linear(cfg.hidden_dims[-1], cfg.out_channels)
        self.act = get_act(cfg.nonlinearity)

    def forward(self, x: torch.Tensor, labels: torch.Tensor, *, y: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.config
        labels = torch.as_tensor(labels, device=x.device)
        image = None
        if cfg.image_size is not None:
            image = (cfg.num_channels, cfg.image_size, cfg.image_size)
            if x.ndim != 4 or tuple(x.shape[1:]) != image:
                raise ValueError(f"x must have shape [B, {', '.join(map(str, image))}] (NCHW), got shape "
                                 f"{tuple(x.shape)}")
            x = x.permute(0, 2, 3, 1).reshape(x.shape[0], cfg.data_dim)  # NHWC order, as the twin
        elif x.ndim != 2 or x.shape[1] != cfg.data_dim:
            raise ValueError(f"x must have shape [B, {cfg.data_dim}], got shape {tuple(x.shape)}")
        if not x.dtype.is_floating_point:
            raise TypeError(f"x must have a floating dtype, got {x.dtype}")
        if labels.ndim != 1 or labels.shape[0] != x.shape[0]:
            raise ValueError(f"labels must have shape [B] = [{x.shape[0]}], got shape {tuple(labels.shape)}")
        y = _check_y(cfg, y, x.shape[0], x.device)
        temb = None
        if cfg.conditional:
            if cfg.embedding_type == "fourier":
                emb = self.embed(torch.log(labels.to(torch.float32)))
            else:
                emb = get_timestep_embedding(labels, cfg.embedding_dim)
            emb = emb.to(self.temb_0.weight.dtype)
            temb = self.temb_1(self.act(self.temb_0(emb)))
            if y is not None:
                temb = temb + self.label_emb(y).to(temb.dtype)
        h = x
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if temb is not None:
                h = h + self.temb_proj[i](self.act(temb))
            h = self.act(h)
        out = self.out(h)
        if cfg.scale_by_sigma:
            out = out / labels.to(out.dtype)[:, None]
        if image is not None:  # back to NCHW images; with learn_sigma eps's channels, then v's
            C, H, W = image
            parts = torch.split(out, cfg.data_dim, dim=1)
            out = torch.cat([p.reshape(p.shape[0], H, W, C).permute(0, 3, 1, 2) for p in parts], dim=1)
        return out
