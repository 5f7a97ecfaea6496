"""spec.train_config: score_sde's defaults, from_score_sde_config, overrides, JSON round trips
and RunConfig's combination checks (numpy / stdlib only)."""

from __future__ import annotations

import dataclasses
import json

import pytest

import spec
from spec.model_configs import DDPMConfig, MLPConfig
from spec.ncsn_configs import NCSNConfig
from spec.train_config import EMAConfig, OptimConfig, RunConfig, TrainConfig, TrainingConfig

# score_sde (configs/default_cifar10_configs.py upstream; vp/ddpm configs: ema 0.9999, sde
# vpsde): the training / optim / model entries that shape training.
SCORE_SDE_TRAINING = dict(batch_size=128, n_iters=1300001, snapshot_freq=50000, log_freq=50,
                          eval_freq=100, snapshot_freq_for_preemption=10000, continuous=True,
                          reduce_mean=False, likelihood_weighting=False, sde="vpsde")
SCORE_SDE_OPTIM = dict(optimizer="Adam", lr=2e-4, beta1=0.9, eps=1e-8, weight_decay=0.0,
                       warmup=5000, grad_clip=1.0)


def test_defaults_are_score_sde():
    c = TrainConfig()
    for k, v in SCORE_SDE_TRAINING.items():
        assert getattr(c.training, k) == v, k
    for k, v in SCORE_SDE_OPTIM.items():
        assert getattr(c.optim, k) == v, k
    assert c.model.ema_rate == (0.9999,) and c.model.ema_warmup is True
    assert c.training.schedule_sampler == "uniform" and c.training.microbatch == -1
    assert c.optim.lr_anneal_steps == 0 and c.training.loss == "auto"
    hash(c)  # frozen, usable as a jit static argument


def test_from_score_sde_config_extra_and_missing_keys():
    d = {"training": {"batch_size": 64, "snapshot_sampling": True, "continuous": False},
         "optim": {"lr": 1e-3, "warmup": 0},
         "model": {"name": "ncsnpp", "ema_rate": 0.999, "nf": 128, "dropout": 0.1},
         "sampling": {"snr": 0.16}, "data": {"dataset": "CIFAR10"}}
    c = TrainConfig.from_score_sde_config(d)
    assert c.training.batch_size == 64 and c.training.continuous is False
    assert c.training.n_iters == 1300001  # missing -> default
    assert c.optim.lr == 1e-3 and c.optim.warmup == 0 and c.optim.grad_clip == 1.0
    assert c.model.ema_rate == (0.999,)
    assert TrainConfig.from_score_sde_config({}) == TrainConfig()
    with pytest.raises(TypeError, match="config"):
        TrainConfig.from_score_sde_config([1, 2])
    with pytest.raises(TypeError, match="training"):
        TrainConfig.from_score_sde_config({"training": 3})


def test_overrides_good():
    c = TrainConfig().with_overrides(["optim.lr=1e-3", "training.batch_size=64",
                                      "model.ema_rate=0.9999,0.999", "training.continuous=false",
                                      "optim.optimizer=AdamW", "training.n_iters=1e4"])
    assert c.optim.lr == 1e-3 and c.training.batch_size == 64 and c.training.n_iters == 10000
    assert c.model.ema_rate == (0.9999, 0.999) and c.training.continuous is False
    assert c.optim.optimizer == "AdamW"
    assert TrainConfig().with_overrides({"optim.warmup": 10, "model.ema_rate": [0.5]}).optim.warmup == 10
    assert TrainConfig().with_overrides([]) == TrainConfig()


def test_overrides_unknown_name_lists_valid_ones():
    with pytest.raises(KeyError) as e:
        TrainConfig().with_overrides(["optim.lrr=1"])
    msg = str(e.value)
    assert "optim.lrr" in msg and "optim.lr" in msg and "training.batch_size" in msg
    assert "model.ema_rate" in msg
    with pytest.raises(ValueError, match="section.field=value"):
        TrainConfig().with_overrides(["optim.lr"])


@pytest.mark.parametrize("override, err, match", [
    ("training.batch_size=abc", ValueError, "training.batch_size"),
    ("training.batch_size=1.5", ValueError, "training.batch_size"),
    ("training.continuous=maybe", ValueError, "training.continuous"),
    ("optim.lr=fast", ValueError, "optim.lr"),
    ("optim.optimizer=SGD", ValueError, "optim.optimizer"),
    ("model.ema_rate=0.9,x", ValueError, "ema_rate"),
    ("model.ema_rate=1.5", ValueError, "ema_rate"),
    ("training.microbatch=0", ValueError, "microbatch"),
    ("training.microbatch=7", ValueError, "microbatch"),
    ("training.schedule_sampler=importance", ValueError, "schedule_sampler"),
    ("training.loss=l2", ValueError, "training.loss"),
])
def test_overrides_bad_value(override, err, match):
    with pytest.raises(err, match=match):
        TrainConfig().with_overrides([override])


def test_field_types_are_checked():
    with pytest.raises(TypeError, match="training.continuous"):
        TrainingConfig(continuous="yes")
    with pytest.raises(TypeError, match="training.batch_size"):
        TrainingConfig(batch_size=2.0)
    with pytest.raises(ValueError, match="beta1"):
        OptimConfig(beta1=1.0)
    with pytest.raises(TypeError, match="TrainConfig.optim"):
        TrainConfig(optim=TrainingConfig())
    assert EMAConfig(ema_rate="0.9999, 0.999").ema_rate == (0.9999, 0.999)
    assert EMAConfig(ema_rate=0.5).ema_rate == (0.5,)


