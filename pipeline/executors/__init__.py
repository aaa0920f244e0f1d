"""Executors: how the stages' work is spread over processes. The stages (``pipeline.stages``) are written once;
an executor only maps generation blocks to workers and runs a training function on one or more workers.

* ``local``: everything in this process (one CPU or GPU machine, a notebook, a debugger). Imports no Ray.
* ``ray``: Ray Data actors generate blocks, Ray Train workers run the training functions (``ray job submit``).

The same config and seed give the same stores, the same weights (one training worker) and the same tables
through either executor.
"""
from __future__ import annotations

import importlib.util

from pipeline.errors import UserError
from pipeline.executors.base import Executor, WorkerContext

EXECUTORS = ("local", "ray")


def get_executor(name: str = "auto") -> Executor:
    """The executor called ``name``; ``auto`` is ``ray`` where Ray is installed, else ``local``."""
    if name == "auto":
        name = "ray" if importlib.util.find_spec("ray") is not None else "local"
    if name == "local":
        from pipeline.executors.local import LocalExecutor

        return LocalExecutor()
    if name == "ray":
        if importlib.util.find_spec("ray") is None:
            raise UserError("--executor ray needs Ray: install the project as the README says, or use --executor local")
        from pipeline.executors.ray_executor import RayExecutor

        return RayExecutor()
    raise UserError(f"unknown executor {name!r}; choose one of {['auto', *EXECUTORS]}")


__all__ = ["EXECUTORS", "Executor", "WorkerContext", "get_executor"]
