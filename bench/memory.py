"""Benchmark 7: peak resident memory, and proof that the trainer streams the store instead of holding it.

(1) Streaming: a synthetic store (random uint8 views: incompressible, so on disk ~ in memory) several times larger
    than a deliberately small Ray object store (``ray.init(object_store_memory=80 MiB)``) is streamed through
    ``read_store -> epoch_batches(batch_size=256, window=2048 rows)`` as ``pipeline/stages/mid.py`` reads it on Ray, touching every batch. Recorded: the driver's peak RSS (VmHWM, reset after the store is written) and its
    growth over the baseline, the largest Ray worker, and the whole process tree's private memory; full runs use
    stores of 160 and 960 MiB (2x and 12x the object store) to show the growth does not follow the store size.
    Growth is measured from the driver's RSS after a warm-up stream (imports, Ray Data's first use) to its peak.
    Goal: the driver's peak RSS growth is much smaller than the (largest) store: <= 25% of it.
(2) Stages (full run only): peak RSS of the teacher, generation, MID training and evaluation stages, from
    ``bench.end_to_end`` on ``configs/tiny_test.yaml`` with its quick overrides.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import _common as C

OBJECT_STORE = 80 * 2**20
PIXELS = 784


def write_random_store(path: Path, rows: int, block_size: int, seed: int) -> Any:
    """A complete store of random images, written block by block (never whole in this process's memory)."""
    from mid_core.attacks import default_spec
    from storage_schemas import create_store

    specs = {a: default_spec(a).to_dict() for a in C.ATTACKS}
    store = create_store(path, dataset="mnist", split="train", num_rows=rows, image_shape=(1, 28, 28), attacks=specs,
                         source_fingerprint="bench-" + "0" * 58, source_arch="bench", seed=seed, block_size=block_size,
                         overwrite=True)
    rng = np.random.default_rng(seed)
    for b in range(store.num_blocks):
        s, e = store.block_range(b)
        n = e - s
        img = lambda: rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8)  # noqa: E731
        labels = rng.integers(0, 10, n).astype(np.int64)
        store.write_block(b, clean=img(), labels=labels, adversarial={a: img() for a in C.ATTACKS},
                          targets={a: (labels + 1) % 10 for a in C.ATTACKS if specs[a]["targeted"]},
                          success_counts={a: 0 for a in C.ATTACKS})
    store.finalize()
    return store


