"""The adversarial store's layout and attribute schema (version :data:`SCHEMA_VERSION`).

This module says *what* a valid store contains; it does no I/O. The arrays are described here and
checked against a real group by :mod:`storage_schemas.validate`; the group attributes are parsed and
checked here (:func:`parse_attrs`), because every open, write and resume needs them.

Why this layout
---------------
Ray Data actors pregenerate adversarial images for every attack against a frozen *source* model and
write them here; Ray Train workers later stream index-aligned rows (clean image, label, one
adversarial view per attack). Generation is split into *blocks* of ``block_size`` consecutive rows,
and every data array is chunked with exactly one chunk per block and **no sharding**. So a writer
that owns a block owns whole objects on disk in every array, concurrent writers of different blocks
never touch the same object, and no locks are needed (sharded arrays lose rows under concurrent
writers; see STACK.md "Zarr 3").

Layout (``N`` rows, images ``(C, H, W)``, ``B = ceil(N / block_size)`` blocks, ``A`` attacks)::

    <store>/                       group; attributes described below
      clean                        uint8 (N, C, H, W)   chunks (block_size, C, H, W)
      label                        int64 (N,)           chunks (block_size,)     fill -1
      adv/<attack>                 uint8 (N, C, H, W)   one per attack
      target/<attack>              int64 (N,)           only for targeted attacks (fill -1)
      block_done                   uint8 (B,)           chunks (1,): 1 once the block's data is on disk
      success_count                int64 (B, A)         chunks (1, A): per block, rows where the attack
                                                        fooled the source model after 8-bit quantisation

On disk (a Zarr v3 group at a local path or a URL) every array is compressed with zstd and
protected by a crc32c checksum, so a flipped byte in a chunk raises
:class:`~storage_schemas.errors.CorruptChunkError` on read instead of silently feeding garbage to
training. A ``mem://<name>`` store holds the same arrays and attributes in process memory
(:mod:`storage_schemas.memory_backend`).

Group attributes: ``schema_version``, ``dataset``, ``split``, ``num_rows``, ``image_shape``,
``block_size``, ``num_blocks``, ``source_fingerprint``, ``source_arch``, ``created_at`` (UTC ISO 8601),
``library_versions`` (library name -> version: zarr, numpy, numcodecs, python on disk; numpy and
python in memory), ``seed``, ``attacks`` (name -> full spec), ``attack_order``, ``complete``
(+ ``success_rates`` and ``completed_at`` once finalized), plus any caller-supplied ``extra_attrs``.
While a store is being created its attributes are only ``{"_initializing": true}``.

Crash safety: :meth:`~storage_schemas.store.AdversarialStore.write_block` writes the data arrays
first, then the block's success counts, and sets ``block_done`` last, so a crash never leaves a block
marked done with missing data; rerunning generation only redoes blocks that are not marked done.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import SchemaVersionError, StoreValidationError

__all__ = ["SCHEMA_VERSION", "IDENTITY_ATTRS", "RESERVED_ATTRS"]

#: Version of the layout described in this module. Bump it on any incompatible change.
SCHEMA_VERSION: int = 1

IMAGE_DTYPE = np.dtype(np.uint8)
LABEL_DTYPE = np.dtype(np.int64)
DONE_DTYPE = np.dtype(np.uint8)
LABEL_FILL = -1
ATTACK_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
#: Sole attribute of a group whose creation has not finished.
INIT_MARKER = "_initializing"

#: Attributes that, when equal, make ``create_store`` reuse an existing store (resume).
IDENTITY_ATTRS: tuple[str, ...] = (
    "dataset",
    "split",
    "num_rows",
    "image_shape",
    "block_size",
    "attacks",
    "attack_order",
    "source_fingerprint",
    "source_arch",
    "seed",
)

#: Attribute names owned by the schema; ``extra_attrs`` may not use them.
RESERVED_ATTRS: frozenset[str] = frozenset(
    {
        "schema_version",
        "num_blocks",
        "created_at",
        "library_versions",
        "complete",
        "completed_at",
        "success_rates",
        INIT_MARKER,
        *IDENTITY_ATTRS,
    }
)


# ------------------------------------------------------------------------------------ small helpers


def is_int(x: Any) -> bool:
    """True for Python and numpy integers, False for bools."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"object of type {type(o).__name__} is not JSON serializable")


