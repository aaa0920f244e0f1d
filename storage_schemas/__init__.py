"""Versioned on-disk layouts of the MID pipeline (currently: the adversarial store).

Imports zarr and numpy only -- never ray, mlflow or torch -- so that any process (Ray actors,
training workers, CLI tools) can open a pool cheaply. See :mod:`storage_schemas.adversarial_store`
for the layout and ``python -m storage_schemas.inspect STORE`` for a readable summary of a pool.
"""

from .adversarial_store import (
    IDENTITY_ATTRS,
    RESERVED_ATTRS,
    SCHEMA_VERSION,
    AdversarialStore,
    CorruptChunkError,
    FingerprintMismatchError,
    IncompleteStoreError,
    SchemaVersionError,
    StoreError,
    StoreValidationError,
    create_store,
    open_store,
)
from .fingerprint import FINGERPRINT_ALGORITHM, state_dict_fingerprint

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
]
