"""Benchmark 3: does pool generation scale with actors, and does a multi-node run give the same store?

(1) ``pipeline.stages.pool.generate_store`` (Ray executor) with 1 vs 2 ``BlockGenerator`` actors (1 torch thread each, 0.5 CPU
    each) on this 2-core machine, interleaved, same config (four attacks, lenet5_classic teacher). Speedup in
    steady state (blocks per second between the first and last finished block) and including each run's fixed
    cost (actor start-up). Goal: >= 1.7x.
(2) A two-node cluster simulated with ``ray.cluster_utils.Cluster`` (a head and a worker raylet on this machine,
    1 CPU each; each actor asks for 1 CPU, so one actor lands on each node) generates the same store; every array
    and the success counts must be identical to the single-node store's.
"""
from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import _common as C
from bench import _generation as G


def _watch_actor_nodes(raylets: dict[int, str], stop: threading.Event, seen: dict[int, str]) -> None:
    """Record, for every MapWorker process, which raylet (node) started it."""
    while not stop.is_set():
        for pid in C.descendants(os.getpid()):
            if pid in seen:
                continue
            cmd = C._cmdline(pid)
            if "MapWorker" in cmd:
                try:
                    ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
                seen[pid] = raylets.get(ppid, f"unknown parent {ppid}")
        stop.wait(0.5)


