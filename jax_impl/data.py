"""Training data as JAX arrays: a thin layer over ``spec/datasets.py``.

Twin: ``torch_ref/data.py`` (the same names, torch tensors NCHW). Both read the same numpy
arrays from :mod:`spec.datasets` (the datasets, the fixed splits, the deterministic order
and the augmentation noise are defined there, once), so the two frameworks train on the
same numbers: a JAX batch ``[B, H, W, C]`` equals the torch batch ``[B, C, H, W]``
transposed, and 2-D batches ``[B, 2]`` are equal as they are.

* ``load_dataset(config) -> (train, test)``: ``jax.Array`` float32, images NHWC;
* ``BatchIterator``: :class:`spec.datasets.BatchIterator` whose batches (``next()``,
  ``batch_at(step)``, iteration) are ``jax.Array`` NHWC; it also accepts ``jax.Array`` data.
  The ``state`` dict is the same JSON-able position on both sides, so a run may even
  resume in the other framework;
* ``load_labels(config) -> (y_train, y_test)``: :func:`spec.datasets.load_labels` re-exported
  (int64 numpy, aligned with ``load_dataset``); given to ``BatchIterator(..., labels=y)`` the
  batches are ``(x, y)`` with ``y`` int32 ``jax.Array`` ``[B]``; ``shard_index`` / ``shard_count``
  give a process its rows of the global batch (see the spec iterator);
* ``to_framework(batch, dtype=None)``: a numpy batch ``[B, H, W, C]`` / ``[B, D]`` as a
  ``jax.Array`` (NHWC kept; ``dtype`` None keeps float32).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from spec import datasets as _spec
from spec.datasets import DataConfig, load_labels

__all__ = [
    "BatchIterator",
    "DataConfig",
    "load_dataset",
    "load_labels",
    "to_framework",
]


def to_framework(batch, dtype=None):
    """``batch`` (numpy ``[B, H, W, C]`` or ``[B, D]``) as a ``jax.Array`` of the same layout
    (float32 unless ``dtype`` is given)."""
    batch = np.asarray(batch)
    if batch.dtype.kind != "f":
        raise TypeError(f"batch must be a float array, got dtype {batch.dtype}")
    return jnp.asarray(batch, dtype=jnp.float32 if dtype is None else dtype)


def load_dataset(config: DataConfig):
    """``(train, test)`` of :func:`spec.datasets.load_dataset` as float32 ``jax.Array``
    (images ``[N, H, W, C]``, 2-D sets ``[N, 2]``)."""
    train, test = _spec.load_dataset(config)
    return to_framework(train), to_framework(test)


class BatchIterator(_spec.BatchIterator):
    """:class:`spec.datasets.BatchIterator` yielding ``jax.Array`` batches (images NHWC).

    ``data``: numpy or ``jax.Array`` ``[N, H, W, C]`` / ``[N, D]`` (as from
    :func:`load_dataset`). Order, state and augmentation are the spec iterator's.
    """

    @staticmethod
    def _from_framework(data):
        return np.asarray(data)

    @staticmethod
    def _labels_from_framework(labels):
        return np.asarray(labels)

    @staticmethod
    def _to_framework(batch):
        return to_framework(batch)

    @staticmethod
    def _labels_to_framework(y):
        return jnp.asarray(np.asarray(y), dtype=jnp.int32)