def stream(path: str, seed: int) -> dict[str, Any]:
    import ray.data

    import torch

    from bench.streaming import stream_batches

    ray.data.DataContext.get_current().execution_options.preserve_order = True
    rows, checksum = 0, 0
    t0 = time.perf_counter()
    for clean, labels, adv in stream_batches(path, 2048, seed, 0):
        views = [clean.float().div_(255.0)] + [adv[a].float().div_(255.0) for a in C.ATTACKS]
        checksum += int(sum(float(v.sum()) for v in views) > 0)
        rows += int(labels.shape[0])
    return {"rows_streamed": rows, "seconds": time.perf_counter() - t0, "batches": checksum}


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--store-mib", type=int, default=None, help="one uncompressed store size in MiB (default: 160 and 960; quick 160)")
    p.add_argument("--skip-stages", action="store_true", help="skip part (2) (always skipped with --quick)")
    p.add_argument("--ray-default-niceness", action="store_true", help="keep Ray workers at niceness 15")
    args = p.parse_args()
    info = C.banner("memory", args)
    import ray

    sizes = [args.store_mib] if args.store_mib else ([160] if args.quick else [160, 960])
    row_bytes = PIXELS * (1 + len(C.ATTACKS)) + 8 * 3
    t_all = time.perf_counter()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
        ray_start = C.start_ray(num_cpus=4, object_store_memory=OBJECT_STORE, default_niceness=args.ray_default_niceness)
        object_store = ray.cluster_resources().get("object_store_memory", OBJECT_STORE)
        print(f"Ray object store {object_store / 2**20:.0f} MiB; ray.init {ray_start:.1f}s", flush=True)
        # warm-up: stream a one-block store first, so imports and Ray Data's first-use costs are not counted
        write_random_store(Path(tmp) / "small.zarr", 1024, 1024, args.seed + 1)
        stream(str(Path(tmp) / "small.zarr"), args.seed)
        baseline = C.rss_mib()  # after warm-up, before any large store was streamed
        for store_mib in sizes:
            rows = int(store_mib * 2**20 / row_bytes)
            path = Path(tmp) / f"store_{store_mib}.zarr"
            t0 = time.perf_counter()
            store = write_random_store(path, rows, 1024, args.seed)
            write_s = time.perf_counter() - t0
            disk = C.dir_bytes(path)
            raw = rows * row_bytes
            C.reset_peak_rss()
            base = C.rss_mib()
            base_anon = C._status().get("RssAnon", 0) / 1024
            with C.RssSampler(0.1) as sampler:
                res = stream(str(path), args.seed)
            peak = C.peak_rss_mib()
            sres = sampler.result()
            assert res["rows_streamed"] == store.num_rows, res
            # growth over the post-warm-up baseline (RSS keeps the shared pages mapped by an earlier run)
            growth, anon_growth = peak - baseline, sres["driver_anon_peak_mib"] - base_anon
            run = {"store_rows": rows, "store_uncompressed_mib": raw / 2**20, "store_on_disk_mib": disk / 2**20,
                   "store_write_seconds": write_s, "streamed": res, "driver_rss_baseline_mib": baseline,
                   "driver_rss_before_mib": base,
                   "driver_peak_rss_mib": peak, "driver_rss_growth_mib": growth,
                   "driver_growth_fraction_of_store": growth * 2**20 / raw, "driver_private_growth_mib": anon_growth,
                   "driver_private_growth_fraction_of_store": anon_growth * 2**20 / raw, "sampled": sres}
            runs.append(run)
            print(f"store {raw / 2**20:.0f} MiB ({rows} rows, {disk / 2**20:.0f} MiB on disk): streamed in "
                  f"{res['seconds']:.1f}s; driver RSS {baseline:.0f} MiB after warm-up, peak {peak:.0f} MiB (+{growth:.0f} MiB = "
                  f"{100 * run['driver_growth_fraction_of_store']:.1f}% of the store, shared object-store pages included; "
                  f"private memory +{anon_growth:.0f} MiB); largest Ray worker {sres['worker_anon_peak_mib']:.0f} MiB "
                  f"private ({sres['worker_peak_cmd'][:50]!r}); whole tree private peak {sres['tree_anon_peak_mib']:.0f} MiB",
                  flush=True)
            import shutil

            shutil.rmtree(path)
        ray.shutdown()
    big = runs[-1]
    frac = big["driver_growth_fraction_of_store"]
    stages = None
    if not (args.quick or args.skip_stages):
        import os

        from bench.end_to_end import QUICK_OVERRIDES, run_stages
        from pipeline.config import load_config

        os.environ["MID_RAY_DASHBOARD"] = "0"
        with tempfile.TemporaryDirectory(prefix="bench_memory_stages_") as tmp:
            cfg = load_config(C.REPO / "configs" / "tiny_test.yaml", QUICK_OVERRIDES + [f"output_dir={tmp}/run"])
            C.start_ray(num_cpus=4, default_niceness=args.ray_default_niceness)
            stages = run_stages(cfg)
            ray.shutdown()
    C.emit({
        "benchmark": "memory", "quick": args.quick, "machine": info, "object_store_mib": object_store / 2**20,
        "ray_init_seconds": ray_start, "store_uncompressed_mib": big["store_uncompressed_mib"],
        "driver_rss_growth_mib": big["driver_rss_growth_mib"], "driver_private_growth_mib": big["driver_private_growth_mib"],
        "driver_growth_fraction_of_store": frac, "ratio": frac, "goal": C.goal(frac, "<=", 0.25),
        "streaming_runs": runs, "stages": stages,
        "stages_note": None if stages else "stage peaks skipped (--quick / --skip-stages); see a full run",
        "seconds": time.perf_counter() - t_all,
    })


if __name__ == "__main__":
    main()
