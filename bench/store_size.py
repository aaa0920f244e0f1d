"""Benchmark 5: what the adversarial store costs on disk, and what 8-bit quantisation does to the attacks.

A real pool: a lenet5_classic teacher trained briefly on MNIST is attacked with PGD_N, PGD_T, MIM_N, MIM_T (eps 0.3,
40 steps of 0.01; the per-block seeds of the generation stage) on the first MNIST training images; the views are
quantised to uint8 inside the eps ball (``mid_core.quantize``) and written with the store's real layout and codecs
(zstd level 3 + crc32c, one chunk per 256-row block). Reported:

* bytes per stored pixel per attack = on-disk bytes of the ``adv/*`` arrays / (rows * pixels * attacks);
  goal <= 1.0 (uncompressed uint8 is exactly 1.0; float32 would be 4.0);
* compression ratio (uncompressed / on disk) of the clean images and of each attack's views;
* each attack's success rate on the source model before quantisation (float images) and after (the uint8 images
  the store keeps); goal: within 1 point.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench import _common as C


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=None, help="images (default 2048; quick 256)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    info = C.banner("store_size", args)
    torch.set_num_threads(args.threads)
    rows = args.rows or (256 if args.quick else 2048)
    steps, step_size = (10, 0.03) if args.quick else (40, None)
    t_all = time.perf_counter()
    from mid_core.attacks import run_attack
    from mid_core.checkpoint import load_classifier
    from mid_core.evaluation import predict
    from mid_core.quantize import from_uint8, quantize_adversarial
    from pipeline.stages.pool import attack_seed, attack_specs

    with tempfile.TemporaryDirectory(prefix="bench_store_size_") as tmp:
        ckpt, acc = C.train_teacher_quick(tmp, "lenet5_classic", n=1000 if args.quick else 4000,
                                          epochs=1 if args.quick else 2, seed=args.seed)
        model = load_classifier(ckpt)
        for prm in model.parameters():
            prm.requires_grad_(False)
        clean_u8, labels = C.load_mnist_u8(rows)
        images = from_uint8(clean_u8)
        specs = attack_specs(C.ATTACKS, 0.3, steps, step_size)
        block = 256
        adv_u8, targets, ok_float, ok_u8 = {}, {}, {}, {}
        for name, spec in specs.items():
            parts_u8, parts_f, parts_t = [], [], []
            for b, start in enumerate(range(0, rows, block)):
                gen = torch.Generator().manual_seed(attack_seed(args.seed, b, name))
                x, y = images[start:start + block], labels[start:start + block]
                out = run_attack(spec, model, x, y, num_classes=10, generator=gen)
                parts_f.append(out.adversarial)
                parts_u8.append(quantize_adversarial(out.adversarial, x, spec.eps))
                if out.targets is not None:
                    parts_t.append(out.targets)
            adv_f, adv_u8[name] = torch.cat(parts_f), torch.cat(parts_u8)
            pred_f, pred_q = predict(model, adv_f), predict(model, from_uint8(adv_u8[name]))
            if spec.targeted:
                targets[name] = torch.cat(parts_t)
                ok_float[name], ok_u8[name] = pred_f == targets[name], pred_q == targets[name]
            else:
                ok_float[name], ok_u8[name] = pred_f != labels, pred_q != labels
            print(f"{name}: success before quantisation {ok_float[name].float().mean():.4f}, after "
                  f"{ok_u8[name].float().mean():.4f}; max |adv - clean| {float((from_uint8(adv_u8[name]) - images).abs().max()):.4f}",
                  flush=True)
        path = Path(tmp) / "pool.zarr"
        store = C.write_store(path, clean_u8, labels, adv_u8, block_size=block, seed=args.seed, success=ok_u8,
                              targets=targets)
        pixels = int(np.prod(store.image_shape))
        disk = {"clean": C.dir_bytes(path / "clean"), "label": C.dir_bytes(path / "label"),
                **{f"adv/{a}": C.dir_bytes(path / "adv" / a) for a in C.ATTACKS},
                **{f"target/{a}": C.dir_bytes(path / "target" / a) for a in targets},
                "total": C.dir_bytes(path)}
        store_rates = store.success_rates()
    raw = rows * pixels
    adv_bytes = sum(disk[f"adv/{a}"] for a in C.ATTACKS)
    bpp = adv_bytes / (raw * len(C.ATTACKS))
    compression = {"clean": raw / disk["clean"], **{a: raw / disk[f"adv/{a}"] for a in C.ATTACKS}}
    before = {a: float(ok_float[a].float().mean()) for a in C.ATTACKS}
    after = {a: float(ok_u8[a].float().mean()) for a in C.ATTACKS}
    diff_points = {a: 100 * (after[a] - before[a]) for a in C.ATTACKS}
    worst = max(abs(v) for v in diff_points.values())
    print(f"adv arrays: {adv_bytes / 2**20:.2f} MiB for {rows} rows x {pixels} pixels x {len(C.ATTACKS)} attacks -> "
          f"{bpp:.3f} bytes/pixel/attack; compression clean {compression['clean']:.2f}x, adversarial "
          + ", ".join(f"{a} {compression[a]:.2f}x" for a in C.ATTACKS)
          + "; success change after quantisation (points): " + ", ".join(f"{a} {v:+.2f}" for a, v in diff_points.items()),
          flush=True)
    C.emit({
        "benchmark": "store_size", "quick": args.quick, "machine": info, "rows": rows, "pixels": pixels,
        "attacks": C.ATTACKS, "attack_steps": steps, "teacher_test_accuracy": acc,
        "bytes_on_disk": disk, "bytes_per_pixel_per_attack": bpp, "ratio": bpp,
        "goal": C.goal(bpp, "<=", 1.0), "compression_ratio": compression,
        "success_before_quantisation": before, "success_after_quantisation": after,
        "success_store_record": store_rates, "success_change_points": diff_points,
        "max_abs_success_change_points": worst, "goal_success_change": C.goal(worst, "<=", 1.0),
        "seconds": time.perf_counter() - t_all,
    })


if __name__ == "__main__":
    main()