def test_learning_rate_oracle():
    oc = OptimConfig(lr=1.0, warmup=4, lr_anneal_steps=0)
    assert [oc.learning_rate(s) for s in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    oc = OptimConfig(lr=2.0, warmup=0, lr_anneal_steps=4)
    assert [oc.learning_rate(s) for s in range(4)] == [2.0, 1.5, 1.0, 0.5]


def test_train_config_json_round_trip():
    c = TrainConfig().with_overrides(["model.ema_rate=0.9999,0.999", "optim.optimizer=AdamW",
                                      "training.microbatch=32", "training.loss=diffusion"])
    d = json.loads(json.dumps(c.to_dict()))
    assert TrainConfig.from_dict(d) == c
    with pytest.raises(KeyError, match="unknown keys"):
        TrainConfig.from_dict({"optim": {"learning_rate": 1}})
    with pytest.raises(KeyError, match="unknown sections"):
        TrainConfig.from_dict({"sampling": {}})


def _run(**kw):
    return RunConfig(**kw)


def test_run_config_round_trip_and_auto_loss():
    cases = [
        (MLPConfig(), spec.VPSDEConfig(), "sde", []),
        (MLPConfig(), spec.VPSDEConfig(N=10), "ddpm", ["training.continuous=false"]),
        (MLPConfig(), spec.VESDEConfig(N=10), "smld", ["training.continuous=false"]),
        (MLPConfig(), spec.subVPSDEConfig(), "sde", ["training.continuous=false"]),
        (MLPConfig(learn_sigma=True), spec.DiffusionConfig(steps=10, noise_schedule="cosine", model_var_type="learned_range",
                                           loss_type="rescaled_mse"), "diffusion",
         ["training.schedule_sampler=loss-second-moment"]),
        (NCSNConfig(ngf=8, num_scales=3, image_size=8, num_channels=1), None, "anneal_dsm", []),
    ]
    for model, process, loss, overrides in cases:
        rc = RunConfig(model=model, train=TrainConfig().with_overrides(overrides), process=process)
        assert rc.resolved_loss == loss
        back = RunConfig.from_dict(json.loads(rc.to_json()))
        assert back == rc
        hash(rc)


@pytest.mark.parametrize("kw, match", [
    (dict(model=MLPConfig(), process=None), "anneal_dsm. needs an NCSNConfig"),
    (dict(model=MLPConfig(), process=spec.VPSDEConfig(),
          train=TrainConfig().with_overrides(["training.loss=anneal_dsm"])), "needs process = None"),
    (dict(model=MLPConfig(), process=None,
          train=TrainConfig().with_overrides(["training.loss=anneal_dsm"])), "NCSNConfig or NCSNv2Config"),
    (dict(model=MLPConfig(), process=spec.VPSDEConfig(),
          train=TrainConfig().with_overrides(["training.loss=smld"])), "VESDEConfig"),
    (dict(model=MLPConfig(), process=spec.subVPSDEConfig(),
          train=TrainConfig().with_overrides(["training.loss=ddpm"])), "VPSDEConfig"),
    (dict(model=MLPConfig(), process=spec.VPSDEConfig(),
          train=TrainConfig().with_overrides(["training.loss=diffusion"])), "DiffusionConfig"),
    (dict(model=NCSNConfig(ngf=8, num_scales=3, image_size=8, num_channels=1),
          process=spec.VPSDEConfig()), "integer noise-level labels"),
    (dict(model=DDPMConfig(num_scales=10), process=spec.VESDEConfig(N=20),
          train=TrainConfig().with_overrides(["training.continuous=false"])), "num_scales"),
    (dict(model=MLPConfig(), process=spec.VPSDEConfig(),
          train=TrainConfig().with_overrides(["training.schedule_sampler=loss-second-moment"])),
     "schedule_sampler"),
])
def test_run_config_combination_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        RunConfig(**kw)


def test_run_config_type_errors():
    with pytest.raises(TypeError, match="RunConfig.model"):
        RunConfig(model=spec.VPSDEConfig(), process=spec.VPSDEConfig())
    with pytest.raises(TypeError, match="RunConfig.train"):
        RunConfig(model=MLPConfig(), train=OptimConfig(), process=spec.VPSDEConfig())
    with pytest.raises(TypeError, match="RunConfig.process"):
        RunConfig(model=MLPConfig(), process=MLPConfig())
    with pytest.raises(ValueError, match="unknown type"):
        RunConfig.from_dict({"model": {"type": "UNet"}, "process": None})
    with pytest.raises(KeyError, match="unknown keys"):
        RunConfig.from_dict({"model": dataclasses.asdict(MLPConfig()) | {"type": "MLPConfig"},
                             "sampling": {}})


def test_run_config_with_data_config_round_trip():
    from spec.datasets import DataConfig

    rc = RunConfig(model=MLPConfig(), process=spec.VPSDEConfig(), data=DataConfig(dataset="gmm"))
    d = json.loads(rc.to_json())
    assert d["data"]["type"] == "DataConfig" and d["process"]["type"] == "VPSDEConfig"
    assert RunConfig.from_dict(d) == rc
    with pytest.raises(TypeError, match="RunConfig.data"):
        RunConfig(model=MLPConfig(), process=spec.VPSDEConfig(), data={"dataset": "gmm"})
