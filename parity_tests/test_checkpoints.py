"""Checkpoint files and weight validation: torch-free loading, readers, writers, bad input.

Covers ``spec/checkpoints.py``, ``spec/convert.py``, ``spec/unet_plans.py`` and the entry
points of the twins ``jax_impl/convert.py`` <-> ``torch_ref/convert.py``:

* official-layout score_sde (DDPM, NCSN++) and ncsnv2 checkpoints written as ``.npz`` /
  ``.safetensors`` load into JAX in a subprocess where ``torch`` and ``torch_ref`` cannot
  be imported, and reproduce the torch model's outputs (float32, 1e-4 of the largest);
* every damaged, truncated, empty or foreign file gets one ``ValueError`` /
  ``FileNotFoundError`` naming the file, with no chained library traceback;
* integer / NaN / Inf tensors, orbax directories that are damaged or of another config,
  and ``get_model_fn`` with another config's variables are rejected naming the culprit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest
import torch

from jax_impl import convert as jconv
from jax_impl.models import registry as jreg
from jax_impl.models.utils import get_model_fn
from parity_tests import netutils
from spec import checkpoints as ck
from spec import convert as sconv
from spec.model_configs import DDPMConfig, NCSNppConfig
from spec.ncsn_configs import NCSNv2Config
from spec.unet_plans import ddpm_plan, ncsnpp_plan
from torch_ref import convert as tconv
from torch_ref.models import registry as treg
from torch_ref.models import utils as tmutils

ROOT = Path(__file__).resolve().parents[1]

# Tiny configs, spelled as constructor calls so the torch-free subprocess builds the same.
CONFIGS = {
    "ddpm": "DDPMConfig(image_size=8, nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_scales=30)",
    "ncsnpp": ("NCSNppConfig(image_size=8, num_channels=3, nf=16, ch_mult=(1, 2), num_res_blocks=1, "
               "attn_resolutions=(4,), num_scales=20, sigma_min=0.01, sigma_max=50.0)"),
    "ncsnv2": ("NCSNv2Config(name='ncsnv2_64', ngf=8, num_scales=6, sigma_min=0.01, sigma_max=5.0, "
               "image_size=16)"),
}
NS = {"DDPMConfig": DDPMConfig, "NCSNppConfig": NCSNppConfig, "NCSNv2Config": NCSNv2Config}
CFG = {k: eval(v, NS) for k, v in CONFIGS.items()}  # noqa: S307 (our own constant strings)
FORMATS = (".npz", ".safetensors")


def _perturbed(config, seed):
    torch.manual_seed(seed)
    return netutils.perturb_(treg.create_model(config), np.random.default_rng(seed)).eval()


def _score_sde_checkpoint(model, rng):
    return netutils.official_score_sde_checkpoint(model, rng, step=11, scale=0.02)


_ema_model = netutils.score_sde_ema_model


def _ncsnv2_checkpoint(config):
    """ermongroup/ncsnv2's ``[model, optimizer, epoch, step, ema]`` list."""
    raw, ema = _perturbed(config, 3), _perturbed(config, 4)
    model_state = {"module." + k: v.clone() for k, v in raw.state_dict().items()}
    shadow = {k: p.detach().clone() for k, p in ema.named_parameters()}
    return [model_state, {"state": {}}, 7, 5000, shadow], raw, ema


