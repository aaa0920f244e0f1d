"""The exceptions raised about adversarial stores.

Every failure of this package is a :class:`StoreError`, so callers (the CLI, pipeline stages) can catch
one type and print the message, which always says how to fix the problem. The subclasses let callers
react to specific situations: a pool from another layout version, from another source model, one that
is not fully generated, one whose metadata or arrays are malformed, or one with a damaged chunk.
"""

from __future__ import annotations

__all__ = [
    "StoreError",
    "SchemaVersionError",
    "FingerprintMismatchError",
    "IncompleteStoreError",
    "StoreValidationError",
    "CorruptChunkError",
]


class StoreError(Exception):
    """Base class of every error about an adversarial store."""


class SchemaVersionError(StoreError):
    """The store was written with a different layout version than this code reads."""


class FingerprintMismatchError(StoreError):
    """The store was generated against a different source model than the teacher in use."""


class IncompleteStoreError(StoreError):
    """Some blocks have not been generated (or the store is not complete where that is required)."""


class StoreValidationError(StoreError):
    """The store's attributes or arrays do not match the schema (or invalid arguments were given)."""


class CorruptChunkError(StoreError):
    """A chunk failed its checksum or could not be decoded."""