def multi_node(cfg: Any, path: Path, default_niceness: bool) -> dict[str, Any]:
    import ray
    from ray.cluster_utils import Cluster

    if not default_niceness:
        os.environ["RAY_worker_niceness"] = "0"
    t0 = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    C.quiet_ray_data()
    start = time.perf_counter() - t0
    raylets = {}
    for label, node in (("head", cluster.head_node), ("worker", worker)):
        for proc in node.all_processes.get("raylet", []):
            raylets[proc.process.pid] = label
    seen: dict[int, str] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_actor_nodes, args=(raylets, stop, seen), daemon=True)
    watcher.start()
    nodes = [n["NodeID"][:8] for n in ray.nodes() if n["Alive"]]
    mcfg = C.bench_config(cfg.output_dir, rows=cfg.data.train_limit, steps=cfg.pool.steps, step_size=cfg.pool.step_size,
                          num_actors=2, actor_cpus=1.0, torch_threads=1)
    try:
        res = G.generate_with_ray(mcfg, path)
    finally:
        stop.set()
        watcher.join()
        ray.shutdown()
        cluster.shutdown()
    res.update({"cluster_start_seconds": start, "alive_nodes": len(nodes), "actor_nodes": sorted(seen.values())})
    return res


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=None, help="images (default 2560 = 10 blocks; quick 1024)")
    p.add_argument("--steps", type=int, default=None, help="attack steps (default 40; quick 5)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved repeats (default 2; quick 1)")
    p.add_argument("--ray-default-niceness", action="store_true", help="keep Ray workers at niceness 15")
    p.add_argument("--skip-multinode", action="store_true")
    args = p.parse_args()
    info = C.banner("generation_scaling", args)
    rows = args.rows or (1024 if args.quick else 2560)
    steps = args.steps or (5 if args.quick else 40)
    rounds = args.rounds or (1 if args.quick else 2)
    step_size = 0.06 if steps < 40 else None
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_genscale_") as tmp:
        cfg1, teacher_info = G.setup_teacher_and_config(tmp, rows, steps, step_size, threads=1, num_actors=1,
                                                        teacher_rows=1000 if args.quick else 4000)
        cfg2 = C.bench_config(tmp, rows=rows, steps=steps, step_size=step_size, num_actors=2, torch_threads=1)
        ray_start = C.start_ray(num_cpus=4, default_niceness=args.ray_default_niceness)
        print(f"ray.init: {ray_start:.1f}s ({C.ray_worker_env_note(args.ray_default_niceness)})", flush=True)
        results: dict[str, list[dict[str, Any]]] = {"actors1": [], "actors2": []}
        for r in range(rounds):
            for v in (("actors1", "actors2") if r % 2 == 0 else ("actors2", "actors1")):
                res = G.generate_with_ray(cfg1 if v == "actors1" else cfg2, Path(tmp) / f"{v}_{r}.zarr")
                results[v].append(res)
                print(f"round {r} {v}: {res['seconds']:.1f}s for {res['blocks']} blocks, steady "
                      f"{res.get('steady_blocks_per_second', float('nan')):.3f} blocks/s", flush=True)
        import ray

        ray.shutdown()
        same_1_vs_2 = G.stores_identical(Path(tmp) / "actors1_0.zarr", Path(tmp) / "actors2_0.zarr")
        mn: dict[str, Any] = {}
        if not args.skip_multinode:
            mn = multi_node(cfg2, Path(tmp) / "multinode.zarr", args.ray_default_niceness)
            cmp = G.stores_identical(Path(tmp) / "actors2_0.zarr", Path(tmp) / "multinode.zarr")
            mn.update({"identical_to_single_node": cmp["identical"], "arrays_equal": cmp["arrays"],
                       "success_counts_equal": cmp["success_counts_equal"]})
            print(f"multi-node (2 raylets): {mn['seconds']:.1f}s, actors on nodes {mn['actor_nodes']}, store identical "
                  f"to the single-node store: {mn['identical_to_single_node']}", flush=True)
    steady = {v: C.median(x["steady_blocks_per_second"] for x in rs if x.get("steady_blocks_per_second")) for v, rs in results.items()}
    wall = {v: C.median(x["seconds"] for x in rs) for v, rs in results.items()}
    share = {v: C.median(x["actor_cpu_share_steady"] for x in rs if "actor_cpu_share_steady" in x) for v, rs in results.items()}
    cpu_block = {v: C.median(x["actor_cpu_seconds_per_block"] for x in rs if "actor_cpu_seconds_per_block" in x)
                 for v, rs in results.items()}
    print(f"actors' CPU in the steady window: 1 actor {share['actors1']:.2f} cores ({cpu_block['actors1']:.2f} CPU s/block), "
          f"2 actors {share['actors2']:.2f} cores ({cpu_block['actors2']:.2f} CPU s/block)", flush=True)
    speedup = steady["actors2"] / steady["actors1"]
    speedup_incl = wall["actors1"] / wall["actors2"]
    print(f"2 vs 1 actors: steady {steady['actors2']:.3f} vs {steady['actors1']:.3f} blocks/s -> {speedup:.2f}x; "
          f"including fixed cost {wall['actors1']:.1f}s vs {wall['actors2']:.1f}s -> {speedup_incl:.2f}x; stores identical: "
          f"{same_1_vs_2['identical']}", flush=True)
    C.emit({
        "benchmark": "generation_scaling", "quick": args.quick, "machine": info, **teacher_info,
        "rows": rows, "blocks": results["actors1"][0]["blocks"], "attack_steps": steps, "rounds": rounds,
        "ray_worker_niceness": 15 if args.ray_default_niceness else 0, "ray_init_seconds": ray_start,
        "steady_blocks_per_second": steady, "seconds": wall, "actor_cpu_share_steady": share,
        "actor_cpu_seconds_per_block": cpu_block,
        "speedup_2_vs_1_actors": speedup, "speedup_2_vs_1_actors_including_startup": speedup_incl,
        "ratio": speedup, "goal": C.goal(speedup, ">=", 1.7),
        "goal_including_startup": C.goal(speedup_incl, ">=", 1.7),
        "stores_1_vs_2_actors_identical": same_1_vs_2["identical"],
        "multinode": mn or None,
        "multinode_identical": mn.get("identical_to_single_node") if mn else None,
        "runs": results, "total_seconds": time.perf_counter() - t_all,
    })


if __name__ == "__main__":
    main()
