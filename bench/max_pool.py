"""2x2 max-pooling: PyTorch's ``max_pool2d`` vs ``mid_core.max_pool.MaxPool2x2``, as a kernel and in the LeNet.

Why: a profile of the LeNet forward pass and of the MID step (session 11, docs/benchmarks.md, benchmark 1) showed
PyTorch's CPU ``max_pool2d`` taking ~13 ms on a ``(1024, 6, 24, 24)`` map at 2 threads, a third of the encoder's
forward time. ``MaxPool2x2`` computes the same maxima as elementwise maxima of the four strided sub-grids, and,
only when autograd needs them, PyTorch's argmax indices (backward: PyTorch's own kernel).

It times, interleaved, median of ``--rounds``:

    kernel     each LeNet pooling shape of the MID step, forward without autograd and forward + backward
    forward    a classic LeNet-5 classifier's forward pass on ``--batch`` images without autograd
               (what Square's queries and accuracy evaluation run)
    attack     10 input-gradient steps of the same classifier on 256 images (an attack's inner loop)
    autoattack standard AutoAttack (L-inf 0.3) on the first ``--aa-images`` MNIST test images against a robust zoo
               model (``--aa-model``, default the 12-epoch Madry AT model), where Square's forward-only queries
               on the points that survive the gradient attacks dominate (not in ``--quick``; 0 skips it)

and checks that both pools give identical outputs, input gradients and AutoAttack adversarial images.

    python -m bench.max_pool [--quick] [--threads T] [--aa-images N] [--aa-model PATH]
"""
from __future__ import annotations

import time
from typing import Any, Callable

import torch
import torch.nn.functional as F

from bench import _common as C
from mid_core.max_pool import MaxPool2x2, max_pool_2x2

SHAPES = [(1024, 6, 24, 24), (1024, 16, 8, 8), (256, 6, 24, 24), (256, 16, 8, 8)]


_FAST_PATH_APPLIES = MaxPool2x2._fast_path_applies


def use_native_pool(native: bool) -> None:
    """Route every ``MaxPool2x2`` through PyTorch's ``max_pool2d`` (``native=True``) or back to its fast path."""
    MaxPool2x2._fast_path_applies = (lambda self, x: False) if native else _FAST_PATH_APPLIES  # type: ignore[method-assign]


def measure_kernel(shape: tuple[int, ...], rounds: int, seed: int) -> dict[str, Any]:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    x[:, :, : shape[2] // 4] = 0.0  # tied windows, as on MNIST's background
    xg = x.clone().requires_grad_(True)
    upstream = torch.ones(shape[0], shape[1], shape[2] // 2, shape[3] // 2)

    def fwd_bwd(pool: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], Any]:
        return lambda: torch.autograd.grad(pool(xg), xg, upstream)

    native_grad = fwd_bwd(lambda t: F.max_pool2d(t, 2))()[0]
    fast_grad = fwd_bwd(max_pool_2x2)()[0]
    identical = bool(torch.equal(F.max_pool2d(x, 2), max_pool_2x2(x)) and torch.equal(native_grad, fast_grad))

    def no_grad(pool: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], Any]:
        def run() -> Any:
            with torch.no_grad():
                return pool(x)
        return run

    timings = C.interleave({"native_forward": no_grad(lambda t: F.max_pool2d(t, 2)), "fast_forward": no_grad(max_pool_2x2),
                            "native_forward_backward": fwd_bwd(lambda t: F.max_pool2d(t, 2)),
                            "fast_forward_backward": fwd_bwd(max_pool_2x2)}, rounds=rounds, warmup=1)
    med = C.med(timings)
    out = {"ms": {k: v * 1000 for k, v in med.items()}, "identical": identical,
           "speedup_forward": med["native_forward"] / med["fast_forward"],
           "speedup_forward_backward": med["native_forward_backward"] / med["fast_forward_backward"]}
    print(f"[max_pool] {'x'.join(map(str, shape))}: forward {out['ms']['native_forward']:.2f} -> "
          f"{out['ms']['fast_forward']:.2f} ms ({out['speedup_forward']:.2f}x), forward+backward "
          f"{out['ms']['native_forward_backward']:.2f} -> {out['ms']['fast_forward_backward']:.2f} ms "
          f"({out['speedup_forward_backward']:.2f}x), identical {identical}", flush=True)
    return out


