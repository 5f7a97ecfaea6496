"""Training data: ``spec/datasets.py`` and its twins ``jax_impl/data.py`` / ``torch_ref/data.py``.

* every built-in set: shapes, dtypes, ranges, scales, the fixed digits split;
* user arrays (.npy / .npz) and image folders (PNG / JPEG): values, layouts, resizing;
* the iterator: same seed -> same batches, every epoch a permutation, wrap-around, a
  restored (JSON round-tripped) state continuing exactly across an epoch boundary, and
  flips / dequantisation reproducible, in range and independent of the batch size;
* every bad file and bad config value -> one clear error naming the file / the field;
* the JAX batch equals the torch batch transposed (NHWC vs NCHW).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from jax_impl import data as jdata
from spec import datasets as sd
from spec.datasets import BatchIterator, DataConfig, load_dataset
from spec.oracles.gmm import demo_mixture
from torch_ref import data as tdata

STANDARDISED = ("moons", "swiss_roll", "checkerboard", "rings")


# --- built-in sets ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sd.TOY_DATASETS)
def test_toy_sets_shapes_determinism_and_held_out_stream(name):
    train, test = load_dataset(DataConfig(name))
    assert train.shape == (10_000, 2) and test.shape == (5_000, 2)
    assert train.dtype == np.float32 and test.dtype == np.float32
    assert np.isfinite(train).all() and np.isfinite(test).all()
    again, again_test = load_dataset(DataConfig(name))
    np.testing.assert_array_equal(train, again)
    np.testing.assert_array_equal(test, again_test)
    # the test set comes from another stream: no point of it repeats a training point
    rows = train.view(np.int64)[:, 0]  # each row's two float32 bit patterns as one int64
    assert not np.isin(test.view(np.int64)[:, 0], rows).any()
    assert len(np.unique(rows)) == len(rows)
    other, _ = load_dataset(DataConfig(name, seed=1))
    assert not np.array_equal(train, other)
    small, small_test = load_dataset(DataConfig(name, num_train=64, num_test=32))
    assert small.shape == (64, 2) and small_test.shape == (32, 2)


@pytest.mark.parametrize("name", STANDARDISED)
def test_toy_sets_are_standardised(name):
    x = sd.make_toy_data(name, 200_000, np.random.default_rng(3)).astype(np.float64)
    np.testing.assert_allclose(x.mean(0), 0.0, atol=0.01)
    np.testing.assert_allclose(x.std(0), 1.0, atol=0.01)


def test_toy_set_geometry():
    s = math.sqrt(3.0) / 2.0
    board = sd.make_toy_data("checkerboard", 5_000, np.random.default_rng(0)) / s
    assert np.all(np.abs(board) <= 2.0 + 1e-5)
    assert np.all((np.floor(board[:, 0]) + np.floor(board[:, 1])) % 2 == 0)  # black squares only
    rings = sd.make_toy_data("rings", 5_000, np.random.default_rng(0))
    r = np.linalg.norm(rings, axis=1) * math.sqrt(30 / 128 + 0.02**2)
    assert np.min(np.abs(r[:, None] - np.array([0.25, 0.5, 0.75, 1.0])[None]), axis=1).max() < 0.12
    gmm = sd.make_toy_data("gmm", 50_000, np.random.default_rng(0)).astype(np.float64)
    mix = demo_mixture()
    np.testing.assert_allclose(gmm.mean(0), mix.mean, atol=0.02)
    np.testing.assert_allclose(np.cov(gmm.T), mix.cov, atol=0.02)
    # gmm samples are exactly demo_mixture().sample on the train stream
    train, _ = load_dataset(DataConfig("gmm", num_train=100))
    ref, _ = mix.sample(np.random.default_rng([0, 0, 0, 0]), 100)
    np.testing.assert_array_equal(train, ref.astype(np.float32))


def test_digits_fixed_split_shapes_and_range():
    train, test = load_dataset(DataConfig("digits"))
    assert train.shape == (1438, 8, 8, 1) and test.shape == (359, 8, 8, 1)
    assert train.dtype == np.float32
    assert train.min() == -1.0 and train.max() == 1.0
    levels = (train + 1.0) / 2.0 * 16.0
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-5)  # the 17 levels 0..16
    # fixed: independent of config.seed; the split is a partition of the 1797 images
    again, again_test = load_dataset(DataConfig("digits", seed=7))
    np.testing.assert_array_equal(train, again)
    np.testing.assert_array_equal(test, again_test)
    tr_idx, te_idx = sd.split_indices(1797, 0.2)
    assert len(tr_idx) == 1438 and len(te_idx) == 359
    np.testing.assert_array_equal(np.sort(np.concatenate([tr_idx, te_idx])), np.arange(1797))
    from sklearn.datasets import load_digits

    raw = load_digits().images
    np.testing.assert_allclose(test[..., 0], raw[te_idx] / 8.0 - 1.0, atol=1e-6)
    unit, _ = load_dataset(DataConfig("digits", centered=False))
    np.testing.assert_allclose(unit, (train + 1.0) / 2.0, atol=1e-6)
    assert unit.min() == 0.0 and unit.max() == 1.0


def test_digits_options():
    rgb, _ = load_dataset(DataConfig("digits", num_channels=3, num_train=10, num_test=5))
    assert rgb.shape == (10, 8, 8, 3)
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
    big, big_test = load_dataset(DataConfig("digits", image_size=16, num_train=20, num_test=4))
    assert big.shape == (20, 16, 16, 1) and big_test.shape == (4, 16, 16, 1)
    assert big.min() >= -1.0 and big.max() <= 1.0
    tr, te = load_dataset(DataConfig("digits", test_fraction=0.5))
    assert tr.shape[0] + te.shape[0] == 1797 and te.shape[0] == 898


# --- user data ---------------------------------------------------------------------------------


def _images(n=6, h=5, w=4, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def test_user_arrays(tmp_path):
    img = _images()
    np.save(tmp_path / "u8.npy", img)
    train, test = load_dataset(DataConfig("array", path=str(tmp_path / "u8.npy")))
    assert train.shape == (6, 5, 4, 3) and test.shape == (0, 5, 4, 3)
    np.testing.assert_allclose(train, img / 127.5 - 1.0, atol=1e-6)
    unit, _ = load_dataset(DataConfig("array", path=tmp_path / "u8.npy", centered=False))
    np.testing.assert_allclose(unit, img / 255.0, atol=1e-6)
    np.save(tmp_path / "i64.npy", img.astype(np.int64))
    i64, _ = load_dataset(DataConfig("array", path=str(tmp_path / "i64.npy")))
    np.testing.assert_array_equal(i64, train)
    f01 = img.astype(np.float32) / 255.0
    for dtype in (np.float16, np.float64):
        np.save(tmp_path / "f.npy", f01.astype(dtype))
        fx, _ = load_dataset(DataConfig("array", path=str(tmp_path / "f.npy")))
        assert fx.dtype == np.float32
        np.testing.assert_allclose(fx, train, atol=2e-3 if dtype == np.float16 else 1e-6)
    np.savez(tmp_path / "f.npz", images=f01)
    f, _ = load_dataset(DataConfig("array", path=str(tmp_path / "f.npz")))
    np.testing.assert_allclose(f, train, atol=1e-6)
    np.savez(tmp_path / "pm1.npz", images=f01 * 2 - 1, labels=np.arange(6))
    pm1, _ = load_dataset(DataConfig("array", path=str(tmp_path / "pm1.npz"), array_key="images",
                                     value_range=(-1, 1)))
    np.testing.assert_allclose(pm1, train, atol=1e-6)
    tr, te = load_dataset(DataConfig("array", path=str(tmp_path / "u8.npy"), test_fraction=0.5))
    assert tr.shape[0] == 3 and te.shape[0] == 3
    small, _ = load_dataset(DataConfig("array", path=str(tmp_path / "u8.npy"), image_size=8))
    assert small.shape == (6, 8, 8, 3) and small.min() >= -1 and small.max() <= 1


def test_image_folder(tmp_path):
    from PIL import Image

    rgb, grey = _images(3, 6, 6, 3), _images(2, 6, 6, 1, seed=1)[..., 0]
    for i, a in enumerate(rgb):
        Image.fromarray(a).save(tmp_path / f"a{i}.png")
    for i, a in enumerate(grey):
        Image.fromarray(a).save(tmp_path / f"b{i}.PNG")
    (tmp_path / "notes.txt").write_text("ignored")
    train, _ = load_dataset(DataConfig("folder", path=str(tmp_path)))
    assert train.shape == (5, 6, 6, 3)  # colour present -> RGB; sorted by name
    np.testing.assert_allclose(train[:3], rgb / 127.5 - 1.0, atol=1e-6)  # PNG is lossless
    np.testing.assert_allclose(train[3:], np.repeat(grey[..., None], 3, -1) / 127.5 - 1.0, atol=1e-6)
    g, _ = load_dataset(DataConfig("folder", path=str(tmp_path), num_channels=1, centered=False))
    assert g.shape == (5, 6, 6, 1) and 0.0 <= g.min() and g.max() <= 1.0
    only_grey = tmp_path / "grey"
    only_grey.mkdir()
    for i, a in enumerate(grey):
        Image.fromarray(a).save(only_grey / f"g{i}.png")
    Image.fromarray(_images(1, 10, 14, 3)[0]).save(only_grey / "wide.jpg", quality=95)
    mixed, _ = load_dataset(DataConfig("folder", path=str(only_grey), image_size=4))
    assert mixed.shape == (3, 4, 4, 3)
    just_grey = tmp_path / "g2"
    just_grey.mkdir()
    Image.fromarray(grey[0]).save(just_grey / "x.jpeg")
    jg, _ = load_dataset(DataConfig("folder", path=str(just_grey)))
    assert jg.shape == (1, 6, 6, 1)  # all grey -> one channel


# --- the iterator ------------------------------------------------------------------------------


def _toy(n=10):
    return np.arange(n * 2, dtype=np.float32).reshape(n, 2)


def _ids(batch):
    return (np.asarray(batch)[:, 0] // 2).astype(int).tolist()


def test_order_is_a_pure_function_of_seed_and_epoch():
    x = _toy(10)
    a, b = BatchIterator(x, 5, seed=3), BatchIterator(x, 5, seed=3)
    seq_a = [_ids(a.next()) for _ in range(6)]
    assert seq_a == [_ids(b.next()) for _ in range(6)]
    for e in range(3):  # every epoch is a permutation of all examples
        assert sorted(seq_a[2 * e] + seq_a[2 * e + 1]) == list(range(10))
        assert seq_a[2 * e] + seq_a[2 * e + 1] == a.permutation(e).tolist()
    assert seq_a[0:2] != seq_a[2:4]  # epochs are shuffled differently
    c = BatchIterator(x, 5, seed=4)
    assert [_ids(c.next()) for _ in range(2)] != seq_a[:2]


def test_wrap_around_and_batch_at():
    x = _toy(10)
    it = BatchIterator(x, 3, seed=0)
    stream = np.concatenate([it.permutation(0), it.permutation(1), it.permutation(2)])
    batches = [_ids(it.next()) for _ in range(8)]
    assert sum(batches, []) == stream[:24].tolist()  # batch 3 holds epoch 0's last + epoch 1's first
    assert it.state["epoch"] == 2 and it.state["index"] == 4
    fresh = BatchIterator(x, 3, seed=0)
    assert [_ids(fresh.batch_at(k)) for k in range(8)] == batches
    assert fresh.state["epoch"] == 0 and fresh.state["index"] == 0  # batch_at does not move
    assert [len(b) for b in batches] == [3] * 8


def test_restored_state_continues_across_an_epoch_boundary():
    x = _toy(10)
    full = BatchIterator(x, 3, seed=5)
    reference = [_ids(full.next()) for _ in range(12)]
    first = BatchIterator(x, 3, seed=5)
    head = [_ids(first.next()) for _ in range(3)]  # stops at index 9 of epoch 0
    state = json.loads(json.dumps(first.state))
    assert state == {"epoch": 0, "index": 9, "seed": 5, "num_examples": 10, "batch_size": 3}
    resumed = BatchIterator.restore(x, 3, state)
    tail = [_ids(resumed.next()) for _ in range(9)]  # the next batch crosses into epoch 1
    assert head + tail == reference
    other = BatchIterator(x, 3, seed=5)
    other.set_state(state)
    assert [_ids(other.next()) for _ in range(9)] == tail
    # the position counts examples: another batch size continues the same example order
    wider = BatchIterator.restore(x, 6, state)
    assert _ids(wider.next()) + _ids(wider.next()) == sum(reference[3:7], [])


def _images_data(n=12, seed=0):
    return (np.random.default_rng(seed).integers(0, 17, (n, 4, 6, 1)) / 8.0 - 1.0).astype(np.float32)


def test_flips_and_dequantisation_are_reproducible_and_in_range():
    x = _images_data()
    kw = dict(seed=2, random_flip=True, uniform_dequantization=True, num_bins=17)
    a, b = BatchIterator(x, 4, **kw), BatchIterator(x, 4, **kw)
    out_a = np.concatenate([a.next() for _ in range(9)])  # 3 epochs
    out_b = np.concatenate([b.next() for _ in range(9)])
    np.testing.assert_array_equal(out_a, out_b)
    assert out_a.min() >= -1.0 and out_a.max() <= 1.0
    # the same stream with another batch size (augmentation is per example position)
    c = BatchIterator(x, 6, **kw)
    np.testing.assert_array_equal(np.concatenate([c.next() for _ in range(6)]), out_a)
    # resumed mid-epoch: identical augmented batches
    d = BatchIterator(x, 4, **kw)
    d.next(), d.next()
    no_seed = {k: v for k, v in kw.items() if k != "seed"}  # restore takes the state's seed
    e = BatchIterator.restore(x, 4, json.loads(json.dumps(d.state)), **no_seed)
    np.testing.assert_array_equal(np.concatenate([e.next() for _ in range(7)]), out_a[8:])
    # each output is its example, maybe mirrored, plus noise in [0, 2/K) on the centred scale
    order = np.concatenate([a.permutation(ep) for ep in range(3)])
    clean = x[order]
    flipped_count = 0
    for j in range(len(order)):
        rng = a.example_rng(j // 12, j % 12)
        flipped = rng.random() < 0.5
        u = rng.random(x.shape[1:], dtype=np.float32)
        src = clean[j][:, ::-1] if flipped else clean[j]
        flipped_count += flipped
        np.testing.assert_allclose(out_a[j], sd.dequantize(src, u, num_bins=17), atol=1e-6)
        v, v_out = (src + 1) / 2, (out_a[j] + 1) / 2
        noise = v_out - 16.0 / 17.0 * v
        assert noise.min() >= -1e-6 and noise.max() < 1.0 / 17.0 + 1e-6
    assert 6 <= flipped_count <= 30  # about half of 36
    # only flips: an exact mirror or the original
    f = BatchIterator(x, 12, seed=2, random_flip=True)
    out = f.next()
    src = x[f.permutation(0)]
    mirrored = [np.array_equal(o, s[:, ::-1]) for o, s in zip(out, src)]
    assert all(m or np.array_equal(o, s) for m, o, s in zip(mirrored, out, src)) and any(mirrored)


def test_dequantisation_formula_in_both_ranges():
    v = np.array([0.0, 0.5, 1.0], np.float32)
    u = np.array([0.0, 0.25, 0.999], np.float32)
    expect = (255 * v + u) / 256
    np.testing.assert_allclose(sd.dequantize(v, u, centered=False), expect, rtol=1e-6)
    np.testing.assert_allclose(sd.dequantize(2 * v - 1, u), 2 * expect - 1, rtol=1e-6, atol=1e-7)
    cfg = DataConfig("digits", uniform_dequantization=True, centered=False)
    it = BatchIterator.from_config(cfg, _images_data() * 0.5 + 0.5, 4)
    assert (it.num_bins, it.centered, it.seed) == (17, False, 0)
    b = it.next()
    assert b.min() >= 0.0 and b.max() <= 1.0


def test_config_json_round_trip():
    cfg = DataConfig("array", path="x.npy", value_range=[-1, 1], random_flip=True)
    assert cfg.value_range == (-1.0, 1.0)
    back = DataConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and hash(back) == hash(cfg)
    assert DataConfig("digits").is_image and not DataConfig("rings").is_image


# --- bad files: one clear error naming the file and the argument --------------------------------


def _bad_files(tmp):
    """(label, config kwargs, expected exception, the path the message must name)."""
    from PIL import Image

    cases = []

    def arr(label, name, value, exc=ValueError, **kw):
        p = tmp / name
        if callable(value):
            value(p)
        else:
            np.save(p, value, allow_pickle=True)
        cases.append((label, dict(dataset="array", path=str(p), **kw), exc, p))

    cases.append(("missing file", dict(dataset="array", path=str(tmp / "nope.npy")),
                  FileNotFoundError, tmp / "nope.npy"))
    cases.append(("missing folder", dict(dataset="folder", path=str(tmp / "nodir")),
                  FileNotFoundError, tmp / "nodir"))
    arr("empty file", "empty.npy", lambda p: p.write_bytes(b""))
    arr("unreadable .npy", "junk.npy", lambda p: p.write_bytes(b"not a numpy file at all"))
    arr("unreadable .npz", "junk.npz", lambda p: p.write_bytes(b"PK\x03\x04 broken zip"))
    arr("wrong suffix", "data.txt", lambda p: p.write_text("1 2 3"))
    arr("rank 3", "rank3.npy", np.zeros((4, 5, 5), np.uint8))
    arr("rank 5", "rank5.npy", np.zeros((1, 4, 5, 5, 1), np.uint8))
    arr("object dtype", "obj.npy", np.array([[[[None]]]], dtype=object))
    arr("complex dtype", "cplx.npy", np.zeros((2, 3, 3, 1), np.complex64))
    arr("bool dtype", "bool.npy", np.zeros((2, 3, 3, 1), bool))
    arr("string dtype", "str.npy", np.full((2, 3, 3, 1), "a"))
    arr("float above [0, 1]", "big.npy", np.full((2, 3, 3, 1), 1.5, np.float32))
    arr("float below [0, 1]", "neg.npy", np.full((2, 3, 3, 1), -0.5, np.float32))
    arr("float outside [-1, 1]", "pm.npy", np.full((2, 3, 3, 1), 2.0, np.float32), value_range=(-1, 1))
    arr("0..255 float in [0, 1] range", "f255.npy", np.full((2, 3, 3, 1), 255.0))
    arr("int above 255", "i16.npy", np.full((2, 3, 3, 1), 300, np.int16))
    arr("negative int", "ineg.npy", np.full((2, 3, 3, 1), -1, np.int32))
    arr("NaN", "nan.npy", np.full((2, 3, 3, 1), np.nan, np.float32))
    arr("Inf", "inf.npy", np.full((2, 3, 3, 1), np.inf, np.float64))
    arr("no images", "zero.npy", np.zeros((0, 3, 3, 1), np.uint8))
    arr("npz with two arrays", "two.npz", lambda p: np.savez(p, a=np.zeros((1, 2, 2, 1)), b=np.zeros(1)))
    arr("npz without the key", "key.npz", lambda p: np.savez(p, a=np.zeros((1, 2, 2, 1))), array_key="x")
    arr("npz with no arrays", "none.npz", lambda p: np.savez(p))
    arr("channels != num_channels", "c3.npy", np.zeros((2, 3, 3, 3), np.uint8), num_channels=1)
    d = tmp / "a_dir"
    d.mkdir()
    cases.append(("directory as array", dict(dataset="array", path=str(d)), ValueError, d))
    f = tmp / "one.png"
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(f)
    cases.append(("file as folder", dict(dataset="folder", path=str(f)), ValueError, f))
    no_img = tmp / "no_images"
    no_img.mkdir()
    (no_img / "readme.txt").write_text("x")
    cases.append(("folder without images", dict(dataset="folder", path=str(no_img)), ValueError, no_img))
    corrupt = tmp / "corrupt"
    corrupt.mkdir()
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(corrupt / "a.png")
    (corrupt / "b.png").write_bytes(b"\x89PNG not really")
    cases.append(("corrupt image", dict(dataset="folder", path=str(corrupt)), ValueError, corrupt / "b.png"))
    empty_img = tmp / "empty_img"
    empty_img.mkdir()
    (empty_img / "a.jpg").write_bytes(b"")
    cases.append(("empty image", dict(dataset="folder", path=str(empty_img)), ValueError,
                  empty_img / "a.jpg"))
    sizes = tmp / "sizes"
    sizes.mkdir()
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(sizes / "a.png")
    Image.fromarray(np.zeros((4, 3), np.uint8)).save(sizes / "b.png")
    cases.append(("images of different sizes", dict(dataset="folder", path=str(sizes)), ValueError,
                  sizes / "b.png"))
    return cases


BAD_FILE_LABELS = (
    "missing file", "missing folder", "empty file", "unreadable .npy", "unreadable .npz",
    "wrong suffix", "rank 3", "rank 5", "object dtype", "complex dtype", "bool dtype",
    "string dtype", "float above [0, 1]", "float below [0, 1]", "float outside [-1, 1]",
    "0..255 float in [0, 1] range", "int above 255", "negative int", "NaN", "Inf", "no images",
    "npz with two arrays", "npz without the key", "npz with no arrays", "channels != num_channels",
    "directory as array", "file as folder", "folder without images", "corrupt image",
    "empty image", "images of different sizes",
)
# what the message must say besides the file (one word or phrase per case)
BAD_FILE_WORDS = {
    "empty file": "empty", "unreadable .npy": "cannot be read", "unreadable .npz": "cannot be read",
    "wrong suffix": ".npy or .npz", "rank 3": "rank 3", "rank 5": "rank 5", "object dtype": "object",
    "complex dtype": "complex", "bool dtype": "bool", "string dtype": "<U1",
    "float above [0, 1]": "value_range", "float below [0, 1]": "value_range",
    "float outside [-1, 1]": "value_range=(-1, 1)", "0..255 float in [0, 1] range": "value_range",
    "int above 255": "0..255", "negative int": "0..255", "NaN": "NaN", "Inf": "Inf",
    "no images": "no images", "npz with two arrays": "array_key", "npz without the key": "'x'",
    "npz with no arrays": "no arrays", "channels != num_channels": "num_channels=1",
    "directory as array": "directory", "file as folder": "is a file",
    "folder without images": "no images", "corrupt image": "cannot be read as an image",
    "empty image": "empty", "images of different sizes": "image_size", "missing file": "no such file",
    "missing folder": "no such file",
}


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    return {c[0]: c for c in _bad_files(tmp_path_factory.mktemp("bad"))}


def test_bad_file_cases_are_all_covered(bad_files):
    assert tuple(bad_files) == BAD_FILE_LABELS and set(BAD_FILE_WORDS) == set(BAD_FILE_LABELS)
    assert len(BAD_FILE_LABELS) == 31


@pytest.mark.parametrize("label", BAD_FILE_LABELS)
def test_bad_file_raises_one_clear_error_naming_the_file(bad_files, label):
    _, kw, exc, path = bad_files[label]
    with pytest.raises(exc) as info:
        load_dataset(DataConfig(**kw))
    msg = str(info.value)
    assert type(info.value) in (ValueError, FileNotFoundError)
    assert msg.startswith("data.path") and str(path) in msg, msg
    assert BAD_FILE_WORDS[label] in msg, msg
    err = info.value  # one error, not a chain of tracebacks
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)


# --- bad config values -------------------------------------------------------------------------


BAD_CONFIGS = [
    (dict(dataset="cifar"), ValueError, "'digits'"),
    (dict(dataset="digits", image_size=0), ValueError, "data.image_size"),
    (dict(dataset="digits", image_size=8.0), TypeError, "data.image_size"),
    (dict(dataset="digits", num_channels=2), ValueError, "data.num_channels"),
    (dict(dataset="digits", test_fraction=1.0), ValueError, "data.test_fraction"),
    (dict(dataset="digits", test_fraction=-0.1), ValueError, "data.test_fraction"),
    (dict(dataset="digits", centered="yes"), TypeError, "data.centered"),
    (dict(dataset="digits", random_flip=1), TypeError, "data.random_flip"),
    (dict(dataset="digits", path="x.npy"), ValueError, "data.path"),
    (dict(dataset="gmm", num_train=0), ValueError, "data.num_train"),
    (dict(dataset="gmm", seed=-1), ValueError, "data.seed"),
    (dict(dataset="gmm", random_flip=True), ValueError, "data.random_flip"),
    (dict(dataset="rings", uniform_dequantization=True), ValueError, "data.uniform_dequantization"),
    (dict(dataset="moons", image_size=8), ValueError, "data.image_size"),
    (dict(dataset="array"), ValueError, "data.path"),
    (dict(dataset="folder", path=3), TypeError, "data.path"),
    (dict(dataset="array", path="x.npy", value_range=(0, 255)), ValueError, "data.value_range"),
    (dict(dataset="array", path="x.npy", value_range="0,1"), TypeError, "data.value_range"),
]


@pytest.mark.parametrize("kw, exc, words", BAD_CONFIGS, ids=[str(i) for i in range(len(BAD_CONFIGS))])
def test_bad_config_values(kw, exc, words):
    with pytest.raises(exc, match=None) as info:
        DataConfig(**kw)
    assert words in str(info.value)


def test_bad_loader_and_iterator_arguments():
    with pytest.raises(ValueError, match="data.num_train=2000 is larger than the 1438"):
        load_dataset(DataConfig("digits", num_train=2000))
    with pytest.raises(TypeError, match="DataConfig"):
        load_dataset({"dataset": "digits"})
    with pytest.raises(ValueError, match="valid fields"):
        DataConfig.from_dict({"dataset": "gmm", "batch": 3})
    x = _toy(10)
    for bs, exc in ((0, ValueError), (-2, ValueError), (2.5, TypeError), (True, TypeError)):
        with pytest.raises(exc, match="batch_size"):
            BatchIterator(x, bs)
    with pytest.raises(ValueError, match=r"batch_size=11 is larger than the dataset \(10 examples\)"):
        BatchIterator(x, 11)
    with pytest.raises(TypeError, match="float"):
        BatchIterator(np.arange(10).reshape(5, 2), 2)
    with pytest.raises(ValueError, match="non-empty"):
        BatchIterator(np.zeros((0, 2), np.float32), 1)
    with pytest.raises(ValueError, match="images"):
        BatchIterator(x, 2, random_flip=True)
    with pytest.raises(ValueError, match="seed"):
        BatchIterator(x, 2, seed=-1)
    state = BatchIterator(x, 2, seed=1).state
    for bad, words in (({**state, "seed": 2}, "state['seed']"),
                       ({**state, "num_examples": 9}, "num_examples"),
                       ({k: v for k, v in state.items() if k != "index"}, "missing"),
                       ({**state, "index": 10}, "out of range")):
        with pytest.raises(ValueError, match=None) as info:
            BatchIterator(x, 2, seed=1).set_state(bad)
        assert words in str(info.value)
    with pytest.raises(TypeError, match="state"):
        BatchIterator(x, 2).set_state([0, 1])


# --- the framework twins -----------------------------------------------------------------------


def test_jax_and_torch_batches_are_the_same_numbers():
    cfg = DataConfig("digits", random_flip=True, uniform_dequantization=True)
    jtrain, jtest = jdata.load_dataset(cfg)
    ttrain, ttest = tdata.load_dataset(cfg)
    assert jtrain.shape == (1438, 8, 8, 1) and tuple(ttrain.shape) == (1438, 1, 8, 8)
    assert jtrain.dtype == np.float32 and ttrain.dtype == torch.float32
    np.testing.assert_array_equal(np.asarray(jtest), ttest.permute(0, 2, 3, 1).numpy())
    # each twin accepts its own framework's arrays and yields its own layout
    jit = jdata.BatchIterator.from_config(cfg, jtrain, 16)
    tit = tdata.BatchIterator.from_config(cfg, ttrain, 16)
    spec_it = BatchIterator.from_config(cfg, load_dataset(cfg)[0], 16)
    for _ in range(3):
        jb, tb, sb = jit.next(), tit.next(), spec_it.next()
        assert tuple(jb.shape) == (16, 8, 8, 1) and tuple(tb.shape) == (16, 1, 8, 8)
        assert tb.is_contiguous()
        np.testing.assert_array_equal(np.asarray(jb), tb.permute(0, 2, 3, 1).numpy())
        np.testing.assert_array_equal(np.asarray(jb), sb)
    assert jit.state == tit.state == spec_it.state
    # a run may resume in the other framework
    resumed = tdata.BatchIterator.restore(ttrain, 16, json.loads(json.dumps(jit.state)),
                                          random_flip=True, uniform_dequantization=True, num_bins=17)
    np.testing.assert_array_equal(np.asarray(jit.next()), resumed.next().permute(0, 2, 3, 1).numpy())
    np.testing.assert_array_equal(np.asarray(jit.batch_at(5)), tit.batch_at(5).permute(0, 2, 3, 1).numpy())
    # 2-D sets: the same [B, 2] on both sides
    toy = DataConfig("moons", num_train=64)
    jb = next(iter(jdata.BatchIterator.from_config(toy, jdata.load_dataset(toy)[0], 8)))
    tb = next(iter(tdata.BatchIterator.from_config(toy, tdata.load_dataset(toy)[0], 8)))
    assert tuple(jb.shape) == tuple(tb.shape) == (8, 2)
    np.testing.assert_array_equal(np.asarray(jb), tb.numpy())
    assert jdata.to_framework(np.zeros((2, 3), np.float64)).dtype == np.float32
    assert tdata.to_framework(np.zeros((2, 3, 4, 5)), dtype=torch.float64).shape == (2, 5, 3, 4)
    for to_framework in (jdata.to_framework, tdata.to_framework):
        with pytest.raises(TypeError, match="float"):
            to_framework(np.zeros((2, 2), np.int32))


# --- class labels and per-process shards -------------------------------------------------------


def test_digit_labels_are_aligned_with_the_split():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    cfg = DataConfig("digits")
    (train, test), (y_train, y_test) = load_dataset(cfg), sd.load_labels(cfg)
    assert y_train.dtype == np.int64 and y_train.shape == (1438,) and y_test.shape == (359,)
    train_idx, test_idx = sd.split_indices(1797, 0.2)
    for x, y, idx in ((train, y_train, train_idx), (test, y_test, test_idx)):
        np.testing.assert_array_equal(y, bunch.target[idx])
        np.testing.assert_allclose(x[..., 0], bunch.images[idx] / 8.0 - 1.0, atol=1e-6)
    assert set(np.unique(y_train)) == set(range(10))
    capped = DataConfig("digits", num_train=10, num_test=5, test_fraction=0.5, num_channels=3)
    y10, y5 = sd.load_labels(capped)
    tr, te = sd.split_indices(1797, 0.5)
    np.testing.assert_array_equal(y10, bunch.target[tr[:10]])
    np.testing.assert_array_equal(y5, bunch.target[te[:5]])


def test_toy_labels_are_the_mixture_components():
    for name, k in sd.TOY_COMPONENTS.items():
        cfg = DataConfig(name, num_train=4000, num_test=1000, seed=2)
        (train, test), (y_train, y_test) = load_dataset(cfg), sd.load_labels(cfg)
        assert y_train.shape == (4000,) and y_test.shape == (1000,) and y_train.dtype == np.int64
        assert set(np.unique(y_train)) == set(range(k))
        # the same points, from the same random numbers
        x, c = sd.make_toy_data(name, 300, np.random.default_rng(5), return_components=True)
        np.testing.assert_array_equal(x, sd.make_toy_data(name, 300, np.random.default_rng(5)))
        assert c.shape == (300,)
    # each label is the component the point lies in
    x, c = sd.make_toy_data("gmm", 500, np.random.default_rng(1), return_components=True)
    _, ref = demo_mixture().sample(np.random.default_rng(1), 500)
    np.testing.assert_array_equal(c, ref)
    x, c = sd.make_toy_data("rings", 2000, np.random.default_rng(1), return_components=True)
    r = np.linalg.norm(x, axis=1) * math.sqrt(30 / 128 + 0.02**2)
    np.testing.assert_array_equal(np.argmin(np.abs(r[:, None] - np.array([0.25, 0.5, 0.75, 1.0])), axis=1), c)
    x, c = sd.make_toy_data("checkerboard", 2000, np.random.default_rng(1), return_components=True)
    b = np.floor(x / (math.sqrt(3.0) / 2.0)).astype(int) + 2  # column, row 0..3
    np.testing.assert_array_equal(c // 2, b[:, 0])
    assert len({(cc, row) for cc, row in zip(c, b[:, 1])}) == 8  # one square per label
    x, c = sd.make_toy_data("moons", 2000, np.random.default_rng(1), return_components=True)
    std_y = math.sqrt(9 / 16 - 1 / math.pi + 0.05**2)
    upper_y = x[c == 0, 1] * std_y + 0.25  # sin t + noise, >= -0.2
    assert upper_y.min() > -0.25 and (x[c == 1, 1] * std_y + 0.25).max() < 0.75
    with pytest.raises(ValueError, match="'swiss_roll' has no class labels"):
        sd.load_labels(DataConfig("swiss_roll"))
    with pytest.raises(ValueError, match="not a mixture"):
        sd.make_toy_data("swiss_roll", 4, np.random.default_rng(0), return_components=True)


def test_user_array_labels(tmp_path):
    img = _images(n=10)
    labels = np.arange(10) % 3
    np.savez(tmp_path / "l.npz", images=img, labels=labels)
    np.savez(tmp_path / "y.npz", y=labels.astype(np.uint8), images=img)
    for name in ("l.npz", "y.npz"):
        cfg = DataConfig("array", path=str(tmp_path / name), test_fraction=0.3)
        (train, test), (y_train, y_test) = load_dataset(cfg), sd.load_labels(cfg)  # no array_key needed
        tr, te = sd.split_indices(10, 0.3)
        np.testing.assert_array_equal(y_train, labels[tr])
        np.testing.assert_array_equal(y_test, labels[te])
        np.testing.assert_allclose(train, img[tr] / 127.5 - 1.0, atol=1e-6)
        assert y_train.dtype == np.int64
    np.save(tmp_path / "u8.npy", img)
    np.savez(tmp_path / "none.npz", images=img)
    np.savez(tmp_path / "float.npz", images=img, labels=labels.astype(np.float32))
    np.savez(tmp_path / "short.npz", images=img, labels=labels[:9])
    np.savez(tmp_path / "neg.npz", images=img, labels=labels - 1)
    for name, words in (("u8.npy", "a .npy file holds no class labels"),
                        ("none.npz", "holds no class labels: no array 'labels' or 'y'"),
                        ("float.npz", "must be integers [N]; got dtype float32"),
                        ("short.npz", "hold 9 entries but it holds 10 images"),
                        ("neg.npz", "must be >= 0")):
        with pytest.raises(ValueError) as info:
            sd.load_labels(DataConfig("array", path=str(tmp_path / name)))
        msg = str(info.value)
        assert msg.startswith("data.path") and name in msg and words in msg, msg
    (tmp_path / "imgs").mkdir()
    with pytest.raises(ValueError, match="'folder' has no class labels"):
        sd.load_labels(DataConfig("folder", path=str(tmp_path / "imgs")))
    with pytest.raises(TypeError, match="DataConfig"):
        sd.load_labels("digits")


def test_labelled_batches_and_shards_union_to_the_global_batch():
    cfg = DataConfig("digits", random_flip=True, uniform_dequantization=True, num_train=100)
    train, _ = load_dataset(cfg)
    y_train, _ = sd.load_labels(cfg)
    plain = BatchIterator.from_config(cfg, train, 24)
    labelled = BatchIterator.from_config(cfg, train, 24, labels=y_train)
    shards = [BatchIterator.from_config(cfg, train, 24, labels=y_train, shard_index=i, shard_count=4)
              for i in range(4)]
    assert shards[0].local_batch_size == 6 and labelled.local_batch_size == 24
    # unaugmented rows tell which example each is: its label must be that example's
    raw = BatchIterator(train, 24, labels=y_train)
    for step in range(6):  # 6 * 24 = 144 > 100: crosses an epoch boundary
        x = plain.next()
        xl, yl = labelled.next()
        assert yl.dtype == np.int64 and yl.shape == (24,)
        np.testing.assert_array_equal(x, xl)  # labels do not change x
        parts = [s.next() for s in shards]
        np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), x)
        np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), yl)
        rx, ry = raw.next()
        rows = [int(np.flatnonzero((train == r).all(axis=(1, 2, 3)))[0]) for r in rx]
        np.testing.assert_array_equal(ry, y_train[rows])
        np.testing.assert_array_equal(ry, yl)
        assert all(s.state == labelled.state for s in shards)
    np.testing.assert_array_equal(shards[3].batch_at(9)[0], labelled.batch_at(9)[0][18:])
    # a state saved by the 1-shard iterator restores in any shard of another count
    state = json.loads(json.dumps(labelled.state))
    expect_x, expect_y = labelled.next()
    for count in (1, 2, 3):
        got = [BatchIterator.restore(train, 24, state, random_flip=True, uniform_dequantization=True,
                                     num_bins=17, labels=y_train, shard_index=i, shard_count=count).next()
               for i in range(count)]
        np.testing.assert_array_equal(np.concatenate([g[0] for g in got]), expect_x)
        np.testing.assert_array_equal(np.concatenate([g[1] for g in got]), expect_y)


def test_label_and_shard_argument_errors():
    x = _toy(12)
    with pytest.raises(ValueError, match=r"batch_size=6 \(the global batch\) is not divisible by shard_count=4"):
        BatchIterator(x, 6, shard_count=4)
    with pytest.raises(ValueError, match="shard_index=2 is out of range for shard_count=2"):
        BatchIterator(x, 4, shard_index=2, shard_count=2)
    for kw, exc, words in ((dict(shard_count=0), ValueError, "shard_count"),
                           (dict(shard_index=-1), ValueError, "shard_index"),
                           (dict(shard_count=1.5), TypeError, "shard_count"),
                           (dict(labels=np.zeros(11, np.int64)), ValueError, "labels hold 11 entries"),
                           (dict(labels=np.zeros(12, np.float32)), TypeError, "integer"),
                           (dict(labels=np.zeros((12, 1), np.int64)), TypeError, "labels")):
        with pytest.raises(exc) as info:
            BatchIterator(x, 4, **kw)
        assert words in str(info.value)


def test_jax_and_torch_labelled_shards_are_the_same_numbers():
    cfg = DataConfig("digits", num_train=40)
    y_train, _ = jdata.load_labels(cfg)
    assert tdata.load_labels is sd.load_labels
    jit = jdata.BatchIterator.from_config(cfg, jdata.load_dataset(cfg)[0], 8, labels=y_train,
                                          shard_index=1, shard_count=2)
    tit = tdata.BatchIterator.from_config(cfg, tdata.load_dataset(cfg)[0], 8,
                                          labels=torch.as_tensor(y_train), shard_index=1, shard_count=2)
    (jx, jy), (tx, ty) = jit.next(), tit.next()
    assert jy.dtype == np.int32 and ty.dtype == torch.int64
    assert tuple(jx.shape) == (4, 8, 8, 1) and tuple(tx.shape) == (4, 1, 8, 8)
    np.testing.assert_array_equal(np.asarray(jy), ty.numpy())
    sx, sy = BatchIterator(np.asarray(jdata.load_dataset(cfg)[0]), 8, labels=y_train).next()
    np.testing.assert_array_equal(np.asarray(jy), sy[4:])
    np.testing.assert_array_equal(np.asarray(jx), sx[4:])
    np.testing.assert_array_equal(np.asarray(jx), tx.permute(0, 2, 3, 1).numpy())
