"""Checkpoint files in and out, as numpy: ``.pth`` / ``.pt``, ``.npz``, ``.safetensors``.

Framework-neutral (numpy + stdlib). Each reader returns the checkpoint as plain Python
containers of numpy arrays (dicts, lists, ints), whatever the file format:

- ``.pth`` / ``.pt``: ``torch.load(map_location="cpu", weights_only=True)`` (no code
  from pickles), with ``torch`` imported inside the reader only when such a file is
  read; every tensor becomes a numpy array.
- ``.npz``: ``numpy.load(allow_pickle=False)`` (object arrays are refused).
- ``.safetensors``: ``safetensors.numpy.load_file`` (imported when such a file is read).

Neither ``.npz`` nor ``.safetensors`` needs torch. They hold a flat ``{name: array}``
map; a checkpoint with structure is stored flat with ``/``-joined names
(``flatten_checkpoint`` / ``unflatten_checkpoint``; torch keys never contain ``/``):

=====================================  ===============================================
flat name                              meaning
=====================================  ===============================================
``model/<torch key>``                  the model state_dict (``module.`` prefix kept)
``ema/shadow_params/<i>``              score_sde: EMA copy of trainable parameter ``i``
                                       (``model.parameters()`` order, ``i = 0, 1, ...``)
``ema/<torch key>``                    ncsnv2: the EMA helper's shadow dict
``ema/decay``, ``ema/num_updates``     score_sde EMA scalars (optional)
``step``, ``epoch``                    0-d integer arrays (optional)
``<torch key>`` (no ``/`` anywhere)    a plain flat state_dict
=====================================  ===============================================

So a full score_sde checkpoint (``{"model", "ema": {"shadow_params", ...}, "optimizer",
"step"}``) reads back as ``{"model": {...}, "ema": {"shadow_params": [...], ...},
"step": int}``, and an ermongroup/ncsnv2 list checkpoint ``[model, optimizer, epoch,
step(, ema)]`` is stored and read back as ``{"model": {...}, "epoch": int, "step": int(,
"ema": {...})}``; ``spec.convert`` accepts both forms. Optimizer states are not stored
(these files carry weights). ``save_checkpoint`` writes either format atomically
(temporary file, then rename); ``convert_checkpoint_file`` turns a ``.pth`` into one.

Every failure to read -- a missing path (``FileNotFoundError``), a directory, an empty,
truncated or damaged file, a foreign file under a checkpoint suffix (a text file named
``.pt``, a zip that is not a torch file), object arrays, an unknown suffix
(``ValueError``) -- raises ONE error naming the file and what is wrong; the underlying
library's traceback is not chained.
"""

from __future__ import annotations

import collections
import json
import os
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

__all__ = [
    "FLAT_SUFFIXES",
    "READ_SUFFIXES",
    "TORCH_SUFFIXES",
    "convert_checkpoint_file",
    "flatten_checkpoint",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
    "to_numpy",
    "tree_to_numpy",
    "unflatten_checkpoint",
]

TORCH_SUFFIXES = (".pth", ".pt")
FLAT_SUFFIXES = (".npz", ".safetensors")
READ_SUFFIXES = TORCH_SUFFIXES + FLAT_SUFFIXES
SEP = "/"
#: safetensors metadata entry holding the names in their original (state_dict) order
_ORDER_KEY = "scorediff.order"


class _Unreadable(ValueError):
    """Internal marker: a reader found the file damaged (turned into the one ValueError)."""


def to_numpy(value, name: str = "value") -> np.ndarray:
    """A numpy array of ``value``: a numpy / jax array, a CPU or GPU torch tensor (duck
    typed: ``.detach().cpu().numpy()``, torch is never imported here) or a number.

    Raises ``TypeError`` naming ``name`` for anything else (a string, a dict, a
    torch dtype numpy cannot hold such as bfloat16).
    """
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach") and hasattr(value, "cpu") and hasattr(value, "numpy"):
        try:
            return value.detach().cpu().numpy()
        except (TypeError, RuntimeError) as e:
            raise TypeError(f"{name}: cannot turn the tensor of dtype {getattr(value, 'dtype', '?')} into a numpy "
                            f"array ({e}); cast it to float32 first") from None
    if isinstance(value, (str, bytes, Mapping)) or value is None:
        raise TypeError(f"{name} must be an array or tensor, got {type(value).__name__}")
    try:
        out = np.asarray(value)
    except Exception as e:  # noqa: BLE001 (any conversion failure is a wrong argument)
        raise TypeError(f"{name} must be an array or tensor, got {type(value).__name__}: {e}") from None
    if out.dtype == object:
        raise TypeError(f"{name} must be a numeric array, got {type(value).__name__} holding Python objects")
    return out


