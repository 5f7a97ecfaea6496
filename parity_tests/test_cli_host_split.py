"""The command line's default host split (``scorediff.distributed``, issue 11): with
``SCOREDIFF_HOST_DEVICES`` unset, ``sample`` / ``evaluate`` of an MLP (and of a conv net
where oneDNN's kernels cannot run) split a CPU host into per-core devices, and the samples
equal the one-device samples; training, conv nets with oneDNN, torch and multi-process
runs are left alone. ``test_cpu_convolution_setting``: the
XLA:CPU convolution flag of ``jax_impl.xla_cpu``.

* ``test_default_host_devices``: the largest divisor of the batch <= the cores.
* ``test_which_commands_split``: the choice from parsed arguments (no JAX started).
* ``test_conv_sample_splits_and_matches``: a tiny U-Net run trained in this process (one
  device), sampled by ``scorediff sample`` in a fresh process with the variable unset: on
  one device with oneDNN, and with ``SCOREDIFF_ONEDNN=0`` on 2 host devices, equal to the
  same plan sampled here on one device.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scorediff import cli, distributed

ROOT = Path(__file__).resolve().parents[1]
TINY_UNET = ["--set", "training.n_iters=2", "--set", "training.batch_size=4", "--set", "training.snapshot_freq=2",
             "--set", "training.log_freq=1", "--set", "model.nf=32", "--set", "model.ch_mult=1",
             "--set", "model.num_res_blocks=1", "--set", "model.attn_resolutions=", "--set", "optim.warmup=0", "--set", "process.N=25"]


def test_default_host_devices():
    f = distributed.default_host_devices
    assert f(64, 2) == 2 and f(359, 2) == 1 and f(6, 4) == 3 and f(7, 4) == 1 and f(1, 8) == 1
    assert f(64, 16) == 16 and f(48, 16) == 16 and f(40, 16) == 10
    assert 1 <= distributed.usable_cores() <= (os.cpu_count() or 1)


from jax_impl import onednn as _onednn

_real_expected = _onednn.expected


def _choice(monkeypatch, argv, cores=2):
    monkeypatch.setattr(distributed, "usable_cores", lambda: cores)
    return cli._default_host_devices(cli.build_parser().parse_args(argv))


def test_which_commands_split(monkeypatch, tmp_path):
    from jax_impl import onednn

    conv = ["sample", "--checkpoint", str(tmp_path / "ckpt"), "--preset", "digits/ddpm-unet"]
    # a conv net splits only where oneDNN's kernels cannot run on one device
    monkeypatch.setattr(onednn, "expected", lambda: False)
    assert _choice(monkeypatch, conv + ["--num", "64"]) == 2  # 64 samples on 2 cores
    assert _choice(monkeypatch, conv + ["--num", "63"]) == 1
    assert _choice(monkeypatch, conv + ["--num", "12"], cores=8) == 6
    assert _choice(monkeypatch, conv + ["--num", "64", "--coordinator", "localhost:1234", "--num-processes", "2",
                                        "--process-id", "0"]) is None
    train = ["train", "--preset", "digits/ddpm-unet", "--workdir", str(tmp_path / "a")]
    assert _choice(monkeypatch, train) is None  # training: one device uses every core
    assert _choice(monkeypatch, train + ["--framework", "torch"]) is None
    assert _choice(monkeypatch, ["sample", "--checkpoint", str(tmp_path / "ckpt"), "--preset",
                                 "digits/improved-ddpm", "--num", "64"]) == 2  # an MLP too
    assert _choice(monkeypatch, ["sample", "--checkpoint", "x", "--preset", "no/such-preset"]) is None
    assert _choice(monkeypatch, ["sample", "--workdir", str(tmp_path / "missing")]) is None
    assert _choice(monkeypatch, ["presets"]) is None
    monkeypatch.setattr(onednn, "expected", lambda: True)
    assert _choice(monkeypatch, conv + ["--num", "64"]) is None  # oneDNN: one device uses both cores
    assert _choice(monkeypatch, ["sample", "--checkpoint", str(tmp_path / "ckpt"), "--preset",
                                 "digits/improved-ddpm", "--num", "64"]) == 2  # an MLP still splits
    monkeypatch.setenv(onednn.ENV, "0")
    monkeypatch.setattr(onednn, "expected", _real_expected)
    assert _choice(monkeypatch, conv + ["--num", "64"]) == 2  # SCOREDIFF_ONEDNN=0: XLA's kernels, split
    assert not (tmp_path / "a").exists() and not (tmp_path / "ckpt").exists()  # choosing wrote nothing


def test_conv_sample_splits_and_matches(tmp_path, monkeypatch):
    """With oneDNN off (``SCOREDIFF_ONEDNN=0``) a conv net's ``sample`` splits the host and
    equals the one-device samples; with oneDNN (the default where it is built) it stays on
    one device."""
    import jax

    from scorediff import runs, sampling

    wd = tmp_path / "run"
    assert cli.main(["train", "--preset", "digits/ddpm-unet", "--workdir", str(wd), "--no-progress",
                     *TINY_UNET]) == 0
    out = tmp_path / "split.npz"
    env = {k: v for k, v in os.environ.items() if k != distributed.HOST_DEVICES_ENV}
    from jax_impl import onednn

    if onednn.expected():
        one = subprocess.run([sys.executable, "-m", "scorediff.cli", "sample", "--workdir", str(wd), "--num", "4",
                              "--seed", "5", "--no-progress", "--out", str(tmp_path / "one.npz")],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert one.returncode == 0, one.stdout[-2000:] + one.stderr[-2000:]
        assert "sampling on" not in one.stdout, one.stdout  # one device: no "on N devices"
    env[onednn.ENV] = "0"
    proc = subprocess.run([sys.executable, "-m", "scorediff.cli", "sample", "--workdir", str(wd), "--num", "4",
                           "--seed", "5", "--no-progress", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    cores = distributed.usable_cores()
    want = distributed.default_host_devices(4, cores)
    if want > 1:
        assert f"on {want} devices" in proc.stdout, proc.stdout
    run, default = cli._run_and_preset(wd)
    variables, _ = runs.ema_variables(run)
    plan = sampling.resolve(run.config, default, num=4)
    one = sampling.JaxSampler(plan, num_devices=1)
    x, _ = one(variables, jax.random.key(5))
    got = np.load(out)["samples"]
    np.testing.assert_allclose(got, np.asarray(x), rtol=1e-5, atol=1e-5)


_XLA_CPU_SCENARIOS = """
import os
from jax_impl import xla_cpu
flag = xla_cpu.cpu_flag()
os.environ["XLA_FLAGS"] = "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT"
assert not xla_cpu.configure_cpu_convolutions()  # the user's own setting wins
os.environ["XLA_FLAGS"] = "--xla_backend_optimization_level=1"
os.environ[xla_cpu.CONVOLUTIONS_ENV] = "ynn"
assert not xla_cpu.configure_cpu_convolutions() and flag not in os.environ["XLA_FLAGS"]
os.environ[xla_cpu.CONVOLUTIONS_ENV] = "xla"
assert xla_cpu.configure_cpu_convolutions()
assert os.environ["XLA_FLAGS"] == "--xla_backend_optimization_level=1 " + flag
import jax, jax.numpy as jnp
x = jnp.ones((1, 6, 6, 2)); w = jnp.ones((3, 3, 2, 4))
y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
assert float(y[0, 2, 2, 0]) == 18.0
assert not xla_cpu.configure_cpu_convolutions()  # the backend has started: too late, no error
print("OK")
"""


def test_cpu_convolution_setting():
    """``jax_impl.xla_cpu``: the flag is added once, before JAX starts, unless the user set it
    or asked for YNNPACK; a bad ``SCOREDIFF_XLA_CPU_CONVOLUTIONS`` is one error line."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "SCOREDIFF_XLA_CPU_CONVOLUTIONS")}
    proc = subprocess.run([sys.executable, "-c", _XLA_CPU_SCENARIOS], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    from jax_impl import xla_cpu

    assert os.environ.get("XLA_FLAGS", "").count(xla_cpu.YNN_FLAG) <= 1  # the suite's own, once
    os.environ[xla_cpu.CONVOLUTIONS_ENV] = "fast"
    try:
        with pytest.raises(ValueError, match="SCOREDIFF_XLA_CPU_CONVOLUTIONS='fast' must be 'xla'"):
            xla_cpu.configure_cpu_convolutions()
        assert cli.main(["presets"]) == 2
    finally:
        del os.environ[xla_cpu.CONVOLUTIONS_ENV]


_SPLIT_SCENARIO = """
import os
from jax_impl import sharding, xla_cpu
flag = xla_cpu.cpu_flag()
assert xla_cpu.configure_cpu_convolutions() and flag in os.environ["XLA_FLAGS"]
assert sharding.configure_host_devices(2) == 2
assert flag not in os.environ["XLA_FLAGS"], os.environ["XLA_FLAGS"]  # dropped: split host
assert not xla_cpu.configure_cpu_convolutions()  # and not added back once split
import jax
assert len(jax.devices("cpu")) == 2
print("OK")
"""


def test_host_split_drops_the_convolution_flag():
    """``configure_host_devices(n > 1)`` removes ``xla_cpu``'s flag: XLA's own convolutions
    gave nondeterministic samples on a split host (``jax_impl/xla_cpu.py``; the benchmark
    suite's agreement check of the ``jax-split`` row found it), YNNPACK's are exact."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "SCOREDIFF_XLA_CPU_CONVOLUTIONS")}
    proc = subprocess.run([sys.executable, "-c", _SPLIT_SCENARIO], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
