"""Versioned on-disk layout of an adversarial pool (one Zarr v3 group per pool).

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

Every array is compressed with zstd and protected by a crc32c checksum, so a flipped byte in a chunk
raises :class:`CorruptChunkError` on read instead of silently feeding garbage to training.

Group attributes: ``schema_version``, ``dataset``, ``split``, ``num_rows``, ``image_shape``,
``block_size``, ``num_blocks``, ``source_fingerprint``, ``source_arch``, ``created_at`` (UTC ISO 8601),
``library_versions`` (zarr, numpy, numcodecs, python), ``seed``, ``attacks`` (name -> full spec),
``attack_order``, ``complete`` (+ ``success_rates`` and ``completed_at`` once finalized), plus any
caller-supplied ``extra_attrs``.

Crash safety: :meth:`AdversarialStore.write_block` writes the data arrays first, then the block's
success counts, and sets ``block_done`` last, so a crash never leaves a block marked done with missing
data; rerunning generation only redoes blocks that are not marked done.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numcodecs
import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

__all__ = [
    "SCHEMA_VERSION",
    "StoreError",
    "SchemaVersionError",
    "FingerprintMismatchError",
    "IncompleteStoreError",
    "StoreValidationError",
    "CorruptChunkError",
    "AdversarialStore",
    "create_store",
    "open_store",
]

#: Version of the layout described in this module. Bump it on any incompatible change.
SCHEMA_VERSION: int = 1

_IMAGE_DTYPE = np.dtype(np.uint8)
_LABEL_DTYPE = np.dtype(np.int64)
_LABEL_FILL = -1
_ZSTD_LEVEL = 3
_ATTACK_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_INIT_MARKER = "_initializing"

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

#: Attribute names owned by this module; ``extra_attrs`` may not use them.
RESERVED_ATTRS: frozenset[str] = frozenset(
    {
        "schema_version",
        "num_blocks",
        "created_at",
        "library_versions",
        "complete",
        "completed_at",
        "success_rates",
        _INIT_MARKER,
        *IDENTITY_ATTRS,
    }
)


# --------------------------------------------------------------------------------------------- errors


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


# -------------------------------------------------------------------------------------------- helpers


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"object of type {type(o).__name__} is not JSON serializable")


def _to_json(value: Any, what: str) -> Any:
    """Round-trip ``value`` through JSON (numpy scalars become Python numbers, tuples become lists)."""
    try:
        return json.loads(json.dumps(value, default=_json_default, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise StoreValidationError(
            f"{what} must be JSON-serializable (str, int, float, bool, None, list, dict; no NaN): {e}. "
            "Convert tensors/objects to plain numbers or strings before passing them."
        ) from None


def _compressors() -> list[Any]:
    # zstd first, then crc32c over the compressed bytes: corruption is caught before decompression.
    return [ZstdCodec(level=_ZSTD_LEVEL), Crc32cCodec()]


def _library_versions() -> dict[str, str]:
    return {
        "zarr": zarr.__version__,
        "numpy": np.__version__,
        "numcodecs": numcodecs.__version__,
        "python": platform.python_version(),
    }


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _fmt_blocks(blocks: Sequence[int], limit: int = 10) -> str:
    shown = ", ".join(str(b) for b in list(blocks)[:limit])
    return f"[{shown}{', ...' if len(blocks) > limit else ''}]"


@dataclass(frozen=True)
class _Header:
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
        return [a for a in self.attack_order if self.attacks[a]["targeted"]]


def _check_schema_version(attrs: Mapping[str, Any], path: str) -> None:
    found = attrs.get("schema_version", None)
    if not (_is_int(found) and int(found) == SCHEMA_VERSION):
        shown = "no schema_version attribute" if "schema_version" not in attrs else f"schema version {found!r}"
        raise SchemaVersionError(
            f"Adversarial store at {path} has {shown}, but this code reads schema version "
            f"{SCHEMA_VERSION} (found {found!r}, expected {SCHEMA_VERSION}). Regenerate the pool with the "
            f"current generate_pool (create_store(..., overwrite=True)), or use code that reads schema "
            f"version {found!r}."
        )


def _validate_attack_spec(name: Any, spec: Any, where: str) -> None:
    if not isinstance(name, str) or not _ATTACK_NAME_RE.match(name):
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


def _parse_attrs(attrs: Any, path: str) -> _Header:
    """Validate the group attributes and return them as a :class:`_Header`.

    Raises :class:`SchemaVersionError` first if the version does not match, then
    :class:`StoreValidationError` naming the first malformed attribute.
    """
    if not isinstance(attrs, Mapping):
        raise StoreValidationError(f"Store at {path}: group attributes are not a mapping ({type(attrs).__name__}).")
    if _INIT_MARKER in attrs:
        raise StoreValidationError(
            f"Store at {path} was never fully created (creation was interrupted). Rerun generate_pool / "
            "create_store: it recreates the store from scratch."
        )
    _check_schema_version(attrs, path)

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
        if not _is_int(v) or int(v) <= 0:
            raise bad(key, "a positive integer")
        return int(v)

    dataset = req_str("dataset")
    split = req_str("split")
    num_rows = req_pos_int("num_rows")
    block_size = req_pos_int("block_size")
    num_blocks = attrs.get("num_blocks")
    expected_blocks = math.ceil(num_rows / block_size)
    if not _is_int(num_blocks) or int(num_blocks) != expected_blocks:
        raise bad("num_blocks", f"ceil(num_rows / block_size) = {expected_blocks}")
    shape = attrs.get("image_shape")
    if not (
        isinstance(shape, (list, tuple)) and len(shape) == 3 and all(_is_int(d) and int(d) > 0 for d in shape)
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
    if not _is_int(attrs.get("seed")):
        raise bad("seed", "an integer")
    attacks = attrs.get("attacks")
    if not isinstance(attacks, Mapping) or not attacks:
        raise bad("attacks", "a non-empty dict of attack name -> spec")
    for name, spec in attacks.items():
        _validate_attack_spec(name, spec, f"Store at {path}")
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
    return _Header(
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


def _open_group(path: str, mode: str) -> zarr.Group:
    try:
        node = zarr.open(path, mode=mode, zarr_format=3)
    except (FileNotFoundError, zarr.errors.NodeNotFoundError) as e:
        raise StoreError(
            f"No adversarial store at {path}. Check the path, or create the pool with generate_pool "
            f"(create_store). ({type(e).__name__}: {e})"
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
    return node


def _read_attrs(group: zarr.Group, path: str) -> dict[str, Any]:
    try:
        return dict(group.attrs.asdict())
    except Exception as e:
        raise StoreValidationError(f"Could not read attributes of {path}: {type(e).__name__}: {e}") from e


def _store_exists(path: str) -> bool:
    if "://" in path:
        return False
    return os.path.isfile(os.path.join(path, "zarr.json"))


# ---------------------------------------------------------------------------------------------- store


class AdversarialStore:
    """Handle on one adversarial pool. Create with :func:`create_store`, open with :func:`open_store`.

    Public attributes: ``path`` (str), ``attrs`` (dict copy of the group attributes), ``num_rows``,
    ``block_size``, ``num_blocks``, ``attack_names`` (list, creation order), ``targeted_attacks``,
    ``image_shape`` ((C, H, W) tuple), ``mode`` ("r" or "r+").

    Instances pickle as (path, mode) and reopen (revalidating) on unpickling, so they can be shipped
    to Ray actors / worker processes.
    """

    path: str
    attrs: dict[str, Any]
    num_rows: int
    block_size: int
    num_blocks: int
    attack_names: list[str]
    image_shape: tuple[int, int, int]

    def __init__(self, group: zarr.Group, path: str, mode: str) -> None:
        """Internal: wrap an opened group. Validates attributes (not arrays; see :meth:`validate`)."""
        self._group = group
        self.path = path
        self.mode = mode
        self._load_attrs()
        self._arrays: dict[str, Any] = {}

    def _load_attrs(self) -> None:
        self.attrs = _read_attrs(self._group, self.path)
        h = _parse_attrs(self.attrs, self.path)
        self._header = h
        self.num_rows = h.num_rows
        self.block_size = h.block_size
        self.num_blocks = h.num_blocks
        self.attack_names = list(h.attack_order)
        self.targeted_attacks = h.targeted
        self.image_shape = h.image_shape

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (_reopen, (self.path, self.mode))

    def __repr__(self) -> str:
        return (
            f"AdversarialStore({self.path!r}, mode={self.mode!r}, {self._header.dataset}/{self._header.split}, "
            f"rows={self.num_rows}, attacks={self.attack_names})"
        )

    # ------------------------------------------------------------------ basic properties

    @property
    def dataset(self) -> str:
        return self._header.dataset

    @property
    def split(self) -> str:
        return self._header.split

    @property
    def source_fingerprint(self) -> str:
        return self._header.source_fingerprint

    @property
    def source_arch(self) -> str:
        return self._header.source_arch

    def attack_spec(self, name: str) -> dict[str, Any]:
        """Return a copy of the full JSON spec of attack ``name`` (library, class, eps, targeted, ...)."""
        if name not in self._header.attacks:
            raise KeyError(f"unknown attack {name!r}; this store has {self.attack_names}")
        return json.loads(json.dumps(self._header.attacks[name]))

    def block_range(self, block: int) -> tuple[int, int]:
        """Rows ``[start, stop)`` covered by ``block``; the last block may be shorter than block_size."""
        if not _is_int(block) or not 0 <= int(block) < self.num_blocks:
            raise IndexError(f"block {block!r} out of range: this store has blocks 0..{self.num_blocks - 1}")
        start = int(block) * self.block_size
        return start, min(start + self.block_size, self.num_rows)

    def _block_lengths(self) -> np.ndarray:
        lens = np.full(self.num_blocks, self.block_size, dtype=np.int64)
        lens[-1] = self.num_rows - (self.num_blocks - 1) * self.block_size
        return lens

    def _array(self, name: str) -> Any:
        arr = self._arrays.get(name)
        if arr is None:
            try:
                arr = self._group[name]
            except KeyError:
                raise StoreValidationError(
                    f"Store at {self.path} has no array {name!r}. Regenerate the pool with "
                    "create_store(..., overwrite=True)."
                ) from None
            self._arrays[name] = arr
        return arr

    def _data_names(self, attacks: Iterable[str] | None = None) -> list[tuple[str, str]]:
        """(result key, array path) pairs in write order."""
        names = self.attack_names if attacks is None else list(attacks)
        unknown = [a for a in names if a not in self._header.attacks]
        if unknown:
            raise KeyError(f"unknown attacks {unknown}; this store has {self.attack_names}")
        out = [("clean", "clean"), ("label", "label")]
        out += [(f"adv/{a}", f"adv/{a}") for a in names]
        out += [(f"target/{a}", f"target/{a}") for a in names if self._header.attacks[a]["targeted"]]
        return out

    def _require_writable(self) -> None:
        if self.mode != "r+":
            raise StoreError(
                f"Store at {self.path} is open read-only; open it with open_store(path, mode='r+') to write."
            )

    # ------------------------------------------------------------------ writing

    def write_block(
        self,
        block: int,
        *,
        clean: np.ndarray,
        labels: np.ndarray,
        adversarial: Mapping[str, np.ndarray],
        targets: Mapping[str, np.ndarray],
        success_counts: Mapping[str, int],
    ) -> None:
        """Write all rows of one block and mark it done.

        ``n`` = rows of the block (``block_range``). ``clean`` and each ``adversarial[name]`` are uint8
        ``(n, C, H, W)``; ``labels`` and each ``targets[name]`` int64 ``(n,)`` (``targets`` holds exactly
        the targeted attacks); ``success_counts[name]`` is the number of rows in ``[0, n]`` whose
        quantised adversarial image fooled the source model.

        Everything is validated before anything is written. Data arrays are written first, then the
        success counts, and the ``block_done`` flag LAST, so a crash never leaves a block marked done
        with missing data. If the block was already done its flag is cleared first. Rewriting a block
        with the same inputs writes identical bytes.
        """
        self._require_writable()
        self._require_not_complete()
        start, stop = self.block_range(block)
        block = int(block)
        n = stop - start
        img_shape = (n, *self.image_shape)

        def check(what: str, arr: Any, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
            if not isinstance(arr, np.ndarray):
                raise StoreValidationError(
                    f"write_block({block}): {what} must be a numpy array, got {type(arr).__name__}; convert "
                    "tensors with .cpu().numpy()."
                )
            if arr.dtype != dtype:
                hint = (
                    "quantise images to 8 bit: (x.clamp(0, 1) * 255).round().to(torch.uint8)"
                    if dtype == _IMAGE_DTYPE
                    else "cast with .astype(np.int64)"
                )
                raise StoreValidationError(
                    f"write_block({block}): {what} has dtype {arr.dtype}, expected {dtype}; {hint}."
                )
            if arr.shape != shape:
                raise StoreValidationError(
                    f"write_block({block}): {what} has shape {arr.shape}, expected {shape} (block {block} covers "
                    f"rows [{start}, {stop}), image_shape {self.image_shape})."
                )
            return arr

        def check_keys(what: str, given: Mapping[str, Any], expected: list[str]) -> None:
            if not isinstance(given, Mapping):
                raise StoreValidationError(f"write_block({block}): {what} must be a dict attack name -> value.")
            if set(given) != set(expected):
                missing = sorted(set(expected) - set(given))
                extra = sorted(set(given) - set(expected))
                raise StoreValidationError(
                    f"write_block({block}): {what} must have exactly the keys {expected}; missing {missing}, "
                    f"unexpected {extra}."
                )

        data: list[tuple[str, np.ndarray]] = [("clean", check("clean", clean, _IMAGE_DTYPE, img_shape))]
        labels = check("labels", labels, _LABEL_DTYPE, (n,))
        if n and labels.min() < 0:
            raise StoreValidationError(f"write_block({block}): labels must be >= 0 (min is {labels.min()}).")
        data.append(("label", labels))
        check_keys("adversarial", adversarial, self.attack_names)
        check_keys("targets", targets, self.targeted_attacks)
        check_keys("success_counts", success_counts, self.attack_names)
        for a in self.attack_names:
            data.append((f"adv/{a}", check(f"adversarial[{a!r}]", adversarial[a], _IMAGE_DTYPE, img_shape)))
        for a in self.targeted_attacks:
            t = check(f"targets[{a!r}]", targets[a], _LABEL_DTYPE, (n,))
            if n and t.min() < 0:
                raise StoreValidationError(f"write_block({block}): targets[{a!r}] must be >= 0 (min is {t.min()}).")
            data.append((f"target/{a}", t))
        counts = np.zeros((1, len(self.attack_names)), dtype=np.int64)
        for i, a in enumerate(self.attack_names):
            c = success_counts[a]
            if not _is_int(c) or not 0 <= int(c) <= n:
                raise StoreValidationError(
                    f"write_block({block}): success_counts[{a!r}] must be an integer in [0, {n}], got {c!r}."
                )
            counts[0, i] = int(c)

        done = self._array("block_done")
        if done[block]:  # rewriting a finished block: unmark first so a crash mid-rewrite is visible
            done[block : block + 1] = np.zeros(1, dtype=np.uint8)
        for name, arr in data:
            self._array(name)[start:stop] = arr
        self._array("success_count")[block : block + 1, :] = counts
        done[block : block + 1] = np.ones(1, dtype=np.uint8)

    def invalidate_block(self, block: int) -> None:
        """Clear a block's done flag (e.g. after :class:`CorruptChunkError`) so generation redoes it.

        If the store was finalized, it is marked not complete again (writes group attributes: call
        from one process only).
        """
        self._require_writable()
        self.block_range(block)
        self._array("block_done")[int(block) : int(block) + 1] = np.zeros(1, dtype=np.uint8)
        if self.attrs.get("complete"):
            attrs = dict(self.attrs)
            attrs["complete"] = False
            attrs.pop("success_rates", None)
            attrs.pop("completed_at", None)
            self._group.attrs.put(attrs)
            self._load_attrs()

    # ------------------------------------------------------------------ progress

    def completed_blocks(self) -> np.ndarray:
        """bool ``(num_blocks,)``: True where the block's data, counts and flag are all on disk."""
        return np.asarray(self._read("block_done", slice(None))) == 1

    def pending_blocks(self) -> list[int]:
        """Block indices still to generate, ascending."""
        return [int(b) for b in np.flatnonzero(~self.completed_blocks())]

    def is_complete(self) -> bool:
        """True when every block is marked done."""
        return bool(self.completed_blocks().all())

    def success_rates(self) -> dict[str, float]:
        """Per attack: successes / rows over completed blocks (NaN for every attack if none is done)."""
        done = self.completed_blocks()
        counts = np.asarray(self._read("success_count", slice(None)))
        rows = int(self._block_lengths()[done].sum())
        totals = counts[done].sum(axis=0)
        return {
            a: (float(totals[i]) / rows if rows else float("nan")) for i, a in enumerate(self.attack_names)
        }

    def _require_not_complete(self) -> None:
        """A finalized store is immutable: refreshing a pool writes a new store (new path / version)."""
        if self.attrs.get("complete"):
            raise StoreError(
                f"{self.path} is complete and immutable; write a refreshed pool to a new store path instead of "
                "modifying this one"
            )

    def finalize(self, extra_attrs: Mapping[str, Any] | None = None) -> None:
        """Mark a fully generated store complete.

        Records ``success_rates`` (see :meth:`success_rates`), ``completed_at`` (UTC ISO) and
        ``complete: True`` in the group attributes, plus ``extra_attrs`` (JSON-able, no reserved keys).
        Writes the group attributes: call from one process (the driver) only.
        Raises :class:`IncompleteStoreError` if blocks are missing.
        """
        self._require_writable()
        self._require_not_complete()
        pending = self.pending_blocks()
        if pending:
            raise IncompleteStoreError(
                f"Cannot finalize {self.path}: {len(pending)} of {self.num_blocks} blocks are missing "
                f"{_fmt_blocks(pending)}. Rerun generate_pool with the same config to resume it."
            )
        extra = _check_extra_attrs(extra_attrs)
        attrs = dict(_read_attrs(self._group, self.path))
        attrs.update(extra)
        attrs["success_rates"] = self.success_rates()
        attrs["completed_at"] = _utc_now()
        attrs["complete"] = True
        self._group.attrs.put(attrs)
        self._load_attrs()

    # ------------------------------------------------------------------ reading

    def _read(self, name: str, sel: Any) -> np.ndarray:
        try:
            return self._array(name)[sel]
        except StoreError:
            raise
        except (ValueError, RuntimeError) as e:
            raise CorruptChunkError(
                f"Store at {self.path}: reading array {name!r} at {sel} failed ({type(e).__name__}: {e}). A chunk is "
                "corrupt (checksum mismatch or undecodable). Run `python -m storage_schemas.inspect "
                f"{self.path} --verify` to list bad blocks, call store.invalidate_block(b) for each, and rerun "
                "generate_pool to regenerate them."
            ) from e

    def read_rows(self, start: int, stop: int, *, attacks: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Read rows ``[start, stop)`` of every array, index-aligned.

        Returns ``{"clean": uint8 (n, C, H, W), "label": int64 (n,), "adv/<a>": uint8 (n, C, H, W),
        "target/<a>": int64 (n,) (targeted attacks only)}`` with ``n = stop - start``; ``attacks``
        restricts the adversarial views read. Rows of blocks not yet done read as zeros (labels -1).
        For throughput read large block-aligned ranges and shuffle in memory (small slices cost ~2 ms
        each). Raises :class:`CorruptChunkError` if a chunk fails its checksum.
        """
        if not (_is_int(start) and _is_int(stop) and 0 <= start <= stop <= self.num_rows):
            raise IndexError(f"read_rows({start!r}, {stop!r}): need 0 <= start <= stop <= {self.num_rows}")
        sel = slice(int(start), int(stop))
        return {key: self._read(name, sel) for key, name in self._data_names(attacks)}

    def read_block(self, block: int, *, attacks: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """:meth:`read_rows` over exactly one block (one chunk per array: the cheapest read)."""
        return self.read_rows(*self.block_range(block), attacks=attacks)

    def verify(self, blocks: Iterable[int] | None = None) -> list[int]:
        """Read every chunk of the given blocks (default: completed ones); return blocks that fail checksum."""
        if blocks is None:
            blocks = [int(b) for b in np.flatnonzero(self.completed_blocks())]
        bad: list[int] = []
        for b in blocks:
            try:
                self.read_block(b)
                self._read("success_count", slice(int(b), int(b) + 1))
            except CorruptChunkError:
                bad.append(int(b))
        return bad

    # ------------------------------------------------------------------ validation

    def validate(self) -> None:
        """Full structural check of what is on disk now; raises :class:`StoreValidationError`.

        Re-reads the group from disk and checks: attributes (schema version, types, consistency); every
        expected array exists with the right dtype, shape (all data arrays have ``num_rows`` along axis
        0), chunking (one chunk per block, unsharded) and a crc32c checksum codec; no unexpected arrays
        under ``adv/`` and ``target/``; ``block_done`` holds only 0/1; success counts of done blocks are
        within the block length; a store marked complete has every block done.
        """
        group = _open_group(self.path, "r")
        attrs = _read_attrs(group, self.path)
        h = _parse_attrs(attrs, self.path)
        where = f"Store at {self.path}"
        fix = "Regenerate the pool with create_store(..., overwrite=True) and rerun generate_pool."
        N, img = h.num_rows, h.image_shape
        A = len(h.attack_order)

        def get(name: str) -> Any:
            try:
                node = group[name]
            except KeyError:
                raise StoreValidationError(f"{where} is missing array {name!r}. {fix}") from None
            except Exception as e:
                raise StoreValidationError(f"{where}: cannot open {name!r} ({type(e).__name__}: {e}). {fix}") from e
            if not isinstance(node, zarr.Array):
                raise StoreValidationError(f"{where}: {name!r} is a group, expected an array. {fix}")
            return node

        def check(name: str, dtype: np.dtype, shape: tuple[int, ...], chunks: tuple[int, ...]) -> Any:
            arr = get(name)
            if np.dtype(arr.dtype) != dtype:
                raise StoreValidationError(f"{where}: array {name!r} has dtype {arr.dtype}, expected {dtype}. {fix}")
            if len(arr.shape) != len(shape):
                raise StoreValidationError(
                    f"{where}: array {name!r} has shape {arr.shape}, expected {shape}. {fix}"
                )
            if arr.shape[0] != shape[0]:
                raise StoreValidationError(
                    f"{where}: arrays have different lengths along axis 0: {name!r} has {arr.shape[0]} rows but "
                    f"the store has {shape[0]} (num_rows/num_blocks attribute). {fix}"
                )
            if tuple(arr.shape) != shape:
                raise StoreValidationError(f"{where}: array {name!r} has shape {arr.shape}, expected {shape}. {fix}")
            if arr.shards is not None or tuple(arr.chunks) != chunks:
                raise StoreValidationError(
                    f"{where}: array {name!r} has chunks {arr.chunks} / shards {arr.shards}, expected unsharded "
                    f"chunks {chunks} (writers must own whole chunks). {fix}"
                )
            if not any(isinstance(c, Crc32cCodec) for c in arr.compressors):
                raise StoreValidationError(f"{where}: array {name!r} has no crc32c checksum codec. {fix}")
            return arr

        data_chunks = (h.block_size, *img)
        check("clean", _IMAGE_DTYPE, (N, *img), data_chunks)
        check("label", _LABEL_DTYPE, (N,), (h.block_size,))
        for sub, names in (("adv", h.attack_order), ("target", h.targeted)):
            try:
                g = group[sub]
            except KeyError:
                raise StoreValidationError(f"{where} is missing group {sub!r}. {fix}") from None
            if not isinstance(g, zarr.Group):
                raise StoreValidationError(f"{where}: {sub!r} should be a group. {fix}")
            extra = sorted(set(g.keys()) - set(names))
            if extra:
                raise StoreValidationError(
                    f"{where}: unexpected arrays {[f'{sub}/{e}' for e in extra]} (expected only {names}, from the "
                    f"'attacks' attribute). {fix}"
                )
        for a in h.attack_order:
            check(f"adv/{a}", _IMAGE_DTYPE, (N, *img), data_chunks)
        for a in h.targeted:
            check(f"target/{a}", _LABEL_DTYPE, (N,), (h.block_size,))
        done_arr = check("block_done", np.dtype(np.uint8), (h.num_blocks,), (1,))
        count_arr = check("success_count", _LABEL_DTYPE, (h.num_blocks, A), (1, A))
        try:
            done = np.asarray(done_arr[:])
            counts = np.asarray(count_arr[:])
        except (ValueError, RuntimeError) as e:
            raise CorruptChunkError(
                f"{where}: progress arrays are corrupt ({type(e).__name__}: {e}). Rerun generation into a fresh "
                "store (create_store(..., overwrite=True))."
            ) from e
        if not np.isin(done, (0, 1)).all():
            raise StoreValidationError(f"{where}: block_done holds values other than 0/1. {fix}")
        lens = np.full(h.num_blocks, h.block_size, dtype=np.int64)
        lens[-1] = N - (h.num_blocks - 1) * h.block_size
        d = done == 1
        if d.any() and ((counts[d] < 0).any() or (counts[d] > lens[d, None]).any()):
            raise StoreValidationError(f"{where}: success_count has values outside [0, block length]. {fix}")
        if h.complete and not d.all():
            raise StoreValidationError(
                f"{where} is marked complete but {int((~d).sum())} blocks are not done. Rerun generate_pool to "
                "regenerate them (it resumes), then finalize again."
            )

    # ------------------------------------------------------------------ reporting

    def summary(self) -> str:
        """Human-readable multi-line description: identity, progress, source model, attacks."""
        h = self._header
        done = self.completed_blocks()
        n_done = int(done.sum())
        rows_done = int(self._block_lengths()[done].sum())
        rates = self.success_rates()
        libs = self.attrs.get("library_versions", {})
        if h.complete:
            status = f"complete (finalized {self.attrs.get('completed_at')})"
        elif n_done == self.num_blocks:
            status = "all blocks done, not finalized (call finalize())"
        else:
            status = f"INCOMPLETE: {self.num_blocks - n_done} blocks missing; rerun generate_pool to resume"
        c, hh, w = h.image_shape
        lines = [
            f"Adversarial store {self.path}",
            f"  schema version : {self.attrs.get('schema_version')}",
            f"  dataset/split  : {h.dataset}/{h.split}",
            f"  rows           : {h.num_rows}  (image {c}x{hh}x{w} uint8)",
            f"  blocks done    : {n_done} / {self.num_blocks}  (block size {h.block_size}; {rows_done} rows done)",
            f"  status         : {status}",
            f"  source model   : arch {h.source_arch}, fingerprint {h.source_fingerprint}",
            f"  created        : {self.attrs.get('created_at')}  seed {self.attrs.get('seed')}",
            "  libraries      : " + ", ".join(f"{k} {v}" for k, v in sorted(libs.items())),
        ]
        extra = {k: v for k, v in self.attrs.items() if k not in RESERVED_ATTRS}
        if extra:
            lines.append("  extra attrs    : " + json.dumps(extra, sort_keys=True))
        lines.append(f"  attacks ({len(self.attack_names)}):")
        width = max(len(a) for a in self.attack_names)
        for a in self.attack_names:
            spec = h.attacks[a]
            r = rates[a]
            rate = "success    n/a" if math.isnan(r) else f"success {100 * r:5.1f}%"
            kind = "targeted  " if spec["targeted"] else "untargeted"
            lines.append(f"    {a:<{width}}  {kind}  {rate}  spec {json.dumps(spec, sort_keys=True)}")
        return "\n".join(lines)


def _reopen(path: str, mode: str) -> AdversarialStore:
    return open_store(path, mode=mode)


def _check_extra_attrs(extra_attrs: Mapping[str, Any] | None) -> dict[str, Any]:
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
    return _to_json(dict(extra_attrs), "extra_attrs")


# ------------------------------------------------------------------------------------------ functions


def create_store(
    path: str | os.PathLike[str],
    *,
    dataset: str,
    split: str,
    num_rows: int,
    image_shape: tuple[int, int, int],
    attacks: Mapping[str, Mapping[str, Any]],
    source_fingerprint: str,
    source_arch: str,
    seed: int,
    block_size: int = 256,
    extra_attrs: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> AdversarialStore:
    """Create an empty pool (layout in the module docstring) and return it opened for writing.

    ``image_shape`` is ``(C, H, W)``; ``attacks`` maps attack name (an array name, e.g. ``"PGD_N"``)
    to its full JSON-able spec, whose boolean ``"targeted"`` decides whether ``target/<name>`` exists;
    the mapping's order is the attack order. ``num_rows`` rows are split into
    ``ceil(num_rows / block_size)`` blocks, the unit of work of one writer.

    If a store already exists at ``path`` with the same identity attributes (dataset, split,
    num_rows, image_shape, block_size, attacks + their order, source fingerprint and arch, seed) it is
    returned opened for writing, so a resumed generation job continues where it stopped (its
    attributes, including extra_attrs, are left untouched). With different attributes a
    :class:`StoreError` names the first difference, unless ``overwrite=True`` (deletes and recreates).
    Call from one process (the driver); writers then use :func:`open_store` with ``mode="r+"``.
    """
    path = os.fspath(path)
    # ---- validate arguments
    named = (("dataset", dataset), ("split", split), ("source_fingerprint", source_fingerprint),
             ("source_arch", source_arch))
    for key, v in named:
        if not isinstance(v, str) or not v:
            raise StoreValidationError(f"create_store: {key} must be a non-empty string, got {v!r}.")
    for key, v in (("num_rows", num_rows), ("block_size", block_size)):
        if not _is_int(v) or int(v) <= 0:
            raise StoreValidationError(f"create_store: {key} must be a positive integer, got {v!r}.")
    if not _is_int(seed):
        raise StoreValidationError(f"create_store: seed must be an integer, got {seed!r}.")
    if not (
        isinstance(image_shape, (tuple, list))
        and len(image_shape) == 3
        and all(_is_int(d) and int(d) > 0 for d in image_shape)
    ):
        raise StoreValidationError(
            f"create_store: image_shape must be (C, H, W) with 3 positive integers, got {image_shape!r}."
        )
    if not isinstance(attacks, Mapping) or not attacks:
        raise StoreValidationError("create_store: attacks must be a non-empty dict attack name -> spec.")
    for name, spec in attacks.items():
        _validate_attack_spec(name, spec, "create_store")
    extra = _check_extra_attrs(extra_attrs)
    num_rows, block_size, seed = int(num_rows), int(block_size), int(seed)
    c, h, w = (int(d) for d in image_shape)
    order = list(attacks)
    num_blocks = math.ceil(num_rows / block_size)
    identity: dict[str, Any] = _to_json(
        {
            "dataset": dataset,
            "split": split,
            "num_rows": num_rows,
            "image_shape": [c, h, w],
            "block_size": block_size,
            "attacks": {a: dict(attacks[a]) for a in order},
            "attack_order": order,
            "source_fingerprint": source_fingerprint,
            "source_arch": source_arch,
            "seed": seed,
        },
        "create_store arguments (attack specs)",
    )

    # ---- existing store: resume or refuse
    if not overwrite and os.path.exists(path) and "://" not in path:
        if _store_exists(path):
            group = _open_group(path, "r")
            if _INIT_MARKER not in _read_attrs(group, path):  # interrupted creation: just recreate
                existing = open_store(path, mode="r+")
                for key in IDENTITY_ATTRS:
                    have, want = existing.attrs.get(key), identity[key]
                    if have != want:
                        raise StoreError(
                            f"A different adversarial store already exists at {path}: attribute {key!r} is "
                            f"{have!r} there but {want!r} was requested. Pass overwrite=True to delete and "
                            "recreate it, or choose another path."
                        )
                return existing
        elif os.path.isdir(path) and os.listdir(path):
            raise StoreError(
                f"{path} exists, is not empty and is not an adversarial store. Choose another path or pass "
                "overwrite=True to delete its contents."
            )
        elif not os.path.isdir(path):
            raise StoreError(f"{path} exists and is not a directory. Choose another path.")

    # ---- create: arrays first, full attributes last (so an interrupted creation is recognisable)
    try:
        root = zarr.open_group(path, mode="w", zarr_format=3, attributes={_INIT_MARKER: True})
    except Exception as e:
        raise StoreError(f"Could not create a Zarr group at {path}: {type(e).__name__}: {e}") from e

    def make(
        parent: zarr.Group,
        name: str,
        shape: tuple[int, ...],
        chunks: tuple[int, ...],
        dtype: Any,
        fill: int,
        dims: tuple[str, ...],
    ) -> None:
        parent.create_array(
            name,
            shape=shape,
            chunks=chunks,
            shards=None,
            dtype=dtype,
            fill_value=fill,
            compressors=_compressors(),
            dimension_names=dims,
        )

    img_dims = ("row", "channel", "height", "width")
    make(root, "clean", (num_rows, c, h, w), (block_size, c, h, w), _IMAGE_DTYPE, 0, img_dims)
    make(root, "label", (num_rows,), (block_size,), _LABEL_DTYPE, _LABEL_FILL, ("row",))
    adv = root.create_group("adv")
    tgt = root.create_group("target")
    for a in order:
        make(adv, a, (num_rows, c, h, w), (block_size, c, h, w), _IMAGE_DTYPE, 0, img_dims)
        if attacks[a]["targeted"]:
            make(tgt, a, (num_rows,), (block_size,), _LABEL_DTYPE, _LABEL_FILL, ("row",))
    make(root, "block_done", (num_blocks,), (1,), np.uint8, 0, ("block",))
    make(root, "success_count", (num_blocks, len(order)), (1, len(order)), _LABEL_DTYPE, 0, ("block", "attack"))

    attrs: dict[str, Any] = {"schema_version": SCHEMA_VERSION, **identity}
    attrs.update(
        num_blocks=num_blocks,
        created_at=_utc_now(),
        library_versions=_library_versions(),
        complete=False,
    )
    attrs.update(extra)
    root.attrs.put(attrs)  # replaces the _initializing marker
    return open_store(path, mode="r+")


def open_store(
    path: str | os.PathLike[str],
    *,
    mode: str = "r",
    expected_fingerprint: str | None = None,
    require_complete: bool = False,
) -> AdversarialStore:
    """Open and validate an existing pool.

    ``mode`` is ``"r"`` (read-only) or ``"r+"`` (generation workers writing their blocks).
    Checks, in order: schema version (:class:`SchemaVersionError`), attributes
    (:class:`StoreValidationError`), the source-model fingerprint against ``expected_fingerprint``
    when given (:class:`FingerprintMismatchError`, naming both), arrays (:class:`StoreValidationError`,
    see :meth:`AdversarialStore.validate`), and with ``require_complete`` that every block is done
    (:class:`IncompleteStoreError`). Every failure is a :class:`StoreError`.
    """
    if mode not in ("r", "r+"):
        raise StoreError(f"open_store: mode must be 'r' (read) or 'r+' (write blocks), got {mode!r}.")
    path = os.fspath(path)
    group = _open_group(path, mode)
    store = AdversarialStore(group, path, mode)
    if expected_fingerprint is not None and store.source_fingerprint != expected_fingerprint:
        raise FingerprintMismatchError(
            f"Adversarial store at {path} was generated against source model fingerprint "
            f"{store.source_fingerprint} (arch {store.source_arch}), but the teacher in use has fingerprint "
            f"{expected_fingerprint}. Regenerate the pool against the teacher in use (rerun generate_pool "
            "with this teacher's checkpoint), or point the config to the teacher checkpoint the pool was "
            "generated with."
        )
    store.validate()
    if require_complete:
        pending = store.pending_blocks()
        if pending:
            raise IncompleteStoreError(
                f"Adversarial store at {path} is incomplete: {len(pending)} of {store.num_blocks} blocks are "
                f"missing {_fmt_blocks(pending)}. Rerun generate_pool with the same config to resume it (only "
                "missing blocks are generated)."
            )
    return store
