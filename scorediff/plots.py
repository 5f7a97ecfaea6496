"""The pictures of a run (matplotlib, Agg backend; every file written atomically):

* ``image_grid``: a grid of images (NHWC, grey or RGB), optionally next to a grid of real
  ones (``real-vs-generated``);
* ``scatter_over_density``: 2-D samples over the data (a 2-D histogram of held-out points,
  or the exact density of the Gaussian mixture);
* ``loss_curve``: training loss against step from ``log.jsonl`` (raw and smoothed, log y);
* ``trajectory_strip``: one reverse trajectory, x_t from noise to data, left to right.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["image_grid", "scatter_over_density", "loss_curve", "trajectory_strip", "read_log"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    os.replace(tmp, path)
    return path


def _to_unit(images: np.ndarray, centered: bool) -> np.ndarray:
    x = np.asarray(images, np.float64)
    x = (x + 1.0) / 2.0 if centered else x
    return np.clip(np.nan_to_num(x, nan=0.0), 0.0, 1.0)


def _tile(images: np.ndarray, cols: int | None = None) -> np.ndarray:
    """``[N, H, W, C]`` in [0, 1] -> one ``[rows (H+1) + 1, cols (W+1) + 1, C]`` canvas."""
    n, h, w, c = images.shape
    cols = cols or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    canvas = np.ones((rows * (h + 1) + 1, cols * (w + 1) + 1, c))
    for i in range(n):
        r, q = divmod(i, cols)
        canvas[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + q * (w + 1): 1 + q * (w + 1) + w] = images[i]
    return canvas


def _show(ax, canvas: np.ndarray, title: str) -> None:
    ax.imshow(canvas[..., 0] if canvas.shape[-1] == 1 else canvas, cmap="gray", vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def image_grid(path, samples: np.ndarray, *, centered: bool = True, title: str = "samples",
               real: np.ndarray | None = None, real_title: str = "real (held out)\n") -> Path:
    """Write a grid of ``samples`` ``[N, H, W, C]`` (and, with ``real``, a grid of real
    images beside it) to ``path``."""
    plt = _plt()
    panels = [(samples, title)] + ([(real, real_title)] if real is not None else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.4), squeeze=False)
    for ax, (imgs, name) in zip(axes[0], panels):
        _show(ax, _tile(_to_unit(imgs, centered)), name)
    return _save(fig, path)


def scatter_over_density(path, samples: np.ndarray, reference: np.ndarray, *, title: str = "samples",
                         density=None) -> Path:
    """2-D ``samples`` ``[N, 2]`` as dots over the data: ``density(points [M, 2]) -> [M]``
    (the exact log-density) as filled contours when given, else a 2-D histogram of
    ``reference`` (held-out points)."""
    plt = _plt()
    ref = np.asarray(reference, np.float64)
    lo, hi = ref.min(0) - 0.75, ref.max(0) + 0.75
    fig, ax = plt.subplots(figsize=(5, 5))
    if density is not None:
        gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 200), np.linspace(lo[1], hi[1], 200))
        logp = np.asarray(density(np.stack([gx.ravel(), gy.ravel()], 1))).reshape(gx.shape)
        ax.contourf(gx, gy, np.exp(logp), levels=20, cmap="Greys")
    else:
        ax.hist2d(ref[:, 0], ref[:, 1], bins=120, range=[[lo[0], hi[0]], [lo[1], hi[1]]], cmap="Greys")
    s = np.asarray(samples, np.float64)
    inside = np.all(np.isfinite(s), 1)
    ax.scatter(s[inside, 0], s[inside, 1], s=3, c="tab:orange", alpha=0.6, label=f"samples ({inside.sum()})")
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def read_log(workdir) -> list[dict]:
    """The ``{"step", "loss", ...}`` lines of ``workdir/log.jsonl`` (evaluation lines left out)."""
    path = Path(workdir) / "log.jsonl"
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if "loss" in row:
                rows.append(row)
    return rows


def loss_curve(path, rows: Sequence[dict], *, title: str = "training loss") -> Path:
    """Loss against step (log y), raw and an exponential moving average."""
    plt = _plt()
    steps = np.array([r["step"] for r in rows], np.float64)
    loss = np.array([r["loss"] for r in rows], np.float64)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    if len(rows):
        ax.plot(steps, loss, lw=0.8, alpha=0.4, label="loss (every log_freq steps)")
        ema, smooth = loss[0], []
        for v in loss:
            ema = 0.9 * ema + 0.1 * v
            smooth.append(ema)
        ax.plot(steps, smooth, lw=1.6, label="moving average")
        if np.all(loss > 0):
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def trajectory_strip(path, states: np.ndarray, labels: Sequence[str], *, centered: bool = True,
                     title: str = "one reverse trajectory", reference: np.ndarray | None = None) -> Path:
    """``states`` ``[F, H, W, C]`` (images, shown side by side) or ``[F, N, 2]`` (2-D: one
    panel of points per frame, over ``reference``), from the prior (left) to data."""
    plt = _plt()
    states = np.asarray(states)
    F = len(states)
    fig, axes = plt.subplots(1, F, figsize=(1.6 * F, 2.0) if states.ndim == 4 else (2.2 * F, 2.4))
    axes = np.atleast_1d(axes)
    for ax, x, label in zip(axes, states, labels):
        if states.ndim == 4:
            _show(ax, _to_unit(x, centered), label)
        else:
            if reference is not None:
                ax.scatter(reference[:, 0], reference[:, 1], s=1, c="0.85")
            ax.scatter(x[:, 0], x[:, 1], s=2, c="tab:orange")
            lim = 3.5 if reference is None else float(np.abs(reference).max()) + 0.5
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_title(label, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title, fontsize=10, y=1.06)
    return _save(fig, path)
