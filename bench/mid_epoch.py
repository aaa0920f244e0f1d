"""Benchmark 1: what one MID epoch costs.

(a) One MID epoch (meta step + Adam, batch 256, 5 views = benign + 4 attacks held in memory as uint8 tensors,
    as the store delivers them) vs one clean-training epoch (``classifier_epoch``: StandardClassifier E+C, CE,
    Adam) of the same backbone on the same images. Second- and first-order MID, backbones ``lenet5_classic``
    (6/16) and ``lenet5`` (32/64). MNIST subset; the four "attack views" are clean + eps 0.3 random sign noise,
    quantised (the step's cost does not depend on the view content). The three variants are interleaved
    batch by batch (rotating order), each with its own model and optimizer, so drifting machine load hits all
    of them alike. Goals: MID/clean <= 20x (second order), <= 12x (first order).
(b) One MID epoch fed from a stored pool (chunk-aligned reads of the Zarr store, in-memory shuffle) vs the same
    epoch generating its four attacks (PGD_N, PGD_T, MIM_N, MIM_T, 40 steps of 0.01, eps 0.3) online every batch
    against the teacher, as the official code does. The online variant runs on the first few batches only
    (interleaved with the stored-pool batches) and is extrapolated per batch to the epoch. Goal >= 8x.
(c) CPU levers on one batch of 256 (second order, first order, clean step): torch threads 1 vs 2, the plain
    ``torch.nn`` models without ``mid_core.kernels.use_cpu_kernels``, channels_last, bfloat16 autocast,
    torch.compile of the student, and (in child processes, since it is process-wide) glibc malloc keeping freed
    memory instead of mmap/munmap of every large activation.

The models run with ``use_cpu_kernels`` unless ``--kernels plain``. The teacher has random weights: the cost of the
meta step and of a fixed-step attack does not depend on them.
"""
from __future__ import annotations

import copy
import json
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np
import torch

from bench import _common as C

BATCH = 256


USE_KERNELS = True  # set once by main() from --kernels


def _models(backbone: str, seed: int, kernels: bool | None = None) -> tuple[Any, Any, Any]:
    """(teacher, student, classifier) of ``backbone``; with ``mid_core.kernels.use_cpu_kernels`` when ``kernels``
    (default: ``--kernels``)."""
    from mid_core.kernels import use_cpu_kernels
    from mid_core.models import StandardClassifier, Teacher, student_from_teacher

    torch.manual_seed(seed)
    teacher = Teacher.from_backbone(backbone).freeze()
    student = student_from_teacher(teacher, "teacher")
    clf = StandardClassifier.from_backbone(backbone)
    if USE_KERNELS if kernels is None else kernels:
        for model in (teacher, student, clf):
            use_cpu_kernels(model)
    return teacher, student, clf