def tree_to_numpy(obj, name: str = "checkpoint"):
    """``obj`` with every array / tensor leaf turned into numpy (mappings -> dicts with
    their order kept, lists / tuples -> lists; ``int``, ``float``, ``str``, ``None`` kept)."""
    if isinstance(obj, Mapping):
        return collections.OrderedDict((k, tree_to_numpy(v, f"{name}[{k!r}]")) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return [tree_to_numpy(v, f"{name}[{i}]") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return obj
    return to_numpy(obj, name)


# ------------------------------------------------------------------ flat <-> nested


def _ncsnv2_list_as_dict(ckpt: list | tuple) -> dict:
    """``[model, optimizer, epoch, step(, ema)]`` -> ``{"model", "epoch", "step"(, "ema")}``."""
    if not ckpt or not isinstance(ckpt[0], Mapping):
        raise ValueError("an ncsnv2 checkpoint list must start with the model state_dict")
    out: dict[str, Any] = {"model": ckpt[0]}
    for i, key in ((2, "epoch"), (3, "step")):
        if len(ckpt) > i and ckpt[i] is not None:
            out[key] = ckpt[i]
    if len(ckpt) >= 5 and isinstance(ckpt[4], Mapping):
        out["ema"] = ckpt[4]
    return out


def flatten_checkpoint(checkpoint) -> "collections.OrderedDict[str, np.ndarray]":
    """The flat ``{name: numpy array}`` form of a checkpoint (see the module docstring).

    Accepts a plain state_dict, a score_sde checkpoint dict or an ncsnv2 checkpoint list
    (arrays or torch tensors); ``optimizer`` entries are dropped; numbers become 0-d
    arrays. ``ValueError`` for a name containing ``/`` in a plain state_dict or a leaf
    that is not numeric.
    """
    if isinstance(checkpoint, (list, tuple)):
        checkpoint = _ncsnv2_list_as_dict(checkpoint)
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f"checkpoint must be a state_dict, a checkpoint dict or an ncsnv2 list, "
                        f"got {type(checkpoint).__name__}")
    out: "collections.OrderedDict[str, np.ndarray]" = collections.OrderedDict()

    def visit(node, prefix: str):
        if isinstance(node, Mapping):
            for k, v in node.items():
                k = str(k)
                if SEP in k:
                    raise ValueError(f"checkpoint entry {prefix + k!r}: names must not contain {SEP!r}")
                if not prefix and k == "optimizer":
                    continue
                visit(v, f"{prefix}{k}{SEP}")
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                visit(v, f"{prefix}{i}{SEP}")
        elif node is None:
            return
        else:
            name = prefix[:-1]
            out[name] = np.ascontiguousarray(to_numpy(node, name))

    visit(checkpoint, "")
    if not out:
        raise ValueError("checkpoint holds no arrays")
    return out


def unflatten_checkpoint(flat: Mapping[str, np.ndarray]):
    """Inverse of ``flatten_checkpoint``: ``/``-joined names -> nested dicts; a dict whose
    keys are exactly ``0 .. n-1`` becomes a list; top-level 0-d integer arrays
    (``step``, ``epoch``) become ints. Names without ``/`` are returned as they are (a
    plain state_dict)."""
    if not any(SEP in k for k in flat):
        return collections.OrderedDict(flat)
    root: dict = collections.OrderedDict()
    for name, value in flat.items():
        parts = name.split(SEP)
        if any(p == "" for p in parts):
            raise ValueError(f"checkpoint entry {name!r}: empty name component")
        node = root
        for part in parts[:-1]:
            child = node.setdefault(part, collections.OrderedDict())
            if not isinstance(child, dict):
                raise ValueError(f"checkpoint entry {name!r} clashes with the array {part!r}")
            node = child
        if parts[-1] in node:
            raise ValueError(f"checkpoint entry {name!r} clashes with a group of the same name")
        node[parts[-1]] = value

    def lists(node, where):
        if not isinstance(node, dict):
            return node
        node = collections.OrderedDict((k, lists(v, f"{where}{k}{SEP}")) for k, v in node.items())
        if node and all(k.isdigit() for k in node):
            idx = sorted(int(k) for k in node)
            if idx != list(range(len(idx))):
                raise ValueError(f"checkpoint group {where[:-1]!r}: list entries must be numbered 0..{len(idx) - 1}, "
                                 f"got {idx[:10]}")
            return [node[str(i)] for i in idx]
        return node

    out = lists(root, "")
    for key in ("step", "epoch"):
        v = out.get(key)
        if isinstance(v, np.ndarray) and v.ndim == 0 and v.dtype.kind in "iu":
            out[key] = int(v)
    return out


# ------------------------------------------------------------------------ readers


def _check_readable(path) -> Path:
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"checkpoint path must be a str or os.PathLike, got {type(path).__name__} {path!r}")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint file {str(p)!r} does not exist")
    if p.is_dir():
        raise ValueError(f"checkpoint {str(p)!r} is a directory, not a checkpoint file "
                         f"(one of {', '.join(READ_SUFFIXES)}); an orbax directory loads with "
                         "jax_impl.convert.load_variables")
    if not p.is_file():
        raise ValueError(f"checkpoint {str(p)!r} is not a regular file")
    suffix = p.suffix.lower()
    if suffix not in READ_SUFFIXES:
        raise ValueError(f"checkpoint {str(p)!r}: unknown suffix {p.suffix!r}; readable formats are "
                         f"{', '.join(READ_SUFFIXES)}")
    if p.stat().st_size == 0:
        raise ValueError(f"checkpoint {str(p)!r} is empty (0 bytes)")
    return p


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


