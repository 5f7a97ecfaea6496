"""A small time/noise-conditional MLP score (or eps) network for low-dimensional data.

Twin: ``jax_impl/models/mlp.py``. Config: ``spec.model_configs.MLPConfig``.

For inputs ``x [B, D]`` and labels ``[B]`` (a time ``t``, a DDPM step, or a noise level
sigma; whatever the score adapter feeds)::

    e      = emb(label)                          # [B, E]: sinusoidal (positional), or
                                                 # Gaussian Fourier features of log(label)
    temb   = temb_1(act(temb_0(e)))              # [B, 4E]
    h_0    = x
    h_l    = act(layers_l(h_{l-1}) + temb_proj_l(act(temb)))   l = 1..L
    out    = out(h_L)                            # [B, D], or [B, 2D] = (eps, v) with learn_sigma
    out    = out / label   if scale_by_sigma

Without ``conditional`` the label is ignored (no embedding, no ``temb_*`` layers).
Dense layers use the DDPM initialiser (fan-avg uniform, zero bias). No dropout.
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


class MLP(nn.Module):
    """Time/noise-conditional MLP, ``forward(x [B, D], labels [B]) -> [B, D]``
    (``[B, 2D]``: eps then v, with ``config.learn_sigma``); with ``config.image_size``
    images ``[B, C, H, W] -> [B, C, H, W]`` (``2C`` channels with learn_sigma), flattened
    in NHWC order inside (as the twin, so the weights are the same)."""

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
        widths = (cfg.data_dim,) + cfg.hidden_dims
        self.layers = nn.ModuleList([ddpm_linear(widths[i], widths[i + 1]) for i in range(cfg.num_layers)])
        self.out = ddpm_linear(cfg.hidden_dims[-1], cfg.out_channels)
        self.act = get_act(cfg.nonlinearity)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
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
        temb = None
        if cfg.conditional:
            if cfg.embedding_type == "fourier":
                emb = self.embed(torch.log(labels.to(torch.float32)))
            else:
                emb = get_timestep_embedding(labels, cfg.embedding_dim)
            emb = emb.to(self.temb_0.weight.dtype)
            temb = self.temb_1(self.act(self.temb_0(emb)))
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
