"""Print a readable summary of an adversarial store.

Usage::

    python -m storage_schemas.inspect STORE [--verify] [--json]

Shows dataset/split, rows, blocks done / total, the source model's fingerprint and architecture,
and per attack its spec and success rate on the source model. ``--verify`` additionally reads
every completed block and lists blocks whose chunks fail their checksum. ``--json`` prints the
group attributes plus progress as JSON instead. Exit status: 0 ok, 1 corrupt blocks found
(``--verify``), 2 the store could not be opened / is invalid (the reason goes to stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .api import open_store
from .errors import StoreError


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m storage_schemas.inspect", description="Summarise an adversarial store (Zarr v3 pool)."
    )
    parser.add_argument("store", help="path or URL of the store (the pool's root folder)")
    parser.add_argument("--verify", action="store_true", help="read every completed block and check checksums")
    parser.add_argument("--json", action="store_true", help="print attributes and progress as JSON")
    args = parser.parse_args(argv)
    try:
        store = open_store(args.store, mode="r")
        if args.json:
            done = store.completed_blocks()
            info = {
                "path": store.path,
                "attrs": store.attrs,
                "blocks_done": int(done.sum()),
                "num_blocks": store.num_blocks,
                "success_rates": {k: (None if v != v else v) for k, v in store.success_rates().items()},
            }
            print(json.dumps(info, indent=2, sort_keys=True))
        else:
            print(store.summary())
        if args.verify:
            bad = store.verify()
            if bad:
                print(
                    f"  verify         : {len(bad)} corrupt blocks {bad}; invalidate them "
                    "(store.invalidate_block) and rerun generate_pool",
                )
                return 1
            print("  verify         : all completed blocks pass their checksums")
    except StoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