_ZIP_MAGIC = b"PK\x03\x04"


def _head(p: Path, n: int = 4) -> bytes:
    with open(p, "rb") as fh:
        return fh.read(n)


def _read_torch(p: Path):
    try:
        import torch  # the one lazy import: only when a .pth / .pt file is read
    except ImportError:
        raise ImportError(f"reading {str(p)!r} needs PyTorch, which is not installed; convert the file to "
                          ".npz or .safetensors where torch is available (spec.checkpoints."
                          "convert_checkpoint_file) and load that") from None
    if not zipfile.is_zipfile(p):
        head = _head(p)
        if head.startswith(_ZIP_MAGIC):
            raise _Unreadable("truncated or damaged (an incomplete zip archive)")
        if head[:1] != b"\x80":  # neither torch's zip format nor a legacy pickle
            raise _Unreadable("not a PyTorch checkpoint (neither a torch zip archive nor a pickle)")
    else:
        with zipfile.ZipFile(p) as zf:
            names = zf.namelist()
        if not any(n.endswith("data.pkl") for n in names):
            raise _Unreadable("a zip archive without data.pkl, not a PyTorch checkpoint")
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol note is noise next to our error
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 (every torch / pickle / zip failure gets the one message)
        raise _Unreadable(f"damaged, truncated or not a weights-only PyTorch checkpoint ({_short(e)})") from None
    return tree_to_numpy(obj, p.name)


def _read_npz(p: Path) -> "collections.OrderedDict[str, np.ndarray]":
    if not zipfile.is_zipfile(p):
        if _head(p).startswith(_ZIP_MAGIC):
            raise _Unreadable("truncated or damaged .npz archive (an incomplete zip archive)")
        raise _Unreadable("not an .npz archive (not a zip file)")
    try:
        with np.load(p, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):  # pragma: no cover (zip checked above)
                raise _Unreadable("not an .npz archive")
            out = collections.OrderedDict()
            for name in data.files:
                try:
                    out[name] = data[name]
                except ValueError as e:
                    if "allow_pickle" in str(e) or "Object arrays" in str(e):
                        raise _Unreadable(f"entry {name!r} is an object array (pickled Python objects), "
                                          "which is not allowed; store numeric arrays only") from None
                    raise
    except _Unreadable:
        raise
    except Exception as e:  # noqa: BLE001
        raise _Unreadable(f"damaged or truncated .npz archive ({_short(e)})") from None
    if not out:
        raise _Unreadable("the .npz archive holds no arrays")
    return out


