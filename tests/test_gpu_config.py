"""The GPU path is chosen by configuration (checked here on CPU): GPUs per worker/actor and the NCCL backend."""
from __future__ import annotations

import pytest

from pipeline.config import ConfigError, config_from_dict
from pipeline.executors.ray_runtime import train_scaling, worker_device


def test_gpu_workers_request_one_gpu_each_and_use_nccl():
    scaling, torch_config = train_scaling(num_workers=4, worker_cpus=2.0, use_gpu=True)
    assert scaling.use_gpu and scaling.num_workers == 4
    assert scaling.resources_per_worker == {"CPU": 2.0, "GPU": 1}
    assert torch_config.backend == "nccl"


def test_cpu_workers_use_gloo_and_no_gpu():
    scaling, torch_config = train_scaling(num_workers=1, worker_cpus=0.5, use_gpu=False)
    assert not scaling.use_gpu and scaling.resources_per_worker == {"CPU": 0.5}
    assert torch_config.backend == "gloo"
    assert str(worker_device(False)) == "cpu"


def test_gpu_switches_are_config_keys():
    cfg = config_from_dict({"teacher": {"use_gpu": True}, "mid": {"use_gpu": True}, "pool": {"actor_gpus": 0.25}})
    assert cfg.teacher.use_gpu and cfg.mid.use_gpu and cfg.pool.actor_gpus == 0.25
    with pytest.raises(ConfigError, match="pool.actor_gpus"):
        config_from_dict({"pool": {"actor_gpus": -1}})
