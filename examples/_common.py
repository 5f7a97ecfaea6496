"""Plumbing shared by the worked examples (not a tutorial itself): the command line, a small
training driver on top of ``jax_impl.train``, quality numbers, and the matplotlib figures.

Every example is ``python examples/<name>.py [--out DIR] [--tiny]``; its ``main(argv)``
returns a dict of what it measured, so ``parity_tests/test_examples.py`` can call it in
process. The method itself (config, loss, sampler) lives in each example, not here.
``--tiny`` is the tests' size: a handful of steps, tiny batches and, for the 2-D sets,
smaller splits (``toy_data``: 2000 training, 500 test points instead of 10000 / 5000, so
that the quality numbers and the data scale are measured in a fraction of a second);
without it every example runs at its documented full size.

Training (``fit``) is ``jax_impl.train.create_train_state`` + ``make_train_step`` over a
``jax_impl.data.BatchIterator``: the library's jitted step (optimiser, gradient clipping,
warm-up, EMA), without the run directory of ``jax_impl.loop.train`` (which would add
checkpoints and a snapshot sampler to every run; use it for real training, see README
"Training").
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from jax_impl import data as jdata  # noqa: E402
from jax_impl.models.mlp import MLP  # noqa: E402
from jax_impl.train import create_train_state, make_train_step  # noqa: E402
from spec import datasets as spec_datasets  # noqa: E402
from spec.datasets import load_dataset  # noqa: E402
from spec.model_configs import MLPConfig  # noqa: E402

__all__ = ["FlatMLP", "parse_args", "fit", "max_pairwise_distance", "toy_data", "quality", "describe", "scatter",
           "image_grid", "loss_curve", "save", "done"]

DEFAULT_OUT = "outputs/examples"


# ------------------------------------------------------------------ command line

def parse_args(argv, description: str) -> argparse.Namespace:
    """``--out DIR`` (default outputs/examples) and ``--tiny`` (a few seconds, for the tests)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", default=DEFAULT_OUT, help=f"where the figure goes (default {DEFAULT_OUT})")
    p.add_argument("--tiny", action="store_true",
                   help="a handful of steps, a tiny batch and (2-D sets) smaller splits: checks "
                        "that the script runs (seconds)")
    args = p.parse_args(argv)
    args.out = Path(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    return args


# ------------------------------------------------------------------ a flattening network

class FlatMLP(nn.Module):
    """The library's ``MLP`` on flattened images: ``x [B, H, W, C] -> [B, H*W*C] -> MLP ->
    [B, H, W, C]`` (``2C`` channels, eps then v, with ``config.learn_sigma``).

    Why: on this 2-core CPU the convolutional networks of the library (NCSN's RefineNet,
    the DDPM U-Net) take about 1-2 s per training step even at 8x8 (XLA:CPU runs a
    convolution on one core), so a few minutes of training would be a few hundred steps.
    An MLP over the 64 pixels of a digit trains thousands of steps in that time.

    The data pipeline, losses and samplers all see ordinary NHWC images. Also accepts the
    ``[B, D]`` dummy input ``create_train_state`` initialises with.
    """

    config: MLPConfig

    @nn.compact
    def __call__(self, x, labels, train: bool = False):
        out = MLP(self.config, name="mlp")(x.reshape(x.shape[0], -1), labels, train)
        if not self.config.learn_sigma:
            return out.reshape(x.shape)
        d = self.config.data_dim                             # [eps (D), v (D)] -> channels
        return jnp.concatenate([out[:, :d].reshape(x.shape), out[:, d:].reshape(x.shape)], axis=-1)


# ------------------------------------------------------------------ training

def fit(run_config, steps: int, *, model=None, seed: int = 0, desc: str = "train"):
    """Train ``run_config`` for ``steps`` updates with the library's jitted step.

    Returns ``(state, losses [steps] numpy, seconds)``; ``seconds`` includes compilation.
    ``model`` is a custom flax module (``FlatMLP``), None for the config's own network.
    """
    train_data, _ = jdata.load_dataset(run_config.data)
    batch_size = run_config.train.training.batch_size
    it = jdata.BatchIterator.from_config(run_config.data, train_data, batch_size)
    t0 = time.perf_counter()
    state = create_train_state(jax.random.key(seed), run_config, model=model)
    step = make_train_step(run_config)
    losses = []
    report = max(1, steps // 5)
    for i in range(steps):
        state, metrics = step(state, it.next())
        losses.append(metrics["loss"])
        if (i + 1) % report == 0 or i + 1 == steps:
            recent = float(np.mean(jax.device_get(losses[-report:])))
            print(f"  {desc}: step {i + 1}/{steps}, mean loss {recent:.4g}, "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
    losses = np.asarray(jax.device_get(losses), np.float64)
    return state, losses, time.perf_counter() - t0


def max_pairwise_distance(x, chunk: int = 512) -> float:
    """max_{i,j} ||x_i - x_j|| (Technique 1 of Song & Ermon 2020: sigma_1 is this distance),
    computed exactly in chunks; ``x`` is ``[N, ...]``."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    sq = (x ** 2).sum(1)
    best = 0.0
    for i in range(0, len(x), chunk):
        d2 = sq[i:i + chunk, None] + sq[None] - 2 * x[i:i + chunk] @ x.T
        best = max(best, float(d2.max()))
    return math.sqrt(max(best, 0.0))


#: ``--tiny``: the 2-D sets' (train, test) sizes (the full runs use the defaults, 10000 / 5000)
TINY_TOY_SPLITS = (2000, 500)


def toy_data(dataset: str, tiny: bool):
    """The ``spec.DataConfig`` of a 2-D set: the default splits (10000 training, 5000 test
    points), or ``TINY_TOY_SPLITS`` for ``--tiny`` (the exact-sample floor of ``quality``
    and a max pairwise distance over 10000 points take seconds, the rest of a tiny run less)."""
    if not tiny:
        return spec_datasets.DataConfig(dataset=dataset)
    n_train, n_test = TINY_TOY_SPLITS
    return spec_datasets.DataConfig(dataset=dataset, num_train=n_train, num_test=n_test)


def flat_images(data_config):
    """(train, test) numpy arrays of a data config (images NHWC, points [N, 2])."""
    return load_dataset(data_config)


# ------------------------------------------------------------------ quality numbers

def _energy_distance(a: np.ndarray, b: np.ndarray, n: int = 1000, seed: int = 0) -> float:
    """Energy distance 2E|X-Y| - E|X-X'| - E|Y-Y'| of two samples (flattened, subsampled)."""
    rng = np.random.default_rng(seed)
    a = a.reshape(len(a), -1)[rng.permutation(len(a))[:n]].astype(np.float64)
    b = b.reshape(len(b), -1)[rng.permutation(len(b))[:n]].astype(np.float64)
    d = lambda u, v: np.sqrt(np.maximum(((u[:, None] - v[None]) ** 2).sum(-1), 0)).mean()  # noqa: E731
    return float(2 * d(a, b) - d(a, a) - d(b, b))


def quality(samples, data_config) -> dict:
    """The library's sample-quality report (``jax_impl.metrics``: ``digits_report`` for
    digits, ``toy_report`` for 2-D sets) with its baselines; where that module is missing,
    an energy distance to the held-out test split beside the same number for real data."""
    samples = np.asarray(samples, np.float32)
    try:
        from jax_impl import metrics
    except ImportError:
        metrics = None
    if metrics is not None:
        if data_config.dataset == "digits":
            r = metrics.digits_report(samples, centered=data_config.centered)
            return {"metric": "fd", "value": float(r["fd"]), "real": float(r["baselines"]["real"]["fd"]),
                    "noise": float(r["baselines"]["noise"]["fd"]), "report": r}
        r = metrics.toy_report(samples.reshape(len(samples), -1), data_config)
        return {"metric": "sliced_wasserstein", "value": float(r["sliced_wasserstein"]),
                "real": float(r["floor"]["sliced_wasserstein"]), "noise": float("nan"), "report": r}
    train, test = load_dataset(data_config)
    n = min(len(samples), len(test))
    return {"metric": "energy_distance (fallback: jax_impl.metrics not found)",
            "value": _energy_distance(samples, test),
            "real": _energy_distance(train[:n], test), "noise": float("nan"), "report": {}}


def describe(q: dict) -> str:
    extra = f", noise {q['noise']:.4g}" if math.isfinite(q["noise"]) else ""
    ref = "an exact sample" if q["metric"] == "sliced_wasserstein" else "held-out real data"
    return f"{q['metric']} {q['value']:.4g} ({ref} {q['real']:.4g}{extra})"


# ------------------------------------------------------------------ figures

def density_image(ax, data_config, lim: float = 3.0, bins: int = 120, log_prob=None):
    """The data density behind a 2-D scatter: the exact one (``log_prob``) or a histogram
    of the training points."""
    if log_prob is not None:
        g = np.linspace(-lim, lim, bins)
        xx, yy = np.meshgrid(g, g)
        dens = np.exp(log_prob(np.stack([xx.ravel(), yy.ravel()], 1))).reshape(xx.shape)
    else:
        train, _ = load_dataset(data_config)
        dens, _, _ = np.histogram2d(train[:, 1], train[:, 0], bins=bins, range=[[-lim, lim]] * 2)
    ax.imshow(dens, origin="lower", extent=(-lim, lim, -lim, lim), cmap="Greys", aspect="equal")


def scatter(ax, x, title: str, data_config, lim: float = 3.0, log_prob=None, n: int = 2000):
    density_image(ax, data_config, lim, log_prob=log_prob)
    x = np.asarray(x)[:n]
    ax.scatter(x[:, 0], x[:, 1], s=2, c="tab:orange", alpha=0.6, linewidths=0)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def image_grid(ax, images, title: str, centered: bool = True, cols: int = 8):
    """NHWC images (C = 1) tiled into one grey picture."""
    x = np.asarray(images, np.float64)
    x = (x + 1) / 2 if centered else x
    x = np.clip(np.nan_to_num(x), 0, 1)[..., 0]
    n, h, w = x.shape
    rows = int(math.ceil(n / cols))
    grid = np.ones((rows * (h + 1) + 1, cols * (w + 1) + 1))
    for i in range(n):
        r, c = divmod(i, cols)
        grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + c * (w + 1):1 + c * (w + 1) + w] = x[i]
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def loss_curve(ax, losses, title: str = "training loss"):
    losses = np.asarray(losses)
    ax.plot(np.arange(1, len(losses) + 1), losses, lw=0.5, alpha=0.35, color="tab:blue")
    k = max(1, len(losses) // 50)
    if len(losses) >= 2 * k:
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(np.arange(k, len(losses) + 1), smooth, lw=1.5, color="tab:blue")
    ax.set_xlabel("step", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    lo, hi = np.percentile(losses, [1, 99]) if len(losses) > 10 else (losses.min(), losses.max())
    if hi > lo:
        ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))


def save(fig, out: Path, name: str) -> Path:
    path = Path(out) / f"{name}.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def done(name: str, path: Path, t_start: float, result: dict) -> dict:
    result = dict(result, figure=str(path), seconds=time.perf_counter() - t_start)
    print(f"{name}: wrote {path} in {result['seconds']:.0f} s", flush=True)
    return result


def main_guard(main):
    """``if __name__ == "__main__"`` body: run and exit 0."""
    main(sys.argv[1:])