def _read_safetensors(p: Path) -> "collections.OrderedDict[str, np.ndarray]":
    try:
        from safetensors import safe_open
    except ImportError:
        raise ImportError(f"reading {str(p)!r} needs the safetensors package (pip install safetensors)") from None
    try:
        with safe_open(str(p), framework="np") as fh:
            names = list(fh.keys())
            order = (fh.metadata() or {}).get(_ORDER_KEY)
            data = {name: fh.get_tensor(name) for name in names}
    except Exception as e:  # noqa: BLE001
        raise _Unreadable(f"damaged, truncated or not a safetensors file ({_short(e)})") from None
    if not data:
        raise _Unreadable("the safetensors file holds no tensors")
    try:  # the writer's order (state_dict order); the header itself is sorted by name
        order = json.loads(order) if order else None
    except ValueError:
        order = None
    if not (isinstance(order, list) and sorted(order) == sorted(data)):
        order = sorted(data, key=_natural_key)
    return collections.OrderedDict((name, data[name]) for name in order)


def _natural_key(name: str):
    """Sort ``a.10`` after ``a.9`` (safetensors stores names sorted as strings)."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in name.replace("/", ".").split(".")]


def read_checkpoint(path):
    """Read a checkpoint file into numpy containers (see the module docstring).

    Returns what the file holds: for ``.pth`` / ``.pt`` the unpickled object with tensors
    as numpy arrays (a dict, a state_dict, an ncsnv2 list); for ``.npz`` /
    ``.safetensors`` ``unflatten_checkpoint`` of the flat map.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: a directory, an unknown suffix, an empty / truncated / damaged /
        foreign file, object arrays -- one message naming the file and the problem.
      ImportError: a ``.pth`` without torch installed (the message says what to do).
    """
    p = _check_readable(path)
    suffix = p.suffix.lower()
    try:
        if suffix in TORCH_SUFFIXES:
            return _read_torch(p)
        if suffix == ".npz":
            return unflatten_checkpoint(_read_npz(p))
        return unflatten_checkpoint(_read_safetensors(p))
    except _Unreadable as e:
        raise ValueError(f"cannot read checkpoint {str(p)!r}: {e}") from None
    except ValueError as e:  # an unflatten problem: the names in the file
        raise ValueError(f"cannot read checkpoint {str(p)!r}: {e}") from None


def load_checkpoint(checkpoint):
    """``read_checkpoint(checkpoint)`` for a path; any other object is returned as it is
    (a checkpoint dict, list or state_dict already in memory)."""
    if isinstance(checkpoint, (str, os.PathLike)):
        return read_checkpoint(checkpoint)
    return checkpoint


# ------------------------------------------------------------------------ writers


def save_checkpoint(path, checkpoint) -> Path:
    """Write ``checkpoint`` (state_dict, score_sde dict or ncsnv2 list; numpy arrays or
    torch tensors) as ``.npz`` or ``.safetensors`` at ``path``, chosen by the suffix, in
    the flat layout of the module docstring. Atomic: written to a temporary file in the
    same directory and renamed. Returns the path."""
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in FLAT_SUFFIXES:
        raise ValueError(f"save_checkpoint: {str(p)!r} must end with one of {', '.join(FLAT_SUFFIXES)} "
                         "(torch .pth files are written by torch_ref.convert.save_state_dict)")
    if p.is_dir():
        raise ValueError(f"save_checkpoint: {str(p)!r} is a directory")
    flat = flatten_checkpoint(checkpoint)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".tmp_", suffix=suffix)
    os.close(fd)
    try:
        if suffix == ".npz":
            with open(tmp, "wb") as fh:
                np.savez(fh, **flat)
        else:
            from safetensors.numpy import save_file

            save_file(dict(flat), tmp, metadata={_ORDER_KEY: json.dumps(list(flat))})
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return p


def convert_checkpoint_file(src, dst) -> Path:
    """Read ``src`` (any readable format, e.g. an official ``.pth``) and write it to
    ``dst`` (``.npz`` / ``.safetensors``), so it loads later without torch."""
    return save_checkpoint(dst, read_checkpoint(src))
