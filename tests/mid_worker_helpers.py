"""Run the MID stage's training function directly on in-memory blocks (no store, no executor)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mid_core.checkpoint import save_checkpoint
from mid_core.datasets import load_dataset
from mid_core.models import Teacher
from mid_core.quantize import to_uint8
from pipeline.config import config_from_dict
from pipeline.executors.local import LocalContext
from pipeline.stages.common import checkpoint_fingerprint

TINY = {"data": {"dataset": "digits"}, "model": {"backbone": "lenet_tiny"},
        "pool": {"attacks": ["PGD_N", "MIM_T"], "steps": 3, "step_size": 0.1, "block_size": 32},
        "mid": {"epochs": 2, "batch_size": 32, "lr": 0.003}, "evaluation": {"limit": 32}}


class BlocksContext(LocalContext):
    """Rank 0 of 1 on the CPU whose ``store_blocks`` yields fixed in-memory blocks."""

    def __init__(self, blocks: list[dict[str, np.ndarray]]) -> None:
        super().__init__(torch.device("cpu"), None, None)
        self.blocks = blocks

    def store_blocks(self):
        yield from self.blocks


def clean_view_blocks(rows: int, attacks: list[str], block_size: int = 32) -> list[dict[str, np.ndarray]]:
    """Blocks of digits training images whose attack views are the clean images themselves."""
    train = load_dataset("digits", "train").subset(rows)
    clean = to_uint8(train.images).numpy()
    blocks = []
    for i in range(0, rows, block_size):
        block = {"clean": clean[i:i + block_size], "label": train.labels[i:i + block_size].numpy()}
        block.update({f"adv_{a}": clean[i:i + block_size] for a in attacks})
        blocks.append(block)
    return blocks


def worker_loop(tmp_path: Path, rows: int = 96, **mid: Any) -> tuple[dict[str, Any], Any]:
    """A fresh tiny teacher under ``tmp_path`` and the MID worker's loop config for ``mid.epochs`` on the first
    ``rows`` training images; returns (the loop config, the config)."""
    cfg = config_from_dict({**TINY, "output_dir": str(tmp_path), "data": {"dataset": "digits", "train_limit": rows},
                            "mid": {**TINY["mid"], **mid}})
    torch.manual_seed(0)
    teacher_path = tmp_path / "models" / "teacher.pt"
    save_checkpoint(teacher_path, Teacher.from_backbone("lenet_tiny"), kind="teacher", backbone="lenet_tiny",
                    config=cfg.to_dict())
    folder = tmp_path / "training" / cfg.mid.variant
    folder.mkdir(parents=True, exist_ok=True)
    loop = {"config": cfg.to_dict(), "teacher_checkpoint": str(teacher_path),
            "teacher_fingerprint": checkpoint_fingerprint(teacher_path), "attacks": list(cfg.pool.attacks),
            "end_epoch": cfg.mid.epochs, "state_dir": str(folder), "init_state": None, "pool_version": 0,
            "tracking_uri": None, "run_id": None}
    return loop, cfg


def run_worker(tmp_path: Path, blocks: list[dict[str, np.ndarray]] | None = None, rows: int = 96,
               context: Any = None, **mid: Any) -> tuple[Path, Any]:
    """Train the MID worker for ``mid.epochs`` on ``blocks`` (default: clean views of ``rows`` images; with
    ``online_attacks`` the first ``rows`` training images) against a fresh tiny teacher, as ``context`` (default
    rank 0 of 1); returns (the training-state folder, the config)."""
    from pipeline.stages.mid import train_worker

    loop, cfg = worker_loop(tmp_path, rows, **mid)
    if context is None:
        context = BlocksContext(blocks if blocks is not None else clean_view_blocks(rows, cfg.pool.attacks))
    train_worker(context, loop)
    return Path(loop["state_dir"]), cfg
