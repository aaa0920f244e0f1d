"""Kernel choices for the meta step's hottest op: a C -> 1 channel transposed convolution into an image.

Why: after conv1 (benchmark 1), the profile of a second-order MID step on the classic LeNet is led by
``conv_transpose2d(g, w)`` with ``g: (5 x 256, 6, 24, 24)`` and ``w: (6, 1, 5, 5)`` (the decoder's last layer and the
teacher conv1's input gradient in the cyclic-consistency path, four calls per step). This script times the exact
rewrites of that op side by side (interleaved, median) and checks each one equals the reference:

    onednn            F.conv_transpose2d(g, w)                      (the kernel mid_core uses)
    onednn_bias       F.conv_transpose2d(g, w, b)                   (bias inside the kernel: what nn.ConvTranspose2d runs)
    native            the same with oneDNN disabled (im2col + GEMM)
    fold              w^T @ g as one matmul, then F.fold (col2im)
    padded_conv       conv2d(pad(g, k - 1), flipped w): a 6 -> 1 convolution
    depthwise_sum     depthwise transposed convolution (groups = C), then a sum over channels
    shifted_adds      1x1 convolution to k*k channels, then k*k shifted adds
    toeplitz_matmul   mid_core's ``transpose_as_matmul``: one GEMM against per-kernel-row Toeplitz matrices (two
                      column blocks), then shifted row sums (the kernel mid_core uses since session 9)

It also times what the kernel choice buys an attack: 10 input-gradient steps of a classic LeNet-5 classifier on
256 images (the input gradient of conv1 is this op with the conv1 weights), with ``_Transpose`` running oneDNN vs
the Toeplitz matmul, interleaved.

    python -m bench.transposed_conv [--quick] [--rows N] [--threads T]
"""
from __future__ import annotations

import time
from typing import Any, Callable

import torch
import torch.nn.functional as F

from bench import _common as C
from mid_core import single_channel_conv
from mid_core.single_channel_conv import transpose_as_matmul


def _variants(g: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
    n, c, h, wd = g.shape
    k = w.shape[-1]
    w_flipped = w.flip(-1, -2).transpose(0, 1).contiguous()

    def native() -> torch.Tensor:
        with torch.backends.mkldnn.flags(enabled=False):
            return F.conv_transpose2d(g, w)

    def fold() -> torch.Tensor:
        cols = torch.matmul(w.reshape(c, k * k).t(), g.reshape(n, c, h * wd))
        return F.fold(cols, (h + k - 1, wd + k - 1), k)

    def shifted_adds() -> torch.Tensor:
        p = F.conv2d(g, w.reshape(c, k * k).t().reshape(k * k, c, 1, 1))
        out = g.new_zeros(n, 1, h + k - 1, wd + k - 1)
        for a in range(k):
            for j in range(k):
                out[:, 0, a:a + h, j:j + wd] += p[:, a * k + j]
        return out

    return {
        "onednn": lambda: F.conv_transpose2d(g, w),
        "toeplitz_matmul": lambda: transpose_as_matmul(g, w),
        "onednn_bias": lambda: F.conv_transpose2d(g, w, b) - b.view(1, -1, 1, 1),
        "native": native,
        "fold": fold,
        "padded_conv": lambda: F.conv2d(F.pad(g, (k - 1,) * 4), w_flipped),
        "depthwise_sum": lambda: F.conv_transpose2d(g, w, groups=c).sum(1, keepdim=True),
        "shifted_adds": shifted_adds,
    }


def measure(rows: int, threads: int, rounds: int, seed: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(rows, 6, 24, 24, generator=gen)
    w = torch.randn(6, 1, 5, 5, generator=gen)
    b = torch.randn(1, generator=gen)
    variants = _variants(g, w, b)
    reference = F.conv_transpose2d(g, w)
    max_error = {name: float((f() - reference).abs().max()) for name, f in variants.items()}
    with torch.no_grad():
        timings = C.interleave({name: f for name, f in variants.items()}, rounds=rounds, warmup=1)
    med = C.med(timings)
    base = med["onednn"]
    for name, sec in med.items():
        print(f"[transposed_conv] {rows} x 6x24x24 -> 1x28x28, {threads} thread(s): {name:>14} {sec * 1000:8.1f} ms "
              f"({sec / base:.2f}x onednn), max |error| {max_error[name]:.1e}", flush=True)
    return {"seconds": med, "relative_to_onednn": {n: s / base for n, s in med.items()}, "max_abs_error": max_error,
            "fastest": min(med, key=med.get)}


def measure_attack(threads: int, rounds: int, seed: int, steps: int = 10, batch: int = 256) -> dict[str, Any]:
    """Seconds for ``steps`` input-gradient steps (an attack's inner loop) with each ``_Transpose`` kernel."""
    from mid_core.models import StandardClassifier

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = StandardClassifier.from_backbone("lenet5_classic").eval().requires_grad_(False)
    x = torch.rand(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))

    def attack_steps(kernel: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        single_channel_conv.TRANSPOSE_KERNEL = kernel
        adv = x.clone()
        for _ in range(steps):
            adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(adv), y), adv)
            adv = (adv.detach() + 0.01 * grad.sign()).clamp_(0, 1)

    try:
        timings = C.interleave({"onednn": lambda: attack_steps(F.conv_transpose2d),
                                "toeplitz_matmul": lambda: attack_steps(transpose_as_matmul)}, rounds=rounds, warmup=1)
    finally:
        single_channel_conv.TRANSPOSE_KERNEL = transpose_as_matmul
    med = C.med(timings)
    speedup = med["onednn"] / med["toeplitz_matmul"]
    print(f"[transposed_conv] attack: {steps} input-gradient steps, {batch} images, classic LeNet-5, {threads} thread(s): "
          f"onednn {med['onednn']:.3f}s, toeplitz_matmul {med['toeplitz_matmul']:.3f}s ({speedup:.2f}x)", flush=True)
    return {"seconds": med, "speedup": speedup, "steps": steps, "batch": batch}


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=None, help="images (default 1280 = 5 views x 256; quick 64)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=None, help="timed rounds (default 7; quick 2)")
    args = p.parse_args()
    info = C.banner("transposed_conv", args)
    t0 = time.perf_counter()
    result = measure(args.rows or (64 if args.quick else 1280), args.threads, args.rounds or (2 if args.quick else 7),
                     args.seed)
    attack = measure_attack(args.threads, 2 if args.quick else 5, args.seed, steps=2 if args.quick else 10,
                            batch=32 if args.quick else 256)
    C.emit({"benchmark": "transposed_conv", "quick": args.quick, "machine": info, **result, "attack": attack,
            "ratio": result["relative_to_onednn"]["onednn_bias"],
            "note": "ratio = bias inside the kernel / without (why mid_core adds the decoder's bias outside)",
            "elapsed_seconds": time.perf_counter() - t0})


if __name__ == "__main__":
    main()
