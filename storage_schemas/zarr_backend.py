"""Zarr v3 storage of adversarial stores: local paths and fsspec URLs.

Importing this module imports zarr; :func:`storage_schemas.backend.backend_for` imports it only for
paths that are not ``mem://``. Every array is written unsharded with zstd compression followed by a
crc32c checksum, so a damaged chunk fails on read (zarr raises, the store reports
:class:`~storage_schemas.errors.CorruptChunkError`).

Local paths are inspected with :mod:`os`; URLs (``file://``, ``s3://``, ...) through fsspec, the
library zarr opens them with. ``file://`` URLs are opened with ``auto_mkdir`` so chunks can be written
into folders that do not exist yet, as with local paths.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from typing import Any

import numcodecs
import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from .backend import Backend, BackendArray, BackendGroup, PathState
from .errors import StoreError, StoreValidationError

__all__ = ["ZARR_BACKEND", "ZarrBackend", "ZarrArray", "ZarrGroup"]

_ZSTD_LEVEL = 3


def _compressors() -> list[Any]:
    # zstd first, then crc32c over the compressed bytes: corruption is caught before decompression.
    return [ZstdCodec(level=_ZSTD_LEVEL), Crc32cCodec()]


def is_url(path: str) -> bool:
    """True for paths zarr opens through fsspec (``protocol://...``)."""
    return "://" in path


def _storage_options(path: str) -> dict[str, Any] | None:
    if not is_url(path):
        return None
    if path.split("://", 1)[0].split("::")[-1] in ("file", "local"):
        return {"auto_mkdir": True}
    return {}


class ZarrArray(BackendArray):
    """A :class:`zarr.Array` seen through the backend interface."""

    def __init__(self, array: zarr.Array) -> None:
        self._a = array

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._a.dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._a.shape)

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(self._a.chunks)

    @property
    def shards(self) -> tuple[int, ...] | None:
        return None if self._a.shards is None else tuple(self._a.shards)

    @property
    def checksummed(self) -> bool:
        return any(isinstance(c, Crc32cCodec) for c in self._a.compressors)

    def __getitem__(self, sel: Any) -> Any:
        return self._a[sel]

    def __setitem__(self, sel: Any, value: np.ndarray) -> None:
        self._a[sel] = value


class ZarrGroup(BackendGroup):
    """A :class:`zarr.Group` seen through the backend interface."""

    def __init__(self, group: zarr.Group) -> None:
        self._g = group

    def attrs(self) -> dict[str, Any]:
        return dict(self._g.attrs.asdict())

    def put_attrs(self, attrs: Mapping[str, Any]) -> None:
        self._g.attrs.put(dict(attrs))

    def get(self, name: str) -> BackendArray | BackendGroup:
        node = self._g[name]
        return ZarrGroup(node) if isinstance(node, zarr.Group) else ZarrArray(node)

    def keys(self) -> list[str]:
        return list(self._g.keys())

    def create_group(self, name: str) -> BackendGroup:
        return ZarrGroup(self._g.create_group(name))

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
        arr = self._g.create_array(
            name,
            shape=shape,
            chunks=chunks,
            shards=None,
            dtype=dtype,
            fill_value=fill_value,
            compressors=_compressors(),
            dimension_names=dimension_names,
        )
        return ZarrArray(arr)


def _fsspec_root(path: str) -> tuple[Any, str]:
    try:
        from fsspec.core import url_to_fs
    except ImportError as e:
        raise StoreError(
            f"Opening {path} needs fsspec ({e}); install it with `pip install fsspec` (plus the protocol's package, "
            "e.g. s3fs for s3://), or use a local path."
        ) from None
    try:
        return url_to_fs(path, **(_storage_options(path) or {}))
    except Exception as e:
        raise StoreError(
            f"Could not open the URL {path} ({type(e).__name__}: {e}). Check the protocol and install its fsspec "
            "package (e.g. s3fs for s3://, gcsfs for gs://)."
        ) from e


class ZarrBackend(Backend):
    """Zarr v3 groups at local paths and URLs."""

    def probe(self, path: str) -> PathState:
        if not is_url(path):
            if os.path.isfile(os.path.join(path, "zarr.json")):
                return PathState.STORE
            if not os.path.exists(path):
                return PathState.ABSENT
            if not os.path.isdir(path):
                return PathState.NOT_A_FOLDER
            return PathState.OCCUPIED if os.listdir(path) else PathState.EMPTY
        fs, root = _fsspec_root(path)
        root = root.rstrip("/")
        try:
            if fs.isfile(f"{root}/zarr.json"):
                return PathState.STORE
            if fs.isdir(root):
                return PathState.OCCUPIED if fs.ls(root, detail=False) else PathState.EMPTY
            return PathState.NOT_A_FOLDER if fs.exists(root) else PathState.ABSENT
        except Exception as e:
            raise StoreError(
                f"Could not check what exists at {path} ({type(e).__name__}: {e}). Check the URL and your access "
                "to it."
            ) from e

    def open_group(self, path: str, mode: str) -> BackendGroup:
        try:
            node = zarr.open(path, mode=mode, zarr_format=3, storage_options=_storage_options(path))
        except (FileNotFoundError, zarr.errors.NodeNotFoundError) as e:
            raise StoreError(
                f"No adversarial store at {path}. Check the path, or create the pool with generate_pool "
                f"(create_store). ({type(e).__name__}: {e})"
            ) from None
        except ImportError as e:  # a URL whose fsspec implementation is not installed
            raise StoreError(
                f"Could not open {path}: {e}. Install the package for this URL's protocol (e.g. "
                "`pip install fsspec s3fs`), or use a local path."
            ) from None
        except Exception as e:  # malformed zarr.json, wrong zarr format, permissions, ...
            raise StoreValidationError(
                f"Could not open {path} as a Zarr v3 group: {type(e).__name__}: {str(e).rstrip('.')}. The store "
                "metadata is damaged; regenerate the pool with create_store(..., overwrite=True)."
            ) from e
        if not isinstance(node, zarr.Group):
            raise StoreValidationError(
                f"{path} is a Zarr array, not an adversarial store group. Point to the pool's root folder."
            )
        return ZarrGroup(node)

    def create_group(self, path: str, attributes: Mapping[str, Any], *, replace: bool) -> BackendGroup:
        try:
            group = zarr.open_group(
                path,
                mode="w" if replace else "w-",  # "w-" fails if a group exists: never wipe by accident
                zarr_format=3,
                attributes=dict(attributes),
                storage_options=_storage_options(path),
            )
        except Exception as e:
            raise StoreError(
                f"Could not create a Zarr group at {path}: {type(e).__name__}: {e}. Check that the location is "
                "writable; if a store appeared there meanwhile, rerun (it is resumed) or pass overwrite=True."
            ) from e
        return ZarrGroup(group)

    def library_versions(self) -> dict[str, str]:
        return {
            "zarr": zarr.__version__,
            "numpy": np.__version__,
            "numcodecs": numcodecs.__version__,
            "python": platform.python_version(),
        }


#: The one instance :func:`storage_schemas.backend.backend_for` hands out.
ZARR_BACKEND = ZarrBackend()
