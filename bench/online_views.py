"""A batch's four online attack views: advertorch one attack after the other vs ``mid_core.attacks.fused`` stacked.

Why: ``mid.online_attacks`` (MID's only setting with white-box robustness so far) generates PGD_N, PGD_T, MIM_N and
MIM_T (40 steps each) against the current model before every step. One by one that is 160 forward/backward passes
on the batch; stacked (``mid.online_fused``) it is 40 passes on four times the images. On a GPU, where a LeNet pass
is launch-bound, the stacked form should approach 4x; on a CPU the arithmetic is the same, so only per-pass
overheads are saved. It times both, interleaved (median of ``--rounds``), on one batch of MNIST training images
against a ``--backbone`` classifier, and reports how many quantised pixels differ (same draws; float rounding of
the larger batch only).

    python -m bench.online_views [--quick] [--backbone lenet5_classic] [--batch 128] [--threads 2] [--device cpu]
"""
from __future__ import annotations

import time
from typing import Any, Callable

import torch

from bench import _common as C
from mid_core.models import StandardClassifier
from pipeline.direct.attacks import attack_views
from pipeline.generation import attack_specs


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--backbone", default="lenet5_classic", help="classifier attacked (default lenet5_classic)")
    p.add_argument("--batch", type=int, default=None, help="images per batch (default 128, the MID batch; quick 32)")
    p.add_argument("--steps", type=int, default=None, help="attack steps (default 40; quick 5)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2: the pipeline's setting here)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds (default 7; quick 2)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    args = p.parse_args()
    info = C.banner("online_views", args)
    torch.set_num_threads(args.threads)
    batch, steps = args.batch or (32 if args.quick else 128), args.steps or (5 if args.quick else 40)
    rounds = args.rounds or (2 if args.quick else 7)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    model = StandardClassifier.from_backbone(args.backbone).to(device).eval()
    clean_u8, labels = C.load_mnist_u8(batch)
    images, labels = clean_u8.float().div(255.0).to(device), labels.to(device)
    specs = attack_specs(C.ATTACKS, 0.3, steps, 0.01)
    views: dict[str, dict[str, torch.Tensor]] = {}

    def run(fused: bool) -> Callable[[], Any]:
        def go() -> None:
            views["fused" if fused else "one_by_one"] = attack_views(model, images, labels, specs, args.seed, batch,
                                                                      True, 10, stable_seeds=True, fused=fused)
            if device.type == "cuda":
                torch.cuda.synchronize()
        return go

    t0 = time.perf_counter()
    timings = C.interleave({"one_by_one": run(False), "fused": run(True)}, rounds=rounds, warmup=1)
    med = C.med(timings)
    differ = {a: float((views["fused"][a] != views["one_by_one"][a]).float().mean()) for a in specs}
    ratio = med["one_by_one"] / med["fused"]
    print(f"[online_views] {args.backbone}, {batch} images, 4 attacks x {steps} steps on {device}: one by one "
          f"{med['one_by_one']:.3f} s, fused {med['fused']:.3f} s ({ratio:.2f}x); quantised pixels that differ: "
          + ", ".join(f"{a} {100 * d:.3f}%" for a, d in differ.items()), flush=True)
    C.emit({"benchmark": "online_views", "quick": args.quick, "machine": info, "threads": args.threads,
            "device": str(device), "backbone": args.backbone, "batch": batch, "steps": steps, "seconds": med,
            "ratio": ratio, "note": "ratio = one-by-one seconds / fused seconds for one batch's four views (> 1: faster)",
            "pixels_that_differ": differ, "elapsed_seconds": time.perf_counter() - t0})


if __name__ == "__main__":
    main()
