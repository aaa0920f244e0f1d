"""Connecting to Ray the same way on a laptop, in CI and on a cluster.

``ray job submit`` sets ``RAY_ADDRESS`` for the job's driver, so ``ray.init()`` attaches to that cluster;
run directly (tests, notebooks) it starts a local one. Worker processes get ``GLOO_SOCKET_IFNAME`` for
single-machine runs where gloo would otherwise pick an interface it cannot bind.
"""
from __future__ import annotations

import logging
import os
from typing import Any

# Ray Train 2.60 starts a PlacementGroupCleaner actor per run that asks the State API (served by the dashboard)
# once a second whether the controller is alive. Without a dashboard every question fails and logs a warning:
# ~1,700 identical lines in a 36-minute benchmark log. The cleaner only matters when a controller dies
# ungracefully, and a dashboard-less local Ray dies with its driver anyway.
PLACEMENT_GROUP_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"


def silence_placement_group_cleaner() -> None:
    """Ray worker setup hook: keep only errors from Ray Train's placement-group cleaner (see above)."""
    logging.getLogger(PLACEMENT_GROUP_CLEANER_LOGGER).setLevel(logging.ERROR)


def local_ray_kwargs(include_dashboard: bool) -> dict[str, Any]:
    """``ray.init`` arguments for a private local cluster, with or without the dashboard.

    Without the dashboard, every worker runs ``silence_placement_group_cleaner`` at start-up.
    """
    kwargs: dict[str, Any] = {"include_dashboard": include_dashboard}
    if include_dashboard:
        kwargs["dashboard_host"] = "127.0.0.1"
    else:
        kwargs["runtime_env"] = {"worker_process_setup_hook": silence_placement_group_cleaner}
    return kwargs


def init_ray(num_cpus: int | None = None) -> Any:
    """``ray.init`` that attaches to ``$RAY_ADDRESS`` when set, else starts a local cluster.

    ``MID_RAY_DASHBOARD=0`` starts the local cluster without the dashboard (benchmarks: less memory).
    """
    import ray

    if ray.is_initialized():
        return ray.get_runtime_context()
    kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": True}
    if not os.environ.get("RAY_ADDRESS"):
        kwargs["num_cpus"] = num_cpus
        kwargs.update(local_ray_kwargs(os.environ.get("MID_RAY_DASHBOARD", "1") == "1"))
    return ray.init(**kwargs)


def worker_env() -> dict[str, str]:
    """Environment variables for Ray Train workers and Ray Data actors."""
    # RAY_TRAIN_ENABLE_PRINT_PATCH=0: Ray Train 2.60 otherwise prints every worker line twice (tee + logger).
    env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
    for name in ("GLOO_SOCKET_IFNAME", "MID_FAULT_KILL_AT_STEP", "MID_FAULT_KILL_AT_BLOCK", "MID_FAULT_MARKER"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


def train_scaling(num_workers: int, worker_cpus: float, use_gpu: bool) -> tuple[Any, Any]:
    """``(ScalingConfig, TorchConfig)`` of a Ray Train stage: CPU workers with gloo, or one GPU per worker with NCCL."""
    from ray.train import ScalingConfig
    from ray.train.torch import TorchConfig

    resources = {"CPU": worker_cpus, **({"GPU": 1} if use_gpu else {})}
    return (ScalingConfig(num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=resources),
            TorchConfig(backend="nccl" if use_gpu else "gloo"))


def worker_device(use_gpu: bool) -> Any:
    """The torch device of this Ray Train worker: its assigned GPU, or the CPU."""
    import torch

    if not use_gpu:
        return torch.device("cpu")
    import ray.train.torch

    return ray.train.torch.get_device()