def _views(clean_u8: torch.Tensor, adv_u8: dict[str, torch.Tensor], idx: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """uint8 batch -> float views in [0, 1] exactly as pipeline/train_mid.py converts streamed batches."""
    from mid_core.meta_step import BENIGN

    pick = (lambda t: t[idx]) if idx is not None else (lambda t: t)
    views = {BENIGN: pick(clean_u8).float().div_(255.0)}
    for name, v in adv_u8.items():
        views[name] = pick(v).float().div_(255.0)
    return views


class MidVariant:
    """A student + Adam trained with the meta step (second or first order)."""

    def __init__(self, teacher: Any, student: Any, first_order: bool, seed: int, memory_format: Any = None,
                 autocast: bool = False) -> None:
        from mid_core.meta_step import MetaConfig

        self.teacher, self.student = teacher, copy.deepcopy(student)
        if memory_format is not None:
            self.student = self.student.to(memory_format=memory_format)
        self.opt = torch.optim.Adam(self.student.parameters(), lr=1e-3)
        self.cfg = MetaConfig(first_order=first_order)
        self.seed, self.step_no = seed, 0
        self.memory_format, self.autocast = memory_format, autocast

    def step(self, views: dict[str, torch.Tensor], labels: torch.Tensor, held_out: str | None = None) -> None:
        from mid_core.meta_step import apply_grads, draw_held_out, meta_step

        if self.memory_format is not None:
            views = {k: v.contiguous(memory_format=self.memory_format) for k, v in views.items()}
        held_out = held_out or draw_held_out(list(views), self.seed, self.step_no)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            result = meta_step(self.student, self.teacher, views, labels, held_out, self.cfg)
        apply_grads(self.student, result.grads)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step_no += 1


class CleanVariant:
    """StandardClassifier E+C trained with CE through ``mid_core.training.classifier_epoch``."""

    def __init__(self, clf: Any, memory_format: Any = None, autocast: bool = False) -> None:
        self.model = copy.deepcopy(clf)
        if memory_format is not None:
            self.model = self.model.to(memory_format=memory_format)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.memory_format, self.autocast = memory_format, autocast

    def step(self, clean_u8: torch.Tensor, labels: torch.Tensor) -> None:
        from mid_core.training import classifier_epoch

        x = clean_u8.float().div_(255.0)
        if self.memory_format is not None:
            x = x.contiguous(memory_format=self.memory_format)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            classifier_epoch(self.model, [(x, labels)], self.opt)


# --------------------------------------------------------------------------------------------- (a)


def epoch_ratio(backbone: str, rows: int, seed: int, threads: int) -> dict[str, Any]:
    """One epoch of each variant, interleaved batch by batch; sums per variant are the epoch times."""
    torch.set_num_threads(threads)
    clean_u8, labels = C.load_mnist_u8(rows)
    adv_u8 = C.synthetic_views_u8(clean_u8, C.ATTACKS, 0.3, seed)
    teacher, student, clf = _models(backbone, seed)
    so, fo, cl = MidVariant(teacher, student, False, seed), MidVariant(teacher, student, True, seed), CleanVariant(clf)
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(seed))
    batches = [order[i:i + BATCH] for i in range(0, rows, BATCH)]
    # warm-up (allocator, oneDNN primitive caches) on the first batch, untimed
    b0 = batches[0]
    so.step(_views(clean_u8, adv_u8, b0), labels[b0])
    fo.step(_views(clean_u8, adv_u8, b0), labels[b0])
    cl.step(clean_u8[b0], labels[b0])
    variants = {
        "mid_second_order": lambda b: so.step(_views(clean_u8, adv_u8, b), labels[b]),
        "mid_first_order": lambda b: fo.step(_views(clean_u8, adv_u8, b), labels[b]),
        "clean": lambda b: cl.step(clean_u8[b], labels[b]),
    }
    names = list(variants)
    wall = {n: [] for n in names}
    cpu = {n: [] for n in names}
    t_start = time.perf_counter()
    for i, b in enumerate(batches):
        for n in names[i % 3:] + names[:i % 3]:
            c0, t0 = time.process_time(), time.perf_counter()
            variants[n](b)
            wall[n].append(time.perf_counter() - t0)
            cpu[n].append(time.process_time() - c0)
    epoch = {n: sum(v) for n, v in wall.items()}
    epoch_cpu = {n: sum(v) for n, v in cpu.items()}
    step_med = {n: C.median(v) for n, v in wall.items()}
    out = {
        "backbone": backbone, "rows": rows, "batches": len(batches), "threads": threads,
        "epoch_seconds": epoch, "epoch_cpu_seconds": epoch_cpu, "median_step_seconds": step_med,
        "ratio_second_order": epoch["mid_second_order"] / epoch["clean"],
        "ratio_first_order": epoch["mid_first_order"] / epoch["clean"],
        "ratio_second_order_cpu": epoch_cpu["mid_second_order"] / epoch_cpu["clean"],
        "ratio_first_order_cpu": epoch_cpu["mid_first_order"] / epoch_cpu["clean"],
        "ratio_second_order_median_step": step_med["mid_second_order"] / step_med["clean"],
        "ratio_first_order_median_step": step_med["mid_first_order"] / step_med["clean"],
        "wall_seconds": time.perf_counter() - t_start,
    }
    print(f"[a] {backbone}: {rows} images, {len(batches)} batches of {BATCH}, {threads} thread(s): epoch "
          f"SO {epoch['mid_second_order']:.1f}s, FO {epoch['mid_first_order']:.1f}s, clean {epoch['clean']:.2f}s -> "
          f"SO/clean {out['ratio_second_order']:.1f}x (cpu {out['ratio_second_order_cpu']:.1f}x, median step "
          f"{out['ratio_second_order_median_step']:.1f}x), FO/clean {out['ratio_first_order']:.1f}x (cpu "
          f"{out['ratio_first_order_cpu']:.1f}x, median step {out['ratio_first_order_median_step']:.1f}x)", flush=True)
    return out


