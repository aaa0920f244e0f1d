"""Step-time benchmark of a direct run: clean step, MID step from stored views, MID step with online attacks."""
from __future__ import annotations

import time
from typing import Any, Callable

import torch

from mid_core.attacks import AttackSpec, run_attack
from mid_core.meta_step import BENIGN, apply_grads, draw_held_out, meta_step
from mid_core.models import Teacher, classifier_of, student_from_teacher
from pipeline.config import ExperimentConfig
from pipeline.direct.budget import sync
from pipeline.train_mid import meta_config


def time_call(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 3) -> float:
    """Mean seconds per call of ``fn`` after ``warmup`` calls (device synchronised)."""
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / repeats


def step_benchmark(cfg: ExperimentConfig, teacher: Teacher, pool: dict[str, torch.Tensor], labels: torch.Tensor,
                   specs: dict[str, AttackSpec], device: torch.device, repeats: int) -> dict[str, Any]:
    """Seconds per training step on one batch already on the device: clean E+C step, MID step from stored views
    (second and first order), and a MID step that first generates its attacks against the teacher (online, as the
    official code). Ratios are benchmark 1a (MID vs clean) and 1b (online vs stored) per step."""
    import copy
    import dataclasses

    import torch.nn.functional as F

    b = cfg.mid.batch_size
    idx = torch.arange(b, device=device)
    views = {d: pool[d][idx].float().div_(255.0) for d in pool}
    y = labels[idx]
    domains = sorted(views)
    clean_model = copy.deepcopy(classifier_of(teacher)).train()
    for p in clean_model.parameters():
        p.requires_grad_(True)
    clean_opt = torch.optim.Adam(clean_model.parameters(), lr=cfg.mid.lr)

    def clean_step() -> None:
        loss = F.cross_entropy(clean_model(views[BENIGN]), y)
        clean_opt.zero_grad(set_to_none=True)
        loss.backward()
        clean_opt.step()

    def mid_step_fn(first_order: bool, online: bool) -> Callable[[], None]:
        student = student_from_teacher(teacher, "teacher").to(device)
        opt = torch.optim.Adam(student.parameters(), lr=cfg.mid.lr)
        mcfg = dataclasses.replace(meta_config(cfg), first_order=first_order)
        counter = [0]
        gen = torch.Generator().manual_seed(0)

        def step() -> None:
            v = views
            if online:
                v = {BENIGN: views[BENIGN]}
                for name, spec in specs.items():
                    v[name] = run_attack(spec, classifier_of(teacher), views[BENIGN], y, generator=gen).adversarial
            result = meta_step(student, teacher, v, y, draw_held_out(domains, cfg.seed, counter[0]), mcfg)
            apply_grads(student, result.grads)
            opt.step()
            opt.zero_grad(set_to_none=True)
            counter[0] += 1

        return step

    t = {"clean": time_call(clean_step, device, repeats),
         "mid_second_order": time_call(mid_step_fn(False, False), device, repeats),
         "mid_first_order": time_call(mid_step_fn(True, False), device, repeats),
         "mid_online_second_order": time_call(mid_step_fn(False, True), device, max(3, repeats // 4), warmup=1)}
    return {"seconds_per_step": t, "batch_size": b, "repeats": repeats,
            "ratio_1a_second_order": t["mid_second_order"] / t["clean"],
            "ratio_1a_first_order": t["mid_first_order"] / t["clean"],
            "ratio_1b_online_vs_stored": t["mid_online_second_order"] / t["mid_second_order"],
            "goals": {"1a_second_order": "<= 20x", "1a_first_order": "<= 12x", "1b": ">= 8x"}}
