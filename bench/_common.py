"""Shared helpers of the benchmarks: the JSON last line, interleaved timing, memory and CPU of a process tree.

Timing on a shared machine: other work may run while a benchmark runs, so every comparison is measured side by
side in one process: ``interleave`` runs the variants in rotating order (A B C, B C A, ...), each round
one ``torch.utils.benchmark.Timer.blocked_autorange`` per variant, and reports each variant's median and
interquartile range over all rounds; ratios are taken between medians. The CPU seconds of this process (psutil)
are recorded next to the wall clock: waiting for a CPU does not inflate them.

Memory and CPU of other processes (Ray workers and actors are descendants of the driver) come from psutil; peaks
are the largest of periodic samples.
"""
from __future__ import annotations

import argparse
import ctypes
import functools
import json
import os
import platform
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import psutil

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = str(Path(os.environ.get("MID_DATA_ROOT") or (REPO.parent / "shared" / "data")))

os.environ.setdefault("MID_DATA_ROOT", DATA_ROOT)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # private, in-process clusters only (as the test suite)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

ATTACKS = ["PGD_N", "PGD_T", "MIM_N", "MIM_T"]
TARGETED = {"PGD_T", "MIM_T"}
MIB = 2**20


# ------------------------------------------------------------------------------------------ CLI / output


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small sizes (seconds to a minute): the smoke-test size")
    p.add_argument("--seed", type=int, default=0)
    return p