def measure_model(rounds: int, seed: int, batch: int, steps: int) -> dict[str, Any]:
    """A classic LeNet-5's no-grad forward on ``batch`` images and ``steps`` input-gradient steps on 256."""
    from mid_core.models import StandardClassifier

    torch.manual_seed(seed)
    model = StandardClassifier.from_backbone("lenet5_classic").eval().requires_grad_(False)
    images = torch.rand(batch, 1, 28, 28)
    x = images[:256].clone()
    y = torch.randint(0, 10, (x.shape[0],))

    def forward(native: bool) -> Callable[[], Any]:
        def run() -> Any:
            use_native_pool(native)
            with torch.no_grad():
                return model(images)
        return run

    def attack(native: bool) -> Callable[[], Any]:
        def run() -> torch.Tensor:
            use_native_pool(native)
            adv = x.clone()
            for _ in range(steps):
                adv.requires_grad_(True)
                (grad,) = torch.autograd.grad(F.cross_entropy(model(adv), y), adv)
                adv = (adv.detach() + 0.01 * grad.sign()).clamp_(0, 1)
            return adv
        return run

    try:
        identical = bool(torch.equal(forward(True)(), forward(False)()) and torch.equal(attack(True)(), attack(False)()))
        timings = C.interleave({"native_forward": forward(True), "fast_forward": forward(False),
                                "native_attack": attack(True), "fast_attack": attack(False)}, rounds=rounds, warmup=1)
    finally:
        use_native_pool(False)
    med = C.med(timings)
    out = {"seconds": med, "identical": identical, "batch": batch, "steps": steps,
           "speedup_forward": med["native_forward"] / med["fast_forward"],
           "speedup_attack": med["native_attack"] / med["fast_attack"]}
    print(f"[max_pool] classic LeNet-5 forward, {batch} images, no autograd: {med['native_forward'] * 1000:.1f} -> "
          f"{med['fast_forward'] * 1000:.1f} ms ({out['speedup_forward']:.2f}x); {steps} input-gradient steps on "
          f"{x.shape[0]} images: {med['native_attack']:.3f} -> {med['fast_attack']:.3f} s ({out['speedup_attack']:.2f}x); "
          f"identical {identical}", flush=True)
    return out


def measure_autoattack(model_path: str, n: int, rounds: int, seed: int) -> dict[str, Any]:
    """Seconds of standard AutoAttack on the first ``n`` MNIST test images with each pool, and the robust accuracy."""
    from mid_core.attacks.registry import default_spec, run_attack
    from mid_core.checkpoint import load_robust_model

    model = load_robust_model(C.REPO / model_path)
    clean_u8, labels = C.load_mnist_u8(n, split="test")
    images = clean_u8.float().div(255.0)
    spec = default_spec("AA_N")
    outputs: dict[str, torch.Tensor] = {}

    def run(native: bool) -> Callable[[], Any]:
        def go() -> None:
            use_native_pool(native)
            outputs["native" if native else "fast"] = run_attack(spec, model, images, labels, seed=seed).adversarial
        return go

    try:
        timings = C.interleave({"native": run(True), "fast": run(False)}, rounds=rounds, warmup=0)
    finally:
        use_native_pool(False)
    med = C.med(timings)
    with torch.no_grad():
        robust = float((model(outputs["fast"]).argmax(1) == labels).float().mean())
    out = {"seconds": med, "speedup": med["native"] / med["fast"], "images": n, "model": model_path,
           "robust_accuracy": robust, "identical": bool(torch.equal(outputs["native"], outputs["fast"]))}
    print(f"[max_pool] AutoAttack (standard, L-inf 0.3) on the first {n} test images against {model_path}: "
          f"{med['native']:.1f} -> {med['fast']:.1f} s ({out['speedup']:.2f}x); robust accuracy {100 * robust:.2f}%; "
          f"identical adversarial images {out['identical']}", flush=True)
    return out


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2: the pipeline's setting here)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds (default 9; quick 2)")
    p.add_argument("--aa-images", type=int, default=None, help="AutoAttack images (default 100; quick 0 = skip)")
    p.add_argument("--aa-model", default="models/mnist_classic_at12/at12.pt", help="zoo checkpoint AutoAttack attacks")
    args = p.parse_args()
    info = C.banner("max_pool", args)
    torch.set_num_threads(args.threads)
    rounds = args.rounds or (2 if args.quick else 9)
    t0 = time.perf_counter()
    shapes = [(16, 6, 24, 24)] if args.quick else SHAPES
    kernel = {"x".join(map(str, s)): measure_kernel(s, rounds, args.seed) for s in shapes}
    model = measure_model(rounds, args.seed, batch=64 if args.quick else 1000, steps=2 if args.quick else 10)
    aa_images = args.aa_images if args.aa_images is not None else (0 if args.quick else 100)
    autoattack = measure_autoattack(args.aa_model, aa_images, 2, args.seed) if aa_images else None
    C.emit({"benchmark": "max_pool", "quick": args.quick, "machine": info, "threads": args.threads, "kernel": kernel,
            "model": model, "autoattack": autoattack, "ratio": model["speedup_forward"],
            "note": "ratio = no-grad LeNet forward with PyTorch's max_pool2d / with MaxPool2x2 (> 1: faster)",
            "identical": (all(k["identical"] for k in kernel.values()) and model["identical"]
                          and (autoattack is None or autoattack["identical"])),
            "elapsed_seconds": time.perf_counter() - t0})


if __name__ == "__main__":
    main()
