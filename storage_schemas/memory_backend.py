"""In-process storage of adversarial stores: ``mem://<name>`` paths.

A memory store is a tree of numpy arrays plus a JSON attribute dict, kept in a process-wide registry
keyed by name, so a single-process pipeline run (and its tests) can create, fill, reopen and read a
store without zarr. It has exactly the arrays, shapes, chunking metadata and attributes of a disk
store, and all store logic (validation, write order, finalize) is the same code. It lives only as long
as the process: another process (a Ray worker, ``python -m storage_schemas.inspect``) cannot see it.

Arrays hold decoded values, so there are no stored bytes to damage and nothing to checksum.
Attributes are stored as JSON text, so reading them returns a fresh copy, as on disk.
Handles opened read-only refuse writes.
"""

from __future__ import annotations

import json
import platform
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from .backend import MEMORY_PREFIX, Backend, BackendArray, BackendGroup, PathState
from .errors import StoreError, StoreValidationError

__all__ = ["MEMORY_BACKEND", "MemoryBackend", "delete_memory_store", "memory_store_names"]


class _ArrayNode:
    def __init__(self, data: np.ndarray, chunks: tuple[int, ...], dimension_names: tuple[str, ...]) -> None:
        self.data = data
        self.chunks = chunks
        self.dimension_names = dimension_names


class _GroupNode:
    def __init__(self, attrs: Mapping[str, Any]) -> None:
        self.attrs_json = json.dumps(dict(attrs))
        self.members: dict[str, _ArrayNode | _GroupNode] = {}


_REGISTRY: dict[str, _GroupNode] = {}
_LOCK = threading.Lock()


def _name_of(path: str) -> str:
    if not path.startswith(MEMORY_PREFIX):
        raise StoreError(f"{path!r} is not an in-memory store path; those look like '{MEMORY_PREFIX}<name>'.")
    name = path[len(MEMORY_PREFIX):].strip("/")
    if not name:
        raise StoreError(f"In-memory store path {path!r} has no name; use '{MEMORY_PREFIX}<name>', e.g. 'mem://pool'.")
    return name


def _read_only_error(what: str) -> StoreError:
    return StoreError(f"{what} is open read-only; open it with open_store(path, mode='r+') to write.")


class MemoryArray(BackendArray):
    """Handle on one in-memory array; reads return copies, so callers never alias the stored data."""

    def __init__(self, node: _ArrayNode, where: str, read_only: bool) -> None:
        self._node, self._where, self._read_only = node, where, read_only

    @property
    def location(self) -> str:
        """``mem://<name>/<array path>``."""
        return self._where

    @property
    def dtype(self) -> np.dtype:
        return self._node.data.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._node.data.shape)

    @property
    def chunks(self) -> tuple[int, ...]:
        return self._node.chunks

    @property
    def shards(self) -> tuple[int, ...] | None:
        return None

    @property
    def checksummed(self) -> bool:
        return True  # values are kept decoded in memory: no stored bytes can be damaged

    def __getitem__(self, sel: Any) -> Any:
        got = self._node.data[sel]
        return got.copy() if isinstance(got, np.ndarray) else got

    def __setitem__(self, sel: Any, value: np.ndarray) -> None:
        if self._read_only:
            raise _read_only_error(self._where)
        self._node.data[sel] = value


class MemoryGroup(BackendGroup):
    """Handle on one in-memory group."""

    def __init__(self, node: _GroupNode, where: str, read_only: bool) -> None:
        self._node, self._where, self._read_only = node, where, read_only

    @property
    def location(self) -> str:
        """``mem://<name>`` or ``mem://<name>/<group path>``."""
        return self._where

    def _writable(self) -> None:
        if self._read_only:
            raise _read_only_error(self._where)

    def attrs(self) -> dict[str, Any]:
        return json.loads(self._node.attrs_json)

    def put_attrs(self, attrs: Mapping[str, Any]) -> None:
        self._writable()
        self._node.attrs_json = json.dumps(dict(attrs))

    def get(self, name: str) -> BackendArray | BackendGroup:
        node: _ArrayNode | _GroupNode = self._node
        for part in name.strip("/").split("/"):
            if not isinstance(node, _GroupNode) or part not in node.members:
                raise KeyError(name)
            node = node.members[part]
        where = f"{self._where}/{name}"
        if isinstance(node, _GroupNode):
            return MemoryGroup(node, where, self._read_only)
        return MemoryArray(node, where, self._read_only)

    def keys(self) -> list[str]:
        return list(self._node.members)

    def _add(self, name: str, node: _ArrayNode | _GroupNode) -> None:
        self._writable()
        if "/" in name or not name:
            raise StoreValidationError(f"{self._where}: member name {name!r} must be non-empty and contain no '/'.")
        if name in self._node.members:
            raise StoreError(f"{self._where} already has a member {name!r}.")
        self._node.members[name] = node

    def create_group(self, name: str) -> BackendGroup:
        node = _GroupNode({})
        self._add(name, node)
        return MemoryGroup(node, f"{self._where}/{name}", self._read_only)

    def create_array(
        self,
        name: str,
        *,
        shape: tuple[int, ...],
        chunks: tuple[int, ...],
        dtype: np.dtype,
        fill_value: int,
        dimension_names: tuple[str, ...],
    ) -> BackendArray:
        node = _ArrayNode(np.full(shape, fill_value, dtype=dtype), tuple(chunks), tuple(dimension_names))
        self._add(name, node)
        return MemoryArray(node, f"{self._where}/{name}", self._read_only)


class MemoryBackend(Backend):
    """Groups in this process's registry, addressed as ``mem://<name>``."""

    def probe(self, path: str) -> PathState:
        with _LOCK:
            return PathState.STORE if _name_of(path) in _REGISTRY else PathState.ABSENT

    def open_group(self, path: str, mode: str) -> BackendGroup:
        name = _name_of(path)
        with _LOCK:
            node = _REGISTRY.get(name)
        if node is None:
            raise StoreError(
                f"No adversarial store at {path}. In-memory stores exist only in the process that created them "
                f"(currently: {memory_store_names() or 'none'}); create it with create_store({path!r}, ...) in this "
                "process, or use a path on disk to share a store between processes."
            )
        return MemoryGroup(node, path, read_only=mode == "r")

    def create_group(self, path: str, attributes: Mapping[str, Any], *, replace: bool) -> BackendGroup:
        name = _name_of(path)
        node = _GroupNode(attributes)
        with _LOCK:
            if name in _REGISTRY and not replace:
                raise StoreError(
                    f"Could not create {path}: a store with that name already exists in this process. Rerun "
                    "create_store (it is resumed), pass overwrite=True, or call delete_memory_store first."
                )
            _REGISTRY[name] = node
        return MemoryGroup(node, path, read_only=False)

    def library_versions(self) -> dict[str, str]:
        return {"numpy": np.__version__, "python": platform.python_version()}


def delete_memory_store(path: str) -> bool:
    """Forget the in-memory store at ``mem://<name>``; True if there was one.

    Open :class:`~storage_schemas.store.AdversarialStore` handles keep their arrays, but nothing can
    reopen the store afterwards.
    """
    name = _name_of(path)
    with _LOCK:
        return _REGISTRY.pop(name, None) is not None


def memory_store_names() -> list[str]:
    """Paths (``mem://<name>``) of the in-memory stores of this process, sorted."""
    with _LOCK:
        return sorted(MEMORY_PREFIX + n for n in _REGISTRY)


#: The one instance :func:`storage_schemas.backend.backend_for` hands out.
MEMORY_BACKEND = MemoryBackend()