def banner(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Print and return where and how the benchmark runs (machine, load average at start)."""
    info = machine()
    info["benchmark"] = name
    info["argv"] = " ".join(["python", "-m", f"bench.{name}", *sys.argv[1:]])
    info["quick"] = bool(getattr(args, "quick", False))
    print(f"== bench.{name} ({'quick' if info['quick'] else 'full'}) on {info['cpus']} CPUs, "
          f"{info['mem_gib']} GiB, load average at start {info['loadavg_start']}", flush=True)
    return info


def machine() -> dict[str, Any]:
    import torch

    return {"cpus": psutil.cpu_count(), "mem_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "torch": torch.__version__, "gpu": bool(torch.cuda.is_available()),
            "loadavg_start": [round(x, 2) for x in psutil.getloadavg()]}


def goal(value: float | None, op: str, target: float) -> dict[str, Any]:
    """``{"goal": "<= 20", "met": bool}`` for a measured value."""
    if value is None:
        return {"goal": f"{op} {target}", "met": None}
    met = value <= target if op == "<=" else value >= target
    return {"goal": f"{op} {target}", "met": bool(met)}


def emit(payload: Mapping[str, Any]) -> None:
    """Print the one-line JSON result; it must be the last line the benchmark prints."""
    payload = dict(payload)
    payload["loadavg_end"] = [round(x, 2) for x in psutil.getloadavg()]
    sys.stdout.flush()
    sys.stderr.flush()
    print(json.dumps(_jsonable(payload), sort_keys=False), flush=True)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float):
        return round(x, 6) if x == x and abs(x) != float("inf") else None
    if hasattr(x, "item"):
        return _jsonable(x.item())
    return x


# ------------------------------------------------------------------------------------------ timing


def median(xs: Iterable[float]) -> float:
    xs = list(xs)
    return float(statistics.median(xs)) if xs else float("nan")


@dataclass(frozen=True)
class Timing:
    """One variant's timings over all rounds: seconds per call (median, interquartile range, every sample) from
    ``torch.utils.benchmark``, and this process's CPU seconds per call (psutil; warm-up calls included)."""

    median: float
    iqr: float
    times: tuple[float, ...]
    cpu_per_call: float
    calls: int

    def to_dict(self) -> dict[str, Any]:
        return {"median_seconds": self.median, "iqr_seconds": self.iqr, "cpu_seconds_per_call": self.cpu_per_call,
                "samples": len(self.times), "calls": self.calls}


def interleave(variants: Mapping[str, Callable[[], Any]], rounds: int, min_run_time: float = 0.0,
                     threads: int | None = None) -> dict[str, Timing]:
    """Time every variant ``rounds`` times, interleaved with a rotating order (A B C, B C A, ...).

    Each round runs ``Timer(...).blocked_autorange(min_run_time)`` per variant; its first call is an untimed
    warm-up, so ``min_run_time=0`` gives one warm-up and one timed call per round (right for calls of a second or
    more). ``threads``: torch threads during the measurement (default: the current setting).
    """
    import torch
    from torch.utils.benchmark import Measurement, Timer

    threads = threads or torch.get_num_threads()
    names = list(variants)
    me = psutil.Process()
    calls = {n: 0 for n in names}
    cpu = {n: 0.0 for n in names}
    measured: dict[str, list[Measurement]] = {n: [] for n in names}

    def counted(name: str) -> Callable[[], None]:
        fn = variants[name]

        def call() -> None:
            calls[name] += 1
            fn()
        return call

    timers = {n: Timer(stmt="call()", globals={"call": counted(n)}, num_threads=threads, label=n) for n in names}
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            c0 = sum(me.cpu_times()[:2])
            measured[n].append(timers[n].blocked_autorange(min_run_time=min_run_time))
            cpu[n] += sum(me.cpu_times()[:2]) - c0
    out = {}
    for n in names:
        merged = Measurement.merge(measured[n])[0]
        out[n] = Timing(merged.median, merged.iqr, tuple(merged.times), cpu[n] / max(calls[n], 1), calls[n])
    return out


# ------------------------------------------------------------------------------------------ CPU levers


def malloc_keep_heap() -> bool:
    """glibc: never mmap large blocks and never trim the heap (= ``MALLOC_MMAP_MAX_=0
    MALLOC_TRIM_THRESHOLD_=<huge>``), so the meta step's large activations reuse already-faulted pages
    instead of being mmap'd, zero-faulted and unmapped on every allocation. Process-wide; returns success."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-4, 0)) and bool(libc.mallopt(-1, 1 << 40))  # M_MMAP_MAX, M_TRIM_THRESHOLD
    except OSError:
        return False


# ------------------------------------------------------------------------------------------ memory, CPU


def _process(pid: int | None) -> psutil.Process:
    return psutil.Process(pid) if pid is not None else psutil.Process()


def _memory_mib(pid: int | None = None) -> tuple[float, float]:
    """(resident, private resident) MiB of a process; private = resident minus shared pages (file-backed and
    shared memory, e.g. Ray's object store); (0, 0) for a process that is gone."""
    try:
        m = _process(pid).memory_info()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0.0, 0.0
    return m.rss / MIB, (m.rss - getattr(m, "shared", 0)) / MIB


def _status(pid: int | None = None) -> dict[str, int]:
    """``{"VmRSS": KiB, "RssAnon": KiB}`` of a process (the names of Linux's /proc status), from psutil."""
    rss, anon = _memory_mib(pid)
    return {"VmRSS": int(rss * 1024), "RssAnon": int(anon * 1024)}


def rss_mib(pid: int | None = None) -> float:
    """Resident MiB of a process (default: this one)."""
    return _memory_mib(pid)[0]


def anon_rss_mib(pid: int | None = None) -> float:
    """Private resident MiB of a process (default: this one): resident minus shared pages."""
    return _memory_mib(pid)[1]


class _PeakTracker:
    """This process's largest sampled RSS since the last ``reset``, sampled every 20 ms on a daemon thread."""

    interval = 0.02

    def __init__(self) -> None:
        self.peak = 0.0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def sample(self) -> float:
        rss = rss_mib()
        with self._lock:
            self.peak = max(self.peak, rss)
            return self.peak

    def reset(self) -> None:
        with self._lock:
            self.peak = 0.0
        self.sample()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            self.sample()
            time.sleep(self.interval)


_PEAK = _PeakTracker()


def reset_peak_rss() -> bool:
    """Start (or restart) tracking this process's peak RSS for ``peak_rss_mib``; returns True."""
    _PEAK.reset()
    return True


def peak_rss_mib() -> float:
    """This process's largest RSS (MiB) sampled since ``reset_peak_rss`` (sampling every 20 ms)."""
    if _PEAK._thread is None:
        reset_peak_rss()
    return _PEAK.sample()


def descendants(root: int) -> list[int]:
    """PIDs of every process below ``root`` (Ray's raylet, workers and actors are below the driver)."""
    try:
        return [p.pid for p in psutil.Process(root).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def cmdline(pid: int) -> str:
    """A process's command line joined by spaces ("" for a process that is gone)."""
    try:
        return " ".join(psutil.Process(pid).cmdline()).strip()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return ""


_cmdline = cmdline


def parent_pid(pid: int) -> int | None:
    """A process's parent PID (None for a process that is gone)."""
    try:
        return psutil.Process(pid).ppid()
    except psutil.NoSuchProcess:
        return None


class _PeriodicSampler:
    """Calls ``self._sample()`` every ``interval`` s on a daemon thread between ``__enter__`` and ``__exit__``,
    and once more on exit."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


class RssSampler(_PeriodicSampler):
    """Samples, every ``interval`` s, this process's RSS and every descendant's (Ray workers included).

    Records: ``driver_peak_mib`` (max RSS of this process), ``driver_anon_peak_mib`` (max private RSS, excluding
    shared object-store pages), ``worker_peak_mib`` / ``worker_anon_peak_mib`` (largest single descendant and its
    command), ``tree_anon_peak_mib`` (max over samples of the summed private RSS of the whole tree; summing RSS
    would count shared memory several times).
    """

    def __init__(self, interval: float = 0.2, watch: Callable[[str], bool] | None = None) -> None:
        super().__init__(interval)
        self.watch = watch
        self.driver_peak = self.driver_anon_peak = 0.0
        self.worker_peak = self.worker_anon_peak = self.tree_anon_peak = 0.0
        self.worker_cmd = ""
        self.samples = 0
        self.seen: dict[int, str] = {}

    def _sample(self) -> None:
        rss, anon_sum = _memory_mib()
        self.driver_peak = max(self.driver_peak, rss)
        self.driver_anon_peak = max(self.driver_anon_peak, anon_sum)
        for pid in descendants(os.getpid()):
            rss, anon = _memory_mib(pid)
            if not rss:
                continue
            anon_sum += anon
            if anon > self.worker_anon_peak or pid not in self.seen:
                self.seen[pid] = cmdline(pid)[:120]  # Ray renames its workers (ray::...) after start
            if self.watch and not self.watch(self.seen[pid]):
                continue
            if anon > self.worker_anon_peak:
                self.worker_anon_peak, self.worker_cmd = anon, self.seen[pid]
            self.worker_peak = max(self.worker_peak, rss)
        self.tree_anon_peak = max(self.tree_anon_peak, anon_sum)
        self.samples += 1

    def result(self) -> dict[str, Any]:
        return {"driver_peak_mib": round(self.driver_peak, 1), "driver_anon_peak_mib": round(self.driver_anon_peak, 1),
                "worker_peak_mib": round(self.worker_peak, 1), "worker_anon_peak_mib": round(self.worker_anon_peak, 1),
                "worker_peak_cmd": self.worker_cmd, "tree_anon_peak_mib": round(self.tree_anon_peak, 1),
                "samples": self.samples}


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process so far (default: this one); NaN for a process that is gone."""
    try:
        t = _process(pid).cpu_times()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return float("nan")
    return t.user + t.system


class CpuTracker(_PeriodicSampler):
    """Samples, every ``interval`` s, the cumulative CPU seconds of this process and of every descendant whose
    command line contains ``match`` (e.g. Ray Data's ``MapWorker`` actors). ``between(t0, t1)`` then gives the CPU
    seconds each side used in a wall-clock window (``time.perf_counter`` base), by linear interpolation."""

    def __init__(self, match: str, interval: float = 0.5) -> None:
        super().__init__(interval)
        self.match = match
        self.samples: list[tuple[float, float, dict[int, float]]] = []
        self._known: dict[int, bool] = {}

    def _sample(self) -> None:
        procs = {}
        for pid in descendants(os.getpid()):
            if not self._known.get(pid):
                self._known[pid] = self.match in cmdline(pid)
            if self._known[pid]:
                c = cpu_seconds(pid)
                if c == c:
                    procs[pid] = c
        self.samples.append((time.perf_counter(), cpu_seconds(), procs))

    def _at(self, t: float) -> tuple[float, float]:
        """(driver cpu, summed matched-process cpu) at time t, interpolated between the samples around t.

        A process missing from one of the two samples (not started yet, or exited) counts with the value it has
        in the other one."""
        if not self.samples:
            return float("nan"), float("nan")
        after = next((i for i, s in enumerate(self.samples) if s[0] >= t), len(self.samples) - 1)
        lo, hi = self.samples[max(after - 1, 0)], self.samples[after]
        w = 0.0 if hi[0] == lo[0] else min(max((t - lo[0]) / (hi[0] - lo[0]), 0.0), 1.0)
        driver = lo[1] + w * (hi[1] - lo[1])
        matched = 0.0
        for pid in set(lo[2]) | set(hi[2]):
            a, b = lo[2].get(pid, hi[2].get(pid)), hi[2].get(pid, lo[2].get(pid))
            matched += a + w * (b - a)
        return driver, matched

    def between(self, t0: float, t1: float) -> dict[str, float]:
        d0, m0 = self._at(t0)
        d1, m1 = self._at(t1)
        return {"driver_cpu_seconds": d1 - d0, "matched_cpu_seconds": m1 - m0, "wall_seconds": t1 - t0}


def dir_bytes(path: str | os.PathLike) -> int:
    """Bytes on disk of every file under ``path`` (file sizes; Zarr chunk files are not sparse)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


# ------------------------------------------------------------------------------------------ data, models


@functools.lru_cache(maxsize=2)
def _mnist(split: str) -> Any:
    from mid_core.datasets import load_dataset

    return load_dataset("mnist", split, DATA_ROOT)


def load_mnist_u8(n: int, split: str = "train") -> tuple[Any, Any]:
    """The first ``n`` MNIST images as uint8 ``(n, 1, 28, 28)`` and labels int64 ``(n,)``."""
    import torch

    data = _mnist(split).subset(n)
    return torch.round(data.images * 255).to(torch.uint8), data.labels.clone()


def synthetic_views_u8(clean_u8: Any, attacks: list[str], eps: float = 0.3, seed: int = 0) -> dict[str, Any]:
    """Per attack a stand-in view: clean + eps * random sign noise, quantised inside the eps ball (uint8).

    The meta step's cost does not depend on the view content, only on its shape.
    """
    import torch

    from mid_core.quantize import from_uint8, quantize_adversarial

    g = torch.Generator().manual_seed(seed)
    x = from_uint8(clean_u8)
    out = {}
    for name in attacks:
        noise = torch.randint(0, 2, x.shape, generator=g).float().mul_(2).sub_(1)
        out[name] = quantize_adversarial((x + eps * noise).clamp_(0, 1), clean_u8, eps)
    return out


def write_store(path: str | os.PathLike, clean_u8: Any, labels: Any, views_u8: Mapping[str, Any],
                block_size: int = 256, seed: int = 0, eps: float = 0.3, success: Mapping[str, Any] | None = None,
                targets: Mapping[str, Any] | None = None) -> Any:
    """Write index-aligned rows into a finished adversarial store (the real layout and codecs).

    ``views_u8``: attack name -> uint8 (N, C, H, W); targeted attacks get random targets unless given;
    ``success``: attack name -> bool (N,) per-row success (zeros when None).
    """
    import numpy as np

    from mid_core.attacks import default_spec
    from storage_schemas import create_store

    n = int(labels.shape[0])
    specs = {a: default_spec(a, eps=eps).to_dict() for a in views_u8}
    store = create_store(path, dataset="mnist", split="train", num_rows=n, image_shape=tuple(clean_u8.shape[1:]),
                         attacks=specs, source_fingerprint="bench-" + "0" * 58, source_arch="bench", seed=seed,
                         block_size=block_size, extra_attrs={"role": "bench"}, overwrite=True)
    rng = np.random.default_rng(seed)
    labels_np = labels.numpy().astype(np.int64)
    tgt_all = {}
    for a in views_u8:
        if specs[a]["targeted"]:
            tgt_all[a] = (targets[a].numpy().astype(np.int64) if targets and a in targets
                          else (labels_np + rng.integers(1, 10, n)) % 10)
    clean_np = clean_u8.numpy()
    views_np = {a: v.numpy() for a, v in views_u8.items()}
    for b in range(store.num_blocks):
        s, e = store.block_range(b)
        counts = {a: int(success[a][s:e].sum()) if success else 0 for a in views_u8}
        store.write_block(b, clean=np.ascontiguousarray(clean_np[s:e]), labels=labels_np[s:e],
                          adversarial={a: np.ascontiguousarray(v[s:e]) for a, v in views_np.items()},
                          targets={a: t[s:e] for a, t in tgt_all.items()}, success_counts=counts)
    store.finalize()
    return store


def train_teacher_quick(out_dir: str | os.PathLike, backbone: str = "lenet5_classic", n: int = 4000,
                        epochs: int = 2, seed: int = 0, batch_size: int = 128) -> tuple[Path, float]:
    """Train a Teacher on the first ``n`` MNIST images and save it as ``<out_dir>/models/teacher.pt``.

    Returns the checkpoint path and its clean accuracy on the first 1000 MNIST test images.
    """
    import torch

    from mid_core.checkpoint import save_checkpoint
    from mid_core.evaluation import accuracy
    from mid_core.models import StandardClassifier, Teacher
    from mid_core.training import shuffled_batches, teacher_epoch

    torch.manual_seed(seed)
    train = _mnist("train").subset(n)
    test = _mnist("test").subset(1000)
    teacher = Teacher.from_backbone(backbone)
    opt = torch.optim.Adam(teacher.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        teacher_epoch(teacher, shuffled_batches(train.images, train.labels, batch_size, gen), opt)
    acc = accuracy(StandardClassifier(teacher.encoder, teacher.classifier), test.images, test.labels)
    path = Path(out_dir) / "models" / "teacher.pt"
    save_checkpoint(path, teacher, kind="teacher", backbone=backbone, metrics={"test_accuracy_1000": acc})
    return path, acc


def bench_config(output_dir: str | os.PathLike, *, backbone: str = "lenet5_classic", rows: int = 512,
                 steps: int | None = None, step_size: float | None = None, block_size: int = 256,
                 num_actors: int = 1, actor_cpus: float = 0.5, torch_threads: int = 1, batch_size: int = 256,
                 attacks: list[str] | None = None, name: str = "bench") -> Any:
    """A validated ``ExperimentConfig`` for MNIST pool generation into ``output_dir``."""
    from pipeline.config import config_from_dict

    return config_from_dict({
        "name": name, "seed": 0, "output_dir": str(output_dir),
        "data": {"dataset": "mnist", "root": DATA_ROOT, "train_limit": rows},
        "model": {"backbone": backbone},
        "pool": {"attacks": list(attacks or ATTACKS), "steps": steps, "step_size": step_size, "block_size": block_size,
                 "num_actors": num_actors, "actor_cpus": actor_cpus, "torch_threads": torch_threads,
                 "batch_size": batch_size},
        "evaluation": {"protocols": ["whitebox"], "attacks": ["PGD_N"]},
    })


# ------------------------------------------------------------------------------------------ Ray


def start_ray(num_cpus: int = 4, object_store_memory: int | None = None, default_niceness: bool = False) -> float:
    """A private local Ray (no dashboard); returns its start-up seconds.

    Ray starts its worker processes at niceness 15. On a machine shared with other work that makes every
    Ray-side variant lose CPU to everything else while the driver-side baseline (niceness 0) does not, so
    the benchmarks start workers at the driver's niceness (``RAY_worker_niceness=0``) unless
    ``default_niceness``.
    """
    import ray

    if not default_niceness:
        os.environ["RAY_worker_niceness"] = "0"
    os.environ.pop("RAY_ADDRESS", None)
    t0 = time.perf_counter()
    from pipeline.executors.ray_runtime import local_ray_kwargs

    kwargs: dict[str, Any] = {"address": "local", "num_cpus": num_cpus, "log_to_driver": True,
                              "ignore_reinit_error": True, **local_ray_kwargs(include_dashboard=False)}
    if object_store_memory:
        kwargs["object_store_memory"] = int(object_store_memory)
    ray.init(**kwargs)
    quiet_ray_data()
    return time.perf_counter() - t0


def quiet_ray_data() -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    try:
        ctx.print_on_execution_start = False
    except AttributeError:
        pass


def ray_worker_env_note(default_niceness: bool) -> str:
    return "Ray workers at niceness 15 (Ray default)" if default_niceness else \
        "Ray workers at niceness 0 like the driver (RAY_worker_niceness=0; Ray's default is 15)"