def to_json(value: Any, what: str) -> Any:
    """Round-trip ``value`` through JSON (numpy scalars become Python numbers, tuples become lists)."""
    try:
        return json.loads(json.dumps(value, default=_json_default, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise StoreValidationError(
            f"{what} must be JSON-serializable (str, int, float, bool, None, list, dict; no NaN): {e}. "
            "Convert tensors/objects to plain numbers or strings before passing them."
        ) from None


def utc_now() -> str:
    """The current time in the format of ``created_at`` / ``completed_at`` (UTC ISO 8601, seconds)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def format_blocks(blocks: Sequence[int], limit: int = 10) -> str:
    """``[0, 3, 7, ...]``: the first ``limit`` block indices, for error messages."""
    shown = ", ".join(str(b) for b in list(blocks)[:limit])
    return f"[{shown}{', ...' if len(blocks) > limit else ''}]"


def block_lengths(num_rows: int, block_size: int, num_blocks: int) -> np.ndarray:
    """int64 ``(num_blocks,)``: rows per block (the last block may be shorter)."""
    lens = np.full(num_blocks, block_size, dtype=np.int64)
    lens[-1] = num_rows - (num_blocks - 1) * block_size
    return lens


def check_extra_attrs(extra_attrs: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate caller-supplied attributes (JSON-able, no reserved keys) and return a JSON copy."""
    if extra_attrs is None:
        return {}
    if not isinstance(extra_attrs, Mapping):
        raise StoreValidationError(f"extra_attrs must be a dict, got {type(extra_attrs).__name__}.")
    clash = sorted(k for k in extra_attrs if k in RESERVED_ATTRS or not isinstance(k, str))
    if clash:
        raise StoreValidationError(
            f"extra_attrs keys {clash} are reserved by the store schema (or not strings); rename them "
            "(e.g. prefix with 'run_')."
        )
    return to_json(dict(extra_attrs), "extra_attrs")


# --------------------------------------------------------------------------------- attribute parsing


@dataclass(frozen=True)
class StoreHeader:
    """Validated view of the group attributes."""

    dataset: str
    split: str
    num_rows: int
    image_shape: tuple[int, int, int]
    block_size: int
    num_blocks: int
    source_fingerprint: str
    source_arch: str
    attack_order: list[str]
    attacks: dict[str, dict[str, Any]]
    complete: bool

    @property
    def targeted(self) -> list[str]:
        """Targeted attacks (those with a ``target/<name>`` array), in attack order."""
        return [a for a in self.attack_order if self.attacks[a]["targeted"]]


def check_schema_version(attrs: Mapping[str, Any], path: str) -> None:
    """Raise :class:`SchemaVersionError` unless ``attrs["schema_version"]`` is :data:`SCHEMA_VERSION`."""
    found = attrs.get("schema_version", None)
    if not (is_int(found) and int(found) == SCHEMA_VERSION):
        shown = "no schema_version attribute" if "schema_version" not in attrs else f"schema version {found!r}"
        raise SchemaVersionError(
            f"Adversarial store at {path} has {shown}, but this code reads schema version "
            f"{SCHEMA_VERSION} (found {found!r}, expected {SCHEMA_VERSION}). Regenerate the pool with the "
            f"current generate_pool (create_store(..., overwrite=True)), or use code that reads schema "
            f"version {found!r}."
        )


def validate_attack_spec(name: Any, spec: Any, where: str) -> None:
    """Check one ``attacks`` entry: a usable array name and a dict spec with a boolean ``targeted``."""
    if not isinstance(name, str) or not ATTACK_NAME_RE.match(name):
        raise StoreValidationError(
            f"{where}: attack name {name!r} is not usable as an array name; use letters, digits, '_', "
            "'-' or '.', starting with a letter or digit (e.g. 'PGD_N')."
        )
    if not isinstance(spec, Mapping):
        raise StoreValidationError(
            f"{where}: spec of attack {name!r} must be a dict (library, class, eps, norm, steps, ...), "
            f"got {type(spec).__name__}."
        )
    if not isinstance(spec.get("targeted"), bool):
        raise StoreValidationError(
            f"{where}: spec of attack {name!r} needs a boolean 'targeted' entry (it decides whether a "
            f"target-label array exists), got {spec.get('targeted')!r}. Add \"targeted\": true/false."
        )


def parse_attrs(attrs: Any, path: str) -> StoreHeader:
    """Validate the group attributes and return them as a :class:`StoreHeader`.

    Raises :class:`StoreValidationError` if creation never finished, then :class:`SchemaVersionError`
    if the version does not match, then :class:`StoreValidationError` naming the first malformed
    attribute.
    """
    if not isinstance(attrs, Mapping):
        raise StoreValidationError(f"Store at {path}: group attributes are not a mapping ({type(attrs).__name__}).")
    if INIT_MARKER in attrs:
        raise StoreValidationError(
            f"Store at {path} was never fully created (creation was interrupted). Rerun generate_pool / "
            "create_store: it recreates the store from scratch."
        )
    check_schema_version(attrs, path)

    def bad(key: str, expect: str) -> StoreValidationError:
        if key not in attrs:
            return StoreValidationError(
                f"Store at {path} is missing attribute {key!r} ({expect}). The store is damaged or was not "
                "written by storage_schemas; regenerate it with create_store(..., overwrite=True)."
            )
        return StoreValidationError(
            f"Store at {path}: attribute {key!r} must be {expect}, found {attrs[key]!r}. The store is damaged "
            "or was edited by hand; regenerate it with create_store(..., overwrite=True)."
        )

    def req_str(key: str) -> str:
        v = attrs.get(key)
        if not isinstance(v, str) or not v:
            raise bad(key, "a non-empty string")
        return v

    def req_pos_int(key: str) -> int:
        v = attrs.get(key)
        if not is_int(v) or int(v) <= 0:
            raise bad(key, "a positive integer")
        return int(v)

    dataset = req_str("dataset")
    split = req_str("split")
    num_rows = req_pos_int("num_rows")
    block_size = req_pos_int("block_size")
    num_blocks = attrs.get("num_blocks")
    expected_blocks = math.ceil(num_rows / block_size)
    if not is_int(num_blocks) or int(num_blocks) != expected_blocks:
        raise bad("num_blocks", f"ceil(num_rows / block_size) = {expected_blocks}")
    shape = attrs.get("image_shape")
    if not (
        isinstance(shape, (list, tuple)) and len(shape) == 3 and all(is_int(d) and int(d) > 0 for d in shape)
    ):
        raise bad("image_shape", "a list of 3 positive integers [C, H, W]")
    image_shape = (int(shape[0]), int(shape[1]), int(shape[2]))
    fingerprint = req_str("source_fingerprint")
    arch = req_str("source_arch")
    created = req_str("created_at")
    try:
        _dt.datetime.fromisoformat(created)
    except ValueError:
        raise bad("created_at", "an ISO 8601 timestamp") from None
    libs = attrs.get("library_versions")
    if not (isinstance(libs, Mapping) and all(isinstance(k, str) and isinstance(v, str) for k, v in libs.items())):
        raise bad("library_versions", "a dict of library name -> version string")
    if not is_int(attrs.get("seed")):
        raise bad("seed", "an integer")
    attacks = attrs.get("attacks")
    if not isinstance(attacks, Mapping) or not attacks:
        raise bad("attacks", "a non-empty dict of attack name -> spec")
    for name, spec in attacks.items():
        validate_attack_spec(name, spec, f"Store at {path}")
    order = attrs.get("attack_order")
    if not (
        isinstance(order, list)
        and all(isinstance(a, str) for a in order)
        and len(set(order)) == len(order)
        and set(order) == set(attacks)
    ):
        raise bad("attack_order", f"a list naming each attack in 'attacks' once ({sorted(attacks)})")
    complete = attrs.get("complete")
    if not isinstance(complete, bool):
        raise bad("complete", "a boolean")
    if complete:
        rates = attrs.get("success_rates")
        if not (
            isinstance(rates, Mapping)
            and set(rates) == set(order)
            and all(
                isinstance(r, (int, float)) and not isinstance(r, bool) and 0.0 <= r <= 1.0 for r in rates.values()
            )
        ):
            raise bad("success_rates", "a dict attack -> rate in [0, 1] for every attack (store is marked complete)")
        req_str("completed_at")
    return StoreHeader(
        dataset=dataset,
        split=split,
        num_rows=num_rows,
        image_shape=image_shape,
        block_size=block_size,
        num_blocks=expected_blocks,
        source_fingerprint=fingerprint,
        source_arch=arch,
        attack_order=list(order),
        attacks={k: dict(v) for k, v in attacks.items()},
        complete=complete,
    )
