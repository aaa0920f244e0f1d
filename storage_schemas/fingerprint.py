"""Content fingerprint of a model state dict.

The adversarial store records the fingerprint of the frozen *source* model the attacks were run
against, and training refuses a pool whose fingerprint differs from the teacher it loads. The
fingerprint therefore has to depend only on the weights themselves (names, dtypes, shapes, values),
not on the device they live on, the framework version, the pickle format or dict insertion order.

This module never imports torch: torch tensors are recognised by duck typing (anything with a
``.detach()`` method is converted with ``.detach().cpu().numpy()``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["state_dict_fingerprint", "FINGERPRINT_ALGORITHM"]

#: Recorded next to fingerprints so a future change of the recipe is detectable.
FINGERPRINT_ALGORITHM = "sha256/v1: sorted keys; per key: name, dtype, shape, nbytes, little-endian C-order bytes"


def _to_numpy(key: str, value: Any) -> tuple[np.ndarray, str]:
    """Convert one state-dict value to a contiguous little-endian numpy array.

    Returns ``(array, dtype_label)``. ``dtype_label`` is the numpy dtype string (``'<f4'``), except for
    tensors numpy cannot represent (e.g. ``torch.bfloat16``), which are widened to float32 for hashing
    and labelled with the tensor's own dtype name so they do not collide with real float32 weights.
    """
    label: str | None = None
    if hasattr(value, "detach"):  # torch.Tensor (or look-alike); no torch import needed
        t = value.detach()
        if hasattr(t, "cpu"):
            t = t.cpu()
        try:
            arr = np.asarray(t.numpy())
        except (TypeError, RuntimeError):
            # numpy has no bfloat16 / float8: widen losslessly to float32, keep the original name.
            if not hasattr(t, "float"):
                raise TypeError(
                    f"state_dict[{key!r}]: cannot convert {type(value).__name__} with dtype "
                    f"{getattr(value, 'dtype', '?')} to numpy for fingerprinting"
                ) from None
            arr = np.asarray(t.float().numpy())
            label = str(getattr(value, "dtype", arr.dtype))
    else:
        arr = np.asarray(value)
    if arr.dtype.hasobject or arr.dtype.kind in "OUSV":
        raise TypeError(
            f"state_dict[{key!r}] has dtype {arr.dtype} ({type(value).__name__}); a fingerprint needs "
            "numeric arrays or tensors. Remove non-tensor entries from the state dict before hashing."
        )
    if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and not np.little_endian):
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    arr = np.ascontiguousarray(arr)
    if label is None:
        label = arr.dtype.str
    return arr, label


def state_dict_fingerprint(state_dict: Mapping[str, Any]) -> str:
    """Return the sha256 hex digest (64 chars) identifying a model's weights.

    ``state_dict`` maps parameter/buffer name -> tensor or array of any shape (e.g. ``conv1.weight``
    of shape ``(out, in, kh, kw)``). Keys are hashed in sorted order; for each key the digest covers
    the name, the dtype (little-endian numpy dtype string), the shape, the byte count and the raw
    C-contiguous little-endian bytes. Every field is length-delimited so that no two different state
    dicts can produce the same byte stream. Changing any single weight changes the fingerprint;
    moving the model between devices or re-saving it does not.

    Raises ``TypeError`` if ``state_dict`` is not a mapping with string keys and numeric values.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"state_dict_fingerprint expects a mapping name -> tensor/array (model.state_dict()), "
            f"got {type(state_dict).__name__}"
        )
    bad_keys = [k for k in state_dict if not isinstance(k, str)]
    if bad_keys:
        raise TypeError(f"state dict keys must be strings, got {bad_keys[:3]!r}")
    h = hashlib.sha256()
    h.update(b"state_dict_fingerprint/v1\0")
    h.update(f"{len(state_dict)}\0".encode())
    for key in sorted(state_dict):
        arr, dtype_label = _to_numpy(key, state_dict[key])
        name = key.encode("utf-8")
        header = b"%d:%s\0%s\0%s\0%d\0" % (
            len(name),
            name,
            dtype_label.encode(),
            ",".join(str(int(d)) for d in arr.shape).encode(),
            arr.nbytes,
        )
        h.update(header)
        h.update(arr.reshape(-1).view(np.uint8))
    return h.hexdigest()
