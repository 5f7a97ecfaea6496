"""Training data, framework-neutral (numpy): the built-in sets, user arrays and image
folders, and a deterministic, resumable batch iterator.

Framework twins (thin wrappers giving ``jax.Array`` NHWC / ``torch.Tensor`` NCHW batches of
the same numbers): ``jax_impl/data.py`` <-> ``torch_ref/data.py``.

Datasets (``DataConfig.dataset``); every array is float32, images NHWC ``[N, H, W, C]``,
2-D sets ``[N, 2]``:

* ``"digits"``: scikit-learn's bundled 8x8 grey digits (1797 images, values 0..16; no
  download). Scaled to [0, 1] by ``v / 16``. The train/test split is FIXED: one permutation
  of the 1797 images drawn from ``SPLIT_SEED`` (independent of ``DataConfig.seed``); the
  first ``round(1797 * test_fraction)`` images of it are the test set. With the default
  ``test_fraction`` (0.2) that is 1438 train / 359 test images ``[N, 8, 8, 1]``.
* 2-D sets, generated with numpy from ``DataConfig.seed``: the training points from the
  stream ``(seed, dataset, "train")``, the held-out test points from ``(seed, dataset,
  "test")`` (independent streams, so the test set never overlaps the training draws);
  ``num_train`` (default 10000) and ``num_test`` (default 5000) points. Scales:

  - ``"gmm"``: samples of ``spec.oracles.gmm.demo_mixture()`` unchanged (3 components,
    data scale ~1), so its density is known exactly;
  - ``"moons"``: two interleaved half circles ``(cos t, sin t)`` and ``(1 - cos t,
    1/2 - sin t)``, t ~ U(0, pi), plus N(0, 0.05^2) noise, then standardised with the exact
    moments (mean (1/2, 1/4), variances 3/4 + 0.05^2 and 9/16 - 1/pi + 0.05^2);
  - ``"swiss_roll"``: ``(t cos t, t sin t)``, t ~ U(1.5 pi, 4.5 pi), plus N(0, 0.25^2)
    noise, standardised with the exact moments (means 2 and 2 / (3 pi), variances
    ``(29.25 pi^2 -+ 1.5) / 6 - mean^2 + 0.25^2``);
  - ``"checkerboard"``: uniform on the 8 black squares of a 4x4 board over [-2, 2]^2,
    times ``sqrt(3) / 2`` (each coordinate then has mean 0 and std 1);
  - ``"rings"``: 4 concentric circles of radii 0.25, 0.5, 0.75, 1 (equally likely, angle
    uniform) plus N(0, 0.02^2) noise, scaled to unit std per coordinate
    (``1 / sqrt(E[r^2] / 2 + 0.02^2)``).

  So every standardised set has mean 0 and std 1 per coordinate (exactly, in distribution).
* ``"array"``: a user ``.npy`` / ``.npz`` file holding ``[N, H, W, C]`` images: uint8
  (0..255) or another integer dtype with values in 0..255 (scaled by ``v / 255``), or float
  in the declared ``value_range`` ((0, 1) or (-1, 1); mapped affinely to [0, 1]). A
  ``.npz`` must hold one array, or name it with ``array_key``.
* ``"folder"``: a directory of ``.png`` / ``.jpg`` / ``.jpeg`` images (not recursive,
  sorted by file name), read with Pillow as grey (``num_channels=1``) or RGB (3; ``None``:
  RGB if any image has colour, else grey). All one size, or each centre-cropped to a square
  and resized to ``image_size`` (bicubic).

For the user sets the train/test split is the same fixed-permutation rule as for digits
(default ``test_fraction`` 0: everything is training data and the test set is empty).
Images from [0, 1] are centred to [-1, 1] by ``2 v - 1`` when ``centered`` (default), else
kept in [0, 1]. ``image_size`` resizes digits and arrays too (bicubic; clipped to the range).

Every bad file (missing, unreadable, empty, a directory without images, wrong rank or
dtype, values outside the declared range, NaN) raises ONE ``ValueError`` /
``FileNotFoundError`` whose message starts with ``data.path`` and the file; bad config
values raise ``ValueError`` / ``TypeError`` naming the field (``data.<field>``).

Order and augmentation (:class:`BatchIterator`): the examples are drawn epoch after epoch,
each epoch a permutation that is a pure function of ``(seed, epoch)``; a batch that runs
past the end of an epoch WRAPS AROUND into the next one (no example is dropped, every batch
has ``batch_size`` examples, as score_sde's repeating ``tf.data`` pipeline). The random
horizontal flip and the dequantisation noise of the example at position ``index`` of epoch
``epoch`` come from a numpy Generator seeded by ``(seed, epoch, index)``, so they do not
depend on the batch size or on where a run was resumed. Uniform dequantisation, with ``v``
in [0, 1] and ``K = num_bins`` levels (256 for 8-bit data, 17 for digits; score_sde's
``(u + 255 v) / 256``)::

    v' = ((K - 1) v + u) / K,  u ~ U[0, 1) float32     (v' in [0, 1])
    centred: x' = 2 v' - 1 for x = 2 v - 1              (x' in [-1, 1])

(the bound 1 is reached only by float32 rounding of ``u`` close to 1).

Class labels (:func:`load_labels`, for class-conditional models): int64 arrays aligned row
for row with :func:`load_dataset`'s splits: the digit of each digits image, the mixture
component of each 2-D point (gmm, moons, checkerboard, rings), or a user ``.npz``'s integer
array ``labels`` (or ``y``) beside its images (the images are then found without
``array_key``). :class:`BatchIterator` takes them as ``labels=`` and yields ``(x, y)``; its
``shard_index`` / ``shard_count`` give each process its rows of the global batch.

Only numpy and the standard library are imported at module import; scikit-learn (digits)
and Pillow (image folders, resizing) are imported inside the functions that need them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import os
import zipfile
from pathlib import Path

import numpy as np

from spec.validate import check_bool, check_choice, check_dir, check_file, check_float, check_int

__all__ = [
    "DATASETS",
    "IMAGE_DATASETS",
    "IMAGE_SUFFIXES",
    "SPLIT_SEED",
    "TOY_COMPONENTS",
    "TOY_DATASETS",
    "BatchIterator",
    "DataConfig",
    "dequantize",
    "load_dataset",
    "load_labels",
    "make_toy_data",
    "split_indices",
]

TOY_DATASETS = ("gmm", "moons", "swiss_roll", "checkerboard", "rings")
IMAGE_DATASETS = ("digits", "array", "folder")
DATASETS = ("digits",) + TOY_DATASETS + ("array", "folder")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ARRAY_SUFFIXES = (".npy", ".npz")
# The fixed seed of the train/test permutation of digits and user data (not config.seed).
SPLIT_SEED = 20_240_601
DIGITS_NUM_IMAGES = 1797
DIGITS_LEVELS = 17  # values 0..16
# The names a user .npz may give its class labels (load_labels reads the first present).
LABEL_KEYS = ("labels", "y")

# Stream tags of the numpy SeedSequences, so no two purposes share random numbers.
_TAG_GENERATE, _TAG_PERMUTE, _TAG_AUGMENT = 0, 1, 2
_SPLITS = {"train": 0, "test": 1}


# --- config ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What to train on (see the module docstring for every dataset's exact definition).

    dataset: one of ``DATASETS``. path: the ``.npy``/``.npz`` file (``"array"``) or the image
    directory (``"folder"``); None for the built-in sets. image_size: resize images to
    ``image_size x image_size`` (None: keep). num_channels: 1 (grey) or 3 (RGB) for digits
    and folders (digits repeat the grey channel); for arrays it must equal the stored C
    (None: as stored). centered: images in [-1, 1] (True) or [0, 1]. random_flip /
    uniform_dequantization: training-time augmentation of images (:class:`BatchIterator`).
    num_train / num_test: 2-D sets: how many points to draw (None: 10000 / 5000); images:
    keep only the first ones of each split (None: all). seed: draws the 2-D sets and the
    batch order. test_fraction: the fraction of a fixed permutation held out as the test
    set (None: 0.2 for digits, 0.0 for user data; not used by 2-D sets). value_range:
    the declared range of a float array file, (0, 1) or (-1, 1). array_key: which array of
    a ``.npz`` holding several.
    """

    dataset: str = "gmm"
    path: str | None = None
    image_size: int | None = None
    num_channels: int | None = None
    centered: bool = True
    random_flip: bool = False
    uniform_dequantization: bool = False
    num_train: int | None = None
    num_test: int | None = None
    seed: int = 0
    test_fraction: float | None = None
    value_range: tuple = (0.0, 1.0)
    array_key: str | None = None

    def __post_init__(self):
        check_choice("data.dataset", self.dataset, DATASETS)
        for name in ("centered", "random_flip", "uniform_dequantization"):
            check_bool(f"data.{name}", getattr(self, name))
        object.__setattr__(self, "seed", check_int("data.seed", self.seed, minimum=0))
        for name in ("image_size", "num_train", "num_test"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, check_int(f"data.{name}", value, minimum=1))
        if self.num_channels is not None:
            check_int("data.num_channels", self.num_channels, minimum=1)
        if self.test_fraction is not None:
            tf = check_float("data.test_fraction", self.test_fraction)
            if not 0.0 <= tf < 1.0:
                raise ValueError(f"data.test_fraction must be in [0, 1), got {tf}")
            object.__setattr__(self, "test_fraction", tf)
        object.__setattr__(self, "value_range", _check_value_range(self.value_range))
        if self.path is not None:
            if isinstance(self.path, os.PathLike):
                object.__setattr__(self, "path", os.fspath(self.path))
            if not isinstance(self.path, str):
                raise TypeError(f"data.path must be a str or os.PathLike, got "
                                f"{type(self.path).__name__} {self.path!r}")
        if self.array_key is not None and not isinstance(self.array_key, str):
            raise TypeError(f"data.array_key must be a str, got {type(self.array_key).__name__}")
        if self.dataset in ("array", "folder"):
            if self.path is None:
                what = ".npy/.npz file" if self.dataset == "array" else "directory of images"
                raise ValueError(f"data.path is required for data.dataset={self.dataset!r} (a {what})")
        elif self.path is not None:
            raise ValueError(f"data.path is only used by the 'array' and 'folder' datasets, "
                             f"got path={self.path!r} for data.dataset={self.dataset!r}")
        if self.dataset in ("digits", "folder") and self.num_channels not in (None, 1, 3):
            raise ValueError(f"data.num_channels must be 1 (grey) or 3 (RGB) for "
                             f"data.dataset={self.dataset!r}, got {self.num_channels}")
        if self.dataset in TOY_DATASETS:
            bad = [f"{n}={getattr(self, n)!r}" for n, default in
                   (("image_size", None), ("num_channels", None), ("centered", True),
                    ("random_flip", False), ("uniform_dequantization", False),
                    ("test_fraction", None)) if getattr(self, n) != default]
            if bad:
                raise ValueError(f"data.dataset={self.dataset!r} is a 2-D set: "
                                 f"{', '.join('data.' + b for b in bad)}: only image datasets take these")

    @property
    def is_image(self) -> bool:
        """True for the image datasets (digits, array, folder)."""
        return self.dataset in IMAGE_DATASETS

    @property
    def num_bins(self) -> int:
        """Quantisation levels for uniform dequantisation: 17 for digits, else 256."""
        return DIGITS_LEVELS if self.dataset == "digits" else 256

    def to_dict(self) -> dict:
        """JSON-able dict (``value_range`` as a list); :meth:`from_dict` inverts it."""
        d = dataclasses.asdict(self)
        d["value_range"] = list(self.value_range)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DataConfig":
        """Build from :meth:`to_dict`'s output; unknown keys raise listing the valid ones."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"unknown data field(s) {unknown}; valid fields: {', '.join(names)}")
        return cls(**d)


def _check_value_range(value_range) -> tuple:
    if isinstance(value_range, (str, bytes)) or not isinstance(value_range, (tuple, list)) \
            or len(value_range) != 2:
        raise TypeError(f"data.value_range must be a pair (0, 1) or (-1, 1), got {value_range!r}")
    lo = check_float("data.value_range[0]", value_range[0])
    hi = check_float("data.value_range[1]", value_range[1])
    if (lo, hi) not in ((0.0, 1.0), (-1.0, 1.0)):
        raise ValueError(f"data.value_range must be (0, 1) or (-1, 1), got {(lo, hi)}")
    return (lo, hi)


# --- splits and the 2-D sets -----------------------------------------------------------------


def split_indices(num_examples: int, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """The fixed train/test split: ``(train_idx, test_idx)`` from one permutation of
    ``num_examples`` drawn with ``SPLIT_SEED``; its first ``round(num_examples *
    test_fraction)`` entries are the test set. Independent of every config seed."""
    perm = np.random.default_rng(SPLIT_SEED).permutation(num_examples)
    n_test = int(round(num_examples * test_fraction))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def _toy_rng(seed: int, dataset: str, split: str) -> np.random.Generator:
    return np.random.default_rng([seed, _TAG_GENERATE, TOY_DATASETS.index(dataset), _SPLITS[split]])


# The 2-D sets that are mixtures, and their number of components (the labels of load_labels).
TOY_COMPONENTS = {"gmm": 3, "moons": 2, "checkerboard": 8, "rings": 4}


def make_toy_data(dataset: str, n: int, rng: np.random.Generator, *, return_components: bool = False):
    """``n`` points ``[n, 2]`` (float32) of the 2-D set ``dataset`` drawn from ``rng``
    (definitions and scales in the module docstring).

    With ``return_components`` also the component each point was drawn from, int64 ``[n]``
    (the same points, from the same random numbers): gmm's mixture component (0..2), the
    moon (0 upper, 1 lower), the checkerboard square ``2 * column + k`` (0..7; column 0..3
    from the left, k the square's draw within the column) and the ring (0..3, inner to
    outer). The swiss roll is one curve, not a mixture: ``ValueError``."""
    check_choice("dataset", dataset, TOY_DATASETS)
    n = check_int("n", n, minimum=1)
    return_components = check_bool("return_components", return_components)
    if return_components and dataset not in TOY_COMPONENTS:
        raise ValueError(f"dataset={dataset!r} is not a mixture (one curve): it has no component "
                         f"labels; the mixtures are {sorted(TOY_COMPONENTS)}")
    components = None
    if dataset == "gmm":
        from spec.oracles.gmm import demo_mixture

        x, components = demo_mixture().sample(rng, n)
    elif dataset == "moons":
        noise = 0.05
        upper = rng.random(n) < 0.5
        t = rng.uniform(0.0, math.pi, n)
        x = np.where(upper, np.cos(t), 1.0 - np.cos(t))
        y = np.where(upper, np.sin(t), 0.5 - np.sin(t))
        pts = np.stack([x, y], axis=1) + noise * rng.standard_normal((n, 2))
        mean = np.array([0.5, 0.25])
        var = np.array([0.75, 9.0 / 16.0 - 1.0 / math.pi]) + noise**2
        x = (pts - mean) / np.sqrt(var)
        components = np.where(upper, 0, 1)
    elif dataset == "swiss_roll":
        noise = 0.25
        t = rng.uniform(1.5 * math.pi, 4.5 * math.pi, n)
        pts = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) + noise * rng.standard_normal((n, 2))
        mean = np.array([2.0, 2.0 / (3.0 * math.pi)])
        second = np.array([29.25 * math.pi**2 - 1.5, 29.25 * math.pi**2 + 1.5]) / 6.0
        x = (pts - mean) / np.sqrt(second - mean**2 + noise**2)
    elif dataset == "checkerboard":
        x1 = rng.uniform(-2.0, 2.0, n)
        u = rng.random(n)  # drawn before k (the order of the original one-line expression)
        k = rng.integers(0, 2, n)
        x2 = u - 2.0 * k + np.mod(np.floor(x1), 2.0)
        x = np.stack([x1, x2], axis=1) * (math.sqrt(3.0) / 2.0)
        components = 2 * (np.floor(x1).astype(np.int64) + 2) + k
    else:  # rings
        noise = 0.02
        radii = np.array([0.25, 0.5, 0.75, 1.0])
        ring = rng.integers(0, len(radii), n)
        r = radii[ring]
        theta = rng.uniform(0.0, 2.0 * math.pi, n)
        pts = np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1) + noise * rng.standard_normal((n, 2))
        x = pts / math.sqrt(np.mean(radii**2) / 2.0 + noise**2)
        components = ring
    x = np.ascontiguousarray(x, dtype=np.float32)
    if return_components:
        return x, np.ascontiguousarray(components, dtype=np.int64)
    return x


# --- reading user files ------------------------------------------------------------------------


def _fail(path, what: str, exc_type=ValueError):
    raise exc_type(f"data.path: {str(path)!r}: {what}") from None


def _read_array(path: Path, array_key: str | None) -> np.ndarray:
    """The raw array stored in a ``.npy`` / ``.npz`` file (no pickles)."""
    try:
        if path.name.lower().endswith(".npz"):
            with np.load(path, allow_pickle=False) as archive:
                keys = list(archive.files)
                if not keys:
                    _fail(path, "the .npz archive holds no arrays")
                if array_key is None:
                    images = [k for k in keys if k not in LABEL_KEYS]
                    if len(keys) > 1 and len(images) == 1:
                        keys = images  # one image array beside its labels
                    if len(keys) != 1:
                        _fail(path, f"the .npz archive holds {len(keys)} arrays {keys}; "
                                    f"choose one with data.array_key")
                    key = keys[0]
                elif array_key not in keys:
                    _fail(path, f"data.array_key={array_key!r} is not in the archive; it holds {keys}")
                else:
                    key = array_key
                return archive[key]
        with open(path, "rb") as fh:
            magic = fh.read(6)
        if magic != b"\x93NUMPY":
            _fail(path, "cannot be read as a numpy array: it is not a .npy file (no NumPy header)")
        return np.load(path, allow_pickle=False)
    except (ValueError, FileNotFoundError) as e:
        if str(e).startswith("data.path"):
            raise
        if "pickle" in str(e).lower():
            _fail(path, "holds Python objects (dtype object); store a numeric array "
                        "(uint8 0..255 or float)")
        _fail(path, f"cannot be read as a numpy array ({type(e).__name__}: {e})")
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
        _fail(path, f"cannot be read as a numpy array ({type(e).__name__}: {e})")


def _array_to_unit(path: Path, a: np.ndarray, value_range: tuple) -> np.ndarray:
    """Check a stored image array and map it to float32 [0, 1]."""
    if a.dtype.kind not in "uif":
        _fail(path, f"has dtype {a.dtype}; expected uint8 (0..255), another integer type "
                    f"with values 0..255, or float in data.value_range=({value_range[0]:g}, "
                    f"{value_range[1]:g})")
    if a.ndim != 4:
        _fail(path, f"has shape {a.shape} (rank {a.ndim}); expected images [N, H, W, C] (rank 4)")
    if a.size == 0:
        _fail(path, f"holds no images (shape {a.shape})")
    if a.dtype.kind in "ui":
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 255:
            _fail(path, f"has integer values in [{lo}, {hi}]; integer images must lie in 0..255")
        return a.astype(np.float32) / np.float32(255.0)
    a = a.astype(np.float32, copy=False) if a.dtype.itemsize < 4 else a
    finite = np.isfinite(a)
    if not finite.all():
        _fail(path, f"contains NaN or Inf ({a.size - int(finite.sum())} of {a.size} values)")
    lo, hi = value_range
    amin, amax = float(a.min()), float(a.max())
    if amin < lo or amax > hi:
        _fail(path, f"has float values in [{amin:.6g}, {amax:.6g}], outside the declared "
                    f"data.value_range=({lo:g}, {hi:g}); set data.value_range or rescale the data")
    return ((a - lo) / (hi - lo)).astype(np.float32, copy=False)


def _resize_unit(images: np.ndarray, size: int) -> np.ndarray:
    """Resize float [0, 1] images ``[N, H, W, C]`` to ``size x size`` (bicubic, clipped;
    float32 out)."""
    if images.shape[1:3] == (size, size):
        return images
    from PIL import Image

    n, _, _, c = images.shape
    out = np.empty((n, size, size, c), np.float32)
    for i in range(n):
        for ch in range(c):
            img = Image.fromarray(images[i, :, :, ch].astype(np.float32), mode="F")
            out[i, :, :, ch] = np.asarray(img.resize((size, size), Image.Resampling.BICUBIC))
    return np.clip(out, 0.0, 1.0)


def _open_image(f: Path, Image, load: bool):
    """``Image.open(f)`` (decoded when ``load``), or ONE ValueError naming the file."""
    from PIL import UnidentifiedImageError

    try:
        if f.stat().st_size == 0:
            _fail(f, "is empty (0 bytes)")
        img = Image.open(f)
        if load:
            img.load()
        return img
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        if str(e).startswith("data.path"):
            raise
        _fail(f, f"cannot be read as an image ({type(e).__name__}: {e})")


def _read_folder(directory: Path, image_size: int | None, num_channels: int | None) -> np.ndarray:
    """The images of ``directory`` ``[N, S, S, C]`` float32 in [0, 1] (two passes: the headers
    for sizes and modes, then the pixels one image at a time)."""
    from PIL import Image

    files = sorted(p for p in directory.iterdir()
                   if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        _fail(directory, f"the directory holds no images ({', '.join(IMAGE_SUFFIXES)})")
    modes, sizes = [], []
    for f in files:
        with _open_image(f, Image, load=False) as img:
            modes.append(img.mode)
            sizes.append(img.size)
    if image_size is None:
        for f, size in zip(files, sizes):
            if size != sizes[0]:
                _fail(f, f"is {size[0]}x{size[1]} but {files[0].name} is {sizes[0][0]}x{sizes[0][1]}; "
                         f"images must be one size, or set data.image_size to resize them")
    if num_channels is None:
        grey = all(m in ("1", "L", "LA", "I", "I;16", "F") for m in modes)
        num_channels = 1 if grey else 3
    mode = "L" if num_channels == 1 else "RGB"
    arrays = []
    for f in files:
        with _open_image(f, Image, load=True) as img:
            if image_size is not None:
                w, h = img.size
                side = min(w, h)
                if (w, h) != (side, side):
                    left, top = (w - side) // 2, (h - side) // 2
                    img = img.crop((left, top, left + side, top + side))
                if side != image_size:
                    img = img.resize((image_size, image_size), Image.Resampling.BICUBIC)
            a = np.asarray(img.convert(mode), dtype=np.uint8)
        arrays.append(a[..., None] if a.ndim == 2 else a)
    return np.stack(arrays).astype(np.float32) / np.float32(255.0)


@functools.lru_cache(maxsize=1)
def _load_digits() -> np.ndarray:
    """The 1797 digits ``[1797, 8, 8, 1]`` in [0, 1] (read-only; read once per process)."""
    from sklearn.datasets import load_digits

    images = load_digits().images  # [1797, 8, 8] float64 0..16
    unit = (images[..., None] / float(DIGITS_LEVELS - 1)).astype(np.float32)
    unit.setflags(write=False)
    return unit


# --- load_dataset ------------------------------------------------------------------------------


def load_dataset(config: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(train, test)`` float32 arrays of ``config``'s dataset: images NHWC ``[N, H, W, C]``
    in [-1, 1] (``centered``) or [0, 1]; 2-D sets ``[N, 2]``. The test set of user data is
    empty (``[0, H, W, C]``) when ``test_fraction`` is 0 (its default)."""
    if not isinstance(config, DataConfig):
        raise TypeError(f"config must be a spec.datasets.DataConfig, got {type(config).__name__}")
    if config.dataset in TOY_DATASETS:
        n_train = 10_000 if config.num_train is None else config.num_train
        n_test = 5_000 if config.num_test is None else config.num_test
        train = make_toy_data(config.dataset, n_train, _toy_rng(config.seed, config.dataset, "train"))
        test = make_toy_data(config.dataset, n_test, _toy_rng(config.seed, config.dataset, "test"))
        return train, test

    if config.dataset == "digits":
        unit = _load_digits()
        if config.num_channels == 3:
            unit = np.repeat(unit, 3, axis=-1)
        test_fraction = 0.2 if config.test_fraction is None else config.test_fraction
    elif config.dataset == "array":
        if Path(config.path).is_dir():
            _fail(config.path, "is a directory; data.dataset='array' reads a .npy/.npz file "
                               "(use data.dataset='folder' for a directory of images)")
        path = check_file("data.path", config.path)
        if not path.name.lower().endswith(ARRAY_SUFFIXES):
            _fail(path, "must be a .npy or .npz file")
        unit = _array_to_unit(path, _read_array(path, config.array_key), config.value_range)
        if config.num_channels is not None and unit.shape[-1] != config.num_channels:
            _fail(path, f"holds images with {unit.shape[-1]} channel(s) (shape {unit.shape}) "
                        f"but data.num_channels={config.num_channels}")
        test_fraction = 0.0 if config.test_fraction is None else config.test_fraction
    else:  # folder
        if Path(config.path).is_file():
            _fail(config.path, "is a file; data.dataset='folder' reads a directory of images "
                               "(use data.dataset='array' for a .npy/.npz file)")
        directory = check_dir("data.path", config.path)
        unit = _read_folder(directory, config.image_size, config.num_channels)
        test_fraction = 0.0 if config.test_fraction is None else config.test_fraction
    if config.image_size is not None and config.dataset != "folder":
        unit = _resize_unit(unit, config.image_size)

    parts = []
    for idx in _capped_split(config, len(unit), test_fraction):
        x = unit[idx]
        if config.centered:
            x = np.float32(2.0) * x - np.float32(1.0)
        parts.append(np.ascontiguousarray(x, dtype=np.float32))
    return parts[0], parts[1]


