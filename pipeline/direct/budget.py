"""Wall-time budget of a direct run: the clock, the epoch rule, progress lines, device sync."""
from __future__ import annotations

import time

import torch


class Clock:
    """Wall time since start against a budget (seconds)."""

    def __init__(self, budget_s: float) -> None:
        self.start, self.budget = time.perf_counter(), float(budget_s)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget - self.elapsed()


def epoch_fits(epochs_done: int, used_s: float, cap_s: float) -> bool:
    """Start another epoch only if the mean epoch so far still fits in the cap (the first always runs)."""
    return epochs_done == 0 or used_s + used_s / epochs_done <= cap_s


def log(message: str) -> None:
    """One timestamped progress line on stdout (flushed: a remote run's log must survive a kill)."""
    print(f"[headline {time.strftime('%H:%M:%S')}] {message}", flush=True)


def sync(device: torch.device) -> None:
    """Wait for queued GPU work (for honest wall times); a no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
