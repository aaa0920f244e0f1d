"""Full structural check of a store's arrays against the layout in :mod:`storage_schemas.schema`.

Opening a store parses only its attributes; :func:`validate_group` additionally checks every array,
because a store damaged or edited by hand must fail with a clear message when it is opened, not with
a shape error deep inside training. It reads the two small progress arrays but no image data (use
:meth:`~storage_schemas.store.AdversarialStore.verify` for checksums of the data chunks).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .backend import BackendArray, BackendGroup, read_group_attrs
from .errors import CorruptChunkError, StoreValidationError
from .schema import DONE_DTYPE, IMAGE_DTYPE, LABEL_DTYPE, block_lengths, parse_attrs

__all__ = ["validate_group"]


def validate_group(group: BackendGroup, path: str) -> None:
    """Check the group at ``path``; raises :class:`StoreValidationError` at the first problem.

    Checks: attributes (schema version, types, consistency); every expected array exists with the
    right dtype, shape (all data arrays have ``num_rows`` along axis 0), chunking (one chunk per block,
    unsharded) and a checksum; no unexpected arrays under ``adv/`` and ``target/``; ``block_done``
    holds only 0/1; success counts of done blocks are within the block length; a store marked
    complete has every block done. Unreadable progress arrays raise :class:`CorruptChunkError`.
    """
    attrs = read_group_attrs(group, path)
    h = parse_attrs(attrs, path)
    where = f"Store at {path}"
    fix = "Regenerate the pool with create_store(..., overwrite=True) and rerun generate_pool."
    N, img = h.num_rows, h.image_shape
    A = len(h.attack_order)

    def get(name: str) -> BackendArray:
        try:
            node = group.get(name)
        except KeyError:
            raise StoreValidationError(f"{where} is missing array {name!r}. {fix}") from None
        except Exception as e:
            raise StoreValidationError(f"{where}: cannot open {name!r} ({type(e).__name__}: {e}). {fix}") from e
        if not isinstance(node, BackendArray):
            raise StoreValidationError(f"{where}: {name!r} is a group, expected an array. {fix}")
        return node

    def check(name: str, dtype: np.dtype, shape: tuple[int, ...], chunks: tuple[int, ...]) -> BackendArray:
        arr = get(name)
        if np.dtype(arr.dtype) != dtype:
            raise StoreValidationError(f"{where}: array {name!r} has dtype {arr.dtype}, expected {dtype}. {fix}")
        if len(arr.shape) != len(shape):
            raise StoreValidationError(f"{where}: array {name!r} has shape {arr.shape}, expected {shape}. {fix}")
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
        if not arr.checksummed:
            raise StoreValidationError(f"{where}: array {name!r} has no crc32c checksum codec. {fix}")
        return arr

    data_chunks = (h.block_size, *img)
    check("clean", IMAGE_DTYPE, (N, *img), data_chunks)
    check("label", LABEL_DTYPE, (N,), (h.block_size,))
    for sub, names in (("adv", h.attack_order), ("target", h.targeted)):
        try:
            g: Any = group.get(sub)
        except KeyError:
            raise StoreValidationError(f"{where} is missing group {sub!r}. {fix}") from None
        if not isinstance(g, BackendGroup):
            raise StoreValidationError(f"{where}: {sub!r} should be a group. {fix}")
        extra = sorted(set(g.keys()) - set(names))
        if extra:
            raise StoreValidationError(
                f"{where}: unexpected arrays {[f'{sub}/{e}' for e in extra]} (expected only {names}, from the "
                f"'attacks' attribute). {fix}"
            )
    for a in h.attack_order:
        check(f"adv/{a}", IMAGE_DTYPE, (N, *img), data_chunks)
    for a in h.targeted:
        check(f"target/{a}", LABEL_DTYPE, (N,), (h.block_size,))
    done_arr = check("block_done", DONE_DTYPE, (h.num_blocks,), (1,))
    count_arr = check("success_count", LABEL_DTYPE, (h.num_blocks, A), (1, A))
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
    lens = block_lengths(N, h.block_size, h.num_blocks)
    d = done == 1
    if d.any() and ((counts[d] < 0).any() or (counts[d] > lens[d, None]).any()):
        raise StoreValidationError(f"{where}: success_count has values outside [0, block length]. {fix}")
    if h.complete and not d.all():
        raise StoreValidationError(
            f"{where} is marked complete but {int((~d).sum())} blocks are not done. Rerun generate_pool to "
            "regenerate them (it resumes), then finalize again."
        )