def _capped_split(config: DataConfig, num_examples: int, test_fraction: float):
    """``(train_idx, test_idx)`` of :func:`split_indices`, each cut to ``num_train`` /
    ``num_test`` (errors name the field)."""
    train_idx, test_idx = split_indices(num_examples, test_fraction)
    if len(train_idx) == 0:
        raise ValueError(f"data.test_fraction={test_fraction} leaves no training images of "
                         f"the {num_examples} in {config.path or config.dataset!r}")
    out = []
    for name, idx in (("num_train", train_idx), ("num_test", test_idx)):
        cap = getattr(config, name)
        if cap is not None:
            if cap > len(idx):
                raise ValueError(f"data.{name}={cap} is larger than the {len(idx)} images of "
                                 f"that split of {config.path or config.dataset!r}")
            idx = idx[:cap]
        out.append(idx)
    return out


# --- class labels --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _load_digit_targets() -> np.ndarray:
    """The digit (0..9) of each of the 1797 images ``[1797]`` int64 (read-only)."""
    from sklearn.datasets import load_digits

    target = np.asarray(load_digits().target, dtype=np.int64)
    target.setflags(write=False)
    return target


def _read_labels(path: Path, num_images: int) -> np.ndarray:
    """The ``labels`` (or ``y``) array of a user ``.npz``: int64 ``[num_images]``, >= 0."""
    if not path.name.lower().endswith(".npz"):
        _fail(path, f"a .npy file holds no class labels; store the images and an integer array "
                    f"{LABEL_KEYS[0]!r} (or {LABEL_KEYS[1]!r}) [N] together in one .npz")
    try:
        with np.load(path, allow_pickle=False) as archive:
            key = next((k for k in LABEL_KEYS if k in archive.files), None)
            if key is None:
                _fail(path, f"holds no class labels: no array {LABEL_KEYS[0]!r} or "
                            f"{LABEL_KEYS[1]!r} in the archive (it holds {list(archive.files)})")
            y = archive[key]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        if str(e).startswith("data.path"):
            raise
        _fail(path, f"cannot read its labels ({type(e).__name__}: {e})")
    if y.dtype.kind not in "ui" or y.ndim != 1:
        _fail(path, f"its labels {key!r} must be integers [N]; got dtype {y.dtype}, shape {y.shape}")
    if len(y) != num_images:
        _fail(path, f"its labels {key!r} hold {len(y)} entries but it holds {num_images} images")
    if len(y) and int(y.min()) < 0:
        _fail(path, f"its labels {key!r} must be >= 0 (class indices); the smallest is {int(y.min())}")
    return y.astype(np.int64)


