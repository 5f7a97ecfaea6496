"""Training data as torch tensors: a thin layer over ``spec/datasets.py``.

Twin: ``jax_impl/data.py`` (the same names, ``jax.Array`` NHWC). Both read the same numpy
arrays from :mod:`spec.datasets` (the datasets, the fixed splits, the deterministic order
and the augmentation noise are defined there, once), so the two frameworks train on the
same numbers: a torch image batch ``[B, C, H, W]`` is the JAX batch ``[B, H, W, C]``
transposed, and 2-D batches ``[B, 2]`` are equal as they are.

* ``load_dataset(config) -> (train, test)``: ``torch.Tensor`` float32, images NCHW;
* ``BatchIterator``: :class:`spec.datasets.BatchIterator` whose batches (``next()``,
  ``batch_at(step)``, iteration) are ``torch.Tensor`` (images NCHW); it also accepts
  tensors as data (images NCHW, as :func:`load_dataset` returns them). The ``state`` dict
  is the same JSON-able position on both sides;
* ``load_labels(config) -> (y_train, y_test)``: :func:`spec.datasets.load_labels` re-exported
  (int64 numpy, aligned with ``load_dataset``); given to ``BatchIterator(..., labels=y)`` the
  batches are ``(x, y)`` with ``y`` int64 ``torch.Tensor`` ``[B]``; ``shard_index`` / ``shard_count``
  give a process its rows of the global batch (see the spec iterator);
* ``to_framework(batch, dtype=None)``: a numpy batch ``[B, H, W, C]`` as a contiguous
  ``torch.Tensor`` ``[B, C, H, W]`` (``[B, D]`` kept; ``dtype`` None keeps float32).
"""

from __future__ import annotations

import numpy as np
import torch

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
    """``batch`` (numpy ``[B, H, W, C]`` or ``[B, D]``) as a ``torch.Tensor``: images become
    contiguous NCHW ``[B, C, H, W]``; float32 unless ``dtype`` is given."""
    batch = np.asarray(batch)
    if batch.dtype.kind != "f":
        raise TypeError(f"batch must be a float array, got dtype {batch.dtype}")
    out = torch.as_tensor(batch, dtype=torch.float32 if dtype is None else dtype)
    if out.ndim == 4:
        out = out.permute(0, 3, 1, 2).contiguous()
    return out


def _to_numpy(data):
    """Framework data back to the spec layout: a 4-D tensor NCHW -> numpy NHWC."""
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu()
        if data.ndim == 4:
            data = data.permute(0, 2, 3, 1)
        return data.numpy()
    return np.asarray(data)


def load_dataset(config: DataConfig):
    """``(train, test)`` of :func:`spec.datasets.load_dataset` as float32 ``torch.Tensor``
    (images ``[N, C, H, W]``, 2-D sets ``[N, 2]``)."""
    train, test = _spec.load_dataset(config)
    return to_framework(train), to_framework(test)


class BatchIterator(_spec.BatchIterator):
    """:class:`spec.datasets.BatchIterator` yielding ``torch.Tensor`` batches (images NCHW).

    ``data``: numpy ``[N, H, W, C]`` / ``[N, D]`` or a ``torch.Tensor`` (images ``[N, C, H,
    W]``, as from :func:`load_dataset`). Order, state and augmentation are the spec
    iterator's.
    """

    @staticmethod
    def _from_framework(data):
        return _to_numpy(data)

    @staticmethod
    def _labels_from_framework(labels):
        return _to_numpy(labels)

    @staticmethod
    def _to_framework(batch):
        return to_framework(batch)

    @staticmethod
    def _labels_to_framework(y):
        return torch.as_tensor(np.asarray(y), dtype=torch.int64)