# The torch-free side: block torch / torch_ref, load every file, print the outputs' errors.
_PROBE = r"""
import importlib.abc, json, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torch_ref"):
            raise ModuleNotFoundError(f"blocked import of {name!r}", name=name)
sys.meta_path.insert(0, Block())
import jax, jax.numpy as jnp, numpy as np
from jax_impl.convert import from_ncsnv2, from_score_sde
from spec.model_configs import DDPMConfig, NCSNppConfig
from spec.ncsn_configs import NCSNv2Config
cases, configs, ref_path = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
ref = np.load(ref_path)
ns = {"DDPMConfig": DDPMConfig, "NCSNppConfig": NCSNppConfig, "NCSNv2Config": NCSNv2Config}
report = {}
for name, path, weights in cases:
    cfg = eval(configs[name], ns)
    load = from_ncsnv2 if name == "ncsnv2" else from_score_sde
    model, variables = load(path, cfg, weights=weights)
    out = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(ref[f"x_{name}"]), jnp.asarray(ref[f"l_{name}"])))
    want = ref[f"out_{name}_{weights}"]
    report[f"{name}{path[path.rindex('.'):]}:{weights}"] = [
        float(np.max(np.abs(out - want)) / np.max(np.abs(want))), str(out.dtype)]
try:  # a .pth needs torch: one ImportError that says what to do instead
    from_score_sde(sys.argv[4], eval(configs["ddpm"], ns))
    pth_error = None
except ImportError as e:
    pth_error = str(e)
leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torch_ref"))
print(json.dumps({"report": report, "leaked": leaked, "pth_error": pth_error}))
"""


def test_official_weights_load_without_torch(tmp_path):
    """score_sde (DDPM, NCSN++) and ncsnv2 checkpoints as .npz / .safetensors -> JAX with torch
    blocked; outputs equal the torch models' (EMA and raw) within 1e-4 of the largest."""
    rng = np.random.default_rng(0)
    refs, cases = {}, []
    for name in ("ddpm", "ncsnpp", "ncsnv2"):
        cfg = CFG[name]
        x = rng.uniform(0, 1, size=(2, cfg.image_size, cfg.image_size, cfg.num_channels)).astype(np.float32)
        if name == "ncsnv2":
            ckpt, raw, ema = _ncsnv2_checkpoint(cfg)
            labels = np.array([0, 5], np.int64)
        else:
            raw = _perturbed(cfg, 1)
            ckpt = _score_sde_checkpoint(raw, rng)
            ema = _ema_model(cfg, ckpt)
            labels = np.array([0.05, 20.0], np.float32) if name == "ncsnpp" else np.array([3.0, 17.0], np.float32)
        with torch.no_grad():
            for weights, model in (("ema", ema), ("raw", raw)):
                out = model(torch.from_numpy(netutils.nchw(x)), torch.from_numpy(labels)).numpy()
                refs[f"out_{name}_{weights}"] = netutils.nhwc(out)
        refs[f"x_{name}"], refs[f"l_{name}"] = x, labels
        for suffix in FORMATS:
            path = ck.save_checkpoint(tmp_path / f"{name}{suffix}", ckpt)
            cases += [(name, str(path), "ema"), (name, str(path), "raw")]
        if name == "ddpm":
            torch.save(ckpt, tmp_path / "ddpm.pth")
    np.savez(tmp_path / "ref.npz", **refs)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(cases), json.dumps(CONFIGS),
                          str(tmp_path / "ref.npz"), str(tmp_path / "ddpm.pth")],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["leaked"] == []
    assert "ddpm.pth' needs PyTorch, which is not installed" in result["pth_error"]
    assert "convert_checkpoint_file" in result["pth_error"]
    assert len(result["report"]) == 12
    for case, (err, dtype) in result["report"].items():
        assert dtype == "float32", case
        assert err < 1e-4, f"{case}: relative error {err:.3g}"
    print("torch-free load vs torch, max |diff| / max |out|:", json.dumps(result["report"]))


