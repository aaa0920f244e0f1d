"""Benchmark 4: training throughput when batches stream from the store through Ray Data vs from memory.

Streamed: ``pipeline.executors.ray_datasource.read_store(path, block_order)`` -> whole blocks ->
``pipeline.stages.mid.epoch_batches(batch_size=256, window=...)`` with ``preserve_order`` on,
then the uint8 -> float conversion and the MID meta step + Adam, exactly as ``pipeline/stages/mid.py`` does (here in
the driver instead of a Ray Train worker). In memory: the same uint8 tensors already in this process, a fresh
permutation per epoch, the same conversion and step. lenet5_classic, second order, 1 torch thread; the store holds
MNIST images with synthetic views (the cost does not depend on the content). Epochs of the variants are
interleaved. Goal: streamed >= 0.9x the in-memory meta steps per second.

Before that, a sweep of store chunk (= block) sizes and local shuffle-buffer sizes measures the loader alone
(batches per second with no training step), which decides the configuration to pick.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench import _common as C

BATCH = 256


def stream_batches(path: str, shuffle_buffer: int, seed: int, epoch: int):
    """Batches exactly as MID training reads them on Ray: whole store blocks in the planned order through
    ``pipeline.executors.ray_datasource``, then ``pipeline.stages.mid.epoch_batches`` (a window of
    ``shuffle_buffer`` rows shuffled per epoch)."""
    from pipeline.executors.ray_datasource import read_store
    from pipeline.stages.mid import block_order, epoch_batches
    from storage_schemas import open_store

    order = block_order(open_store(path).num_blocks, seed)
    blocks = ({k: np.array(v) for k, v in b.items()}
              for b in read_store(path, order).iter_batches(batch_size=None, batch_format="numpy"))
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 7919)
    for batch in epoch_batches(blocks, BATCH, max(shuffle_buffer, BATCH), generator):
        yield (torch.from_numpy(batch["clean"]), torch.from_numpy(batch["label"]).long(),
               {a: torch.from_numpy(batch[f"adv_{a}"]) for a in C.ATTACKS})


def memory_batches(data: dict[str, torch.Tensor], seed: int, epoch: int):
    n = data["label"].shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
    for i in range(0, n - BATCH + 1, BATCH):
        idx = perm[i:i + BATCH]
        yield data["clean"][idx], data["label"][idx], {a: data[f"adv/{a}"][idx] for a in C.ATTACKS}


def to_views(clean: torch.Tensor, adv: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from mid_core.meta_step import BENIGN

    views = {BENIGN: clean.float().div_(255.0)}
    for a, v in adv.items():
        views[a] = v.float().div_(255.0)
    return views


def loader_epoch(batches) -> tuple[int, float, float]:
    """Iterate an epoch doing only the conversion; returns batches, seconds, first-batch latency."""
    t0 = time.perf_counter()
    first, n = None, 0
    for clean, labels, adv in batches:
        to_views(clean, adv)
        n += 1
        if first is None:
            first = time.perf_counter() - t0
    return n, time.perf_counter() - t0, first or 0.0


class Trainer:
    def __init__(self, seed: int) -> None:
        from mid_core.meta_step import MetaConfig
        from mid_core.models import Teacher, student_from_teacher

        torch.manual_seed(seed)
        self.teacher = Teacher.from_backbone("lenet5_classic").freeze()
        self.student = student_from_teacher(self.teacher)
        self.opt = torch.optim.Adam(self.student.parameters(), lr=1e-3)
        self.cfg, self.seed, self.step_no = MetaConfig(), seed, 0

    def epoch(self, batches) -> tuple[int, float, float]:
        from mid_core.meta_step import apply_grads, draw_held_out, meta_step

        t0 = time.perf_counter()
        first, n = None, 0
        for clean, labels, adv in batches:
            views = to_views(clean, adv)
            result = meta_step(self.student, self.teacher, views, labels, draw_held_out(list(views), self.seed, self.step_no), self.cfg)
            apply_grads(self.student, result.grads)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            self.step_no += 1
            n += 1
            if first is None:
                first = time.perf_counter() - t0
        return n, time.perf_counter() - t0, first or 0.0


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=None, help="store rows (default 10240; quick 1024)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved epochs per variant (default 2; quick 1)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ray-default-niceness", action="store_true", help="keep Ray workers at niceness 15")
    args = p.parse_args()
    info = C.banner("streaming", args)
    torch.set_num_threads(args.threads)
    C.malloc_keep_heap()
    rows = args.rows or (1024 if args.quick else 10240)
    rounds = args.rounds or (1 if args.quick else 2)
    block_sizes = [256] if args.quick else [256, 1024, 4096]
    buffers = [2048] if args.quick else [0, 2048, 8192]
    t_all = time.perf_counter()
    import ray.data

    with tempfile.TemporaryDirectory(prefix="bench_streaming_") as tmp:
        clean_u8, labels = C.load_mnist_u8(rows)
        views_u8 = C.synthetic_views_u8(clean_u8, C.ATTACKS, 0.3, args.seed)
        stores = {}
        for bs in block_sizes:
            stores[bs] = str(Path(tmp) / f"store_b{bs}.zarr")
            C.write_store(stores[bs], clean_u8, labels, views_u8, block_size=bs, seed=args.seed)
        from storage_schemas import open_store

        store = open_store(stores[256], require_complete=True)
        mem = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in store.read_rows(0, store.num_rows).items()}
        ray_start = C.start_ray(num_cpus=4, default_niceness=args.ray_default_niceness)
        ray.data.DataContext.get_current().execution_options.preserve_order = True  # as the Ray executor
        print(f"ray.init: {ray_start:.1f}s ({C.ray_worker_env_note(args.ray_default_niceness)}); store {rows} rows, "
              f"{store.num_rows * (1 + len(C.ATTACKS)) * 784 / 2**20:.0f} MiB of images", flush=True)

        # ---- loader sweep (no training step)
        sweep_variants = {f"b{bs}/s{sb}": (lambda bs=bs, sb=sb: loader_epoch(stream_batches(stores[bs], sb, args.seed, 0)))
                          for bs in block_sizes for sb in buffers}
        sweep_variants["memory"] = lambda: loader_epoch(memory_batches(mem, args.seed, 0))
        sweep_res: dict[str, list[tuple[int, float, float]]] = {k: [] for k in sweep_variants}
        names = list(sweep_variants)
        for name in names:  # warm-up: first execution of each pipeline
            sweep_variants[name]()
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                sweep_res[name].append(sweep_variants[name]())
        sweep = {}
        for name, res in sweep_res.items():
            n = res[0][0]
            sec = C.median(x[1] for x in res)
            sweep[name] = {"batches": n, "epoch_seconds": sec, "batches_per_second": n / sec,
                           "first_batch_seconds": C.median(x[2] for x in res)}
            print(f"loader {name:>12}: {n / sec:7.1f} batches/s (epoch {sec:.2f}s, first batch "
                  f"{sweep[name]['first_batch_seconds']:.2f}s)", flush=True)
        candidates = {k: v for k, v in sweep.items() if k != "memory" and not k.endswith("/s0")} or \
            {k: v for k, v in sweep.items() if k != "memory"}
        pick = max(candidates, key=lambda k: candidates[k]["batches_per_second"])
        default = "b256/s2048"
        print(f"pick (fastest loader with a shuffle buffer): {pick}; pipeline default: {default}", flush=True)

        # ---- training throughput: streamed vs in memory, epochs interleaved
        train_cfgs = {"memory": None, f"stream_{default}": default}
        if pick != default:
            train_cfgs[f"stream_{pick}"] = pick
        trainers = {k: Trainer(args.seed) for k in train_cfgs}

        def batches_for(k: str, epoch: int):
            cfg = train_cfgs[k]
            if cfg is None:
                return memory_batches(mem, args.seed, epoch)
            bs, sb = int(cfg.split("/")[0][1:]), int(cfg.split("/")[1][1:])
            return stream_batches(stores[bs], sb, args.seed, epoch)

        for k in trainers:  # warm-up: two steps each
            trainers[k].epoch(b for i, b in zip(range(2), batches_for(k, 99)))
        train_res: dict[str, list[tuple[int, float, float]]] = {k: [] for k in trainers}
        keys = list(trainers)
        for r in range(rounds):
            for k in keys[r % len(keys):] + keys[:r % len(keys)]:
                res = trainers[k].epoch(batches_for(k, r))
                train_res[k].append(res)
                print(f"round {r} {k:>18}: {res[0]} steps in {res[1]:.1f}s -> {res[0] / res[1]:.3f} steps/s "
                      f"(first step after {res[2]:.2f}s)", flush=True)
        ray.shutdown()
    steps_per_s = {k: C.median(x[0] / x[1] for x in v) for k, v in train_res.items()}
    ratios = {k: steps_per_s[k] / steps_per_s["memory"] for k in steps_per_s if k != "memory"}
    headline_key = f"stream_{pick}" if f"stream_{pick}" in ratios else f"stream_{default}"
    ratio = ratios[headline_key]
    print("streamed / in-memory meta steps per second: " + ", ".join(f"{k} {v:.3f}x" for k, v in ratios.items()), flush=True)
    C.emit({
        "benchmark": "streaming", "quick": args.quick, "machine": info, "rows": rows, "batch_size": BATCH,
        "threads": args.threads, "rounds": rounds, "backbone": "lenet5_classic", "meta_step": "second order",
        "ray_worker_niceness": 15 if args.ray_default_niceness else 0, "ray_init_seconds": ray_start,
        "loader_sweep": sweep, "pick": pick, "pipeline_default": default,
        "steps_per_second": steps_per_s, "ratios": ratios, "ratio_config": headline_key,
        "ratio": ratio, "goal": C.goal(ratio, ">=", 0.9),
        "ratio_pipeline_default": ratios[f"stream_{default}"],
        "training_runs": {k: [{"steps": x[0], "seconds": x[1], "first_step_seconds": x[2]} for x in v] for k, v in train_res.items()},
        "seconds": time.perf_counter() - t_all,
    })


if __name__ == "__main__":
    main()
