"""Versioned storage layouts of the MID pipeline (currently: the adversarial store).

Imports numpy only -- never ray, mlflow or torch, and zarr only when a store on disk or at a URL is
opened or created -- so that any process (Ray actors, training workers, CLI tools, a single-process
run without zarr using ``mem://`` stores) can open a pool cheaply.

Modules: :mod:`~storage_schemas.schema` (layout, attributes, :data:`SCHEMA_VERSION`),
:mod:`~storage_schemas.errors`, :mod:`~storage_schemas.api` (:func:`create_store`,
:func:`open_store`), :mod:`~storage_schemas.store` (:class:`AdversarialStore`),
:mod:`~storage_schemas.validate` (structural checks), :mod:`~storage_schemas.backend` (storage
interface and selection by path), :mod:`~storage_schemas.zarr_backend`,
:mod:`~storage_schemas.memory_backend`, :mod:`~storage_schemas.fingerprint`. ``python -m
storage_schemas.inspect STORE`` prints a readable summary of a pool.
"""

from .api import create_store, open_store
from .backend import MEMORY_PREFIX
from .errors import (
    CorruptChunkError,
    FingerprintMismatchError,
    IncompleteStoreError,
    SchemaVersionError,
    StoreError,
    StoreValidationError,
)
from .fingerprint import FINGERPRINT_ALGORITHM, state_dict_fingerprint
from .memory_backend import delete_memory_store, memory_store_names
from .schema import IDENTITY_ATTRS, RESERVED_ATTRS, SCHEMA_VERSION
from .store import AdversarialStore

__all__ = [
    "SCHEMA_VERSION",
    "IDENTITY_ATTRS",
    "RESERVED_ATTRS",
    "FINGERPRINT_ALGORITHM",
    "StoreError",
    "SchemaVersionError",
    "FingerprintMismatchError",
    "IncompleteStoreError",
    "StoreValidationError",
    "CorruptChunkError",
    "AdversarialStore",
    "create_store",
    "open_store",
    "state_dict_fingerprint",
    "MEMORY_PREFIX",
    "delete_memory_store",
    "memory_store_names",
]