@pytest.mark.parametrize("suffix", FORMATS)
def test_writers_round_trip_and_pth_conversion(tmp_path, suffix):
    """save_checkpoint -> read_checkpoint keeps every array bit for bit (score_sde dict and
    ncsnv2 list); convert_checkpoint_file turns a .pth into the same; a plain flat
    state_dict is a valid file too; torch_ref reads the converted file like the .pth."""
    rng = np.random.default_rng(1)
    cfg = CFG["ddpm"]
    model = _perturbed(cfg, 2)
    ckpt = _score_sde_checkpoint(model, rng)
    torch.save(ckpt, tmp_path / "official.pth")
    ck.convert_checkpoint_file(tmp_path / "official.pth", tmp_path / f"conv{suffix}")
    back = ck.read_checkpoint(tmp_path / f"conv{suffix}")
    assert set(back) == {"model", "ema", "step"} and back["step"] == 11  # optimizer dropped
    assert list(back["model"]) == list(ckpt["model"])
    for k, v in ckpt["model"].items():
        assert back["model"][k].dtype == v.numpy().dtype and np.array_equal(back["model"][k], v.numpy()), k
    assert len(back["ema"]["shadow_params"]) == len(ckpt["ema"]["shadow_params"])
    for a, b in zip(back["ema"]["shadow_params"], ckpt["ema"]["shadow_params"]):
        assert np.array_equal(a, b.numpy())
    t_pth = tconv.from_score_sde(tmp_path / "official.pth", cfg)
    t_conv = tconv.from_score_sde(tmp_path / f"conv{suffix}", cfg)
    for k, v in t_pth.state_dict().items():
        assert torch.equal(t_conv.state_dict()[k], v), k
    # plain state_dict file, weights="raw"
    ck.save_checkpoint(tmp_path / f"plain{suffix}", model.state_dict())
    _, v_plain = jconv.from_score_sde(tmp_path / f"plain{suffix}", cfg, weights="raw")
    _, v_raw = jconv.from_score_sde(ckpt, cfg, weights="raw")
    for p, a in sconv.flatten_paths(v_raw).items():
        assert np.array_equal(np.asarray(a), np.asarray(sconv.flatten_paths(v_plain)[p]))
    # ncsnv2 list -> dict form
    states, _, _ = _ncsnv2_checkpoint(CFG["ncsnv2"])
    ck.save_checkpoint(tmp_path / f"v2{suffix}", states)
    v2 = ck.read_checkpoint(tmp_path / f"v2{suffix}")
    assert set(v2) == {"model", "ema", "epoch", "step"} and (v2["epoch"], v2["step"]) == (7, 5000)
    assert all(np.array_equal(v2["ema"][k], v.numpy()) for k, v in states[4].items())
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["official.pth", f"conv{suffix}", f"plain{suffix}", f"v2{suffix}"])  # no temporary files


# ------------------------------------------------------------------- damaged files


class Foreign:
    """A pickle of an arbitrary class: ``torch.load(weights_only=True)`` refuses it."""


