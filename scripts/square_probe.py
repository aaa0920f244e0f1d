"""Is an AutoAttack figure inflated by gradient masking? Standard AutoAttack, then a much longer Square on what survives.

    python scripts/square_probe.py --model models/mnist_lenet5_classic_20k/mid_online_elementmean_randominit_12ep.pt --dataset mnist \
        --limit 1000 --queries 20000 --restarts 2 --out runs/square_probe/mid_online.json

Loads a zoo or run checkpoint with ``mid_core.load_robust_model``, takes the first ``--limit`` test images, and runs
the stages of ``mid_core.square_probe`` (clean, AutoAttack's gradient attacks, its standard Square, a strong
Square), printing each stage as it ends and, as the last line, one JSON object with every figure. ``--out`` also
writes that object to a file. On the 2-core CPU machine, 1,000 MNIST images of a 60%-robust classic LeNet took
~33 minutes at 1 thread with 20,000 queries x 2 restarts.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from mid_core.checkpoint import load_robust_model
from mid_core.datasets import load_dataset
from mid_core.square_probe import square_probe


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, type=Path, help="checkpoint that mid_core.load_robust_model loads")
    p.add_argument("--dataset", default="mnist", help="test set to attack (mnist, fashion_mnist, digits, ...)")
    p.add_argument("--data-root", default=None, help="torchvision data folder (default: $MID_DATA_ROOT)")
    p.add_argument("--limit", type=int, default=1000, help="attack the first LIMIT test images (0: all)")
    p.add_argument("--eps", type=float, default=0.3, help="L-inf radius")
    p.add_argument("--queries", type=int, default=20_000, help="queries of the strong Square (standard: 5,000)")
    p.add_argument("--restarts", type=int, default=1, help="restarts of the strong Square")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=1000, help="images per batch of the gradient attacks")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON result here")
    args = p.parse_args(argv)
    if not args.model.exists():
        p.error(f"--model {args.model} does not exist (zoo checkpoints are under models/)")
    if args.limit < 0:
        p.error("--limit must be >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)

    model = load_robust_model(args.model)
    data = load_dataset(args.dataset, "test", args.data_root).subset(args.limit or None)
    images, labels = data.images, data.labels  # float32 in [0, 1], int64
    started = time.perf_counter()
    result = square_probe(model, images, labels, eps=args.eps, queries=args.queries, restarts=args.restarts,
                          seed=args.seed, batch_size=args.batch_size, log=lambda line: print(line, flush=True))
    out = {"model": str(args.model), "dataset": args.dataset, "limit": args.limit, **result.to_dict(),
           "total_seconds": time.perf_counter() - started}
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
