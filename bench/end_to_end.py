"""Benchmark 6: the four stages end to end (teacher -> pool -> MID -> evaluation) with one config.

Runs the stages of ``pipeline.stages`` (teacher, pool, mid, evaluate) in this process through an executor
(``--executor ray``, the default: a private local Ray with 4 logical CPUs and no dashboard; or ``local``), and prints per
stage the wall time and the peak resident memory: of this driver process (VmHWM, reset before each stage) and of
the whole process tree (Ray workers and actors included; sampled every 0.2 s, private RssAnon summed so shared
object-store pages are not counted several times).

``--quick`` runs ``configs/tiny_test.yaml`` (digits) with fewer epochs and evaluation images. The MNIST figure of
docs/benchmarks.md (benchmark 6) is ``python -m bench.end_to_end --config configs/mnist_lenet5_classic_20k.yaml --set
"evaluation.protocols=[paper]" --set "evaluation.models=[teacher,mid]" --set mid.epochs=48`` (~36 min on 2 CPUs).
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import _common as C

QUICK_OVERRIDES = ["teacher.epochs=2", "mid.epochs=2", "evaluation.limit=100", "evaluation.slow_attack_limit=16"]


def run_stages(cfg: Any, stages: list[str] | None = None, executor_name: str = "ray") -> dict[str, dict[str, Any]]:
    """Run the stages in order; per stage: seconds, driver peak RSS, tree peaks."""
    from pipeline.executors import get_executor
    from pipeline.stages import evaluate, mid, pool, teacher

    executor = get_executor(executor_name)
    funcs = {"teacher": lambda c: teacher.run(c, executor), "pool": lambda c: pool.run(c, executor),
             "mid": lambda c: mid.run(c, executor), "evaluation": evaluate.run}
    out: dict[str, dict[str, Any]] = {}
    for name in stages or list(funcs):
        reset_ok = C.reset_peak_rss()
        rss_before = C.rss_mib()
        t0 = time.perf_counter()
        with C.RssSampler(0.2) as sampler:
            funcs[name](cfg)
        seconds = time.perf_counter() - t0
        res = {"seconds": seconds, "driver_rss_before_mib": round(rss_before, 1),
               "driver_peak_rss_mib": round(C.peak_rss_mib(), 1) if reset_ok else None, **sampler.result()}
        out[name] = res
        print(f"[{name}] {seconds:.1f}s; driver peak RSS {res['driver_peak_rss_mib']} MiB (sampled "
              f"{res['driver_peak_mib']} MiB); largest worker/actor {res['worker_anon_peak_mib']} MiB private "
              f"({res['worker_peak_cmd'][:60]!r}); whole tree private peak {res['tree_anon_peak_mib']} MiB", flush=True)
    return out


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--config", default=None, help="config file (default configs/tiny_test.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="key.sub=value overrides")
    p.add_argument("--output-dir", default=None, help="default: a temporary folder, deleted afterwards")
    p.add_argument("--ray-default-niceness", action="store_true", help="keep Ray workers at niceness 15")
    p.add_argument("--executor", default="ray", choices=["ray", "local"], help="the stages' executor")
    args = p.parse_args()
    info = C.banner("end_to_end", args)
    from pipeline.config import load_config

    config = args.config or str(C.REPO / "configs" / "tiny_test.yaml")
    overrides = (QUICK_OVERRIDES if args.quick else []) + list(args.overrides)
    os.environ["MID_RAY_DASHBOARD"] = "0"
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_e2e_") as tmp:
        out_dir = args.output_dir or str(Path(tmp) / "run")
        cfg = load_config(config, overrides + [f"output_dir={out_dir}"])
        ray_start = C.start_ray(num_cpus=4, default_niceness=args.ray_default_niceness)
        print(f"config {config} overrides {overrides}; ray.init {ray_start:.1f}s "
              f"({C.ray_worker_env_note(args.ray_default_niceness)})", flush=True)
        stages = run_stages(cfg, executor_name=args.executor)
        import json

        table = json.loads((Path(out_dir) / "evaluation" / "results.json").read_text())
        import ray

        ray.shutdown()
    total = sum(s["seconds"] for s in stages.values())
    print(f"total {total:.1f}s over 4 stages (+ ray.init {ray_start:.1f}s)", flush=True)
    C.emit({
        "benchmark": "end_to_end", "quick": args.quick, "machine": info, "config": os.path.relpath(config, C.REPO),
        "overrides": overrides, "ray_init_seconds": ray_start, "ray_worker_niceness": 15 if args.ray_default_niceness else 0,
        "stages": stages, "total_stage_seconds": total,
        "peak_driver_rss_mib": max((s["driver_peak_rss_mib"] or s["driver_peak_mib"]) for s in stages.values()),
        "peak_tree_anon_mib": max(s["tree_anon_peak_mib"] for s in stages.values()),
        "evaluation_rows": len(table.get("rows", [])),
        # the accuracy the stage times bought: benign and average (%) per protocol / model row
        "accuracy": {f"{r['protocol']}/{r['model']}": {"benign": round(100 * r["benign"], 2),
                                                      "average": round(100 * r["average"], 2)}
                     for r in table.get("rows", [])},
        "note": ("quick size (digits, tiny config): a smoke check, not the MNIST figure" if args.quick
                 else "stage times of this config and, under 'accuracy', what they bought"),
        "seconds": time.perf_counter() - t_all,
    })


if __name__ == "__main__":
    main()
