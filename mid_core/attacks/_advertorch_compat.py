"""The one place that makes advertorch 0.2.3 importable on current PyTorch.

advertorch 0.2.3 does ``from torch.autograd.gradcheck import zero_gradients`` (in its FAB attack, imported
by ``advertorch.attacks``); that helper was removed from PyTorch long ago, so ``import advertorch.attacks``
fails with ``ImportError: cannot import name 'zero_gradients'``. Before the first import we add an equivalent
recursive ``zero_gradients`` to the *module* ``torch.autograd.gradcheck``.

Trap: ``import torch.autograd.gradcheck as m`` binds the *function* ``gradcheck`` (the package
``torch.autograd`` re-exports it under the same name), so the module must be fetched with
``importlib.import_module``.

Every other module uses ``import_advertorch_attacks()``; nothing else touches the shim.
"""
from __future__ import annotations

import importlib
from collections.abc import Iterable
from types import ModuleType

import torch

_ATTACKS: ModuleType | None = None


def _zero_gradients(x: torch.Tensor | Iterable) -> None:
    """Zero ``x.grad`` in place for a tensor or (recursively) an iterable of tensors, as old PyTorch did."""
    if isinstance(x, torch.Tensor):
        if x.grad is not None:
            x.grad.detach_()
            x.grad.zero_()
    elif isinstance(x, Iterable):
        for elem in x:
            _zero_gradients(elem)


def _install_shim() -> None:
    gradcheck_module = importlib.import_module("torch.autograd.gradcheck")
    if not isinstance(gradcheck_module, ModuleType):  # pragma: no cover - defensive, see module docstring
        raise RuntimeError("torch.autograd.gradcheck did not resolve to a module")
    if not hasattr(gradcheck_module, "zero_gradients"):
        gradcheck_module.zero_gradients = _zero_gradients


def import_advertorch_attacks() -> ModuleType:
    """Return the ``advertorch.attacks`` module, installing the compatibility shim first (idempotent)."""
    global _ATTACKS
    if _ATTACKS is None:
        _install_shim()
        _ATTACKS = importlib.import_module("advertorch.attacks")
    return _ATTACKS
