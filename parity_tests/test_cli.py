"""The ``scorediff`` command line end to end (issue 9), on tiny runs.

Train a few steps on digits and on 2-D data, resume, sample (``.npz`` + PNG + trajectory),
evaluate (metrics.json with both baselines), likelihood, compare the frameworks, convert
both ways; and every wrong thing a user types exits with status 2 and one line naming it.
The commands run in-process through ``scorediff.cli.main`` (the console script's entry
point), so the JAX programs compiled by one test are reused by the next.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scorediff import presets
from scorediff.cli import main

ROOT = Path(__file__).resolve().parents[1]

# tiny versions of the presets: a few steps, small networks
TINY_DIGITS = ["--set", "training.n_iters=6", "--set", "training.batch_size=16", "--set", "training.snapshot_freq=3",
               "--set", "training.log_freq=1", "--set", "model.hidden_dims=32,32", "--set", "optim.warmup=0"]
TINY_2D = ["--set", "training.n_iters=6", "--set", "training.batch_size=32", "--set", "training.snapshot_freq=3",
           "--set", "training.log_freq=1", "--set", "model.hidden_dims=32,32", "--set", "optim.warmup=0",
           "--set", "process.N=20"]


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("scorediff ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# ----------------------------------------------------------------------------- presets

def test_presets_lists_one_per_line_name_first(capsys):
    code, out, _ = run_cli(capsys, "presets")
    assert code == 0
    lines = out.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == list(presets.PRESETS)
    names = set(presets.PRESETS)
    for required in ("digits/ddpm", "digits/improved-ddpm", "digits/ncsn", "digits/ncsnv2", "digits/ve-sde",
                     "digits/vp-sde", "digits/subvp-sde", "2d/ddpm", "2d/improved-ddpm", "2d/ncsn", "2d/ncsnv2",
                     "2d/ve-sde", "2d/vp-sde", "2d/subvp-sde", "cifar10/ncsnpp-continuous", "cifar10/ddpm",
                     "cifar10/ncsnv2"):
        assert required in names
    assert presets.MAIN_JOB_PRESET in names


def test_official_presets_keep_official_parameter_counts():
    from jax_impl.models.registry import count_parameters

    assert count_parameters(presets.get_preset("cifar10/ddpm").run_config.model)["total"] == 35_218_947
    assert count_parameters(presets.get_preset("cifar10/ncsnpp-continuous").run_config.model)["total"] == 62_758_915
    assert count_parameters(presets.get_preset("cifar10/ncsnv2").run_config.model)["total"] == 29_694_083


def test_every_builtin_preset_builds_and_resolves_its_sampler():
    from scorediff import sampling

    for name, p in presets.PRESETS.items():
        plan = sampling.resolve(p.run_config, p.sampler, num=2)
        assert plan.name == p.sampler["name"], name
        if p.family in ("digits", "2d"):  # built-in data; the official families bring their own
            assert p.run_config.data is not None, name


# ------------------------------------------------------------------------- a 2-D run

@pytest.fixture(scope="module")
def run2d(tmp_path_factory):
    wd = tmp_path_factory.mktemp("cli") / "vp"
    assert main(["train", "--preset", "2d/vp-sde", "--workdir", str(wd), "--no-progress", *TINY_2D]) == 0
    return wd


def test_train_writes_the_run_directory(run2d):
    names = {p.name for p in run2d.iterdir()}
    assert {"config.json", "preset.json", "log.jsonl", "checkpoints", "samples", "loss.png"} <= names
    rec = json.loads((run2d / "preset.json").read_text())
    assert rec["preset"] == "2d/vp-sde" and rec["framework"] == "jax"
    assert json.loads((run2d / "config.json").read_text())["train"]["training"]["n_iters"] == 6


def test_train_again_resumes_and_extends_nothing(run2d, capsys):
    code, out, err = run_cli(capsys, "train", "--workdir", str(run2d), "--no-progress")
    assert code == 0, err
    assert "step 6/6" in out


def test_sample_writes_npz_png_and_trajectory(run2d, capsys, tmp_path):
    out_file = tmp_path / "s.npz"
    code, out, err = run_cli(capsys, "sample", "--workdir", str(run2d), "--num", "50", "--out", str(out_file),
                             "--trajectory", "--no-progress")
    assert code == 0, err
    with np.load(out_file) as f:
        assert f["samples"].shape == (50, 2)
        assert int(f["nfe"]) == 20
    assert out_file.with_suffix(".png").stat().st_size > 1000
    assert (tmp_path / "s_trajectory.png").stat().st_size > 1000
    # another sampler and its options
    code, out, err = run_cli(capsys, "sample", "--workdir", str(run2d), "--num", "8", "--sampler", "ode",
                             "--method", "euler", "--steps", "5", "--out", str(tmp_path / "o.npz"), "--no-progress")
    assert code == 0, err
    assert "NFE 5" in out


def test_evaluate_and_likelihood_write_metrics(run2d, capsys):
    code, out, err = run_cli(capsys, "evaluate", "--workdir", str(run2d), "--num", "200", "--no-progress",
                             "--likelihood-points", "0")  # the likelihood command below runs the ODE
    assert code == 0, err
    m = json.loads((run2d / "metrics.json").read_text())["evaluate"]
    assert m["kind"] == "2d" and m["num_samples"] == 200
    assert np.isfinite(m["sliced_wasserstein"]) and np.isfinite(m["floor"]["sliced_wasserstein"])
    assert "floor" in out or "exact samples" in out
    code, out, err = run_cli(capsys, "likelihood", "--workdir", str(run2d), "--num", "16")
    assert code == 0, err
    assert np.isfinite(json.loads((run2d / "metrics.json").read_text())["likelihood"]["mean_loglik_ode"])


def test_compare_frameworks(run2d, capsys):
    code, out, err = run_cli(capsys, "compare", "--workdir", str(run2d), "--num", "16", "--repeats", "1")
    assert code == 0, err
    c = json.loads((run2d / "metrics.json").read_text())["compare"]
    assert c["network_max_abs_diff"] <= 1e-4 * max(1.0, c["network_max_abs_output"])
    assert c["samples_max_abs_diff"] <= 1e-3 * max(1.0, c["samples_max_abs"])
    assert c["jax_seconds"] > 0 and c["torch_seconds"] > 0


def test_convert_run_to_safetensors_and_orbax_both_ways(run2d, capsys, tmp_path):
    st = tmp_path / "w.safetensors"
    code, out, err = run_cli(capsys, "convert", str(run2d), str(st))
    assert code == 0, err
    orb = tmp_path / "orbax"
    code, out, err = run_cli(capsys, "convert", str(run2d), str(orb))
    assert code == 0, err
    back = tmp_path / "back.npz"
    # orbax -> file needs the architecture: a preset, or the run it came from
    code, out, err = run_cli(capsys, "convert", str(orb), str(back), "--run", str(run2d))
    assert code == 0, err
    # the tiny run's MLP is not the preset's (hidden_dims overridden): the layout check names it
    code, out, err = run_cli(capsys, "convert", str(orb), str(tmp_path / "x.npz"), "--preset", "2d/vp-sde")
    assert code == 2
    one_error_line(err)
    code, out, err = run_cli(capsys, "convert", str(orb), str(tmp_path / "y.npz"))
    assert code == 2 and "--preset" in one_error_line(err)
    from spec.checkpoints import load_checkpoint

    a, b = load_checkpoint(str(st)), load_checkpoint(str(back))
    assert sorted(a["model"]) == sorted(b["model"])
    for k in a["model"]:
        np.testing.assert_array_equal(np.asarray(a["model"][k]), np.asarray(b["model"][k]))


# ---------------------------------------------------------------------------- digits

def test_digits_train_sample_evaluate_compare(tmp_path, capsys):
    wd = tmp_path / "digits"
    code, out, err = run_cli(capsys, "train", "--preset", "digits/ddpm", "--workdir", str(wd), "--no-progress",
                             *TINY_DIGITS, "--set", "process.steps=40")
    assert code == 0, err
    code, out, err = run_cli(capsys, "sample", "--workdir", str(wd), "--num", "9", "--trajectory", "--no-progress",
                             "--steps", "10")
    assert code == 0, err
    with np.load(wd / "samples.npz") as f:
        assert f["samples"].shape == (9, 8, 8, 1)
    assert (wd / "samples.png").exists() and (wd / "samples_trajectory.png").exists()
    code, out, err = run_cli(capsys, "evaluate", "--workdir", str(wd), "--num", "32", "--no-progress",
                             "--sampler", "ddpm", "--steps", "10")
    assert code == 0, err
    m = json.loads((wd / "metrics.json").read_text())["evaluate"]
    assert m["kind"] == "digits"
    assert m["baselines"]["real"]["fd"] < m["baselines"]["noise"]["fd"]
    assert "held-out real digits" in out and "Gaussian noise" in out
    assert (wd / "real_vs_generated.png").exists()
    code, out, err = run_cli(capsys, "compare", "--workdir", str(wd), "--num", "4", "--repeats", "1",
                             "--sampler", "ddim", "--steps", "5")
    assert code == 0, err
    c = json.loads((wd / "metrics.json").read_text())["compare"]
    assert c["network_max_abs_diff"] <= 1e-4 * max(1.0, c["network_max_abs_output"])


# ---------------------------------------------------------------------- wrong input

@pytest.mark.parametrize("argv, needle", [
    (["train", "--preset", "digits/nope"], "digits/nope"),
    (["train", "--preset", "2d/vp-sde", "--set", "training.n_itres=5"], "n_itres"),
    (["train", "--preset", "2d/vp-sde", "--set", "training.n_iters=many"], "n_iters"),
    (["train", "--preset", "2d/vp-sde", "--set", "model.widht=3"], "widht"),
    (["train", "--preset", "2d/vp-sde", "--set", "nosection"], "nosection"),
    (["train", "--preset", "2d/vp-sde", "--set", "data.dataset=imagenet"], "imagenet"),
    (["train", "--preset", "cifar10/ddpm"], "data"),
    (["sample"], "--workdir"),
    (["sample", "--workdir", "/nonexistent/run"], "/nonexistent/run"),
    (["sample", "--checkpoint", "/nonexistent/x.pth", "--preset", "cifar10/ddpm"], "/nonexistent/x.pth"),
    (["sample", "--checkpoint", "/nonexistent/x.pth"], "--preset"),
    (["evaluate", "--workdir", "/nonexistent/run"], "/nonexistent/run"),
    (["convert", "/nonexistent/a.pth", "b.npz"], "/nonexistent/a.pth"),
])
def test_bad_input_exits_2_with_one_line(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert needle in one_error_line(err)


def test_bad_sampler_options_and_foreign_workdirs(run2d, capsys, tmp_path):
    code, _, err = run_cli(capsys, "sample", "--workdir", str(run2d), "--sampler", "ddim")
    assert code == 2 and "ddim" in one_error_line(err)
    code, _, err = run_cli(capsys, "sample", "--workdir", str(run2d), "--eta", "0.5")
    assert code == 2 and "--eta" in one_error_line(err)
    code, _, err = run_cli(capsys, "sample", "--workdir", str(run2d), "--num", "0")
    assert code == 2 and "--num" in one_error_line(err)
    code, _, err = run_cli(capsys, "sample", "--workdir", str(run2d), "--out", str(tmp_path / "x.png"))
    assert code == 2 and ".npz" in one_error_line(err)
    # a workdir of another preset
    code, _, err = run_cli(capsys, "train", "--preset", "2d/ddpm", "--workdir", str(run2d))
    assert code == 2 and "2d/vp-sde" in one_error_line(err)
    # the same preset with another config
    code, _, err = run_cli(capsys, "train", "--preset", "2d/vp-sde", "--workdir", str(run2d),
                           "--set", "training.n_iters=7")
    assert code == 2 and "n_iters" in one_error_line(err)
    # not a run directory / a damaged file
    code, _, err = run_cli(capsys, "evaluate", "--workdir", str(tmp_path))
    assert code == 2 and "config.json" in one_error_line(err)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    code, _, err = run_cli(capsys, "convert", str(bad), str(tmp_path / "o.npz"))
    assert code == 2 and "bad.safetensors" in one_error_line(err)


@pytest.mark.parametrize("sub", ["presets", "train", "sample", "evaluate", "likelihood", "compare", "convert"])
def test_help_for_every_command(sub, capsys):
    with pytest.raises(SystemExit) as e:
        main([sub, "--help"])
    assert e.value.code == 0
    assert f"usage: scorediff {sub}" in capsys.readouterr().out


def test_console_script_is_installed():
    exe = Path(sys.executable).with_name("scorediff")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "scorediff"]
    r = subprocess.run(cmd + ["--help"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "usage: scorediff" in r.stdout and "compare" in r.stdout


# ------------------------------------------------------------ official checkpoints

TINY_NCSNPP = ["--set", "model.nf=16", "--set", "model.ch_mult=1,2", "--set", "model.num_res_blocks=1",
               "--set", "model.attn_resolutions=4", "--set", "model.image_size=8"]


def test_sample_from_an_official_checkpoint_file(tmp_path, capsys):
    """score_sde's checkpoint layout (model state_dict with the sigmas buffer, EMA
    shadow_params), written as .safetensors without torch, sampled through the preset."""
    from jax_impl.convert import derived_buffers, key_table, save_checkpoint
    from scorediff.overrides import apply_overrides

    config = apply_overrides(presets.get_preset("cifar10/ncsnpp-continuous").run_config,
                             TINY_NCSNPP[1::2]).model
    rng = np.random.default_rng(0)
    table = key_table(config)
    sd = {**derived_buffers(config), **{k.torch_key: 0.05 * rng.standard_normal(k.shape).astype(np.float32)
                                        for k in table}}
    path = tmp_path / "checkpoint_26.safetensors"
    save_checkpoint(path, {"model": sd, "ema": {"shadow_params": [sd[k.torch_key] for k in table if k.trainable]},
                           "step": 26})
    out = tmp_path / "official.npz"
    code, stdout, err = run_cli(capsys, "sample", "--checkpoint", str(path), "--preset", "cifar10/ncsnpp-continuous",
                                *TINY_NCSNPP, "--num", "2", "--steps", "3", "--corrector", "none", "--out", str(out),
                                "--no-progress")
    assert code == 0, err
    with np.load(out) as f:
        assert f["samples"].shape == (2, 8, 8, 3) and int(f["nfe"]) == 3
    # the same file against the full-size preset: the shape check names a key
    code, _, err = run_cli(capsys, "sample", "--checkpoint", str(path), "--preset", "cifar10/ncsnpp-continuous",
                           "--num", "1", "--steps", "2", "--out", str(tmp_path / "x.npz"))
    assert code == 2
    one_error_line(err)


# --------------------------------------------------------------------------- Ctrl-C

def test_ctrl_c_during_train_saves_and_exits_cleanly(tmp_path):
    import signal
    import time

    exe = Path(sys.executable).with_name("scorediff")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "scorediff"]
    wd = tmp_path / "run"
    proc = subprocess.Popen(cmd + ["train", "--preset", "2d/ddpm", "--workdir", str(wd), "--no-progress",
                                   "--set", "training.n_iters=100000", "--set", "training.log_freq=1",
                                   "--set", "training.snapshot_freq=100000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:  # wait until steps are being taken
            log = wd / "log.jsonl"
            if log.exists() and log.read_text().count("\n") >= 3:
                break
            if proc.poll() is not None:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "checkpoint saved" in out
    assert "Traceback" not in err
    steps = [int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit()]
    assert steps and max(steps) >= 3


def test_sample_an_improved_diffusion_checkpoint(tmp_path, capsys):
    """`sample --checkpoint FILE --preset cifar10/improved-ddpm`: an improved-diffusion state_dict
    (official key names; here a tiny UNetModel written as .safetensors) through from_improved_diffusion."""
    from scorediff.overrides import apply_overrides
    from spec.checkpoints import save_checkpoint
    from spec.keytables import key_table

    over = ["model.model_channels=32", "model.num_res_blocks=1", "model.image_size=8", "model.channel_mult=1,2",
            "model.attention_resolutions=2"]
    cfg = apply_overrides(presets.get_preset("cifar10/improved-ddpm").run_config, over).model
    rng = np.random.default_rng(0)
    save_checkpoint(tmp_path / "m.safetensors",
                    {k.torch_key: 0.02 * rng.standard_normal(k.shape).astype(np.float32) for k in key_table(cfg)})
    args = ["sample", "--checkpoint", str(tmp_path / "m.safetensors"), "--preset", "cifar10/improved-ddpm",
            "--num", "2", "--steps", "3", "--out", str(tmp_path / "s.npz"), *sum((["--set", o] for o in over), [])]
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    x = np.load(tmp_path / "s.npz")["samples"]
    assert x.shape == (2, 8, 8, 3) and np.isfinite(x).all()
