"""What the store code needs from an array-group storage, and which storage a path selects.

:class:`~storage_schemas.store.AdversarialStore`, :func:`~storage_schemas.api.create_store` and
:mod:`~storage_schemas.validate` are written once against the small interface defined here: open or
create a group, create / get an array or subgroup, read and write slices of an array, get and replace
the group attributes. Two storages implement it:

* ``mem://<name>`` (:data:`MEMORY_PREFIX`): numpy arrays in a process-wide registry
  (:mod:`storage_schemas.memory_backend`); needs nothing but numpy.
* anything else, a local path or a URL such as ``file:///data/pool.zarr`` or ``s3://bucket/pool.zarr``:
  a Zarr v3 group (:mod:`storage_schemas.zarr_backend`). zarr is imported only when such a store is
  opened or created, so ``import storage_schemas`` works without zarr installed.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import numpy as np

from .errors import StoreError, StoreValidationError

__all__ = [
    "MEMORY_PREFIX",
    "PathState",
    "BackendArray",
    "BackendGroup",
    "Backend",
    "backend_for",
    "is_memory_path",
    "read_group_attrs",
]

#: Path prefix selecting the in-memory storage: ``mem://<name>``.
MEMORY_PREFIX = "mem://"

ZARR_PIN = "zarr==3.1.6"


class PathState(enum.Enum):
    """What is at a store path before creating a store there."""

    ABSENT = "nothing exists there"
    EMPTY = "an empty folder"
    STORE = "a group (its zarr.json / registry entry exists)"
    OCCUPIED = "a non-empty folder that is not a group"
    NOT_A_FOLDER = "a file, not a folder"


class BackendArray(ABC):
    """One n-dimensional array of a group. Indexing returns new numpy arrays (or numpy scalars)."""

    @property
    @abstractmethod
    def dtype(self) -> np.dtype: ...

    @property
    @abstractmethod
    def shape(self) -> tuple[int, ...]: ...

    @property
    @abstractmethod
    def chunks(self) -> tuple[int, ...]:
        """Shape of one stored chunk (the unit a writer owns)."""

    @property
    @abstractmethod
    def shards(self) -> tuple[int, ...] | None:
        """Shard shape, or None when chunks are stored as separate objects."""

    @property
    @abstractmethod
    def checksummed(self) -> bool:
        """True when damaged stored bytes are detected on read (a checksum codec, or no encoding at all)."""

    @abstractmethod
    def __getitem__(self, sel: Any) -> Any: ...

    @abstractmethod
    def __setitem__(self, sel: Any, value: np.ndarray) -> None: ...


class BackendGroup(ABC):
    """A group: JSON attributes plus named members (arrays and subgroups)."""

    @abstractmethod
    def attrs(self) -> dict[str, Any]:
        """A fresh copy of the attributes as stored now."""

    @abstractmethod
    def put_attrs(self, attrs: Mapping[str, Any]) -> None:
        """Replace all attributes by ``attrs`` (JSON-able)."""

    @abstractmethod
    def get(self, name: str) -> BackendArray | BackendGroup:
        """The member at ``name`` (``"adv/PGD_N"`` walks subgroups); ``KeyError`` if there is none."""

    @abstractmethod
    def keys(self) -> list[str]:
        """Names of the direct members."""

    @abstractmethod
    def create_group(self, name: str) -> BackendGroup:
        """Create an empty subgroup."""

    @abstractmethod
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
        """Create an unsharded array filled with ``fill_value``, chunked by ``chunks``."""


class Backend(ABC):
    """Opens and creates groups at paths of one kind."""

    @abstractmethod
    def probe(self, path: str) -> PathState:
        """What exists at ``path`` now (reads nothing but existence and the group metadata's presence)."""

    @abstractmethod
    def open_group(self, path: str, mode: str) -> BackendGroup:
        """Open the existing group at ``path``, ``mode`` "r" or "r+".

        Raises :class:`StoreError` if there is none, :class:`StoreValidationError` if what is there is
        not a readable group.
        """

    @abstractmethod
    def create_group(self, path: str, attributes: Mapping[str, Any], *, replace: bool) -> BackendGroup:
        """Create a group at ``path`` with ``attributes``, opened for writing.

        With ``replace`` whatever is at ``path`` is deleted first; without it, creation fails with
        :class:`StoreError` if a group already exists there.
        """

    @abstractmethod
    def library_versions(self) -> dict[str, str]:
        """Library name -> version of what writes the data (the ``library_versions`` attribute)."""


def is_memory_path(path: str) -> bool:
    """True for ``mem://<name>`` paths."""
    return path.startswith(MEMORY_PREFIX)


def backend_for(path: str) -> Backend:
    """The storage a path selects: memory for ``mem://``, Zarr otherwise.

    Raises :class:`StoreError` telling how to install zarr when a disk or URL store is asked for and
    zarr cannot be imported.
    """
    if is_memory_path(path):
        from .memory_backend import MEMORY_BACKEND

        return MEMORY_BACKEND
    try:
        from .zarr_backend import ZARR_BACKEND
    except ImportError as e:
        raise StoreError(
            f"The store {path} is a Zarr store on disk or at a URL, but zarr cannot be imported "
            f"({type(e).__name__}: {e}). Install it with `pip install {ZARR_PIN}`, or use an in-memory store "
            f"path '{MEMORY_PREFIX}<name>' for a single-process run."
        ) from None
    return ZARR_BACKEND


def read_group_attrs(group: BackendGroup, path: str) -> dict[str, Any]:
    """The group's attributes; :class:`StoreValidationError` if they cannot be read."""
    try:
        return dict(group.attrs())
    except StoreError:
        raise
    except Exception as e:
        raise StoreValidationError(
            f"Could not read attributes of {path}: {type(e).__name__}: {e}. The store metadata is damaged; "
            "regenerate the pool with create_store(..., overwrite=True)."
        ) from e