def load_labels(config: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """The class labels ``(y_train, y_test)``, int64 ``[N_train]`` / ``[N_test]``, aligned row
    for row with :func:`load_dataset`'s ``(train, test)`` (the same split and caps).

    digits: the digit 0..9 (scikit-learn's ``target``); the 2-D mixtures (``TOY_COMPONENTS``:
    gmm, moons, checkerboard, rings): the component each point was drawn from
    (:func:`make_toy_data`'s ``return_components``); ``"array"``: the ``.npz``'s integer array
    ``labels`` (or ``y``) ``[N]`` beside the images. The swiss roll, image folders, ``.npy``
    files and archives without labels raise ``ValueError`` naming the dataset / file."""
    if not isinstance(config, DataConfig):
        raise TypeError(f"config must be a spec.datasets.DataConfig, got {type(config).__name__}")
    if config.dataset in TOY_DATASETS:
        if config.dataset not in TOY_COMPONENTS:
            raise ValueError(f"data.dataset={config.dataset!r} has no class labels: it is one curve, "
                             f"not a mixture (labelled 2-D sets: {', '.join(sorted(TOY_COMPONENTS))})")
        n_train = 10_000 if config.num_train is None else config.num_train
        n_test = 5_000 if config.num_test is None else config.num_test
        _, y_train = make_toy_data(config.dataset, n_train, _toy_rng(config.seed, config.dataset, "train"),
                                   return_components=True)
        _, y_test = make_toy_data(config.dataset, n_test, _toy_rng(config.seed, config.dataset, "test"),
                                  return_components=True)
        return y_train, y_test
    if config.dataset == "digits":
        y = _load_digit_targets()
        test_fraction = 0.2 if config.test_fraction is None else config.test_fraction
    elif config.dataset == "array":
        if Path(config.path).is_dir():
            _fail(config.path, "is a directory; data.dataset='array' reads a .npy/.npz file")
        path = check_file("data.path", config.path)
        if not path.name.lower().endswith(ARRAY_SUFFIXES):
            _fail(path, "must be a .npy or .npz file")
        num_images = len(_read_array(path, config.array_key)) if path.name.lower().endswith(".npz") else 0
        y = _read_labels(path, num_images)
        test_fraction = 0.0 if config.test_fraction is None else config.test_fraction
    else:  # folder
        raise ValueError(f"data.dataset='folder' has no class labels (an image folder is unlabelled; "
                         f"data.path={config.path!r}); for labels store the images and an integer "
                         f"array 'labels' [N] in a .npz and use data.dataset='array'")
    return tuple(np.ascontiguousarray(y[idx]) for idx in _capped_split(config, len(y), test_fraction))


# --- augmentation and the iterator ---------------------------------------------------------


def dequantize(x: np.ndarray, u: np.ndarray, *, num_bins: int = 256, centered: bool = True) -> np.ndarray:
    """Uniform dequantisation ``v' = ((num_bins - 1) v + u) / num_bins`` of ``v`` in [0, 1]
    (``x = 2 v - 1`` in and ``2 v' - 1`` out when ``centered``); ``u`` in [0, 1) has ``x``'s
    shape. Float32 in, float32 out."""
    v = (x + 1.0) * 0.5 if centered else x
    v = ((num_bins - 1) * v + u) / num_bins
    out = 2.0 * v - 1.0 if centered else v
    return out.astype(np.float32)


_STATE_KEYS = ("epoch", "index", "seed", "num_examples", "batch_size")


class BatchIterator:
    """Deterministic, resumable batches of ``data`` ``[N, ...]`` (float32).

    Batch ``k`` holds the examples at stream positions ``k B .. k B + B - 1`` (``B =
    batch_size``) of the endless stream "epoch 0's permutation, then epoch 1's, ...", where
    epoch ``e``'s permutation is drawn from numpy's ``SeedSequence([seed, 1, e])``: the
    order is a pure function of ``(seed, epoch)``, and a batch crossing an epoch's end wraps
    into the next epoch. For images (``[N, H, W, C]``), ``random_flip`` mirrors an example
    left-right with probability 1/2 and ``uniform_dequantization`` adds the noise of
    :func:`dequantize` (``num_bins`` levels, ``centered`` range); both are drawn from the
    example's own Generator :meth:`example_rng`, seeded by ``(seed, epoch, index)`` for the
    example at ``index`` of ``epoch`` (first the flip, then the noise), so they do not depend
    on the batch size or on where a run resumed.

    ``labels`` (int ``[N]``, e.g. from :func:`load_labels`): every batch is a tuple ``(x,
    y)`` with ``y`` the labels of ``x``'s examples (int64 here; the twins give int32 JAX /
    int64 torch); without, a bare ``x`` as always.

    Per-process shards: ``batch_size`` is always the GLOBAL batch ``B``; with ``shard_count
    > 1`` the iterator yields only the rows ``[shard_index * B / shard_count, (shard_index +
    1) * B / shard_count)`` of each global batch (``local_batch_size`` rows). Every shard
    walks the same permutation and draws each example's augmentation from that example's
    own Generator, so the shards of all processes, concatenated in ``shard_index`` order,
    are exactly the 1-process batch. ``B % shard_count != 0`` raises ``ValueError`` naming
    ``batch_size``.

    ``state`` is a JSON-able dict ``{"epoch", "index", "seed", "num_examples",
    "batch_size"}`` (the next example's GLOBAL position and what it refers to; the same in
    every shard); :meth:`set_state` / :meth:`restore` continue exactly where the saved
    iterator was, so a resumed run sees the batches an uninterrupted run would, with any
    number of shards. ``batch_at(k)`` is batch ``k`` without moving the iterator.
    """

    def __init__(self, data, batch_size: int, *, seed: int = 0, random_flip: bool = False,
                 uniform_dequantization: bool = False, num_bins: int = 256, centered: bool = True,
                 labels=None, shard_index: int = 0, shard_count: int = 1):
        data = self._from_framework(data)
        data = np.asarray(data)
        if data.dtype.kind != "f":
            raise TypeError(f"data must be a float array [N, ...], got dtype {data.dtype}")
        if data.ndim < 2 or len(data) == 0:
            raise ValueError(f"data must be a non-empty array [N, ...], got shape {data.shape}")
        self.data = np.ascontiguousarray(data, dtype=np.float32)
        self.num_examples = len(self.data)
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        if self.batch_size > self.num_examples:
            raise ValueError(f"batch_size={self.batch_size} is larger than the dataset "
                             f"({self.num_examples} examples)")
        self.seed = check_int("seed", seed, minimum=0)
        self.random_flip = check_bool("random_flip", random_flip)
        self.uniform_dequantization = check_bool("uniform_dequantization", uniform_dequantization)
        self.num_bins = check_int("num_bins", num_bins, minimum=2)
        self.centered = check_bool("centered", centered)
        if (self.random_flip or self.uniform_dequantization) and self.data.ndim != 4:
            raise ValueError(f"random_flip and uniform_dequantization apply to images "
                             f"[N, H, W, C]; got data of shape {self.data.shape}")
        self.labels = None
        if labels is not None:
            y = np.asarray(self._labels_from_framework(labels))
            if y.dtype.kind not in "ui" or y.ndim != 1:
                raise TypeError(f"labels must be an integer array [N] (class indices), got "
                                f"dtype {y.dtype} and shape {y.shape}")
            if len(y) != self.num_examples:
                raise ValueError(f"labels hold {len(y)} entries but data holds {self.num_examples} "
                                 f"examples; they must be aligned row for row")
            self.labels = np.ascontiguousarray(y, dtype=np.int64)
        self.shard_count = check_int("shard_count", shard_count, minimum=1)
        self.shard_index = check_int("shard_index", shard_index, minimum=0)
        if self.shard_index >= self.shard_count:
            raise ValueError(f"shard_index={self.shard_index} is out of range for "
                             f"shard_count={self.shard_count} (0..{self.shard_count - 1})")
        if self.batch_size % self.shard_count:
            raise ValueError(f"batch_size={self.batch_size} (the global batch) is not divisible by "
                             f"shard_count={self.shard_count}: every shard takes the same number of rows")
        self.local_batch_size = self.batch_size // self.shard_count
        self._position = 0
        self._perms: dict[int, np.ndarray] = {}
        self._keys: dict[int, np.ndarray] = {}
        self._fresh: dict[int, dict] = {}
        self._philox = self._philox_rng = None

    @classmethod
    def from_config(cls, config: DataConfig, data, batch_size: int, *, seed: int | None = None,
                    labels=None, shard_index: int = 0, shard_count: int = 1):
        """The iterator ``config`` asks for (its flips, dequantisation, number of levels and
        range); ``seed`` defaults to ``config.seed``; ``labels`` / ``shard_index`` /
        ``shard_count`` as in the constructor."""
        if not isinstance(config, DataConfig):
            raise TypeError(f"config must be a spec.datasets.DataConfig, got {type(config).__name__}")
        return cls(data, batch_size, seed=config.seed if seed is None else seed,
                   random_flip=config.random_flip, uniform_dequantization=config.uniform_dequantization,
                   num_bins=config.num_bins, centered=config.centered, labels=labels,
                   shard_index=shard_index, shard_count=shard_count)

    # framework hooks (the twins convert here)
    @staticmethod
    def _from_framework(data):
        return data

    @staticmethod
    def _labels_from_framework(labels):
        return labels

    @staticmethod
    def _to_framework(batch):
        return batch

    @staticmethod
    def _labels_to_framework(y):
        return y

    def _output(self, batch: np.ndarray, idx: np.ndarray):
        """The framework batch ``x``, or ``(x, y)`` when the iterator has labels."""
        if self.labels is None:
            return self._to_framework(batch)
        return self._to_framework(batch), self._labels_to_framework(self.labels[idx])

    # order
    def permutation(self, epoch: int) -> np.ndarray:
        """Epoch ``epoch``'s order of the examples ``[N]`` (a pure function of seed, epoch)."""
        epoch = check_int("epoch", epoch, minimum=0)
        perm = self._perms.get(epoch)
        if perm is None:
            perm = np.random.default_rng([self.seed, _TAG_PERMUTE, epoch]).permutation(self.num_examples)
            if len(self._perms) >= 2:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = perm
        return perm

    def _batch_from(self, position: int) -> tuple[np.ndarray, np.ndarray]:
        """This shard's rows of the global batch starting at stream ``position``: the
        examples ``[local_batch_size, ...]`` and their indices into ``data``."""
        n = self.num_examples
        start = position + self.shard_index * self.local_batch_size
        positions = np.arange(start, start + self.local_batch_size)
        epochs, indices = positions // n, positions % n
        idx = np.empty(self.local_batch_size, np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            idx[sel] = self.permutation(int(e))[indices[sel]]
        batch = self.data[idx]
        if self.random_flip or self.uniform_dequantization:
            flip = np.zeros(self.local_batch_size, bool)
            u = np.empty(batch.shape, np.float32) if self.uniform_dequantization else None
            for j in range(self.local_batch_size):
                rng = self._reuse_example_rng(int(epochs[j]), int(indices[j]))
                flip[j] = rng.random() < 0.5
                if u is not None:
                    u[j] = rng.random(batch.shape[1:], dtype=np.float32)
            if self.random_flip:
                batch[flip] = batch[flip][:, :, ::-1]
            if u is not None:
                batch = dequantize(batch, u, num_bins=self.num_bins, centered=self.centered)
        return batch, idx

    def example_rng(self, epoch: int, index: int) -> np.random.Generator:
        """The Generator of the example at position ``index`` of ``epoch``: Philox with the
        key ``SeedSequence([seed, 2, epoch])`` and the counter ``[0, index, 0, 0]`` (the
        examples' streams never overlap). It draws the flip first (``random() < 1/2``), then
        the dequantisation noise ``random(example_shape, float32)``."""
        key = self._keys.get(epoch)
        if key is None:
            key = np.random.SeedSequence([self.seed, _TAG_AUGMENT, epoch]).generate_state(2, np.uint64)
            if len(self._keys) >= 2:
                self._keys.pop(min(self._keys))
            self._keys[epoch] = key
        return np.random.Generator(np.random.Philox(key=key, counter=[0, index, 0, 0]))

    def _reuse_example_rng(self, epoch: int, index: int) -> np.random.Generator:
        """:meth:`example_rng`'s Generator without building a new one: ONE Philox is reset to
        the fresh state of that example (3x faster per example; the same numbers)."""
        if self._philox is None:
            self._philox = np.random.Philox(key=np.zeros(2, np.uint64))
            self._philox_rng = np.random.Generator(self._philox)
        fresh = self._fresh.get(epoch)
        if fresh is None:
            fresh = self.example_rng(epoch, 0).bit_generator.state
            if len(self._fresh) >= 2:
                self._fresh.pop(min(self._fresh))
            self._fresh[epoch] = fresh
        state = dict(fresh)
        state["state"] = {"counter": np.array([0, index, 0, 0], np.uint64), "key": fresh["state"]["key"]}
        self._philox.state = state
        return self._philox_rng

    def next(self):
        """The next batch ``[local_batch_size, ...]`` (``batch_size`` unless sharded), or
        ``(x, y)`` with labels; the iterator advances by one global batch."""
        batch, idx = self._batch_from(self._position)
        self._position += self.batch_size
        return self._output(batch, idx)

    def __iter__(self):
        return self

    def __next__(self):
        return self.next()

    def batch_at(self, step: int):
        """Batch number ``step`` of the stream (counted from the start), without moving."""
        step = check_int("step", step, minimum=0)
        return self._output(*self._batch_from(step * self.batch_size))

    # state
    @property
    def epoch(self) -> int:
        return self._position // self.num_examples

    @property
    def index(self) -> int:
        return self._position % self.num_examples

    @property
    def state(self) -> dict:
        """JSON-able position: ``{"epoch", "index", "seed", "num_examples", "batch_size"}``."""
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed,
                "num_examples": self.num_examples, "batch_size": self.batch_size}

    def set_state(self, state: dict) -> None:
        """Continue from ``state`` (from :attr:`state`). Its ``seed`` and ``num_examples``
        must match this iterator's (``ValueError`` naming the field otherwise); the position
        counts examples, so a different ``batch_size`` continues the same example order."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict from BatchIterator.state, got {type(state).__name__}")
        missing = [k for k in ("epoch", "index", "seed", "num_examples") if k not in state]
        if missing:
            raise ValueError(f"state is missing {missing}; expected the keys {list(_STATE_KEYS)}")
        epoch = check_int("state['epoch']", state["epoch"], minimum=0)
        index = check_int("state['index']", state["index"], minimum=0)
        for key, mine in (("seed", self.seed), ("num_examples", self.num_examples)):
            theirs = state[key]
            if isinstance(theirs, bool) or not isinstance(theirs, numbers.Integral) or theirs != mine:
                raise ValueError(f"state['{key}']={theirs!r} does not match this iterator's "
                                 f"{key}={mine} (a state of another dataset or seed)")
        if index >= self.num_examples:
            raise ValueError(f"state['index']={index} is out of range for {self.num_examples} examples")
        self._position = epoch * self.num_examples + index

    @classmethod
    def restore(cls, data, batch_size: int, state: dict, *, seed: int | None = None,
                random_flip: bool = False, uniform_dequantization: bool = False, num_bins: int = 256,
                centered: bool = True, labels=None, shard_index: int = 0, shard_count: int = 1):
        """A new iterator over ``data`` positioned at ``state`` (see :meth:`set_state`);
        ``seed`` defaults to the state's; the shard may differ from the saving run's."""
        if seed is None:
            if not isinstance(state, dict) or "seed" not in state:
                raise ValueError("state must be a dict from BatchIterator.state (with a 'seed')")
            seed = state["seed"]
        it = cls(data, batch_size, seed=seed, random_flip=random_flip,
                 uniform_dequantization=uniform_dequantization, num_bins=num_bins, centered=centered,
                 labels=labels, shard_index=shard_index, shard_count=shard_count)
        it.set_state(state)
        return it
