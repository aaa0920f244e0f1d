"""What one MID step costs per backbone: second-order and first-order meta steps against one clean training step.

Per backbone (``lenet5`` on 1x28x28, ``resnet18`` on 3x32x32 with the CIFAR stem, full widths, random weights: the
cost depends on the shapes only), at the same batch of ``--batch`` images per view (MID: benign + 4 attack views, AC
+ CC + LC, held-out PGD_N; clean: one cross-entropy step of E + C on the benign images, Adam), interleaved round by
round (``torch.utils.benchmark`` medians). Ratios: meta step / clean step, measured in this one run (goal: second
order <= 20x, first order <= 12x). Then the peak RSS above the models' own of one second-order step at batch 32 and
128 (sampled every 20 ms), CPU.

    python -m bench.backbone_cost [--quick] [--threads 2] [--batch 32] [--rounds 3] [--backbones lenet5,resnet18]
"""
from __future__ import annotations

import gc
import time
from typing import Any, Callable

import torch

from bench import _common as C
from mid_core.meta_step import BENIGN, MetaConfig, meta_step
from mid_core.models import BACKBONES, StandardClassifier, Teacher, student_from_teacher

HELD_OUT = "PGD_N"


def _shape(backbone: str) -> tuple[int, int, int]:
    size = BACKBONES[backbone].image_size
    return (1 if size == 28 else 3, size, size)


def _views(backbone: str, batch: int, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    views = {name: torch.rand(batch, *_shape(backbone), generator=g) for name in (BENIGN, *C.ATTACKS)}
    return views, torch.randint(0, 10, (batch,), generator=g)


def _steps(backbone: str, batch: int, seed: int) -> dict[str, Callable[[], Any]]:
    torch.manual_seed(seed)
    channels = _shape(backbone)[0]
    teacher = Teacher.from_backbone(backbone, channels, 10).freeze()
    student = student_from_teacher(teacher, "teacher")
    clean = StandardClassifier.from_backbone(backbone, channels, 10).train()
    optimizer = torch.optim.Adam(clean.parameters(), lr=1e-3)
    views, labels = _views(backbone, batch, seed)

    def clean_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(clean(views[BENIGN]), labels).backward()
        optimizer.step()

    return {
        "second_order": lambda: meta_step(student, teacher, views, labels, HELD_OUT, MetaConfig(first_order=False)),
        "first_order": lambda: meta_step(student, teacher, views, labels, HELD_OUT, MetaConfig(first_order=True)),
        "clean": clean_step,
    }


def peak_memory(backbone: str, batch: int, seed: int) -> float:
    """MiB of peak RSS above the RSS before the step, over one second-order step at ``batch``."""
    step = _steps(backbone, batch, seed)["second_order"]
    gc.collect()
    before = C.rss_mib()
    C.reset_peak_rss()
    step()
    return C.peak_rss_mib() - before


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2: the pipeline's setting)")
    p.add_argument("--batch", type=int, default=None, help="images per view (default 32; quick 4)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per variant (default 3; quick 1)")
    p.add_argument("--backbones", default="lenet5,resnet18", help="comma-separated backbones")
    args = p.parse_args()
    info = C.banner("backbone_cost", args)
    torch.set_num_threads(args.threads)
    batch, rounds = args.batch or (4 if args.quick else 32), args.rounds or (1 if args.quick else 3)
    t0 = time.perf_counter()
    results: dict[str, Any] = {}
    for backbone in args.backbones.split(","):
        timings = C.interleave(_steps(backbone, batch, args.seed), rounds=rounds, threads=args.threads)
        clean = timings["clean"].median
        ratio = {n: timings[n].median / clean for n in ("second_order", "first_order")}
        memory = {b: peak_memory(backbone, b, args.seed) for b in ((4,) if args.quick else (32, 128))}
        for n, t in timings.items():
            print(f"[backbone_cost] {backbone}, batch {batch}: {n:>12} {t.median:8.3f} s (IQR {t.iqr:.3f})"
                  + (f" = {ratio[n]:.1f}x clean" if n in ratio else ""), flush=True)
        print(f"[backbone_cost] {backbone}: second-order step peak RSS above start " +
              ", ".join(f"batch {b}: {m:.0f} MiB" for b, m in memory.items()), flush=True)
        results[backbone] = {"seconds": {n: t.to_dict() for n, t in timings.items()}, "ratio": ratio,
                             "peak_rss_mib": memory}
    C.emit({"benchmark": "backbone_cost", "quick": args.quick, "machine": info, "threads": args.threads,
            "batch": batch, "rounds": rounds, "backbones": results,
            "goal": {bb: {"second_order": C.goal(r["ratio"]["second_order"], "<=", 20),
                          "first_order": C.goal(r["ratio"]["first_order"], "<=", 12)} for bb, r in results.items()},
            "note": "ratio = meta step median / clean step median at the same batch, same run, interleaved",
            "elapsed_seconds": time.perf_counter() - t0})


if __name__ == "__main__":
    main()