# --------------------------------------------------------------------------------------------- (b)


def online_vs_store(backbone: str, rows: int, online_batches: int, seed: int, threads: int, steps: int) -> dict[str, Any]:
    """Stored pool (Zarr, chunk-aligned reads, in-memory shuffle) vs attacks generated every batch.

    Per stored-pool batch: read + shuffle time, then a second-order and a first-order step (two students, order
    alternating). Per online batch (the first ``online_batches``, interleaved): the four attacks against the
    teacher, then a second-order and a first-order step on those views. Epoch = sum over the stored-pool batches;
    the online epoch is the median online batch times the number of batches (extrapolated).
    """
    from mid_core.attacks import run_attack
    from mid_core.meta_step import BENIGN
    from mid_core.models import StandardClassifier
    from pipeline.stages.pool import attack_specs
    from storage_schemas import open_store

    torch.set_num_threads(threads)
    clean_u8, labels = C.load_mnist_u8(rows)
    adv_u8 = C.synthetic_views_u8(clean_u8, C.ATTACKS, 0.3, seed)
    teacher, student, _ = _models(backbone, seed)
    source = StandardClassifier(teacher.encoder, teacher.classifier)
    specs = attack_specs(C.ATTACKS, 0.3, steps, None)
    store_so, store_fo = MidVariant(teacher, student, False, seed), MidVariant(teacher, student, True, seed)
    online_so, online_fo = MidVariant(teacher, student, False, seed), MidVariant(teacher, student, True, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    t_read, t_so, t_fo = [], [], []
    o_attack, o_so, o_fo = [], [], []

    def online_batch(i: int) -> None:
        x, y = clean_u8[i * BATCH:(i + 1) * BATCH].float().div_(255.0), labels[i * BATCH:(i + 1) * BATCH]
        t0 = time.perf_counter()
        views = {BENIGN: x}
        for name, spec in specs.items():
            views[name] = run_attack(spec, source, x, y, num_classes=10, generator=gen).adversarial
        t1 = time.perf_counter()
        online_so.step(views, y)
        t2 = time.perf_counter()
        online_fo.step(views, y)
        t3 = time.perf_counter()
        o_attack.append(t1 - t0)
        o_so.append(t2 - t1)
        o_fo.append(t3 - t2)

    with tempfile.TemporaryDirectory(prefix="bench_mid_epoch_") as tmp:
        path = f"{tmp}/pool.zarr"
        C.write_store(path, clean_u8, labels, adv_u8, block_size=BATCH, seed=seed)
        store = open_store(path, require_complete=True)
        read_blocks = 4  # rows read per Zarr call: 4 chunks (1024 rows), then shuffled in memory

        def store_batches():
            g = torch.Generator().manual_seed(seed)
            blocks = torch.randperm(store.num_blocks, generator=g).tolist()
            for i in range(0, len(blocks), read_blocks):
                parts = [store.read_block(b) for b in blocks[i:i + read_blocks]]
                cat = {k: torch.from_numpy(np.concatenate([p[k] for p in parts])) for k in parts[0]}
                perm = torch.randperm(cat["label"].shape[0], generator=g)
                for j in range(0, perm.shape[0], BATCH):
                    idx = perm[j:j + BATCH]
                    yield cat["clean"][idx], cat["label"][idx], {a: cat[f"adv/{a}"][idx] for a in C.ATTACKS}

        warm = next(iter(store_batches()))  # warm-up, untimed
        store_so.step(_views(warm[0], warm[2]), warm[1])
        store_fo.step(_views(warm[0], warm[2]), warm[1])
        t_epoch = time.perf_counter()
        it = store_batches()
        i = 0
        while True:
            if i < online_batches and i % 2 == 1:
                online_batch(i)
            t0 = time.perf_counter()
            try:
                x_u8, y, views_u8 = next(it)
            except StopIteration:
                break
            t_read.append(time.perf_counter() - t0)
            for variant, sink in ((store_so, t_so), (store_fo, t_fo))[::(1 if i % 2 == 0 else -1)]:
                t1 = time.perf_counter()
                variant.step(_views(x_u8, views_u8), y)
                sink.append(time.perf_counter() - t1)
            if i < online_batches and i % 2 == 0:
                online_batch(i)
            i += 1
        wall = time.perf_counter() - t_epoch
    n_batches = len(t_read)
    out: dict[str, Any] = {"backbone": backbone, "rows": rows, "batches": n_batches, "threads": threads,
                           "attack_steps": steps, "online_batches_measured": len(o_attack),
                           "store_read_seconds_per_batch": C.median(t_read),
                           "online_attack_seconds_per_batch": C.median(o_attack), "wall_seconds": wall}
    for order, store_steps, online_steps in (("second_order", t_so, o_so), ("first_order", t_fo, o_fo)):
        store_epoch = sum(t_read) + sum(store_steps)
        online_batch_s = C.median(a + b for a, b in zip(o_attack, online_steps))
        out[order] = {"store_epoch_seconds": store_epoch, "store_step_seconds_median": C.median(store_steps),
                      "online_batch_seconds_median": online_batch_s,
                      "online_epoch_seconds_extrapolated": online_batch_s * n_batches,
                      "speedup_store_vs_online": online_batch_s * n_batches / store_epoch}
    out["speedup_store_vs_online"] = out["second_order"]["speedup_store_vs_online"]
    print(f"[b] {backbone}: stored pool, {n_batches} batches: read {out['store_read_seconds_per_batch']:.3f}s + step "
          f"SO {out['second_order']['store_step_seconds_median']:.2f}s / FO {out['first_order']['store_step_seconds_median']:.2f}s "
          f"per batch; online (measured on {len(o_attack)} batches, extrapolated): attacks "
          f"{out['online_attack_seconds_per_batch']:.2f}s + step per batch -> stored pool "
          f"{out['second_order']['speedup_store_vs_online']:.1f}x faster (second order), "
          f"{out['first_order']['speedup_store_vs_online']:.1f}x (first order)", flush=True)
    return out


# --------------------------------------------------------------------------------------------- (c)


def _lever_batch(backbone: str, seed: int, n: int = BATCH) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    clean_u8, labels = C.load_mnist_u8(n)
    adv_u8 = C.synthetic_views_u8(clean_u8, C.ATTACKS, 0.3, seed)
    return _views(clean_u8, adv_u8), labels, clean_u8


def _set_globals(threads: int, flush_denormal: bool) -> None:
    """Set the process-global settings a lever varies (restored to the defaults by ``_set_globals(1, False)``)."""
    torch.set_num_threads(threads)
    torch.set_flush_denormal(flush_denormal)


def levers(backbone: str, seed: int, rounds: int, with_compile: bool, batch: int = BATCH,
           only: list[str] | None = None) -> dict[str, Any]:
    """In-process levers, interleaved: per config the SO, FO and clean step times on one batch.

    ``threads1`` runs the models of ``--kernels``; ``plain_nn`` the plain ``torch.nn`` models, without
    ``use_cpu_kernels`` (compare ``plain_nn_threads2`` with ``threads2``; ``python -m bench.kernels`` measures each
    kernel); ``flush_denormal`` flushes subnormal floats to zero (``torch.set_flush_denormal``: subnormals are slow
    on x86 and gradients of mostly-black images can underflow).
    """
    views, labels, clean_u8 = _lever_batch(backbone, seed, batch)
    teacher, student, clf = _models(backbone, seed)
    plain = _models(backbone, seed, kernels=False)
    cl_fmt = torch.channels_last
    teacher_cl = copy.deepcopy(teacher).to(memory_format=cl_fmt)
    configs: dict[str, dict[str, Any]] = {
        "threads1": {"threads": 1},
        "plain_nn": {"threads": 1, "plain": True},
        "plain_nn_threads2": {"threads": 2, "plain": True},
        "flush_denormal": {"threads": 1, "flush_denormal": True},
        "threads2": {"threads": 2},
        "channels_last": {"threads": 1, "fmt": cl_fmt},
        "bf16_autocast": {"threads": 1, "autocast": True},
    }
    if only:
        unknown = sorted(set(only) - set(configs))
        if unknown:
            raise SystemExit(f"--levers: unknown {unknown}; choose from {sorted(configs)}")
        configs = {name: c for name, c in configs.items() if name in only or name == "threads1"}
    variants: dict[str, Any] = {}
    for name, c in configs.items():
        t, st, cf = plain if c.get("plain") else (teacher, student, clf)
        t = teacher_cl if c.get("fmt") is not None else t
        so = MidVariant(t, st, False, seed, c.get("fmt"), c.get("autocast", False))
        fo = MidVariant(t, st, True, seed, c.get("fmt"), c.get("autocast", False))
        cl = CleanVariant(cf, c.get("fmt"), c.get("autocast", False))
        # every variant sets the threads and denormal flushing: they are process-global
        setting = (c["threads"], c.get("flush_denormal", False))
        variants[f"{name}/so"] = (lambda so=so, s=setting: (_set_globals(*s), so.step(views, labels, "PGD_N")))
        variants[f"{name}/fo"] = (lambda fo=fo, s=setting: (_set_globals(*s), fo.step(views, labels, "PGD_N")))
        variants[f"{name}/clean"] = (lambda cl=cl, s=setting: (_set_globals(*s), cl.step(clean_u8, labels)))
    compile_note: dict[str, Any] = {}
    if with_compile:
        torch.set_num_threads(1)
        for order_name, first_order in (("so", False), ("fo", True)):
            v = MidVariant(teacher, student, first_order, seed)
            v.student = torch.compile(v.student)
            v.opt = torch.optim.Adam(v.student.parameters(), lr=1e-3)
            t0 = time.perf_counter()
            try:
                v.step(views, labels, "PGD_N")
                compile_note[order_name] = {"works": True, "compile_seconds": time.perf_counter() - t0}
                variants[f"compile_student/{order_name}"] = (lambda v=v: (torch.set_num_threads(1), v.step(views, labels, "PGD_N")))
            except Exception as exc:  # second order: aot_autograd has no double backward
                compile_note[order_name] = {"works": False, "seconds_to_failure": time.perf_counter() - t0,
                                            "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
        print(f"[c] torch.compile(student): {json.dumps(compile_note)}", flush=True)
    timings = C.interleave(variants, rounds=rounds)
    _set_globals(1, False)
    med = {name: t.median for name, t in timings.items()}
    table: dict[str, dict[str, float]] = {}
    for key, sec in med.items():
        cfg, kind = key.split("/")
        table.setdefault(cfg, {})[kind] = sec
    base = table["threads1"]
    result = {}
    for cfg, row in table.items():
        entry = {f"{k}_seconds": v for k, v in row.items()}
        for k in ("so", "fo", "clean"):
            if k in row:
                entry[f"{k}_speedup_vs_threads1"] = base[k] / row[k]
        if "clean" in row:
            for k in ("so", "fo"):
                entry[f"ratio_{k}_vs_clean"] = row[k] / row["clean"]
        result[cfg] = entry
        print(f"[c] {backbone} batch {batch} {cfg:>16}: " + ", ".join(
            f"{k} {row[k]:.3f}s ({base[k] / row[k]:.2f}x vs threads1)" for k in ("so", "fo", "clean") if k in row), flush=True)
    return {"backbone": backbone, "batch": batch, "rounds": rounds, "configs": result, "compile": compile_note}


def _lever_child(backbone: str, seed: int, rounds: int, keep_heap: bool) -> None:
    """Child process of the allocator lever: prints one JSON line with SO/FO/clean median step seconds."""
    if keep_heap:
        C.malloc_keep_heap()
    torch.set_num_threads(1)
    views, labels, clean_u8 = _lever_batch(backbone, seed)
    teacher, student, clf = _models(backbone, seed)
    so, fo, cl = MidVariant(teacher, student, False, seed), MidVariant(teacher, student, True, seed), CleanVariant(clf)
    timings = C.interleave({"so": lambda: so.step(views, labels, "PGD_N"),
                                  "fo": lambda: fo.step(views, labels, "PGD_N"),
                                  "clean": lambda: cl.step(clean_u8, labels)}, rounds=rounds)
    print(json.dumps({"wall": {n: t.median for n, t in timings.items()},
                      "cpu": {n: t.cpu_per_call for n, t in timings.items()}}), flush=True)


def allocator_lever(backbone: str, seed: int, pairs: int, rounds: int) -> dict[str, Any]:
    """glibc default vs keep-heap, in alternating child processes (the setting is process-wide)."""
    runs: dict[str, list[dict[str, float]]] = {"default": [], "keep_heap": []}
    for p in range(pairs):
        for mode in (("default", "keep_heap") if p % 2 == 0 else ("keep_heap", "default")):
            cmd = [sys.executable, "-m", "bench.mid_epoch", "--lever-child", backbone, "--rounds", str(rounds),
                   "--seed", str(seed), "--kernels", "cpu" if USE_KERNELS else "plain"]
            cmd += ["--keep-heap"] if mode == "keep_heap" else []
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=str(C.REPO), check=True)
            runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1])["wall"])
    med = {m: {k: C.median(r[k] for r in rs) for k in ("so", "fo", "clean")} for m, rs in runs.items()}
    res = {m: {**{f"{k}_seconds": v for k, v in row.items()}, "ratio_so_vs_clean": row["so"] / row["clean"],
               "ratio_fo_vs_clean": row["fo"] / row["clean"]} for m, row in med.items()}
    res["keep_heap_speedup"] = {k: med["default"][k] / med["keep_heap"][k] for k in ("so", "fo", "clean")}
    print(f"[c] {backbone} allocator: default SO {med['default']['so']:.3f}s FO {med['default']['fo']:.3f}s clean "
          f"{med['default']['clean']:.3f}s | keep-heap SO {med['keep_heap']['so']:.3f}s FO {med['keep_heap']['fo']:.3f}s "
          f"clean {med['keep_heap']['clean']:.3f}s -> speedup {json.dumps({k: round(v, 2) for k, v in res['keep_heap_speedup'].items()})}",
          flush=True)
    return {"backbone": backbone, "pairs": pairs, "rounds_per_child": rounds, **res}


