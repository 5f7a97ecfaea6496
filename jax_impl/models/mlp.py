"""A small time/noise-conditional MLP score (or eps) network for low-dimensional data.

Twin: ``torch_ref/models/mlp.py``. Config: ``spec.model_configs.MLPConfig``.

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
Dense layers use the DDPM initialiser (fan-avg uniform, zero bias). There is no dropout;
``train`` is accepted for a uniform model interface.

Class-conditional (``config.num_classes = K > 0``, improved-diffusion's ``label_emb``): the
call takes the class labels as the keyword ``y`` (int ``[B]`` in ``[0, K)``; required, and
refused by an unconditional MLP; only ``init`` may omit it, so that
``model.init(key, x, t)`` and the registry's init build the table too); the embedding table ``label_emb/embedding [K, 4E]`` is
initialised N(0, 1) like ``nn.Embedding``'s (torch ``label_emb.weight``, the same layout).
Which label is the classifier-free guidance null class is the trainer's choice
(``spec.train_config.TrainingConfig.label_dropout``: the last one, K - 1).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jax_impl.models.layers import default_init, get_act, get_timestep_embedding
from jax_impl.models.layerspp import GaussianFourierProjection
from jax_impl.models.xla_cpu_layers import Dense
from jax_impl.validate import is_concrete
from spec.model_configs import MLPConfig

__all__ = [
    "MLP",
    "MLPConfig",
]


def _dense(features: int, name: str | None = None) -> Dense:
    # flax.linen.Dense's parameters; oneDNN's products for large float32 batches on the CPU
    return Dense(features, kernel_init=default_init(), bias_init=nn.initializers.zeros, name=name)


def _check_y(cfg: MLPConfig, y, batch: int):
    """The class labels ``y`` as int32 ``[B]``: required iff ``cfg.num_classes > 0``."""
    if not cfg.num_classes:
        if y is not None:
            raise ValueError("y: this MLP is unconditional (MLPConfig.num_classes=0); call it without y")
        return None
    if y is None:
        raise ValueError(f"y: this MLP is class-conditional (num_classes={cfg.num_classes}); call it "
                         "with the class labels, model.apply(variables, x, t, y=y)")
    y = jnp.asarray(y)
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise TypeError(f"y must hold integer class labels, got dtype {y.dtype}")
    if y.shape != (batch,):
        raise ValueError(f"y must have shape [B] = [{batch}], got shape {y.shape}")
    if is_concrete(y) and y.size:  # traced labels cannot be range-checked here
        lo, hi = int(np.min(np.asarray(y))), int(np.max(np.asarray(y)))
        if lo < 0 or hi >= cfg.num_classes:
            raise ValueError(f"y must lie in [0, {cfg.num_classes}), got values in [{lo}, {hi}]")
    return y.astype(jnp.int32)


class MLP(nn.Module):
    """Time/noise-conditional MLP, ``apply(variables, x [B, D], labels [B]) -> [B, D]``
    (``[B, 2D]``: eps then v, with ``config.learn_sigma``); with ``config.image_size``
    images ``[B, H, W, C] -> [B, H, W, C]`` (``2C`` channels with learn_sigma), flattened
    in NHWC order inside. Class-conditional configs take ``y=`` (int ``[B]``)."""

    config: MLPConfig

    def setup(self):
        cfg = self.config
        if not isinstance(cfg, MLPConfig):
            raise TypeError(f"config must be an MLPConfig, got {type(cfg).__name__}")
        if cfg.conditional:
            if cfg.embedding_type == "fourier":
                self.embed = GaussianFourierProjection(cfg.embedding_dim // 2, cfg.fourier_scale)
            self.temb_0 = _dense(cfg.temb_dim)
            self.temb_1 = _dense(cfg.temb_dim)
            self.temb_proj = [_dense(w) for w in cfg.hidden_dims]
        if cfg.num_classes:
            self.label_emb = nn.Embed(cfg.num_classes, cfg.temb_dim,
                                      embedding_init=nn.initializers.normal(1.0))
        self.layers = [_dense(w) for w in cfg.hidden_dims]
        self.out = _dense(cfg.out_channels)

    def __call__(self, x: jax.Array, labels: jax.Array, train: bool = False, *,
                 y: jax.Array | None = None) -> jax.Array:
        cfg = self.config
        x = jnp.asarray(x)
        labels = jnp.asarray(labels)
        image = None
        if cfg.image_size is not None:
            image = (cfg.image_size, cfg.image_size, cfg.num_channels)
            if x.ndim != 4 or x.shape[1:] != image:
                raise ValueError(f"x must have shape [B, {', '.join(map(str, image))}] (NHWC), got shape {x.shape}")
            x = x.reshape(x.shape[0], cfg.data_dim)  # NHWC order
        elif x.ndim != 2 or x.shape[1] != cfg.data_dim:
            raise ValueError(f"x must have shape [B, {cfg.data_dim}], got shape {x.shape}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"x must have a floating dtype, got {x.dtype}")
        if labels.ndim != 1 or labels.shape[0] != x.shape[0]:
            raise ValueError(f"labels must have shape [B] = [{x.shape[0]}], got shape {labels.shape}")
        if y is None and cfg.num_classes and self.is_initializing():
            y = jnp.zeros((x.shape[0],), jnp.int32)  # init(key, x, t) builds label_emb too
        y = _check_y(cfg, y, x.shape[0])
        act = get_act(cfg.nonlinearity)
        temb = None
        if cfg.conditional:
            if cfg.embedding_type == "fourier":
                emb = self.embed(jnp.log(labels.astype(jnp.float32)))
            else:
                emb = get_timestep_embedding(labels, cfg.embedding_dim)
            temb = self.temb_1(act(self.temb_0(emb)))
            if y is not None:
                temb = temb + self.label_emb(y).astype(temb.dtype)
        h = x
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if temb is not None:
                h = h + self.temb_proj[i](act(temb))
            h = act(h)
        out = self.out(h)
        if cfg.scale_by_sigma:
            out = out / labels.astype(out.dtype)[:, None]
        if image is not None:  # back to images; with learn_sigma eps's channels, then v's
            parts = jnp.split(out, out.shape[1] // cfg.data_dim, axis=1)
            out = jnp.concatenate([p.reshape(p.shape[0], *image) for p in parts], axis=-1)
        return out
