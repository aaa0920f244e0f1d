"""Entry points: :func:`create_store` (create or resume a pool) and :func:`open_store` (open and validate).

Both take a store path: a local path, a URL (``file://``, ``s3://``, ...; a Zarr v3 group opened
through fsspec) or ``mem://<name>`` (in-process memory). Creation never deletes anything unless
``overwrite=True``: an existing store with the same identity is resumed, a different one is refused.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from .backend import BackendGroup, PathState, backend_for, read_group_attrs
from .errors import FingerprintMismatchError, IncompleteStoreError, StoreError, StoreValidationError
from .schema import (
    DONE_DTYPE,
    IDENTITY_ATTRS,
    IMAGE_DTYPE,
    INIT_MARKER,
    LABEL_DTYPE,
    LABEL_FILL,
    SCHEMA_VERSION,
    check_extra_attrs,
    format_blocks,
    is_int,
    to_json,
    utc_now,
    validate_attack_spec,
)
from .store import AdversarialStore

__all__ = ["create_store", "open_store"]


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
    """Create an empty pool (layout in :mod:`storage_schemas.schema`) and return it opened for writing.

    ``path`` is a local path, a URL (``file:///data/pool.zarr``) or ``mem://<name>``.
    ``image_shape`` is ``(C, H, W)``; ``attacks`` maps attack name (an array name, e.g. ``"PGD_N"``)
    to its full JSON-able spec, whose boolean ``"targeted"`` decides whether ``target/<name>`` exists;
    the mapping's order is the attack order. ``num_rows`` rows are split into
    ``ceil(num_rows / block_size)`` blocks, the unit of work of one writer.

    If a store already exists at ``path`` with the same identity attributes (dataset, split,
    num_rows, image_shape, block_size, attacks + their order, source fingerprint and arch, seed) it is
    returned opened for writing, so a resumed generation job continues where it stopped (its
    attributes, including extra_attrs, are left untouched). With different attributes a
    :class:`StoreError` names the first difference, unless ``overwrite=True`` (deletes and recreates).
    A non-empty folder that is not a store is refused too; only ``overwrite=True`` deletes anything.
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
        if not is_int(v) or int(v) <= 0:
            raise StoreValidationError(f"create_store: {key} must be a positive integer, got {v!r}.")
    if not is_int(seed):
        raise StoreValidationError(f"create_store: seed must be an integer, got {seed!r}.")
    if not (
        isinstance(image_shape, (tuple, list))
        and len(image_shape) == 3
        and all(is_int(d) and int(d) > 0 for d in image_shape)
    ):
        raise StoreValidationError(
            f"create_store: image_shape must be (C, H, W) with 3 positive integers, got {image_shape!r}."
        )
    if not isinstance(attacks, Mapping) or not attacks:
        raise StoreValidationError("create_store: attacks must be a non-empty dict attack name -> spec.")
    for name, spec in attacks.items():
        validate_attack_spec(name, spec, "create_store")
    extra = check_extra_attrs(extra_attrs)
    num_rows, block_size, seed = int(num_rows), int(block_size), int(seed)
    c, h, w = (int(d) for d in image_shape)
    order = list(attacks)
    num_blocks = math.ceil(num_rows / block_size)
    identity: dict[str, Any] = to_json(
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
    backend = backend_for(path)

    # ---- existing store: resume or refuse
    replace = overwrite
    if not overwrite:
        state = backend.probe(path)
        if state is PathState.STORE:
            group = backend.open_group(path, "r")
            if INIT_MARKER in read_group_attrs(group, path):
                replace = True  # our own interrupted creation: recreate it
            else:
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
        elif state is PathState.OCCUPIED:
            raise StoreError(
                f"{path} exists, is not empty and is not an adversarial store. Choose another path or pass "
                "overwrite=True to delete its contents."
            )
        elif state is PathState.NOT_A_FOLDER:
            raise StoreError(f"{path} exists and is not a directory. Choose another path.")

    # ---- create: arrays first, full attributes last (so an interrupted creation is recognisable)
    root = backend.create_group(path, {INIT_MARKER: True}, replace=replace)
    _create_arrays(root, num_rows, (c, h, w), block_size, order, attacks)
    attrs: dict[str, Any] = {"schema_version": SCHEMA_VERSION, **identity}
    attrs.update(
        num_blocks=num_blocks,
        created_at=utc_now(),
        library_versions=backend.library_versions(),
        complete=False,
    )
    attrs.update(extra)
    root.put_attrs(attrs)  # replaces the _initializing marker
    return open_store(path, mode="r+")


def _create_arrays(
    root: BackendGroup,
    num_rows: int,
    image_shape: tuple[int, int, int],
    block_size: int,
    order: list[str],
    attacks: Mapping[str, Mapping[str, Any]],
) -> None:
    """Create every array of the layout, empty (images 0, labels and targets -1, no block done)."""
    img_dims = ("row", "channel", "height", "width")
    img_shape, img_chunks = (num_rows, *image_shape), (block_size, *image_shape)
    num_blocks = math.ceil(num_rows / block_size)

    def make(parent: BackendGroup, name: str, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: np.dtype,
             fill: int, dims: tuple[str, ...]) -> None:
        parent.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill, dimension_names=dims)

    make(root, "clean", img_shape, img_chunks, IMAGE_DTYPE, 0, img_dims)
    make(root, "label", (num_rows,), (block_size,), LABEL_DTYPE, LABEL_FILL, ("row",))
    adv = root.create_group("adv")
    tgt = root.create_group("target")
    for a in order:
        make(adv, a, img_shape, img_chunks, IMAGE_DTYPE, 0, img_dims)
        if attacks[a]["targeted"]:
            make(tgt, a, (num_rows,), (block_size,), LABEL_DTYPE, LABEL_FILL, ("row",))
    make(root, "block_done", (num_blocks,), (1,), DONE_DTYPE, 0, ("block",))
    make(root, "success_count", (num_blocks, len(order)), (1, len(order)), LABEL_DTYPE, 0, ("block", "attack"))


def open_store(
    path: str | os.PathLike[str],
    *,
    mode: str = "r",
    expected_fingerprint: str | None = None,
    require_complete: bool = False,
) -> AdversarialStore:
    """Open and validate an existing pool (a local path, a URL or ``mem://<name>``).

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
    group = backend_for(path).open_group(path, mode)
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
                f"missing {format_blocks(pending)}. Rerun generate_pool with the same config to resume it (only "
                "missing blocks are generated)."
            )
    return store
