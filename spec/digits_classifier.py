"""The project's digits classifier: the feature space of the digits Frechet distance (numpy,
float64).

A small multilayer perceptron on the built-in 8x8 digits (``spec.datasets``, ``dataset=
"digits"``), trained deterministically here in numpy and shipped as a float32 weights file
``spec/data/digits_classifier.npz`` (regenerate it with ``python -m spec.digits_classifier``).
The metrics of ``jax_impl/metrics.py`` and ``torch_ref/metrics.py`` run the same network in
their framework; the float64 functions here are their oracle.

Network (``x`` the 64 pixels of an image in [-1, 1], row-major; weights ``(in, out)``)::

    h1 = relu(x W1 + b1)              [N, 128]
    f  = relu(h1 W2 + b2)             [N, 64]   the FEATURES (the Frechet-distance space)
    p  = softmax(f W3 + b3)           [N, 10]   p(y | x)

Training (``train_digits_classifier``, the default ``seed=0`` is the shipped file): the 1438
training digits of the fixed split (``spec.datasets.split_indices``), each also shifted by
one pixel up, down, left and right (padding with the background value -1), so 5 x 1438
examples; He-normal initialisation; ``NUM_EPOCHS`` epochs of Adam (lr ``LEARNING_RATE``,
betas (0.9, 0.999), eps 1e-8) on minibatches of ``BATCH_SIZE`` with a fixed per-epoch
permutation, Gaussian pixel noise of std ``PIXEL_NOISE`` added to every batch (fresh each
step) and L2 weight decay ``WEIGHT_DECAY`` on the kernels. Every random number comes from
``numpy.random.default_rng(seed)`` in a fixed order, so the run is a pure function of
``seed`` (bit-identical on one machine; see ``parity_tests/test_metrics.py`` for the
tolerance across BLAS builds). It takes about 6 s of one core (BLAS limited to one thread).

Metrics oracles (float64): ``frechet_distance_numpy`` (the Frechet distance of the Gaussian
fits, Heusel et al. 2017, with the matrix square root by symmetric eigendecomposition) and
``classifier_score_numpy`` (the Inception score of Salimans et al. 2016 for this classifier).

Only numpy and the standard library are imported at module import; scikit-learn (the digit
labels) is imported inside the training function, as ``spec.datasets`` does.
"""

from __future__ import annotations

import functools
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

__all__ = [
    "BATCH_SIZE",
    "FEATURE_DIM",
    "LAYER_SIZES",
    "LEARNING_RATE",
    "NUM_CLASSES",
    "NUM_EPOCHS",
    "PARAM_NAMES",
    "PARAM_SHAPES",
    "PIXEL_NOISE",
    "WEIGHTS_FILE",
    "WEIGHT_DECAY",
    "classifier_accuracy",
    "classifier_outputs_numpy",
    "classifier_score_numpy",
    "digits_labels",
    "flatten_images",
    "frechet_distance_numpy",
    "gaussian_moments",
    "load_digits_classifier",
    "load_digits_classifier_info",
    "test_accuracy",
    "train_digits_classifier",
]

LAYER_SIZES = (64, 128, 64, 10)
FEATURE_DIM = LAYER_SIZES[2]
NUM_CLASSES = LAYER_SIZES[3]
PARAM_NAMES = ("W1", "b1", "W2", "b2", "W3", "b3")
PARAM_SHAPES = {
    "W1": (64, 128), "b1": (128,),
    "W2": (128, 64), "b2": (64,),
    "W3": (64, 10), "b3": (10,),
}
NUM_EPOCHS = 40
BATCH_SIZE = 128
LEARNING_RATE = 2e-3
WEIGHT_DECAY = 1e-4
PIXEL_NOISE = 0.1
WEIGHTS_FILE = Path(__file__).resolve().parent / "data" / "digits_classifier.npz"
_INFO_KEYS = ("train_accuracy", "test_accuracy", "seed")


# --- the network -------------------------------------------------------------------------------