# --------------------------------------------------------------------------------------------- main


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="torch threads for (a) and (b) (default 1: see the levers)")
    p.add_argument("--malloc", choices=["keep", "default"], default="default",
                   help="glibc malloc for (a)-(c): keep freed heap memory (default; see the allocator lever) or glibc default")
    p.add_argument("--backbones", default=None, help="comma-separated (default: lenet5_classic,lenet5; quick: lenet5_classic)")
    p.add_argument("--rows", type=int, default=None, help="images in the (a) epoch (default 10000; quick 1024)")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: a,b,c")
    p.add_argument("--levers", default="", help="comma-separated (c) levers to measure against threads1, e.g. "
                   "plain_nn (default: all, plus torch.compile and the allocator)")
    p.add_argument("--kernels", choices=["cpu", "plain"], default="cpu",
                   help="models for (a)-(c): with mid_core.kernels.use_cpu_kernels (default) or plain torch.nn")
    p.add_argument("--lever-rounds", type=int, default=None,
                   help="timed rounds per (c) lever (default 4 for lenet5_classic, 2 for lenet5, 1 quick)")
    p.add_argument("--lever-child", default=None, help=argparse_hidden())
    p.add_argument("--rounds", type=int, default=3, help=argparse_hidden())
    p.add_argument("--keep-heap", action="store_true", help=argparse_hidden())
    args = p.parse_args()
    global USE_KERNELS
    USE_KERNELS = args.kernels == "cpu"
    if args.lever_child:
        _lever_child(args.lever_child, args.seed, args.rounds, args.keep_heap)
        return
    info = C.banner("mid_epoch", args)
    malloc_set = C.malloc_keep_heap() if args.malloc == "keep" else False
    _set_globals(1, False)
    print(f"malloc keep-heap: {malloc_set}; torch threads {args.threads}; models: "
          f"{'use_cpu_kernels' if USE_KERNELS else 'plain torch.nn'}", flush=True)
    backbones = (args.backbones.split(",") if args.backbones else
                 (["lenet5_classic"] if args.quick else ["lenet5_classic", "lenet5"]))
    skip = set(filter(None, args.skip.split(",")))
    rows = args.rows or (512 if args.quick else 10000)
    t0 = time.perf_counter()
    part_a = {} if "a" in skip else {bb: epoch_ratio(bb, rows, args.seed, args.threads) for bb in backbones}
    part_b = {}
    if "b" not in skip:
        for bb in backbones:
            part_b[bb] = online_vs_store(bb, rows=512 if args.quick else 2560, online_batches=1 if args.quick else 3,
                                         seed=args.seed, threads=args.threads, steps=40)
    part_c: dict[str, Any] = {}
    if "c" not in skip:
        for bb in backbones:
            heavy = bb == "lenet5"
            only = list(filter(None, args.levers.split(",")))
            rounds = args.lever_rounds or (1 if args.quick else (2 if heavy else 4))
            part_c[bb] = levers(bb, args.seed, rounds=rounds,
                                with_compile=not args.quick and not only, batch=64 if args.quick else BATCH, only=only)
            if not args.quick and not only:
                part_c[bb]["allocator"] = allocator_lever(bb, args.seed, pairs=2, rounds=2 if heavy else 3)
    main_bb = "lenet5_classic" if "lenet5_classic" in part_a else (next(iter(part_a)) if part_a else None)
    so = part_a[main_bb]["ratio_second_order"] if main_bb else None
    fo = part_a[main_bb]["ratio_first_order"] if main_bb else None
    b_bb = "lenet5" if "lenet5" in part_b else (next(iter(part_b)) if part_b else None)
    speed = part_b[b_bb]["speedup_store_vs_online"] if b_bb else None
    speed_fo = part_b[b_bb]["first_order"]["speedup_store_vs_online"] if b_bb else None
    emit_payload = {
        "benchmark": "mid_epoch", "quick": args.quick, "machine": info, "threads": args.threads,
        "malloc_keep_heap": malloc_set, "kernels": args.kernels,
        "ratio_second_order": so, "ratio_first_order": fo, "ratio_backbone": main_bb,
        "goal_second_order": C.goal(so, "<=", 20), "goal_first_order": C.goal(fo, "<=", 12),
        "per_backbone": {bb: {"ratio_second_order": r["ratio_second_order"], "ratio_first_order": r["ratio_first_order"],
                              "goal_second_order_met": r["ratio_second_order"] <= 20,
                              "goal_first_order_met": r["ratio_first_order"] <= 12} for bb, r in part_a.items()},
        "store_vs_online_speedup": speed, "store_vs_online_backbone": b_bb,
        "goal_store_vs_online": C.goal(speed, ">=", 8), "store_vs_online_speedup_first_order": speed_fo,
        "epoch": part_a, "store_vs_online": part_b, "levers": part_c,
        "online_note": "online variant measured on the first batches only, extrapolated per batch to the epoch",
        "seconds": time.perf_counter() - t0,
    }
    C.emit(emit_payload)


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