def _bad_files(d: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, regex the one error message must match)."""
    torch.save({"w": torch.ones(3)}, d / "ok.pt")
    good = (d / "ok.pt").read_bytes()
    np.savez(d / "ok.npz", **{"model/w": np.ones(3)})
    good_npz = (d / "ok.npz").read_bytes()
    from safetensors.numpy import save_file

    save_file({"w": np.ones(3, np.float32)}, str(d / "ok.safetensors"))
    good_st = (d / "ok.safetensors").read_bytes()
    files = {
        "truncated .pt": ("trunc.pt", good[: len(good) // 2], "truncated or damaged"),
        "text named .pt": ("text.pt", b"just some text\n", "not a PyTorch checkpoint"),
        "empty .pth": ("empty.pth", b"", "is empty"),
        "garbage pickle .pth": ("garbage.pth", b"\x80\x04garbage bytes", "not a weights-only PyTorch checkpoint"),
        "zip that is not torch": ("zip.pt", None, "zip archive without data.pkl"),
        "truncated .npz": ("trunc.npz", good_npz[: len(good_npz) - 40], "truncated or damaged .npz"),
        "text named .npz": ("text.npz", b"hello", "not an .npz archive"),
        "truncated .safetensors": ("trunc.safetensors", good_st[:-6], "not a safetensors file"),
        "text named .safetensors": ("text.safetensors", b"hello there, friend", "not a safetensors file"),
        "unknown suffix": ("weights.ckpt", b"x", "unknown suffix '.ckpt'"),
    }
    out = {}
    for name, (fname, data, match) in files.items():
        path = d / fname
        if data is None:
            with zipfile.ZipFile(path, "w") as zf:
                zf.writestr("notes.txt", "not a checkpoint")
        else:
            path.write_bytes(data)
        out[name] = (path, match)

    torch.save({"w": Foreign()}, d / "foreign.pt")
    out["arbitrary pickled object"] = (d / "foreign.pt", "not a weights-only PyTorch checkpoint")
    np.savez(d / "objects.npz", w=np.array([{"a": 1}], dtype=object))
    out["npz with object arrays"] = (d / "objects.npz", "entry 'w' is an object array")
    np.savez(d / "nothing.npz")
    out["npz with no arrays"] = (d / "nothing.npz", "holds no arrays")
    np.savez(d / "gap.npz", **{"ema/shadow_params/0": np.ones(1), "ema/shadow_params/2": np.ones(1)})
    out["npz with a gap in a list"] = (d / "gap.npz", "numbered 0..1")
    (d / "a_dir.pt").mkdir()
    out["directory"] = (d / "a_dir.pt", "is a directory")
    return out


def test_damaged_files_get_one_clear_error(tmp_path):
    cases = _bad_files(tmp_path)
    assert len(cases) == 15
    for name, (path, match) in cases.items():
        for read in (ck.read_checkpoint, lambda p: jconv.from_score_sde(p, CFG["ddpm"], weights="raw"),
                     lambda p: tconv.from_ncsnv2(p, CFG["ncsnv2"])):
            with pytest.raises(ValueError, match=match) as info:
                read(path)
            assert str(path) in str(info.value), name
            assert info.value.__cause__ is None, name
            assert info.value.__context__ is None or info.value.__suppress_context__, name
            assert len(str(info.value)) < 400, name
    missing = tmp_path / "nope.pth"
    for read in (ck.read_checkpoint, lambda p: jconv.from_ncsnv2(p, CFG["ncsnv2"]), tconv.load_state_dict):
        with pytest.raises(FileNotFoundError, match="nope.pth"):
            read(missing)
    with pytest.raises(TypeError, match="checkpoint path"):
        ck.read_checkpoint(b"bytes.pt")
    with pytest.raises(ValueError, match=r"must end with one of \.npz, \.safetensors"):
        ck.save_checkpoint(tmp_path / "out.pth", {"w": np.ones(2)})


# ------------------------------------------------------------------ tensor values


def test_int_nan_inf_tensors_are_rejected_naming_the_key():
    cfg = CFG["ncsnpp"]
    sd = dict(_perturbed(cfg, 5).state_dict())
    key = "all_modules.4.Conv_1.weight"
    cases = [
        (dict(sd, **{key: sd[key].to(torch.int64)}), TypeError, rf"{key}: dtype int64 is not floating"),
        (dict(sd, **{key: sd[key].to(torch.bool)}), TypeError, rf"{key}: dtype bool is not floating"),
        (dict(sd, **{key: sd[key].clone().fill_(float("nan"))}), ValueError, rf"{key}: \d+ of \d+ values are NaN"),
        (dict(sd, **{key: sd[key].clone().index_fill_(0, torch.tensor([0]), float("inf"))}), ValueError,
         rf"{key}: \d+ of \d+ values are NaN or Inf"),
        (dict(sd, sigmas=torch.full_like(sd["sigmas"], float("nan"))), ValueError, "sigmas: .* NaN"),
        (dict(sd, **{key: "not a tensor"}), TypeError, rf"{key} must be an array"),
    ]
    for bad, err, match in cases:
        for convert in (jconv.torch_to_flax_variables, tconv.torch_to_flax_variables):
            with pytest.raises(err, match=match):
                convert(bad, cfg)
    # the same through an official checkpoint: the EMA list and the ncsnv2 list
    ckpt = _score_sde_checkpoint(_perturbed(cfg, 5), np.random.default_rng(2))
    shadow = list(ckpt["ema"]["shadow_params"])
    shadow[3] = shadow[3].clone().fill_(float("inf"))
    with pytest.raises(ValueError, match=r"ema shadow_params\[3\] \(all_modules\.\d+\.\w+\): .* NaN or Inf"):
        jconv.from_score_sde(dict(ckpt, ema=dict(ckpt["ema"], shadow_params=shadow)), cfg)
    states, _, _ = _ncsnv2_checkpoint(CFG["ncsnv2"])
    bad_model = dict(states[0], **{"module.end_conv.bias": states[0]["module.end_conv.bias"].to(torch.int32)})
    for load in (jconv.from_ncsnv2, tconv.from_ncsnv2):
        with pytest.raises(TypeError, match=r"end_conv\.bias: dtype int32 is not floating"):
            load([bad_model, *states[1:]], CFG["ncsnv2"], weights="raw")
        nan_ema = dict(states[4], **{"res1.0.conv1.weight": states[4]["res1.0.conv1.weight"] * float("nan")})
        with pytest.raises(ValueError, match=r"res1\.0\.conv1\.weight: .* NaN"):
            load([*states[:4], nan_ema], CFG["ncsnv2"])
    # flax -> torch checks the leaves too
    variables = jconv.torch_to_flax_variables(sd, cfg)
    variables["params"]["all_modules_2"]["bias"] = variables["params"]["all_modules_2"]["bias"] * np.nan
    for convert in (jconv.flax_to_torch_state_dict, tconv.flax_to_torch_state_dict):
        with pytest.raises(ValueError, match=r"flax leaf 'params/all_modules_2/bias': .* NaN"):
            convert(variables, cfg)


# ------------------------------------------------------- orbax and model functions


def test_load_variables_damaged_or_other_config(tmp_path):
    cfg = CFG["ddpm"]
    # The model's variables (structure checked against registry.variable_shapes by the
    # converter), from a torch model: no init program to compile.
    variables = jconv.torch_to_flax_variables(_perturbed(cfg, 8).state_dict(), cfg)
    good = tmp_path / "good"
    jconv.save_variables(good, variables)
    with pytest.raises(FileNotFoundError, match="missing.*does not exist"):
        jconv.load_variables(tmp_path / "missing", cfg)
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="file.bin' is a file, not an orbax checkpoint directory"):
        jconv.load_variables(tmp_path / "file.bin")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="'.*empty' is not a complete orbax checkpoint directory"):
        jconv.load_variables(tmp_path / "empty")
    no_meta = tmp_path / "no_meta"
    shutil.copytree(good, no_meta)
    (no_meta / "_METADATA").unlink()
    with pytest.raises(ValueError, match=r"no_meta' is not a complete orbax checkpoint directory \(no _METADATA\)"):
        jconv.load_variables(no_meta, cfg)
    garbled = tmp_path / "garbled"
    shutil.copytree(good, garbled)
    (garbled / "_METADATA").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read the orbax checkpoint '.*garbled'"):
        jconv.load_variables(garbled)
    damaged = tmp_path / "damaged"
    shutil.copytree(good, damaged)
    data = [p for p in damaged.rglob("*") if p.is_file() and p.parent.name == "d"]
    assert data
    for p in data:
        p.write_bytes(b"\x00\x01")
    with pytest.raises(ValueError, match="orbax checkpoint '.*damaged'"):
        jconv.load_variables(damaged, cfg)
    other_width = DDPMConfig(image_size=8, nf=64, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                             num_scales=30)
    with pytest.raises(ValueError, match=r"does not match DDPMConfig: 'params/all_modules_0/bias' has shape "
                                         r"\(128,\) in the checkpoint but \(256,\) in the model"):
        jconv.load_variables(good, other_width)
    with pytest.raises(ValueError, match=r"does not match NCSNppConfig: the config's variable "
                                         r"'constants/all_modules_0/W'"):
        jconv.load_variables(good, CFG["ncsnpp"])
    with pytest.raises(TypeError, match="path must be a str"):
        jconv.load_variables(42)
    with pytest.raises(TypeError, match="not an array"):
        jconv.save_variables(tmp_path / "new", {"params": {"w": "text"}})
    restored = jconv.load_variables(good, cfg)  # the intact one still loads
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(variables)


def test_get_model_fn_rejects_another_configs_variables():
    cfg = CFG["ddpm"]
    model = jreg.create_model(cfg)
    other = DDPMConfig(image_size=8, nf=64, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_scales=30)
    with pytest.raises(ValueError, match=r"get_model_fn: variables do not match the DDPM of this DDPMConfig: "
                                         r"'params/all_modules_0/bias' has shape \(256,\), the model expects \(128,\)"):
        get_model_fn(model, jreg.variable_shapes(other))
    with pytest.raises(ValueError, match=r"'constants/all_modules_0/W' \(16,\) is missing|unexpected leaf"):
        get_model_fn(jreg.create_model(CFG["ncsnpp"]), jreg.variable_shapes(cfg))
    shapes = jreg.variable_shapes(cfg)
    shapes["params"]["all_modules_99"] = {"kernel": np.zeros(3)}
    with pytest.raises(ValueError, match="unexpected leaf 'params/all_modules_99/kernel'"):
        get_model_fn(model, shapes)
    with pytest.raises(TypeError, match="variables must be the nested mapping"):
        get_model_fn(model, [1, 2])
    with pytest.raises(TypeError, match="flax modules hold no parameters"):
        get_model_fn(model)
    assert callable(get_model_fn(model, jreg.variable_shapes(cfg)))  # the right ones pass
    # the twin: another module's state_dict runs in place of the module's own tensors
    a, b = _perturbed(cfg, 6), _perturbed(cfg, 7)
    x, t = torch.rand(2, 3, 8, 8), torch.tensor([3.0, 9.0])
    with torch.no_grad():
        assert torch.equal(tmutils.get_model_fn(a, b.state_dict())(x, t), b(x, t))
        assert torch.equal(tmutils.get_model_fn(a)(x, t), a(x, t))
    with pytest.raises(ValueError, match=r"'all_modules\.0\.weight' has shape \(128, 64\)"):
        tmutils.get_model_fn(a, dict(b.state_dict(), **{"all_modules.0.weight": torch.zeros(128, 64)}))
    with pytest.raises(ValueError, match="'sigmas' is missing"):
        tmutils.get_model_fn(a, {k: v for k, v in b.state_dict().items() if k != "sigmas"})


# ------------------------------------------------------------------ layouts as data


@pytest.mark.parametrize("name", ["ddpm", "ncsnpp", "ddpm++_cat_input_skip", "ncsnpp_output_skip_ddpm_blocks"])
def test_unet_plan_is_what_both_constructors_build(name):
    """Both constructors build exactly the plan's modules in order; the key table's modules
    are the plan's blocks that hold tensors."""
    cfg = {"ddpm": CFG["ddpm"], "ncsnpp": CFG["ncsnpp"],
           "ddpm++_cat_input_skip": NCSNppConfig(image_size=8, nf=16, ch_mult=(1, 2), num_res_blocks=1,
                                                 attn_resolutions=(4,), embedding_type="positional",
                                                 progressive_input="input_skip", progressive_combine="cat",
                                                 fir=False, scale_by_sigma=False),
           "ncsnpp_output_skip_ddpm_blocks": NCSNppConfig(image_size=8, nf=16, ch_mult=(1, 2), num_res_blocks=1,
                                                          attn_resolutions=(), progressive="output_skip",
                                                          resblock_type="ddpm")}[name]
    plan = ddpm_plan(cfg) if isinstance(cfg, DDPMConfig) else ncsnpp_plan(cfg)
    assert [b.index for b in plan] == list(range(len(plan)))
    with torch.device("meta"):
        torch_modules = treg.create_model(cfg).all_modules
    assert len(torch_modules) == len(plan)
    kind_of = {"Linear": "dense", "Conv2d": "conv3x3", "GroupNorm": "group_norm", "AttnBlock": "attn",
               "AttnBlockpp": "attn", "ResnetBlockDDPM": "resnet", "ResnetBlockDDPMpp": "resnet",
               "ResnetBlockBigGANpp": "resnet", "GaussianFourierProjection": "fourier", "Combine": "combine",
               "Downsample": "downsample", "Upsample": "upsample"}
    assert [kind_of[type(m).__name__] for m in torch_modules] == [b.kind for b in plan]
    flax_indices = {int(p[1].split("_")[-1]) for p in sconv.flatten_paths(jreg.variable_shapes(cfg))}
    table_indices = {int(km.torch_key.split(".")[1]) for km in tconv.key_table(cfg)}
    assert flax_indices == table_indices <= set(range(len(plan)))
