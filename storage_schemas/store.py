"""The :class:`AdversarialStore` handle: reading, writing and progress of one adversarial pool.

The layout it reads and writes is described in :mod:`storage_schemas.schema`. The handle works on a
:class:`~storage_schemas.backend.BackendGroup`, so the same code serves Zarr stores (local paths, URLs)
and in-memory ``mem://`` stores. Create handles with :func:`storage_schemas.create_store` and
:func:`storage_schemas.open_store`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .backend import BackendGroup, backend_for, read_group_attrs
from .errors import CorruptChunkError, IncompleteStoreError, StoreError, StoreValidationError
from .schema import (
    IMAGE_DTYPE,
    LABEL_DTYPE,
    RESERVED_ATTRS,
    block_lengths,
    check_extra_attrs,
    format_blocks,
    is_int,
    parse_attrs,
    utc_now,
)
from .validate import validate_group

__all__ = ["AdversarialStore"]


class AdversarialStore:
    """Handle on one adversarial pool. Create with :func:`create_store`, open with :func:`open_store`.

    Public attributes: ``path`` (str), ``attrs`` (dict copy of the group attributes), ``num_rows``,
    ``block_size``, ``num_blocks``, ``attack_names`` (list, creation order), ``targeted_attacks``,
    ``image_shape`` ((C, H, W) tuple), ``mode`` ("r" or "r+").

    Instances pickle as (path, mode) and reopen (revalidating) on unpickling, so disk and URL stores
    can be shipped to Ray actors / worker processes; a ``mem://`` store reopens only in the process
    that holds it.
    """

    path: str
    attrs: dict[str, Any]
    num_rows: int
    block_size: int
    num_blocks: int
    attack_names: list[str]
    image_shape: tuple[int, int, int]

    def __init__(self, group: BackendGroup, path: str, mode: str) -> None:
        """Internal: wrap an opened group. Validates attributes (not arrays; see :meth:`validate`)."""
        self._group = group
        self.path = path
        self.mode = mode
        self._load_attrs()
        self._arrays: dict[str, Any] = {}

    def _load_attrs(self) -> None:
        self.attrs = read_group_attrs(self._group, self.path)
        h = parse_attrs(self.attrs, self.path)
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
        if not is_int(block) or not 0 <= int(block) < self.num_blocks:
            raise IndexError(f"block {block!r} out of range: this store has blocks 0..{self.num_blocks - 1}")
        start = int(block) * self.block_size
        return start, min(start + self.block_size, self.num_rows)

    def _block_lengths(self) -> np.ndarray:
        return block_lengths(self.num_rows, self.block_size, self.num_blocks)

    def _array(self, name: str) -> Any:
        arr = self._arrays.get(name)
        if arr is None:
            try:
                arr = self._group.get(name)
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
                    if dtype == IMAGE_DTYPE
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

        data: list[tuple[str, np.ndarray]] = [("clean", check("clean", clean, IMAGE_DTYPE, img_shape))]
        labels = check("labels", labels, LABEL_DTYPE, (n,))
        if n and labels.min() < 0:
            raise StoreValidationError(f"write_block({block}): labels must be >= 0 (min is {labels.min()}).")
        data.append(("label", labels))
        check_keys("adversarial", adversarial, self.attack_names)
        check_keys("targets", targets, self.targeted_attacks)
        check_keys("success_counts", success_counts, self.attack_names)
        for a in self.attack_names:
            data.append((f"adv/{a}", check(f"adversarial[{a!r}]", adversarial[a], IMAGE_DTYPE, img_shape)))
        for a in self.targeted_attacks:
            t = check(f"targets[{a!r}]", targets[a], LABEL_DTYPE, (n,))
            if n and t.min() < 0:
                raise StoreValidationError(f"write_block({block}): targets[{a!r}] must be >= 0 (min is {t.min()}).")
            data.append((f"target/{a}", t))
        counts = np.zeros((1, len(self.attack_names)), dtype=np.int64)
        for i, a in enumerate(self.attack_names):
            c = success_counts[a]
            if not is_int(c) or not 0 <= int(c) <= n:
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
            self._group.put_attrs(attrs)
            self._load_attrs()

    # ------------------------------------------------------------------ progress

    def completed_blocks(self) -> np.ndarray:
        """bool ``(num_blocks,)``: True where the block's data, counts and flag are all stored."""
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
                f"{format_blocks(pending)}. Rerun generate_pool with the same config to resume it."
            )
        extra = check_extra_attrs(extra_attrs)
        attrs = dict(read_group_attrs(self._group, self.path))
        attrs.update(extra)
        attrs["success_rates"] = self.success_rates()
        attrs["completed_at"] = utc_now()
        attrs["complete"] = True
        self._group.put_attrs(attrs)
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
        if not (is_int(start) and is_int(stop) and 0 <= start <= stop <= self.num_rows):
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
        """Full structural check of what is stored now; raises :class:`StoreValidationError`.

        Reopens the group and checks attributes and every array (see
        :func:`storage_schemas.validate.validate_group`).
        """
        validate_group(backend_for(self.path).open_group(self.path, "r"), self.path)

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
    from .api import open_store

    return open_store(path, mode=mode)
