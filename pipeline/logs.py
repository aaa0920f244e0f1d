"""Progress lines: one ``logging`` setup for the command line, Ray workers and generation actors."""
from __future__ import annotations

import logging
import sys

FORMAT = "[%(asctime)s %(name)s] %(message)s"


def configure(level: int = logging.INFO) -> None:
    """Send ``mid``'s and ``pipeline``'s log records to stdout (once per process; flushed per line, so a killed
    job's log keeps everything up to the kill)."""
    for name in ("pipeline", "mid_core"):
        logger = logging.getLogger(name)
        if not any(getattr(h, "_mid", False) for h in logger.handlers):
            handler = logging.StreamHandler(sys.stdout)
            handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
            handler._mid = True  # type: ignore[attr-defined]
            logger.addHandler(handler)
            logger.propagate = False
        logger.setLevel(level)