def flatten_images(x_nhwc, *, centered: bool = True, name: str = "x") -> np.ndarray:
    """Images ``[N, 8, 8, C]`` (C = 1, or 3: channels averaged) in [-1, 1] (``centered``) or
    [0, 1] -> the classifier's input ``[N, 64]`` float64 in [-1, 1] (row-major pixels)."""
    x = np.asarray(x_nhwc)
    if x.dtype.kind not in "uif":
        raise TypeError(f"{name} must be a numeric array, got dtype {x.dtype}")
    if x.ndim != 4 or x.shape[1:3] != (8, 8) or x.shape[3] not in (1, 3):
        raise ValueError(f"{name} must be 8x8 digit images [N, 8, 8, C] with C = 1 or 3, "
                         f"got shape {x.shape}")
    x = x.astype(np.float64).mean(axis=-1)
    if not centered:
        x = 2.0 * x - 1.0
    return x.reshape(len(x), 64)


def _forward(params: dict, x_flat: np.ndarray):
    """(h1, features, logits) of the network for inputs ``[N, 64]`` (float64)."""
    p = {k: np.asarray(params[k], np.float64) for k in PARAM_NAMES}
    h1 = np.maximum(x_flat @ p["W1"] + p["b1"], 0.0)
    f = np.maximum(h1 @ p["W2"] + p["b2"], 0.0)
    return h1, f, f @ p["W3"] + p["b3"]


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def classifier_outputs_numpy(params: dict, x_nhwc, centered: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The float64 oracle: ``(features [N, 64], probs [N, 10])`` of images ``[N, 8, 8, C]``
    under ``params`` (a dict with ``PARAM_NAMES``)."""
    _, f, logits = _forward(params, flatten_images(x_nhwc, centered=centered))
    return f, _softmax(logits)


def classifier_accuracy(params: dict, x_nhwc, labels, centered: bool = True) -> float:
    """Fraction of images whose most probable class equals ``labels`` ``[N]``."""
    _, probs = classifier_outputs_numpy(params, x_nhwc, centered)
    return float(np.mean(np.argmax(probs, axis=1) == np.asarray(labels)))


# --- data and training -------------------------------------------------------------------------


def digits_labels() -> tuple[np.ndarray, np.ndarray]:
    """``(train_labels [1438], test_labels [359])`` int64, aligned with the images of
    ``spec.datasets.load_dataset(DataConfig(dataset="digits"))`` (the same fixed split)."""
    from sklearn.datasets import load_digits

    from spec.datasets import split_indices

    target = np.asarray(load_digits().target, np.int64)
    train_idx, test_idx = split_indices(len(target), 0.2)
    return target[train_idx], target[test_idx]


def _digits_data():
    from spec.datasets import DataConfig, load_dataset

    train, test = load_dataset(DataConfig(dataset="digits"))
    y_train, y_test = digits_labels()
    return train, y_train, test, y_test


def _shifted(images: np.ndarray) -> np.ndarray:
    """``[5 N, 8, 8]``: the images, then shifted one pixel down, up, right, left (pad -1)."""
    out = [images]
    for axis, step in ((1, 1), (1, -1), (2, 1), (2, -1)):
        s = np.roll(images, step, axis=axis)
        edge = 0 if step == 1 else -1
        if axis == 1:
            s[:, edge, :] = -1.0
        else:
            s[:, :, edge] = -1.0
        out.append(s)
    return np.concatenate(out)


def train_digits_classifier(seed: int = 0) -> dict[str, np.ndarray]:
    """Train the classifier (the recipe in the module docstring); returns the float64
    parameters ``{W1, b1, W2, b2, W3, b3}``. ``seed=0`` reproduces the shipped weights.

    BLAS runs on one thread meanwhile (``threadpoolctl``, a scikit-learn dependency): the
    products are tiny, so threads only cost time (on a loaded 2-core machine a 128x64x128
    product took 200x longer multi-threaded), and one thread fixes the summation order."""
    from spec.validate import check_int

    seed = check_int("seed", seed, minimum=0)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn installs it
        return _train(seed)
    with threadpool_limits(limits=1, user_api="blas"):
        return _train(seed)


def _train(seed: int) -> dict[str, np.ndarray]:
    train, y_train, _, _ = _digits_data()
    images = _shifted(train[..., 0].astype(np.float64))
    x_all = images.reshape(len(images), 64)
    y_all = np.tile(y_train, 5)
    onehot = np.eye(NUM_CLASSES)[y_all]
    n = len(x_all)

    rng = np.random.default_rng(seed)
    params = {}
    for i, (fan_in, fan_out) in enumerate(zip(LAYER_SIZES[:-1], LAYER_SIZES[1:]), start=1):
        params[f"W{i}"] = rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)
        params[f"b{i}"] = np.zeros(fan_out)
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    step = 0
    for _ in range(NUM_EPOCHS):
        perm = rng.permutation(n)
        for start in range(0, n, BATCH_SIZE):
            idx = perm[start:start + BATCH_SIZE]
            xb = x_all[idx] + PIXEL_NOISE * rng.standard_normal((len(idx), 64))
            yb = onehot[idx]
            h1, f, logits = _forward(params, xb)
            # softmax cross-entropy, mean over the batch: d/dlogits = (p - y) / B
            g_logits = (_softmax(logits) - yb) / len(idx)
            grads = {"W3": f.T @ g_logits, "b3": g_logits.sum(0)}
            g_f = (g_logits @ params["W3"].T) * (f > 0)
            grads["W2"], grads["b2"] = h1.T @ g_f, g_f.sum(0)
            g_h1 = (g_f @ params["W2"].T) * (h1 > 0)
            grads["W1"], grads["b1"] = xb.T @ g_h1, g_h1.sum(0)
            step += 1
            for k in PARAM_NAMES:
                g = grads[k] + (WEIGHT_DECAY * params[k] if k.startswith("W") else 0.0)
                m[k] = beta1 * m[k] + (1.0 - beta1) * g
                v[k] = beta2 * v[k] + (1.0 - beta2) * g * g
                m_hat = m[k] / (1.0 - beta1**step)
                v_hat = v[k] / (1.0 - beta2**step)
                params[k] = params[k] - LEARNING_RATE * m_hat / (np.sqrt(v_hat) + eps)
    return params


# --- the shipped file --------------------------------------------------------------------------


def _bad_file(what: str):
    raise ValueError(f"digits classifier weights file {str(WEIGHTS_FILE)!r} {what}; regenerate "
                     f"it with `python -m spec.digits_classifier`") from None


@functools.lru_cache(maxsize=1)
def _read_weights_file() -> tuple[dict, dict]:
    if not WEIGHTS_FILE.is_file():
        raise FileNotFoundError(f"digits classifier weights file {str(WEIGHTS_FILE)!r} is missing; "
                                f"regenerate it with `python -m spec.digits_classifier`")
    try:
        with np.load(WEIGHTS_FILE, allow_pickle=False) as archive:
            stored = {k: archive[k] for k in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        _bad_file(f"cannot be read ({type(e).__name__}: {e})")
    missing = [k for k in PARAM_NAMES + _INFO_KEYS if k not in stored]
    if missing:
        _bad_file(f"lacks the arrays {missing}")
    params = {}
    for k in PARAM_NAMES:
        a = stored[k]
        if a.shape != PARAM_SHAPES[k] or a.dtype != np.float32:
            _bad_file(f"holds {k} with shape {a.shape} dtype {a.dtype}; expected "
                      f"{PARAM_SHAPES[k]} float32")
        if not np.isfinite(a).all():
            _bad_file(f"holds non-finite values in {k}")
        a.setflags(write=False)
        params[k] = a
    info = {"train_accuracy": float(stored["train_accuracy"]),
            "test_accuracy": float(stored["test_accuracy"]), "seed": int(stored["seed"])}
    return params, info


def load_digits_classifier() -> dict[str, np.ndarray]:
    """The shipped float32 weights ``{W1 [64, 128], b1 [128], W2 [128, 64], b2 [64],
    W3 [64, 10], b3 [10]}`` (read-only arrays, read once per process). A missing or
    damaged file raises naming it."""
    return dict(_read_weights_file()[0])


def load_digits_classifier_info() -> dict:
    """``{"train_accuracy", "test_accuracy", "seed"}`` recorded in the shipped file."""
    return dict(_read_weights_file()[1])


def test_accuracy() -> float:
    """The shipped classifier's accuracy on the 359 held-out test digits."""
    return _read_weights_file()[1]["test_accuracy"]


test_accuracy.__test__ = False  # not a pytest test, though its name starts with "test"


# --- metrics oracles ---------------------------------------------------------------------------


def gaussian_moments(features) -> tuple[np.ndarray, np.ndarray]:
    """``(mean [F], covariance [F, F])`` of ``features`` ``[N, F]`` (float64; the unbiased
    covariance, ``N - 1`` in the denominator, as the FID reference)."""
    f = np.asarray(features, np.float64)
    mu = f.mean(axis=0)
    d = f - mu
    return mu, d.T @ d / (len(f) - 1)


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigenvalues
    below 0, from rounding, are taken as 0)."""
    w, q = np.linalg.eigh(0.5 * (a + a.T))
    return (q * np.sqrt(np.clip(w, 0.0, None))) @ q.T


def frechet_distance_numpy(feat_a, feat_b) -> float:
    """The Frechet distance of the Gaussian fits of ``feat_a [N, F]`` and ``feat_b [M, F]``
    (float64)::

        ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)

    (``(S_a^1/2 S_b S_a^1/2)^1/2`` has the trace of ``(S_a S_b)^1/2`` and is symmetric, so
    both roots come from ``eigh``; eigenvalues below 0 from rounding count as 0). Rounding
    can leave a result of about -1e-12 for identical sets: it is clipped to 0."""
    mu_a, s_a = gaussian_moments(feat_a)
    mu_b, s_b = gaussian_moments(feat_b)
    root_a = _sqrtm_psd(s_a)
    w = np.linalg.eigvalsh(root_a @ s_b @ root_a)
    tr_cross = np.sqrt(np.clip(w, 0.0, None)).sum()
    diff = mu_a - mu_b
    return max(float(diff @ diff + np.trace(s_a) + np.trace(s_b) - 2.0 * tr_cross), 0.0)


def classifier_score_numpy(probs) -> float:
    """``exp(E_x KL(p(y|x) || p(y)))`` with ``p(y)`` the mean of ``probs [N, 10]`` over the
    samples (1 when every sample gets the same distribution, 10 at most)."""
    p = np.asarray(probs, np.float64)
    p_y = p.mean(axis=0, keepdims=True)
    safe = np.where(p > 0, p, 1.0)
    kl = np.where(p > 0, p * (np.log(safe) - np.log(np.where(p > 0, p_y, 1.0))), 0.0).sum(axis=1)
    return float(np.exp(kl.mean()))


# --- entry point -------------------------------------------------------------------------------


def _main() -> int:
    start = time.perf_counter()
    params = train_digits_classifier(seed=0)
    elapsed = time.perf_counter() - start
    train, y_train, test, y_test = _digits_data()
    stored = {k: params[k].astype(np.float32) for k in PARAM_NAMES}
    train_acc = classifier_accuracy(stored, train, y_train)
    test_acc = classifier_accuracy(stored, test, y_test)
    WEIGHTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(WEIGHTS_FILE, **stored, train_accuracy=np.float64(train_acc),
                        test_accuracy=np.float64(test_acc), seed=np.int64(0))
    _read_weights_file.cache_clear()
    size = WEIGHTS_FILE.stat().st_size
    print(f"trained in {elapsed:.1f} s; train accuracy {train_acc:.4f}, test accuracy "
          f"{test_acc:.4f}; wrote {WEIGHTS_FILE} ({size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
