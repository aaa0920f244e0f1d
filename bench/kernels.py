"""The CPU kernels of ``mid_core.kernels`` in the MID meta step: plain ``torch.nn`` models vs ``use_cpu_kernels``.

Per backbone (``lenet5``: 32/64 channels, ``lenet5_classic``: 6/16), one second-order meta step
(``mid_core.meta_step.meta_step``; optimizer step excluded) of a student against a frozen teacher
(``Teacher.from_backbone``, random weights: the cost does not depend on them) on 5 views (benign + the four attack
domains) of ``--batch`` random ``(1, 28, 28)`` images, held-out domain PGD_N, is timed for

    plain         the models as ``mid_core.models`` builds them
    <Kernel>      both models with that one kernel class swapped in (``use_cpu_kernels``, the others reverted)
    all           both models after ``use_cpu_kernels``

interleaved round by round (``bench._common.interleave``: ``torch.utils.benchmark`` medians and interquartile
ranges, psutil CPU seconds). A variant's ratio is the plain median / its median (> 1: faster), measured in this one
run; ``max_grad_difference`` is the largest difference of the step's gradients from the plain model's, relative to
their largest magnitude (float rounding only).

    python -m bench.kernels [--quick] [--threads 1] [--batch 128] [--rounds R] [--backbones lenet5,lenet5_classic]
"""
from __future__ import annotations

import copy
import time
from typing import Any, Callable

import torch
from torch import nn

from bench import _common as C
from mid_core.kernels import MaxPool2x2, SingleChannelConv2d, SingleChannelConvTranspose2d, use_cpu_kernels
from mid_core.meta_step import BENIGN, MetaConfig, meta_step
from mid_core.models import Teacher, student_from_teacher

HELD_OUT = "PGD_N"
KERNEL_CLASSES: tuple[type[nn.Module], ...] = (SingleChannelConv2d, SingleChannelConvTranspose2d, MaxPool2x2)


def _views(batch: int, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """5 domains of random images ``(batch, 1, 28, 28)`` in [0, 1] and labels ``(batch,)``: the step's cost
    depends on the shapes only."""
    g = torch.Generator().manual_seed(seed)
    views = {name: torch.rand(batch, 1, 28, 28, generator=g) for name in (BENIGN, *C.ATTACKS)}
    return views, torch.randint(0, 10, (batch,), generator=g)


def _with_kernels(model: nn.Module, keep: tuple[type[nn.Module], ...]) -> nn.Module:
    """A copy of ``model`` after ``use_cpu_kernels``, with every swapped layer not of a class in ``keep`` turned
    back into its ``torch.nn`` class (a kernel's base class)."""
    model = use_cpu_kernels(copy.deepcopy(model))
    for m in model.modules():
        if isinstance(m, KERNEL_CLASSES) and not isinstance(m, keep):
            m.__class__ = type(m).__bases__[0]
    return model


def _step(teacher: Teacher, student: nn.Module, views: dict[str, torch.Tensor],
          labels: torch.Tensor) -> Callable[[], dict[str, torch.Tensor]]:
    """One second-order meta step of these models; returns the parameter gradients."""
    config = MetaConfig(first_order=False)
    return lambda: meta_step(student, teacher, views, labels, HELD_OUT, config).grads


def _grad_difference(ours: dict[str, torch.Tensor], plain: dict[str, torch.Tensor]) -> float:
    scale = max(float(g.abs().max()) for g in plain.values())
    return max(float((ours[n] - g).abs().max()) for n, g in plain.items()) / scale


def measure(backbone: str, batch: int, rounds: int, threads: int, seed: int) -> dict[str, Any]:
    """Timings, ratios and gradient differences of every variant for one backbone."""
    torch.manual_seed(seed)
    teacher = Teacher.from_backbone(backbone).freeze()
    student = student_from_teacher(teacher, "teacher")
    views, labels = _views(batch, seed)
    selections = {"plain": (), **{k.__name__: (k,) for k in KERNEL_CLASSES}, "all": KERNEL_CLASSES}
    steps = {}
    for name, keep in selections.items():
        t, s = (teacher, student) if not keep else (_with_kernels(teacher, keep), _with_kernels(student, keep))
        steps[name] = _step(t, s, views, labels)
    reference = steps["plain"]()
    difference = {name: _grad_difference(step(), reference) for name, step in steps.items() if name != "plain"}
    timings = C.interleave(steps, rounds=rounds, threads=threads)
    plain = timings["plain"]
    ratio = {n: plain.median / t.median for n, t in timings.items() if n != "plain"}
    ratio_cpu = {n: plain.cpu_per_call / t.cpu_per_call for n, t in timings.items() if n != "plain"}
    for name, t in timings.items():
        print(f"[kernels] {backbone}, batch {batch}, {threads} thread(s): {name:>28} {t.median:7.3f} s "
              f"(IQR {t.iqr:.3f}, CPU {t.cpu_per_call:.3f} s)"
              + (f" -> {ratio[name]:.2f}x wall, {ratio_cpu[name]:.2f}x CPU, max grad difference "
                 f"{difference[name]:.1e}" if name != "plain" else ""), flush=True)
    return {"seconds": {n: t.to_dict() for n, t in timings.items()}, "ratio": ratio, "ratio_cpu": ratio_cpu,
            "max_grad_difference": difference}


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier on a shared machine)")
    p.add_argument("--batch", type=int, default=None, help="images per view (default 128, the MID batch; quick 16)")
    p.add_argument("--rounds", type=int, default=None,
                   help="timed rounds per variant (default 6 for lenet5_classic, 3 for lenet5; quick 1)")
    p.add_argument("--backbones", default="lenet5,lenet5_classic", help="comma-separated backbones")
    args = p.parse_args()
    info = C.banner("kernels", args)
    batch = args.batch or (16 if args.quick else 128)
    t0 = time.perf_counter()
    results = {}
    for backbone in args.backbones.split(","):
        rounds = args.rounds or (1 if args.quick else 3 if backbone == "lenet5" else 6)
        results[backbone] = {"rounds": rounds, **measure(backbone, batch, rounds, args.threads, args.seed)}
    C.emit({"benchmark": "kernels", "quick": args.quick, "machine": info, "threads": args.threads, "batch": batch,
            "held_out": HELD_OUT, "backbones": results,
            "ratio": {bb: r["ratio"]["all"] for bb, r in results.items()},
            "note": "ratio = plain median seconds / median seconds with use_cpu_kernels (per kernel: "
                    "backbones.<bb>.ratio), one second-order meta step, same run, interleaved; > 1: faster",
            "elapsed_seconds": time.perf_counter() - t0})


if __name__ == "__main__":
    main()
